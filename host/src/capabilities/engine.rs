//! The container engine capability (`permissions.engine: true`), through a local
//! Docker engine with bollard. The engine's socket and credentials stay in the
//! host; the stage names only workspace paths and image references.
//!
//! - `build`: the context directory (inside the workspace) is sent as a tarball
//!   that honours its `.dockerignore`; the build log streams to the stage log; a
//!   failing step is reported with the engine's message.
//! - `export-layout`: the image is saved by the engine and written into the
//!   workspace as an OCI image layout (needs `workspace: write` too).
//! - `pull`: the engine pulls the reference (a reference without tag or digest
//!   means `:latest`); layer progress goes to the stage's progress line and
//!   status lines to its log, throttled; returns the image id. Registries on
//!   127.0.0.0/8 are reached over plain HTTP (dockerd treats them as insecure).
//! - `start`: creates and starts a container named `name`, labelled
//!   `gantry.managed=true`, `gantry.stage` and `gantry.run`, with restart policy
//!   `no` and every port published on 127.0.0.1 only (never on all interfaces).
//!   A container with the same name that gantry started (the label) is removed
//!   first, so a deploy can reuse its slot; one that gantry did not start is
//!   left alone and the call is `denied`. With a `health-url` (which must be
//!   `http://` on 127.0.0.1 or localhost, else `denied`), the URL is polled
//!   every 200 ms until it answers 2xx; if it does not within
//!   `health-timeout-ms`, or the container exits, the last 20 lines of the
//!   container's log are collected, the container is removed, and the call
//!   fails saying why.
//! - `remove`: stops (2 s grace) and force-removes a container that gantry
//!   started; one without the `gantry.managed=true` label is `denied`; one that
//!   does not exist is fine (removing is idempotent).
//!
//! The engine's API version is negotiated, so older engines (API 1.41, Docker
//! 20.10) work too.

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
    /// Registries the engine may fetch from for this stage.
    pub registries: super::registries::RegistriesGrant,
    pub subject: Subject,
    /// Canonical workspace path; empty when there is none.
    pub workspace: PathBuf,
    pub workspace_writable: bool,
    pub log: Arc<StageLog>,
    /// The run id for the `gantry.run` label; empty outside a run.
    pub run_id: String,
    /// Set by `gantry plugins test`: answers allowed calls instead of the engine.
    pub effects: Option<Arc<dyn super::effects::Effects>>,
}

