//! Built-in stage `registry`: push an OCI image layout (the `build` stage's
//! artifact) to an OCI registry with the distribution protocol over wasi:http,
//! or, as the local provider, into another OCI layout directory.
//!
//! Push order makes a failed push harmless: every blob first (skipping those the
//! registry already has, so a restarted push resumes), then the manifest under
//! each tag. No tag ever points at an image with missing blobs.

mod http;

use base64::Engine as _;
use gantry_sdk::{Artifact, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// `registry` (default) or `layout` (copy into a local OCI layout).
    #[serde(default = "registry_provider")]
    provider: String,
    /// The OCI layout to push; default: the `image` artifact of a needed stage.
    #[serde(default)]
    layout: Option<String>,
    /// Registry host[:port], e.g. `myreg.azurecr.io` or `127.0.0.1:5000`.
    #[serde(default)]
    registry: Option<String>,
    /// Repository, e.g. `team/app`.
    #[serde(default)]
    repository: Option<String>,
    /// Tags to point at the pushed manifest.
    #[serde(default)]
    tags: Vec<String>,
    /// Use plain HTTP (local registries only).
    #[serde(default)]
    insecure: bool,
    /// Secret names holding the username and password (or token) for basic
    /// auth and the registry token flow.
    #[serde(default)]
    username_secret: Option<String>,
    #[serde(default)]
    password_secret: Option<String>,
    /// How many times to retry 429, 5xx and connection errors.
    #[serde(default = "default_retries")]
    retries: u32,
    /// For `provider: layout`: the destination layout directory.
    #[serde(default)]
    destination: Option<String>,
    /// Blobs larger than this many bytes are uploaded in chunks of this size.
    #[serde(default = "default_chunk")]
    chunk_size: u64,
    /// A repository on the same registry to mount existing blobs from.
    #[serde(default)]
    mount_from: Option<String>,
}

fn default_chunk() -> u64 {
    8 << 20
}

fn registry_provider() -> String {
    "registry".into()
}
fn default_retries() -> u32 {
    5
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "provider": {"enum": ["registry", "layout"]},
    "layout": {"type": "string", "description": "OCI layout to push (default: the image artifact of a needed stage)"},
    "registry": {"type": "string", "description": "host[:port]"},
    "repository": {"type": "string", "pattern": "^[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*$"},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"}},
    "insecure": {"type": "boolean"},
    "username-secret": {"type": "string"},
    "password-secret": {"type": "string"},
    "retries": {"type": "integer", "minimum": 0, "maximum": 20},
    "destination": {"type": "string", "description": "for provider: layout, the destination layout directory"},
    "chunk-size": {"type": "integer", "minimum": 1024, "description": "blobs above this size are uploaded in PATCH chunks of this size"},
    "mount-from": {"type": "string", "description": "repository on the same registry to mount blobs from"}
  }
}"#;

fn failed(m: impl std::fmt::Display) -> StageError {
    StageError::Failed(m.to_string())
}

/// The image in a layout: manifest bytes and media type, and its blobs.
struct Image {
    dir: PathBuf,
    manifest: Vec<u8>,
    media_type: String,
    digest: String,
    /// (digest, size) of config and layers.
    blobs: Vec<(String, u64)>,
}

fn read_layout(dir: &Path) -> Result<Image, StageError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| failed(format!("image layout {}: {e}", p.display())))
    };
    let index: serde_json::Value = serde_json::from_slice(&read(&dir.join("index.json"))?)
        .map_err(|e| failed(format!("{}/index.json: {e}", dir.display())))?;
    let entry = &index["manifests"][0];
    let digest = entry["digest"]
        .as_str()
        .ok_or_else(|| failed(format!("{}/index.json lists no manifest", dir.display())))?;
    let blob = |d: &str| dir.join("blobs").join(d.replacen(':', "/", 1));
    let manifest = read(&blob(digest))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    if actual != digest {
        return Err(failed(format!(
            "{}: manifest {digest} has digest {actual}: the layout is corrupt",
            dir.display()
        )));
    }
    let m: serde_json::Value = serde_json::from_slice(&manifest).map_err(failed)?;
    let media_type = m["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    let mut blobs = vec![];
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
        let digest = d["digest"]
            .as_str()
            .ok_or_else(|| failed("a descriptor without digest"))?
            .to_string();
        let size = d["size"].as_u64().unwrap_or(0);
        if !blob(&digest).is_file() {
            return Err(failed(format!(
                "{}: blob {digest} is missing",
                dir.display()
            )));
        }
        blobs.push((digest, size));
    }
    Ok(Image {
        dir: dir.to_path_buf(),
        manifest,
        media_type,
        digest: digest.to_string(),
        blobs,
    })
}

