//! The daemonless image builder: one reproducible layer on `scratch` or on a
//! base image, written as an OCI image layout.
//!
//! Reproducible means: entries sorted by path, parents listed before children,
//! fixed uid/gid and modes as configured, every mtime (and the image's
//! `created`) from SOURCE_DATE_EPOCH, gzip without name or timestamp, and JSON
//! documents serialized with sorted keys. Building twice from the same inputs
//! gives the same manifest digest.

use crate::{Built, Image};
use flate2::{Compression, GzBuilder};
use gantry_sdk::StageError;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, OciLayoutBuilder, Os, RootFsBuilder,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A file or directory of the workspace to put in the image.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path in the workspace.
    pub from: String,
    /// Absolute path in the image.
    pub to: String,
    /// Octal mode, e.g. `0755`; default: 0755 for executables and
    /// directories, 0644 for other files.
    #[serde(default)]
    pub mode: Option<String>,
}

fn failed(what: impl std::fmt::Display) -> StageError {
    StageError::Failed(what.to_string())
}

fn invalid(what: impl std::fmt::Display) -> StageError {
    StageError::InvalidConfig(what.to_string())
}

/// `sha256:<hex>` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// JSON with sorted keys, so the same document always has the same bytes.
fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StageError> {
    let value = serde_json::to_value(v).map_err(failed)?;
    serde_json::to_vec(&value).map_err(failed)
}

/// RFC 3339 UTC for a Unix time (civil-from-days, Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One entry of the layer: a directory or a file with its bytes.
struct Entry {
    path: String,
    mode: u32,
    data: Option<Vec<u8>>,
}

/// Collect the entries for `files`, with every parent directory, sorted.
fn entries(files: &[FileSpec]) -> Result<Vec<Entry>, StageError> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    fn add_parents(out: &mut BTreeMap<String, Entry>, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            out.entry(format!("{prefix}/")).or_insert(Entry {
                path: format!("{prefix}/"),
                mode: 0o755,
                data: None,
            });
        }
    }
    fn walk(
        out: &mut BTreeMap<String, Entry>,
        from: &Path,
        to: &str,
        mode: Option<u32>,
    ) -> Result<(), StageError> {
        let meta = std::fs::metadata(from)
            .map_err(|e| failed(format!("build output `{}`: {e}", from.display())))?;
        if meta.is_dir() {
            add_parents(out, &format!("{to}/x"));
            let mut children: Vec<PathBuf> = std::fs::read_dir(from)
                .map_err(|e| failed(format!("`{}`: {e}", from.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            children.sort();
            for child in children {
                let name = child
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                walk(out, &child, &format!("{to}/{name}"), mode)?;
            }
            return Ok(());
        }
        let data = std::fs::read(from)
            .map_err(|e| failed(format!("build output `{}`: {e}", from.display())))?;
        // No permission bits cross wasi:filesystem; an ELF header marks an executable.
        let default = if data.starts_with(b"\x7fELF") || data.starts_with(b"#!") {
            0o755
        } else {
            0o644
        };
        add_parents(out, to);
        out.insert(
            to.to_string(),
            Entry {
                path: to.to_string(),
                mode: mode.unwrap_or(default),
                data: Some(data),
            },
        );
        Ok(())
    }
    for f in files {
        let to = f.to.trim_start_matches('/').trim_end_matches('/');
        if !f.to.starts_with('/') || to.is_empty() || to.split('/').any(|p| p == ".." || p == ".") {
            return Err(invalid(format!(
                "image.files: `to: {}` must be an absolute path in the image, without `..`",
                f.to
            )));
        }
        let mode = match &f.mode {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .map_err(|_| invalid(format!("image.files: mode `{m}` is not octal")))?,
            ),
            None => None,
        };
        walk(&mut out, Path::new(&f.from), to, mode)?;
    }
    Ok(out.into_values().collect())
}

/// The layer tarball (uncompressed) for `entries`.
fn tarball(entries: &[Entry], uid: u64, gid: u64, mtime: u64) -> Result<Vec<u8>, StageError> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        header.set_mode(e.mode);
        match &e.data {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &e.path, std::io::empty())
                    .map_err(failed)?;
            }
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, &e.path, data.as_slice())
                    .map_err(failed)?;
            }
        }
    }
    builder.into_inner().map_err(failed)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, StageError> {
    use std::io::Write;
    // No file name and mtime 0 in the gzip header: the bytes depend only on the input.
    // Level 1: several times faster than the default in wasm, a few percent
    // larger; fixed, so the bytes stay reproducible.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::fast());
    gz.write_all(bytes).map_err(failed)?;
    gz.finish().map_err(failed)
}