/// The label on every container gantry starts; only those may be removed.
pub const MANAGED_LABEL: &str = "gantry.managed";
/// How often a health URL is polled.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// How many lines of a failed container's log are quoted.
const LOG_TAIL: usize = 20;

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

    /// Refuse `reference` unless its registry is granted; `why` says what would
    /// fetch it (`pull`, `FROM` in the Dockerfile).
    fn check_registry(&self, reference: &str, why: &str) -> Result<(), HostError> {
        let registry = super::registries::registry_of(reference);
        if self.registries.allows(&registry) {
            return Ok(());
        }
        let mut granted = self.registries.registries.clone();
        granted.push(registry.clone());
        let list = granted
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Err(HostError::Denied(self.subject.deny(
            "to make the container engine fetch from",
            &format!("registry `{registry}` ({why} `{reference}`)"),
            &format!("registries: [{list}]"),
        )))
    }

    /// The scripted answer to an allowed call, when a harness scripts them
    /// (asked where the engine would be reached, after every check).
    fn scripted<T: serde::de::DeserializeOwned>(&self, line: &str) -> Option<Result<T, HostError>> {
        super::effects::scripted(self.effects.as_ref(), "engine", line)
    }

    async fn docker(&self) -> Result<bollard::Docker, HostError> {
        let unreachable = |e: bollard::errors::Error| {
            HostError::Unavailable(format!("cannot reach the Docker engine: {e}"))
        };
        bollard::Docker::connect_with_local_defaults()
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)
    }

    async fn build(&self, req: BuildRequest) -> Result<String, HostError> {
        self.check("build")?;
        let dockerfile = req
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        // Both paths are checked as text before anything on disk is looked at,
        // so that no answer tells whether a path outside the workspace exists.
        super::workspace::check_relative(&dockerfile)
            .map_err(|e| HostError::Invalid(format!("dockerfile {e}")))?;
        let context = super::workspace::resolve_inside(&self.workspace, &req.context)
            .map_err(HostError::Invalid)?;
        // Not followed if it is a link: the engine reads it from the context's
        // tarball, where a link cannot leave the context.
        let is_file =
            std::fs::symlink_metadata(context.join(&dockerfile)).is_ok_and(|m| m.is_file());
        if !is_file {
            return Err(failed(format!(
                "no Dockerfile at `{}` in the build context `{}`",
                dockerfile, req.context
            )));
        }
        // What the engine would fetch for this build, checked before it starts.
        let text = read_dockerfile(&context, &dockerfile)
            .map_err(|e| failed(format!("Dockerfile `{dockerfile}`: {e}")))?;
        let images = super::registries::dockerfile_images(&text, &req.build_args)
            .map_err(|e| HostError::Invalid(format!("{dockerfile}: {e}")))?;
        for image in &images {
            self.check_registry(image, "the build's image")?;
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
        if let Some(answer) =
            self.scripted(&format!("build {} {}", req.context, req.tags.join(" ")))
        {
            return answer;
        }
        let docker = self.docker().await?;
        let args: HashMap<String, String> = req.build_args.iter().cloned().collect();
        let mut options = bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile(&dockerfile)
            .rm(true)
            .forcerm(true)
            // RUN steps get no network: what they would fetch is beyond any
            // grant. Fetch in a stage granted `http` and COPY the result.
            .networkmode("none")
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
        // Checked here for a clear answer; the writes below walk from the
        // workspace without following links, so a link planted meanwhile is
        // refused too.
        super::workspace::resolve_new_inside(&self.workspace, &dir).map_err(HostError::Invalid)?;
        let rel = super::workspace::check_relative(&dir)
            .map_err(HostError::Invalid)?
            .to_path_buf();
        let workspace = self.workspace.clone();
        if let Some(answer) = self.scripted(&format!("export-layout {image} {dir}")) {
            return answer;
        }
        let docker = self.docker().await?;
        let mut saved = Vec::new();
        let mut stream = docker.export_image(&image);
        while let Some(chunk) = stream.next().await {
            saved.extend_from_slice(
                &chunk.map_err(|e| failed(format!("saving image `{image}`: {e}")))?,
            );
        }
        tokio::task::spawn_blocking(move || {
            docker_save_to_layout(&saved, &workspace, &rel, &ref_name)
        })
        .await
        .map_err(failed)?
        .map_err(|e| failed(format!("writing layout `{dir}`: {e:#}")))
    }
}

