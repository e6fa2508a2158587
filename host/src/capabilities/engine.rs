//! The container engine capability (`permissions.engine: true`), through a local
//! Docker engine with bollard. The engine's socket and credentials stay in the
//! host; the stage names only workspace paths and image references.
//!
//! - `build`: the context directory (inside the workspace) is sent as a tarball
//!   that honours its `.dockerignore`; the build log streams to the stage log; a
//!   failing step is reported with the engine's message.
//! - `export-layout`: the image is saved by the engine and written into the
//!   workspace as an OCI image layout (needs `workspace: write` too).
//! - `pull`, `start`, `remove` arrive with the deploy stage; they answer
//!   `unavailable` for now.

use super::Subject;
use super::log::StageLog;
use crate::manifest::Permissions;
use crate::report::Level;
use crate::runtime::bindings::engine::{self as wit, BuildRequest, ContainerRequest};
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Default)]
pub struct EngineGrant {
    pub granted: bool,
}

impl EngineGrant {
    pub fn configure(perms: &Permissions) -> Self {
        Self {
            granted: perms.engine.as_ref().is_some_and(|g| g.value),
        }
    }
}

pub struct EngineState {
    pub grant: EngineGrant,
    pub subject: Subject,
    /// Canonical workspace path; empty when there is none.
    pub workspace: PathBuf,
    pub workspace_writable: bool,
    pub log: Arc<StageLog>,
}

fn failed(what: impl std::fmt::Display) -> HostError {
    HostError::Failed(what.to_string())
}

impl EngineState {
    fn check(&self, what: &str) -> Result<(), HostError> {
        if self.grant.granted {
            return Ok(());
        }
        Err(HostError::Denied(self.subject.deny(
            "to use the container engine",
            &format!("({what})"),
            "engine: true",
        )))
    }

    fn docker(&self) -> Result<bollard::Docker, HostError> {
        bollard::Docker::connect_with_local_defaults()
            .map_err(|e| HostError::Unavailable(format!("cannot reach the Docker engine: {e}")))
    }

    async fn build(&self, req: BuildRequest) -> Result<String, HostError> {
        self.check("build")?;
        let context = super::workspace::resolve_inside(&self.workspace, &req.context)
            .map_err(HostError::Invalid)?;
        let dockerfile = req
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        if !context.join(&dockerfile).is_file() {
            return Err(failed(format!(
                "no Dockerfile at `{}` in the build context `{}`",
                dockerfile, req.context
            )));
        }
        let tarball = {
            let context = context.clone();
            tokio::task::spawn_blocking(move || context_tarball(&context))
                .await
                .map_err(failed)?
                .map_err(|e| failed(format!("build context `{}`: {e}", req.context)))?
        };
        self.log.write(
            Level::Info,
            &format!("build context: {} bytes", tarball.len()),
        );
        let docker = self.docker()?;
        let args: HashMap<String, String> = req.build_args.iter().cloned().collect();
        let mut options = bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile(&dockerfile)
            .rm(true)
            .forcerm(true)
            .buildargs(&args);
        if let Some(tag) = req.tags.first() {
            options = options.t(tag);
        }
        if let Some(target) = &req.target {
            options = options.target(target);
        }
        let mut stream = docker.build_image(
            options.build(),
            None,
            Some(bollard::body_full(tarball.into())),
        );
        let mut image_id = None;
        let mut last_step = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                failed(format!(
                    "docker build failed at {}: {e}",
                    step_or_start(&last_step)
                ))
            })?;
            if let Some(text) = &info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if line.starts_with("Step ") {
                        last_step = line.to_string();
                    }
                    self.log.write(Level::Info, line);
                }
            }
            if let Some(detail) = info.error_detail.as_ref().and_then(|d| d.message.clone()) {
                return Err(failed(format!(
                    "docker build failed at {}: {detail}",
                    step_or_start(&last_step)
                )));
            }
            if let Some(id) = info.aux.as_ref().and_then(|a| a.id.clone()) {
                image_id = Some(id);
            }
        }
        let id = match (image_id, req.tags.first()) {
            (Some(id), _) => id,
            (None, Some(tag)) => docker
                .inspect_image(tag)
                .await
                .map_err(failed)?
                .id
                .ok_or_else(|| failed("the engine reported no image id"))?,
            (None, None) => {
                return Err(failed(
                    "the engine reported no image id; give the build a tag",
                ));
            }
        };
        for tag in req.tags.iter().skip(1) {
            let (repo, tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
            let options = bollard::query_parameters::TagImageOptionsBuilder::default()
                .repo(repo)
                .tag(tag)
                .build();
            docker.tag_image(&id, Some(options)).await.map_err(failed)?;
        }
        Ok(id)
    }

    async fn export_layout(
        &self,
        image: String,
        dir: String,
        ref_name: String,
    ) -> Result<String, HostError> {
        self.check("export-layout")?;
        if !self.workspace_writable {
            return Err(HostError::Denied(self.subject.deny(
                "to write the image layout",
                &format!("`{dir}` into the workspace"),
                "workspace: write",
            )));
        }
        let out = super::workspace::resolve_new_inside(&self.workspace, &dir)
            .map_err(HostError::Invalid)?;
        let docker = self.docker()?;
        let mut saved = Vec::new();
        let mut stream = docker.export_image(&image);
        while let Some(chunk) = stream.next().await {
            saved.extend_from_slice(
                &chunk.map_err(|e| failed(format!("saving image `{image}`: {e}")))?,
            );
        }
        tokio::task::spawn_blocking(move || docker_save_to_layout(&saved, &out, &ref_name))
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("writing layout `{dir}`: {e}")))
    }
}