/// A layout being written: blobs by digest.
struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    fn put(&self, bytes: &[u8]) -> Result<String, StageError> {
        let digest = digest_of(bytes);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes)
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        Ok(digest)
    }

    fn get(dir: &Path, digest: &str) -> Result<Vec<u8>, StageError> {
        let path = dir.join("blobs").join(digest.replacen(':', "/", 1));
        std::fs::read(&path).map_err(|e| failed(format!("base image blob {}: {e}", path.display())))
    }
}

fn descriptor(media_type: MediaType, digest: &str, size: usize) -> Result<Descriptor, StageError> {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(Digest::from_str(digest).map_err(failed)?)
        .size(size as u64)
        .build()
        .map_err(failed)
}

/// The base image's manifest and config, read from an OCI layout.
fn read_base(dir: &Path) -> Result<(ImageManifest, ImageConfiguration), StageError> {
    let index_path = dir.join("index.json");
    let index: ImageIndex = serde_json::from_slice(
        &std::fs::read(&index_path)
            .map_err(|e| failed(format!("base image {}: {e}", index_path.display())))?,
    )
    .map_err(|e| failed(format!("base image {}: {e}", index_path.display())))?;
    let first = index
        .manifests()
        .first()
        .ok_or_else(|| failed(format!("base image {}: no manifest", index_path.display())))?;
    let manifest: ImageManifest =
        serde_json::from_slice(&Blobs::get(dir, first.digest().as_ref())?).map_err(failed)?;
    let config: ImageConfiguration =
        serde_json::from_slice(&Blobs::get(dir, manifest.config().digest().as_ref())?)
            .map_err(failed)?;
    Ok((manifest, config))
}