/// The Dockerfile's text, read only where it resolves inside the context (the
/// caller checked the name lexically and that it is no link; a linked directory
/// on the way must not make gantry read, and quote, a file outside).
fn read_dockerfile(context: &Path, dockerfile: &str) -> Result<String, String> {
    /// More than any real Dockerfile; a bound on what is read into memory.
    const MAX: u64 = 1 << 20;
    let path = context.join(dockerfile);
    let real = path.canonicalize().map_err(|e| e.to_string())?;
    // `context` was resolved inside the workspace already.
    if !real.starts_with(context) {
        return Err("it leads outside the build context".into());
    }
    let mut text = String::new();
    std::fs::File::open(&real)
        .map_err(|e| e.to_string())?
        .take(MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX {
        return Err(format!("it is larger than {MAX} bytes"));
    }
    Ok(text)
}

/// The engine's own message in an error, without bollard's wrapping.
fn engine_message(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { message, .. } => message.trim().to_string(),
        E::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A Docker container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

/// `reference` with `:latest` added when it names neither a tag nor a digest
/// (the engine would otherwise pull every tag of the repository).
fn with_default_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// Where a health URL points: (host to send, port, path and query). Only
/// `http://` on 127.0.0.1 or localhost is accepted.
fn health_target(url: &str) -> Result<(String, u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}` is not an http:// URL"));
    }
    let host = uri.host().unwrap_or_default();
    if host != "127.0.0.1" && !host.eq_ignore_ascii_case("localhost") {
        return Err(format!("`{url}` is not on 127.0.0.1 or localhost"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("`{url}` carries credentials"));
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok((host.to_string(), uri.port_u16().unwrap_or(80), path))
}

/// One plain HTTP/1.0 GET to 127.0.0.1:`port`; returns the status code, or what
/// went wrong in words.
async fn health_get(
    host: &str,
    port: u16,
    path: &str,
    limit: std::time::Duration,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: gantry\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.contains(&b'\n') && head.len() < 8192 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the response: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err("the connection closed without a response".to_string());
        }
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|c| c.parse::<u16>().ok()),
        ) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
            _ => Err(format!(
                "not an HTTP response: `{}`",
                line.chars().take(80).collect::<String>()
            )),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no response within {} ms", limit.as_millis())),
    }
}

impl EngineState {
    fn refuse(&self, message: String) -> HostError {
        self.subject.denials.record(message.clone());
        HostError::Denied(message)
    }

    async fn pull(&self, reference: String) -> Result<String, HostError> {
        self.check("pull")?;
        if reference.trim().is_empty() || reference.chars().any(char::is_whitespace) {
            return Err(HostError::Invalid(format!(
                "`{reference}` is not an image reference"
            )));
        }
        self.check_registry(&reference, "pulling")?;
        if let Some(answer) = self.scripted(&format!("pull {reference}")) {
            return answer;
        }
        let docker = self.docker().await?;
        let full = with_default_tag(&reference);
        self.log.write(Level::Info, &format!("pulling {full}"));
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some(full.clone()),
            ..Default::default()
        };
        let mut stream = docker.create_image(Some(options), None, None);
        // Per layer: (bytes done, bytes total) while it downloads.
        let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
        let mut last_progress = std::time::Instant::now();
        let mut last_line = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                failed(format!(
                    "pulling `{reference}` failed: {}",
                    engine_message(&e)
                ))
            })?;
            let status = info.status.clone().unwrap_or_default();
            let layer = info.id.clone().unwrap_or_default();
            match info.progress_detail.as_ref() {
                Some(d) if d.total.unwrap_or(0) > 0 && status.starts_with("Downloading") => {
                    layers.insert(
                        layer,
                        (d.current.unwrap_or(0) as u64, d.total.unwrap_or(0) as u64),
                    );
                    if last_progress.elapsed() >= std::time::Duration::from_millis(250) {
                        last_progress = std::time::Instant::now();
                        let (done, total) = layers
                            .values()
                            .fold((0, 0), |(d, t), (ld, lt)| (d + ld, t + lt));
                        self.log.progress(
                            done,
                            Some(total),
                            &format!("pulling {full}: {} layer(s)", layers.len()),
                        );
                    }
                }
                _ if status.starts_with("Downloading")
                    || status.starts_with("Extracting")
                    || status.starts_with("Waiting")
                    || status.starts_with("Verifying") => {}
                _ => {
                    let line = if layer.is_empty() {
                        status
                    } else {
                        format!("{layer}: {status}")
                    };
                    // The engine repeats some lines; say each once in a row.
                    if !line.trim().is_empty() && line != last_line {
                        self.log.write(Level::Info, &line);
                        last_line = line;
                    }
                }
            }
        }
        let image = docker.inspect_image(&full).await.map_err(|e| {
            failed(format!(
                "pulled `{reference}`, but the engine cannot find it: {}",
                engine_message(&e)
            ))
        })?;
        image
            .id
            .ok_or_else(|| failed(format!("the engine reported no id for `{reference}`")))
    }

    async fn start(&self, req: ContainerRequest) -> Result<String, HostError> {
        use bollard::models::{
            ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
        };
        self.check("start")?;
        let name = req.name.clone();
        if !valid_container_name(&name) {
            return Err(HostError::Invalid(format!(
                "`{name}` is not a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            )));
        }
        let health = match &req.health_url {
            Some(url) => Some(health_target(url).map_err(|why| {
                self.refuse(format!(
                    "stage `{}` may health-check containers only over http:// on 127.0.0.1 or localhost: {why}",
                    self.subject.name
                ))
            })?),
            None => None,
        };
        if let Some(answer) = self.scripted(&format!("start {name} {}", req.image)) {
            return answer;
        }
        let docker = self.docker().await?;
        // A container of the same name: replaced if gantry started it.
        match docker.inspect_container(&name, None).await {
            Ok(existing) => {
                if !managed(&existing) {
                    return Err(self.refuse(format!(
                        "stage `{}` may not replace container `{name}`: it exists and gantry did not start it (no `{MANAGED_LABEL}=true` label)",
                        self.subject.name
                    )));
                }
                self.log.write(
                    Level::Info,
                    &format!("removing the previous container `{name}`"),
                );
                self.stop_and_remove(&docker, existing.id.as_deref().unwrap_or(&name), true)
                    .await?;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(failed(format!(
                    "inspecting container `{name}`: {}",
                    engine_message(&e)
                )));
            }
        }
        let mut labels = HashMap::from([
            (MANAGED_LABEL.to_string(), "true".to_string()),
            ("gantry.stage".to_string(), self.subject.name.clone()),
        ]);
        if !self.run_id.is_empty() {
            labels.insert("gantry.run".into(), self.run_id.clone());
        }
        let mut bindings = bollard::models::PortMap::new();
        for (container_port, host_port) in &req.ports {
            bindings
                .entry(format!("{container_port}/tcp"))
                .or_insert_with(|| Some(vec![]))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    // Loopback only: a deploy for development is never published
                    // on every interface.
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.to_string()),
                });
        }
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                failed(format!(
                    "creating container `{name}` from `{}`: {}",
                    req.image,
                    engine_message(&e)
                ))
            })?;
        let id = created.id;
        if let Err(e) = docker.start_container(&id, None).await {
            let _ = self.stop_and_remove(&docker, &id, false).await;
            return Err(failed(format!(
                "starting container `{name}` from `{}`: {}",
                req.image,
                engine_message(&e)
            )));
        }
        self.log.write(
            Level::Info,
            &format!(
                "started container `{name}` ({}) from {}",
                &id[..id.len().min(12)],
                req.image
            ),
        );
        let (Some((host, port, path)), Some(url)) = (health, &req.health_url) else {
            return Ok(id);
        };
        let timeout = std::time::Duration::from_millis(req.health_timeout_ms);
        let started = std::time::Instant::now();
        let deadline = started + timeout;
        let mut last: String;
        let mut exited = None;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let limit = left.clamp(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(2),
            );
            match health_get(&host, port, &path, limit).await {
                Ok(code) if (200..300).contains(&code) => {
                    self.log.write(
                        Level::Info,
                        &format!(
                            "container `{name}` is healthy at {url} (HTTP {code} after {} ms)",
                            started.elapsed().as_millis()
                        ),
                    );
                    return Ok(id);
                }
                Ok(code) => last = format!("HTTP {code}"),
                Err(why) => last = why,
            }
            if let Ok(state) = docker.inspect_container(&id, None).await
                && let Some(state) = state.state
                && state.running == Some(false)
            {
                exited = Some(state.exit_code.unwrap_or(-1));
                break;
            }
            if std::time::Instant::now() + HEALTH_INTERVAL > deadline {
                break;
            }
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
        let logs = self.log_tail(&docker, &id).await;
        let _ = self.stop_and_remove(&docker, &id, false).await;
        let why = match exited {
            Some(code) => format!(
                ": it exited with code {code} after {} ms (last check: {last})",
                started.elapsed().as_millis()
            ),
            None => format!(" within {} ms: {last}", req.health_timeout_ms),
        };
        Err(failed(format!(
            "container `{name}` did not become healthy at {url}{why}; the container was removed\nlast log lines of `{name}`:\n{}",
            if logs.trim().is_empty() {
                "(none)"
            } else {
                logs.trim_end()
            }
        )))
    }

    /// The last lines of a container's stdout and stderr.
    async fn log_tail(&self, docker: &bollard::Docker, id: &str) -> String {
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_TAIL.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = docker.logs(id, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Stop (with `grace`: SIGTERM, then SIGKILL after 2 s) and force-remove
    /// (SIGKILL); a container that is already gone is fine.
    async fn stop_and_remove(
        &self,
        docker: &bollard::Docker,
        id: &str,
        grace: bool,
    ) -> Result<(), HostError> {
        if grace {
            let stop = bollard::query_parameters::StopContainerOptions {
                t: Some(2),
                ..Default::default()
            };
            // Stopping a stopped container answers 304; any real problem shows
            // in the removal that follows.
            let _ = docker.stop_container(id, Some(stop)).await;
        }
        let remove = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(id, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(failed(format!(
                "removing container `{id}`: {}",
                engine_message(&e)
            ))),
        }
    }

    async fn remove(&self, container: String) -> Result<(), HostError> {
        self.check("remove")?;
        if container.trim().is_empty() || container.contains('/') {
            return Err(HostError::Invalid(format!(
                "`{container}` is not a container name or id"
            )));
        }
        if let Some(answer) = self.scripted(&format!("remove {container}")) {
            return answer;
        }
        let docker = self.docker().await?;
        let existing = match docker.inspect_container(&container, None).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => {
                return Err(failed(format!(
                    "inspecting container `{container}`: {}",
                    engine_message(&e)
                )));
            }
        };
        if !managed(&existing) {
            return Err(self.refuse(format!(
                "stage `{}` may not remove container `{container}`: gantry removes only containers it started (label `{MANAGED_LABEL}=true`)",
                self.subject.name
            )));
        }
        self.stop_and_remove(&docker, existing.id.as_deref().unwrap_or(&container), true)
            .await?;
        self.log
            .write(Level::Info, &format!("removed container `{container}`"));
        Ok(())
    }
}

/// True when gantry started the container (it carries the managed label).
fn managed(c: &bollard::models::ContainerInspectResponse) -> bool {
    c.config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(MANAGED_LABEL))
        .is_some_and(|v| v == "true")
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

/// Convert the engine's `docker save` tarball into an OCI image layout at `rel`
/// in `workspace`; returns the manifest digest. Handles the classic format
/// (manifest.json, `<id>/layer.tar`, `<config>.json`); an engine that already
/// saves OCI layouts (Docker 25+) has its index and blobs copied as they are.
/// Every directory and file is reached from the workspace without following
/// links: a stage can plant links in the workspace, the host never writes
/// through them.
fn docker_save_to_layout(
    saved: &[u8],
    workspace: &Path,
    rel: &Path,
    ref_name: &str,
) -> anyhow::Result<String> {
    use crate::nofollow::{Modes, NoFollowDir};
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
    let modes = Modes {
        dir: 0o755,
        file: 0o644,
    };
    // `.` is the workspace itself, which is never replaced by a layout.
    let name = rel.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        anyhow::anyhow!(
            "{} (the workspace) is not an OCI image layout; refusing to overwrite it",
            workspace.display()
        )
    })?;
    let parent = NoFollowDir::open_beneath(
        workspace,
        rel.parent().unwrap_or(Path::new("")),
        true,
        modes,
    )?;
    if let Some(existing) = parent.subdir(name, false)? {
        // Replace a previous layout, never anything else (the workspace itself,
        // sources): the stage named this directory, the host deletes it.
        if !existing.entries()?.is_empty() && existing.read("oci-layout")?.is_none() {
            anyhow::bail!(
                "{} exists and is not an OCI image layout; refusing to overwrite it",
                existing.path().display()
            );
        }
        parent.remove_all(name)?;
    }
    let out = parent.create_subdir(name)?;
    let blobs = out.create_subdir("blobs")?.create_subdir("sha256")?;
    let put = |bytes: &[u8]| -> anyhow::Result<String> {
        let hex = hex::encode(Sha256::digest(bytes));
        // The same blob may come twice (two identical layers).
        if blobs.read(&hex)?.is_none() {
            blobs.write_new(&hex, bytes)?;
        }
        Ok(format!("sha256:{hex}"))
    };
    let manifest: serde_json::Value = match files.get("manifest.json") {
        Some(m) => serde_json::from_slice(m)?,
        None => {
            anyhow::bail!("the saved image has no manifest.json");
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
    out.write_new("index.json", &serde_json::to_vec(&index)?)?;
    out.write_new("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
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
    async fn pull(&mut self, reference: String) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.engine.pull(reference).await)
    }
    async fn start(
        &mut self,
        req: ContainerRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.engine.start(req).await)
    }
    async fn remove(&mut self, container: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.engine.remove(container).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_without_tag_or_digest_mean_latest() {
        assert_eq!(with_default_tag("app"), "app:latest");
        assert_eq!(
            with_default_tag("127.0.0.1:5000/team/app"),
            "127.0.0.1:5000/team/app:latest"
        );
        assert_eq!(
            with_default_tag("127.0.0.1:5000/app:v1"),
            "127.0.0.1:5000/app:v1"
        );
        assert_eq!(with_default_tag("reg/app@sha256:ab"), "reg/app@sha256:ab");
    }

    #[test]
    fn health_urls_stay_on_loopback() {
        assert_eq!(
            health_target("http://127.0.0.1:8080/healthz?x=1"),
            Ok(("127.0.0.1".into(), 8080, "/healthz?x=1".into()))
        );
        assert_eq!(
            health_target("http://localhost:81"),
            Ok(("localhost".into(), 81, "/".into()))
        );
        for url in [
            "https://127.0.0.1:8080/",
            "http://10.0.0.1:8080/",
            "http://127.0.0.1.example.com/",
            "http://user@127.0.0.1/",
            "http://[::1]:8080/",
            "not a url",
        ] {
            assert!(health_target(url).is_err(), "{url}");
        }
    }

    /// A classic `docker save` tarball with one layer.
    fn saved_image() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in [
            (
                "manifest.json",
                &br#"[{"Config":"c.json","Layers":["l/layer.tar"]}]"#[..],
            ),
            ("c.json", &b"{}"[..]),
            ("l/layer.tar", &b"layer"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, bytes).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn image_layouts_are_never_written_through_a_planted_link() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        std::fs::create_dir(ws.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("a/blobs-dir")).unwrap();
        for rel in ["out", "out/layout", "a/blobs-dir/layout"] {
            let err = docker_save_to_layout(&saved_image(), ws.path(), Path::new(rel), "app:1")
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a directory"), "{rel}: {err}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Where nothing was planted it writes the layout, and replaces it.
        for _ in 0..2 {
            let digest =
                docker_save_to_layout(&saved_image(), ws.path(), Path::new("a/layout"), "app:1")
                    .unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            assert!(ws.path().join("a/layout/blobs/sha256").join(hex).is_file());
            assert!(ws.path().join("a/layout/oci-layout").is_file());
        }
    }

    #[test]
    fn container_names_follow_docker_rules() {
        assert!(valid_container_name("app-blue"));
        assert!(valid_container_name("a.b_c-1"));
        for bad in ["", "-app", "a/b", "a b", "../x"] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }
}