fn step_or_start(step: &str) -> &str {
    if step.is_empty() { "the start" } else { step }
}

/// The build context as a tarball, honouring `.dockerignore` (gitignore-style
/// patterns, `!` exceptions). Entries are sorted so the same context gives the
/// same bytes.
fn context_tarball(context: &Path) -> std::io::Result<Vec<u8>> {
    let mut ignore = ignore::gitignore::GitignoreBuilder::new(context);
    let dockerignore = context.join(".dockerignore");
    if dockerignore.is_file()
        && let Some(e) = ignore.add(&dockerignore)
    {
        return Err(std::io::Error::other(format!(".dockerignore: {e}")));
    }
    let ignore = ignore.build().map_err(std::io::Error::other)?;
    let mut files = vec![];
    let walker = ignore::WalkBuilder::new(context)
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        let rel = path.strip_prefix(context).map_err(std::io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        // The Dockerfile and .dockerignore always go, as docker itself does.
        let keep = rel == Path::new("Dockerfile") || rel == Path::new(".dockerignore");
        if !keep && ignore.matched_path_or_any_parents(rel, is_dir).is_ignore() {
            continue;
        }
        files.push((rel.to_path_buf(), path.to_path_buf(), is_dir));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for (rel, path, is_dir) in files {
        if is_dir {
            builder.append_dir(&rel, &path)?;
        } else {
            builder.append_path_with_name(&path, &rel)?;
        }
    }
    builder.into_inner()
}

/// Convert the engine's `docker save` tarball into an OCI image layout at `out`;
/// returns the manifest digest. Handles the classic format (manifest.json,
/// `<id>/layer.tar`, `<config>.json`); an engine that already saves OCI layouts
/// (Docker 25+) has its index and blobs copied as they are.
fn docker_save_to_layout(saved: &[u8], out: &Path, ref_name: &str) -> std::io::Result<String> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(saved);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let name = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            files.insert(name, bytes);
        }
    }
    if out.exists() {
        // Replace a previous layout, never anything else (the workspace itself,
        // sources): the stage named this directory, the host deletes it.
        let empty = std::fs::read_dir(out)?.next().is_none();
        if !empty && !out.join("oci-layout").is_file() {
            return Err(std::io::Error::other(format!(
                "{} exists and is not an OCI image layout; refusing to overwrite it",
                out.display()
            )));
        }
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out.join("blobs/sha256"))?;
    let put = |bytes: &[u8]| -> std::io::Result<String> {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(out.join("blobs/sha256").join(&hex), bytes)?;
        Ok(format!("sha256:{hex}"))
    };
    let manifest: serde_json::Value = match files.get("manifest.json") {
        Some(m) => serde_json::from_slice(m)?,
        None => {
            return Err(std::io::Error::other(
                "the saved image has no manifest.json",
            ));
        }
    };
    let entry = &manifest[0];
    let config_name = entry["Config"]
        .as_str()
        .ok_or_else(|| std::io::Error::other("manifest.json: no Config"))?;
    let config = files
        .get(config_name)
        .ok_or_else(|| std::io::Error::other(format!("missing {config_name}")))?;
    let config_digest = put(config)?;
    let mut layers = vec![];
    for layer in entry["Layers"].as_array().into_iter().flatten() {
        let name = layer.as_str().unwrap_or_default();
        let bytes = files
            .get(name)
            .ok_or_else(|| std::io::Error::other(format!("missing layer {name}")))?;
        // Already-OCI savers name layers by digest and may compress them.
        let media_type = if bytes.starts_with(&[0x1f, 0x8b]) {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        let digest = put(bytes)?;
        layers.push(
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}),
        );
    }
    let oci_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&oci_manifest)?;
    let digest = put(&manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(digest)
}

impl wit::Host for StageState {
    async fn build(&mut self, req: BuildRequest) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.engine.build(req).await)
    }
    async fn export_layout(
        &mut self,
        image: String,
        dir: String,
        r: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.engine.export_layout(image, dir, r).await)
    }
    async fn pull(&mut self, _reference: String) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self
            .engine
            .check("pull")
            .and(Err(HostError::Unavailable(not_yet("pull")))))
    }
    async fn start(
        &mut self,
        _req: ContainerRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self
            .engine
            .check("start")
            .and(Err(HostError::Unavailable(not_yet("start")))))
    }
    async fn remove(&mut self, _container: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self
            .engine
            .check("remove")
            .and(Err(HostError::Unavailable(not_yet("remove")))))
    }
}

fn not_yet(what: &str) -> String {
    format!(
        "the container engine capability ({what}) is not implemented in gantry {}",
        env!("CARGO_PKG_VERSION")
    )
}