impl Image {
    fn blob(&self, digest: &str) -> Result<Vec<u8>, StageError> {
        let path = self.dir.join("blobs").join(digest.replacen(':', "/", 1));
        std::fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))
    }
}

/// A registry session: base URL, credentials, cached tokens, retries.
struct Registry {
    base: String,
    registry: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// Authorization header value per scope, once known.
    auth: HashMap<String, String>,
    retries: u32,
    requests: u64,
    chunk_size: u64,
    mount_from: Option<String>,
}

/// How a blob reached the registry.
#[derive(PartialEq)]
enum Sent {
    Existed,
    Mounted,
    Uploaded,
}

/// `Bearer realm="...",service="...",scope="..."` → its parameters.
fn challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, tail) = if let Some(v) = v.strip_prefix('"') {
            let end = v.find('"').unwrap_or(v.len());
            (&v[..end], &v[(end + 1).min(v.len())..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (&v[..end], &v[end..])
        };
        params.insert(k, value.to_string());
        rest = tail.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The registry's error, `CODE: message`, from an error body.
fn registry_error(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v["errors"].get(0)?.clone();
            Some(format!(
                "{}: {}",
                e["code"].as_str()?,
                e["message"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

impl Registry {
    fn scope(&self, action: &str) -> String {
        format!("repository:{}:{action}", self.repository)
    }

    /// One request with auth (answering a 401 challenge once) and retries of
    /// 429, 5xx and connection errors with exponential backoff, honouring
    /// Retry-After.
    fn request(
        &mut self,
        verb: &str,
        url: &str,
        extra: &[(&str, String)],
        body: &[u8],
        scope: &str,
    ) -> Result<http::Response, StageError> {
        let mut attempt = 0;
        let mut answered_challenge = false;
        loop {
            let mut headers: Vec<(&str, String)> = extra.to_vec();
            if let Some(a) = self.auth.get(scope) {
                headers.push(("authorization", a.clone()));
            }
            self.requests += 1;
            let result = http::send(verb, url, &headers, body);
            let retry_after = match &result {
                Err(http::Error::Denied(m)) => return Err(StageError::Denied(m.clone())),
                Err(http::Error::Invalid(m)) => return Err(StageError::InvalidConfig(m.clone())),
                Err(http::Error::Transport(m)) => Some((m.clone(), None)),
                Ok(r) if r.status == 401 && !answered_challenge => {
                    answered_challenge = true;
                    let header = r.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&header, scope)?;
                    continue;
                }
                Ok(r) if r.status == 401 => {
                    let detail = registry_error(&r.body);
                    let detail = if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    };
                    return Err(StageError::Failed(format!(
                        "{} rejected the credentials (401 for {verb} {url}{detail})",
                        self.registry
                    )));
                }
                Ok(r) if r.status == 429 || r.status >= 500 => Some((
                    format!("{verb} {url}: {} {}", r.status, registry_error(&r.body)),
                    r.header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok()),
                )),
                Ok(_) => None,
            };
            match retry_after {
                None => return result.map_err(|e| failed(e.to_string())),
                Some((why, _)) if attempt >= self.retries => {
                    return Err(StageError::Transient(format!(
                        "{why} (gave up after {} attempts)",
                        attempt + 1
                    )));
                }
                Some((why, after)) => {
                    attempt += 1;
                    let backoff = Duration::from_millis(200 * (1 << attempt.min(6)));
                    let delay = after
                        .map(Duration::from_secs)
                        .unwrap_or(backoff)
                        .min(Duration::from_secs(60));
                    gantry_sdk::warn(format!(
                        "{why}; retry {attempt} of {} in {delay:?}",
                        self.retries
                    ));
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// Answer a `WWW-Authenticate` challenge: basic credentials, or a token from
    /// the realm the registry names.
    fn authenticate(&mut self, header: &str, scope: &str) -> Result<(), StageError> {
        let (scheme, params) = challenge(header);
        let basic = self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        match scheme.as_str() {
            "basic" => {
                let basic = basic.ok_or_else(|| {
                    StageError::Failed(format!(
                        "{} requires credentials: set `username-secret` and `password-secret`",
                        self.registry
                    ))
                })?;
                self.auth.insert(scope.to_string(), basic);
                Ok(())
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    failed(format!("{}: bearer challenge without realm", self.registry))
                })?;
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                // Ask for everything this push needs (the challenge to a HEAD
                // names only `pull`), one `scope` parameter per repository, so
                // that one token serves every request.
                let service = params.get("service").cloned().unwrap_or_default();
                let pairs = std::iter::once(("service", service.as_str()))
                    .chain(scope.split(' ').map(|s| ("scope", s)))
                    .filter(|(_, v)| !v.is_empty());
                for (key, value) in pairs {
                    url.push_str(&format!("{sep}{key}={}", percent(value)));
                    sep = '&';
                }
                let headers: Vec<(&str, String)> =
                    basic.into_iter().map(|b| ("authorization", b)).collect();
                self.requests += 1;
                let r = http::send("GET", &url, &headers, &[]).map_err(|e| match e {
                    http::Error::Denied(m) => StageError::Denied(format!("token service: {m}")),
                    other => StageError::Transient(format!("token service: {other}")),
                })?;
                if r.status != 200 {
                    return Err(failed(format!(
                        "token service {realm} answered {}: {}",
                        r.status,
                        registry_error(&r.body)
                    )));
                }
                let v: serde_json::Value = serde_json::from_slice(&r.body)
                    .map_err(|e| failed(format!("token service: {e}")))?;
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| failed("token service returned no token"))?;
                self.auth
                    .insert(scope.to_string(), format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(failed(format!(
                "{} answered 401 without a usable challenge (`{header}`)",
                self.registry
            ))),
        }
    }

    /// Make a `Location` header absolute.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// Upload one blob unless the registry has it, or mount it from
    /// `mount_from`; small blobs in one PUT, large ones in PATCH chunks.
    fn push_blob(&mut self, image: &Image, digest: &str) -> Result<Sent, StageError> {
        let scope = match &self.mount_from {
            Some(from) => format!("{} repository:{from}:pull", self.scope("pull,push")),
            None => self.scope("pull,push"),
        };
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let head = self.request("HEAD", &url, &[], &[], &scope)?;
        if head.status == 200 {
            return Ok(Sent::Existed);
        }
        let mut start_url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        if let Some(from) = &self.mount_from {
            start_url.push_str(&format!("?mount={digest}&from={}", percent(from)));
        }
        let start = self.request("POST", &start_url, &[], &[], &scope)?;
        if start.status == 201 {
            return Ok(Sent::Mounted);
        }
        if start.status != 202 {
            return Err(failed(format!(
                "starting the upload: {} {}",
                start.status,
                registry_error(&start.body)
            )));
        }
        let mut location = self.absolute(
            start
                .header("location")
                .ok_or_else(|| failed("upload started without a Location"))?,
        );
        let bytes = image.blob(digest)?;
        let mut body: &[u8] = &bytes;
        if bytes.len() as u64 > self.chunk_size {
            let min = start
                .header("oci-chunk-min-length")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let size = self.chunk_size.max(min) as usize;
            let mut offset = 0;
            for chunk in bytes.chunks(size) {
                let end = offset + chunk.len() - 1;
                let r = self.request(
                    "PATCH",
                    &location,
                    &[
                        ("content-type", "application/octet-stream".into()),
                        ("content-range", format!("{offset}-{end}")),
                    ],
                    chunk,
                    &scope,
                )?;
                if r.status != 202 {
                    return Err(failed(format!(
                        "uploading bytes {offset}-{end}: {} {}",
                        r.status,
                        registry_error(&r.body)
                    )));
                }
                location = self.absolute(
                    r.header("location")
                        .ok_or_else(|| failed("chunk accepted without a Location"))?,
                );
                offset = end + 1;
            }
            body = &[];
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &[("content-type", "application/octet-stream".into())],
            body,
            &scope,
        )?;
        if put.status != 201 {
            return Err(failed(format!(
                "finishing the upload: {} {}",
                put.status,
                registry_error(&put.body)
            )));
        }
        Ok(Sent::Uploaded)
    }

    fn push_manifest(&mut self, image: &Image, reference: &str) -> Result<(), StageError> {
        let scope = self.scope("pull,push");
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let r = self.request(
            "PUT",
            &url,
            &[("content-type", image.media_type.clone())],
            &image.manifest,
            &scope,
        )?;
        if r.status != 201 {
            return Err(failed(format!(
                "pushing the manifest as `{reference}`: {} {}",
                r.status,
                registry_error(&r.body)
            )));
        }
        if let Some(d) = r.header("docker-content-digest")
            && d != image.digest
        {
            return Err(failed(format!(
                "the registry stored the manifest as {d}, expected {}",
                image.digest
            )));
        }
        Ok(())
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn secret(name: &Option<String>) -> Result<Option<String>, StageError> {
    name.as_ref()
        .map(|n| gantry_sdk::secrets::get(n).map_err(StageError::from))
        .transpose()
}

/// The local provider: copy the image into another OCI layout, adding the tags
/// as ref names.
fn push_to_layout(image: &Image, dest: &Path, tags: &[String]) -> Result<usize, StageError> {
    std::fs::create_dir_all(dest.join("blobs/sha256")).map_err(|e| {
        failed(format!(
            "cannot create {} (is `permissions.workspace: write` granted?): {e}",
            dest.display()
        ))
    })?;
    let mut copied = 0;
    for (digest, _) in image
        .blobs
        .iter()
        .chain(std::iter::once(&(image.digest.clone(), 0)))
    {
        let to = dest.join("blobs").join(digest.replacen(':', "/", 1));
        if !to.is_file() {
            let bytes = if *digest == image.digest {
                image.manifest.clone()
            } else {
                image.blob(digest)?
            };
            std::fs::write(&to, bytes).map_err(|e| failed(format!("{}: {e}", to.display())))?;
            copied += 1;
        }
    }
    let index_path = dest.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}));
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| failed(format!("{}: no manifests list", index_path.display())))?;
    for tag in tags {
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag.as_str());
        manifests.push(serde_json::json!({
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    let write = |p: PathBuf, b: Vec<u8>| {
        std::fs::write(&p, b).map_err(|e| failed(format!("{}: {e}", p.display())))
    };
    write(index_path, serde_json::to_vec(&index).map_err(failed)?)?;
    write(
        dest.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )?;
    Ok(copied)
}

struct Push;

impl Guest for Push {
    fn describe() -> StageInfo {
        StageInfo {
            name: "registry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Pushes an OCI image layout to an OCI registry (anonymous, basic or token auth; existing blobs skipped; retries) or into a local OCI layout.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                gantry_sdk::Capability { kind: CapabilityKind::Http, target: None, reason: "the registry's origin, and its token service".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Secret, target: None, reason: "`username-secret` and `password-secret`, when the registry needs credentials".into() },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        let layout = match (&cfg.layout, ctx.inputs.iter().find(|a| a.name == "image")) {
            (Some(l), _) => l.clone(),
            (None, Some(a)) => a
                .path
                .clone()
                .ok_or_else(|| failed("the `image` artifact has no path"))?,
            (None, None) => {
                return Err(StageError::InvalidConfig(
                    "no image to push: set `layout`, or `needs` a stage that builds one".into(),
                ));
            }
        };
        let image = read_layout(Path::new(&layout))?;
        let tags = if cfg.tags.is_empty() {
            vec!["latest".to_string()]
        } else {
            cfg.tags.clone()
        };

        if cfg.provider == "layout" {
            let dest = cfg.destination.clone().ok_or_else(|| {
                StageError::InvalidConfig("provider `layout` needs `destination`".into())
            })?;
            let copied = push_to_layout(&image, Path::new(&dest), &tags)?;
            return Ok(Outcome {
                artifacts: vec![],
                outputs: vec![
                    ("digest".into(), image.digest.clone()),
                    ("layout".into(), dest.clone()),
                    ("tags".into(), tags.join(",")),
                ],
                summary: format!(
                    "{} into {dest} ({copied} new blob(s)) as {}",
                    image.digest,
                    tags.join(", ")
                ),
            });
        }
        let registry = cfg
            .registry
            .clone()
            .ok_or_else(|| StageError::InvalidConfig("`registry` is required".into()))?;
        let repository = cfg
            .repository
            .clone()
            .ok_or_else(|| StageError::InvalidConfig("`repository` is required".into()))?;
        let credentials = match (secret(&cfg.username_secret)?, secret(&cfg.password_secret)?) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(StageError::InvalidConfig(
                    "set both `username-secret` and `password-secret`, or neither".into(),
                ));
            }
        };
        let mut reg = Registry {
            base: format!(
                "{}://{registry}",
                if cfg.insecure { "http" } else { "https" }
            ),
            registry: registry.clone(),
            repository: repository.clone(),
            credentials,
            auth: HashMap::new(),
            retries: cfg.retries,
            requests: 0,
            chunk_size: cfg.chunk_size,
            mount_from: cfg.mount_from.clone(),
        };
        let total = image.blobs.len() as u64;
        let (mut uploaded, mut mounted, mut bytes) = (0u64, 0u64, 0u64);
        for (i, (digest, size)) in image.blobs.iter().enumerate() {
            gantry_sdk::log::progress(i as u64, Some(total), &format!("blob {digest}"));
            match reg
                .push_blob(&image, digest)
                .map_err(|e| prefix(e, &format!("blob {digest}")))?
            {
                Sent::Uploaded => {
                    uploaded += 1;
                    bytes += size;
                }
                Sent::Mounted => mounted += 1,
                Sent::Existed => {}
            }
        }
        gantry_sdk::log::progress(total, Some(total), "blobs done");
        for tag in &tags {
            reg.push_manifest(&image, tag)?;
        }
        let pinned = format!("{registry}/{repository}@{}", image.digest);
        gantry_sdk::telemetry::metric("registry.bytes-uploaded", bytes as f64, &[]);
        gantry_sdk::info(format!(
            "pushed {pinned}: {uploaded} of {total} blob(s) uploaded ({bytes} bytes), {mounted} mounted, {} skipped, {} request(s)",
            total - uploaded - mounted,
            reg.requests
        ));
        Ok(Outcome {
            artifacts: vec![Artifact {
                name: "image".into(),
                media_type: image.media_type.clone(),
                path: None,
                reference: Some(pinned.clone()),
                digest: Some(image.digest.clone()),
                annotations: vec![],
            }],
            outputs: vec![
                ("image".into(), pinned.clone()),
                ("digest".into(), image.digest.clone()),
                ("tags".into(), tags.join(",")),
                ("blobs-uploaded".into(), uploaded.to_string()),
                ("blobs-mounted".into(), mounted.to_string()),
            ],
            summary: format!("pushed {pinned} as {}", tags.join(", ")),
        })
    }
}

/// Say which step failed, keeping the error's kind.
fn prefix(e: StageError, what: &str) -> StageError {
    match e {
        StageError::Failed(m) => StageError::Failed(format!("{what}: {m}")),
        StageError::Transient(m) => StageError::Transient(format!("{what}: {m}")),
        StageError::Denied(m) => StageError::Denied(format!("{what}: {m}")),
        StageError::InvalidConfig(m) => StageError::InvalidConfig(format!("{what}: {m}")),
    }
}

gantry_sdk::export_stage!(Push);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn registry_errors_read() {
        assert_eq!(
            registry_error(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#),
            "DENIED: no"
        );
        assert_eq!(registry_error(b"plain"), "plain");
    }
}