/// Build the image and write the layout to `image.output`.
pub fn build(image: &Image) -> Result<Built, StageError> {
    let epoch = image
        .source_date_epoch
        .or_else(|| {
            std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    if image.files.is_empty() {
        return Err(invalid(
            "image.files is empty: name the build outputs to put in the image",
        ));
    }
    let entries = entries(&image.files)?;
    let tar = tarball(&entries, image.uid, image.gid, epoch)?;
    let diff_id = digest_of(&tar);
    let layer = gzip(&tar)?;

    let out = PathBuf::from(&image.output);
    prepare_output(&out)?;
    let blobs = Blobs { dir: out.clone() };

    let base = match image.base.as_deref() {
        None | Some("scratch") => None,
        Some(dir) => Some((PathBuf::from(dir), read_base(Path::new(dir))?)),
    };
    let mut layers = vec![];
    let mut diff_ids = vec![];
    let mut history = vec![];
    let mut config = ConfigBuilder::default().build().map_err(failed)?;
    if let Some((dir, (manifest, base_config))) = &base {
        for l in manifest.layers() {
            let bytes = Blobs::get(dir, l.digest().as_ref())?;
            blobs.put(&bytes)?;
            layers.push(l.clone());
        }
        diff_ids.extend(base_config.rootfs().diff_ids().iter().cloned());
        history.extend(base_config.history().clone().unwrap_or_default());
        if let Some(c) = base_config.config() {
            config = c.clone();
        }
    }
    let layer_digest = blobs.put(&layer)?;
    layers.push(descriptor(
        MediaType::ImageLayerGzip,
        &layer_digest,
        layer.len(),
    )?);
    diff_ids.push(diff_id);
    let created = rfc3339(epoch);
    history.push(
        HistoryBuilder::default()
            .created(created.clone())
            .created_by(format!(
                "gantry build (daemonless): {}",
                image
                    .files
                    .iter()
                    .map(|f| f.to.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .build()
            .map_err(failed)?,
    );

    if !image.entrypoint.is_empty() {
        config.set_entrypoint(Some(image.entrypoint.clone()));
    }
    if !image.cmd.is_empty() {
        config.set_cmd(Some(image.cmd.clone()));
    }
    let mut env: Vec<String> = config.env().clone().unwrap_or_default();
    env.extend(image.env.iter().map(|(k, v)| format!("{k}={v}")));
    if !env.is_empty() {
        config.set_env(Some(env));
    }
    if !image.ports.is_empty() {
        let mut ports = config.exposed_ports().clone().unwrap_or_default();
        ports.extend(image.ports.iter().map(|p| {
            if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            }
        }));
        ports.sort();
        ports.dedup();
        config.set_exposed_ports(Some(ports));
    }
    if let Some(w) = &image.workdir {
        config.set_working_dir(Some(w.clone()));
    }
    if let Some(u) = &image.user {
        config.set_user(Some(u.clone()));
    }
    let mut labels: HashMap<String, String> = config.labels().clone().unwrap_or_default();
    labels.extend(image.labels.clone());
    // An empty value (`${{ run.commit }}` outside a git repository) says
    // nothing: leave the label out rather than write "".
    let given = |v: &Option<String>| v.as_ref().filter(|v| !v.trim().is_empty()).cloned();
    if let Some(s) = given(&image.source) {
        labels.insert("org.opencontainers.image.source".into(), s);
    }
    if let Some(r) = given(&image.revision) {
        labels.insert("org.opencontainers.image.revision".into(), r);
    }
    if !labels.is_empty() {
        config.set_labels(Some(labels));
    }

    let image_config = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(image.architecture.as_str()))
        .os(Os::from(image.os.as_str()))
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .map_err(failed)?,
        )
        .history(history)
        .build()
        .map_err(failed)?;
    let config_bytes = canonical_json(&image_config)?;
    let config_digest = blobs.put(&config_bytes)?;
    let size =
        (config_bytes.len() + layers.iter().map(|l| l.size() as usize).sum::<usize>()) as u64;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_bytes.len(),
        )?)
        .layers(layers)
        .build()
        .map_err(failed)?;
    let manifest_bytes = canonical_json(&manifest)?;
    let manifest_digest = blobs.put(&manifest_bytes)?;

    let mut annotations = HashMap::new();
    annotations.insert(
        "org.opencontainers.image.ref.name".to_string(),
        image.reference.clone(),
    );
    let mut entry = descriptor(
        MediaType::ImageManifest,
        &manifest_digest,
        manifest_bytes.len(),
    )?;
    entry.set_annotations(Some(annotations));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![entry])
        .build()
        .map_err(failed)?;
    write(&out.join("index.json"), &canonical_json(&index)?)?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(failed)?;
    write(&out.join("oci-layout"), &canonical_json(&layout)?)?;
    gantry_sdk::info(format!(
        "image {} {manifest_digest}: {} file(s), layer {} bytes",
        image.reference,
        entries.iter().filter(|e| e.data.is_some()).count(),
        layer.len()
    ));
    Ok(Built {
        digest: manifest_digest,
        size,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    std::fs::write(path, bytes).map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

/// Start from an empty layout directory. An existing directory is replaced only
/// if it is an OCI layout (a previous build), never anything else.
fn prepare_output(out: &Path) -> Result<(), StageError> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !out.join("oci-layout").is_file() {
            return Err(invalid(format!(
                "image.output `{}` exists and is not an OCI image layout; refusing to overwrite it",
                out.display()
            )));
        }
        std::fs::remove_dir_all(out)
            .map_err(|e| failed(format!("cannot clear {}: {e}", out.display())))?;
    }
    std::fs::create_dir_all(out.join("blobs/sha256")).map_err(|e| {
        failed(format!(
            "cannot create {} (is `permissions.workspace: write` granted?): {e}",
            out.display()
        ))
    })
}

/// Total size of a layout's blobs (for the Dockerfile backend's output).
pub fn blobs_size(dir: &str) -> u64 {
    std::fs::read_dir(Path::new(dir).join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
