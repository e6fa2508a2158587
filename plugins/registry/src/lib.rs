//! Built-in stage `registry`: push an OCI image layout (the `build` stage's
//! artifact) to an OCI registry with the distribution protocol over wasi:http,
//! or, as the local provider, into another OCI layout directory.
//!
//! Push order makes a failed push harmless: every blob first (skipping those the
//! registry already has, so a restarted push resumes), then the manifest under
//! each tag. No tag ever points at an image with missing blobs.

mod http;

use base64::Engine as _;
use gantry_sdk::http::shown_url;
use gantry_sdk::prefix;
use gantry_sdk::{Artifact, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// Secret holding an Azure AD access token, exchanged at the registry's
    /// `/oauth2/exchange` for a refresh token (ACR).
    #[serde(default)]
    aad_token_secret: Option<String>,
    /// The Azure AD tenant of that token, sent with the exchange.
    #[serde(default)]
    tenant: Option<String>,
    /// Secret holding a registry refresh token, used at the token service with
    /// `grant_type=refresh_token` (e.g. an ACR refresh token).
    #[serde(default)]
    refresh_token_secret: Option<String>,
    /// How many blobs are uploaded at the same time.
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

fn default_concurrency() -> usize {
    4
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
    "mount-from": {"type": "string", "description": "repository on the same registry to mount blobs from"},
    "aad-token-secret": {"type": "string", "description": "secret holding an Azure AD access token, exchanged for an ACR refresh token"},
    "tenant": {"type": "string", "description": "Azure AD tenant of the aad-token-secret token"},
    "refresh-token-secret": {"type": "string", "description": "secret holding a registry refresh token"},
    "concurrency": {"type": "integer", "minimum": 1, "maximum": 16, "description": "blobs uploaded at the same time (default 4)"}
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
/// Blobs are pushed concurrently on one thread (wstd's reactor), so the
/// mutable parts are cells.
struct Registry {
    base: String,
    registry: String,
    repository: String,
    credentials: Credentials,
    /// Authorization header value per scope, and when it expires.
    auth: RefCell<HashMap<String, (String, Option<Instant>)>>,
    /// A refresh token, given or obtained by the AAD exchange.
    refresh_token: RefCell<Option<String>>,
    retries: u32,
    requests: Cell<u64>,
    chunk_size: u64,
    mount_from: Option<String>,
}

/// What the registry's challenges are answered with; only from granted secrets.
enum Credentials {
    Anonymous,
    /// Username and password: basic auth, or the token service with basic auth.
    Basic(String, String),
    /// An Azure AD access token to exchange for an ACR refresh token.
    Aad {
        token: String,
        tenant: Option<String>,
    },
    /// A refresh token for the token service.
    Refresh,
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

/// A status and what the registry said, for a message:
/// `503 Service Unavailable (empty body)`, `400 Bad Request: MANIFEST_INVALID: ...`.
fn answer(status: u16, detail: &str) -> String {
    let status = gantry_sdk::http::status_text(status);
    match detail.trim() {
        "" => format!("{status} (empty body)"),
        detail => format!("{status}: {detail}"),
    }
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
    /// Everything a push needs, as one token scope: pull and push on the
    /// repository, and pull on `mount-from`'s.
    fn push_scope(&self) -> String {
        let own = format!("repository:{}:pull,push", self.repository);
        match &self.mount_from {
            Some(from) => format!("{own} repository:{from}:pull"),
            None => own,
        }
    }

    /// One request with auth (answering a 401 challenge once) and retries of
    /// 429, 5xx and connection errors with exponential backoff, honouring
    /// Retry-After.
    async fn request(
        &self,
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
            if let Some(a) = self.authorization(scope) {
                headers.push(("authorization", a));
            }
            self.requests.set(self.requests.get() + 1);
            let result = http::send(verb, url, &headers, body).await;
            let retry_after = match &result {
                Err(http::Error::Denied(m)) => return Err(StageError::Denied(m.clone())),
                Err(http::Error::Invalid(m)) => return Err(StageError::InvalidConfig(m.clone())),
                Err(http::Error::Transport(m)) => Some((format!("{verb} {m}"), None)),
                Ok(r) if r.status == 401 && !answered_challenge => {
                    answered_challenge = true;
                    let header = r.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&header, scope).await?;
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
                        "{} rejected the credentials (401 for {verb} {}{detail})",
                        self.registry,
                        shown_url(url)
                    )));
                }
                Ok(r) if r.status == 429 || r.status >= 500 => Some((
                    format!(
                        "{verb} {}: {}",
                        shown_url(url),
                        answer(r.status, &registry_error(&r.body))
                    ),
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
                    wstd::task::sleep(delay.into()).await;
                }
            }
        }
    }

    /// The cached Authorization value for `scope`, unless it expired (then the
    /// registry's 401 gets a fresh one).
    fn authorization(&self, scope: &str) -> Option<String> {
        let auth = self.auth.borrow();
        let (value, expires) = auth.get(scope)?;
        match expires {
            Some(at) if Instant::now() >= *at => None,
            _ => Some(value.clone()),
        }
    }

    fn basic(&self) -> Option<String> {
        match &self.credentials {
            Credentials::Basic(u, p) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
            _ => None,
        }
    }

    /// Answer a `WWW-Authenticate` challenge: basic credentials, or a token from
    /// the realm the registry names (with basic credentials, a refresh token, or
    /// a refresh token from the ACR AAD exchange).
    async fn authenticate(&self, header: &str, scope: &str) -> Result<(), StageError> {
        let (scheme, params) = challenge(header);
        match scheme.as_str() {
            "basic" => {
                let basic = self.basic().ok_or_else(|| {
                    StageError::Failed(format!(
                        "{} requires a username and password: set `username-secret` and `password-secret`",
                        self.registry
                    ))
                })?;
                self.auth
                    .borrow_mut()
                    .insert(scope.to_string(), (basic, None));
                Ok(())
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    failed(format!("{}: bearer challenge without realm", self.registry))
                })?;
                let service = params.get("service").cloned().unwrap_or_default();
                if let Credentials::Aad { token, tenant } = &self.credentials
                    && self.refresh_token.borrow().is_none()
                {
                    let refresh = self.exchange(realm, &service, token, tenant).await?;
                    *self.refresh_token.borrow_mut() = Some(refresh);
                }
                // Ask for everything this push needs (the challenge to a HEAD
                // names only `pull`), one `scope` parameter per repository, so
                // that one token serves every request.
                let scopes = scope.split(' ').filter(|s| !s.is_empty());
                let refresh = self.refresh_token.borrow().clone();
                let response = match refresh {
                    // OAuth2 form post (the distribution spec's token endpoint,
                    // and ACR's `/oauth2/token`).
                    Some(refresh) => {
                        let mut form = vec![
                            ("grant_type", "refresh_token"),
                            ("service", service.as_str()),
                        ];
                        form.extend(scopes.map(|s| ("scope", s)));
                        form.push(("refresh_token", refresh.as_str()));
                        self.token_request("POST", realm, &[], &encode_form(&form))
                            .await?
                    }
                    None => {
                        let mut url = realm.clone();
                        let mut sep = if url.contains('?') { '&' } else { '?' };
                        let pairs = std::iter::once(("service", service.as_str()))
                            .chain(scopes.map(|s| ("scope", s)))
                            .filter(|(_, v)| !v.is_empty());
                        for (key, value) in pairs {
                            url.push_str(&format!("{sep}{key}={}", percent(value)));
                            sep = '&';
                        }
                        let headers: Vec<(&str, String)> = self
                            .basic()
                            .into_iter()
                            .map(|b| ("authorization", b))
                            .collect();
                        self.token_request("GET", &url, &headers, "").await?
                    }
                };
                let token = response["token"]
                    .as_str()
                    .or(response["access_token"].as_str())
                    .ok_or_else(|| failed(format!("token service {realm} returned no token")))?;
                // Renew a little early; the spec's default lifetime is 60 s.
                let lifetime = response["expires_in"].as_u64().unwrap_or(60).max(10);
                let expires = Instant::now() + Duration::from_secs(lifetime - 5);
                self.auth.borrow_mut().insert(
                    scope.to_string(),
                    (format!("Bearer {token}"), Some(expires)),
                );
                Ok(())
            }
            _ => Err(failed(format!(
                "{} answered 401 without a usable challenge (`{header}`)",
                self.registry
            ))),
        }
    }

    /// ACR's AAD exchange: an Azure AD access token for a registry refresh
    /// token, at `/oauth2/exchange` next to the token realm.
    async fn exchange(
        &self,
        realm: &str,
        service: &str,
        aad_token: &str,
        tenant: &Option<String>,
    ) -> Result<String, StageError> {
        let url = match realm.strip_suffix("/oauth2/token") {
            Some(base) => format!("{base}/oauth2/exchange"),
            None => format!("{}/oauth2/exchange", self.base),
        };
        let mut form = vec![("grant_type", "access_token"), ("service", service)];
        if let Some(t) = tenant {
            form.push(("tenant", t.as_str()));
        }
        form.push(("access_token", aad_token));
        let v = self
            .token_request("POST", &url, &[], &encode_form(&form))
            .await?;
        v["refresh_token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| {
                failed(format!(
                    "the AAD exchange at {url} returned no refresh_token"
                ))
            })
    }

    /// One request to a token service; its JSON answer.
    async fn token_request(
        &self,
        verb: &str,
        url: &str,
        headers: &[(&str, String)],
        form: &str,
    ) -> Result<serde_json::Value, StageError> {
        let mut headers = headers.to_vec();
        if verb == "POST" {
            headers.push((
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ));
        }
        self.requests.set(self.requests.get() + 1);
        // Never print the URL's query or the form: they may carry tokens.
        let shown = url.split('?').next().unwrap_or(url);
        let r = http::send(verb, url, &headers, form.as_bytes())
            .await
            .map_err(|e| match e {
                http::Error::Denied(_) => StageError::Denied(format!(
                    "token service: the host denied the request to {shown}"
                )),
                other => StageError::Transient(format!("token service {shown}: {other}")),
            })?;
        if r.status != 200 {
            return Err(failed(format!(
                "token service {shown} answered {}",
                answer(r.status, &registry_error(&r.body))
            )));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| failed(format!("token service {shown}: not JSON: {e}")))
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
    async fn push_blob(&self, image: &Image, digest: &str) -> Result<Sent, StageError> {
        let scope = self.push_scope();
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let head = self.request("HEAD", &url, &[], &[], &scope).await?;
        if head.status == 200 {
            return Ok(Sent::Existed);
        }
        let mut start_url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        if let Some(from) = &self.mount_from {
            start_url.push_str(&format!("?mount={digest}&from={}", percent(from)));
        }
        let start = self.request("POST", &start_url, &[], &[], &scope).await?;
        if start.status == 201 {
            return Ok(Sent::Mounted);
        }
        if start.status != 202 {
            return Err(failed(format!(
                "starting the upload: {}",
                answer(start.status, &registry_error(&start.body))
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
                let r = self
                    .request(
                        "PATCH",
                        &location,
                        &[
                            ("content-type", "application/octet-stream".into()),
                            ("content-range", format!("{offset}-{end}")),
                        ],
                        chunk,
                        &scope,
                    )
                    .await?;
                if r.status != 202 {
                    return Err(failed(format!(
                        "uploading bytes {offset}-{end}: {}",
                        answer(r.status, &registry_error(&r.body))
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
        let put = self
            .request(
                "PUT",
                &format!("{location}{sep}digest={digest}"),
                &[("content-type", "application/octet-stream".into())],
                body,
                &scope,
            )
            .await?;
        if put.status != 201 {
            return Err(failed(format!(
                "finishing the upload: {}",
                answer(put.status, &registry_error(&put.body))
            )));
        }
        Ok(Sent::Uploaded)
    }

    /// Whether the repository holds the image's manifest (by digest).
    async fn has_manifest(&self, image: &Image) -> Result<bool, StageError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, image.digest
        );
        let scope = self.push_scope();
        let r = self
            .request(
                "HEAD",
                &url,
                &[("accept", image.media_type.clone())],
                &[],
                &scope,
            )
            .await
            .map_err(|e| prefix(e, "checking for the manifest"))?;
        Ok(r.status == 200)
    }

    async fn push_manifest(&self, image: &Image, reference: &str) -> Result<(), StageError> {
        let scope = self.push_scope();
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let r = self
            .request(
                "PUT",
                &url,
                &[("content-type", image.media_type.clone())],
                &image.manifest,
                &scope,
            )
            .await?;
        if r.status != 201 {
            return Err(failed(format!(
                "pushing the manifest as `{reference}`: {}",
                answer(r.status, &registry_error(&r.body))
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

/// `application/x-www-form-urlencoded`, keys in the given order.
fn encode_form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect::<Vec<_>>()
        .join("&")
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

/// Where credentials come from: granted secrets only, one way at a time.
fn credentials(cfg: &Config) -> Result<Credentials, StageError> {
    let basic = (secret(&cfg.username_secret)?, secret(&cfg.password_secret)?);
    let aad = secret(&cfg.aad_token_secret)?;
    let ways = [
        basic.0.is_some() || basic.1.is_some(),
        aad.is_some(),
        cfg.refresh_token_secret.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        return Err(StageError::InvalidConfig(
            "use one of `username-secret`/`password-secret`, `aad-token-secret` or `refresh-token-secret`".into(),
        ));
    }
    if cfg.tenant.is_some() && aad.is_none() {
        return Err(StageError::InvalidConfig(
            "`tenant` goes with `aad-token-secret`".into(),
        ));
    }
    Ok(match (basic, aad) {
        ((Some(u), Some(p)), _) => Credentials::Basic(u, p),
        ((Some(_), None) | (None, Some(_)), _) => {
            return Err(StageError::InvalidConfig(
                "set both `username-secret` and `password-secret`, or neither".into(),
            ));
        }
        (_, Some(token)) => Credentials::Aad {
            token,
            tenant: cfg.tenant.clone(),
        },
        _ if cfg.refresh_token_secret.is_some() => Credentials::Refresh,
        _ => Credentials::Anonymous,
    })
}

/// Push every blob (up to `concurrency` at once), then the manifest under each
/// tag. Returns (blobs uploaded, blobs mounted, bytes uploaded).
async fn push(
    reg: &Registry,
    image: &Image,
    tags: &[String],
    concurrency: usize,
) -> Result<(u64, u64, u64), StageError> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let total = image.blobs.len() as u64;
    let done = Cell::new(0u64);
    let (mut uploaded, mut mounted, mut bytes) = (0u64, 0u64, 0u64);
    let one = |(digest, size): &(String, u64)| {
        let done = &done;
        let (digest, size) = (digest.clone(), *size);
        async move {
            let sent = reg
                .push_blob(image, &digest)
                .await
                .map_err(|e| prefix(e, &format!("blob {digest}")))?;
            done.set(done.get() + 1);
            gantry_sdk::log::progress(done.get(), Some(total), &format!("blob {digest}"));
            Ok::<_, StageError>((sent, size))
        }
    };
    // A manifest the repository already has by digest has all its blobs there
    // too (the registry checked them when it was pushed): only the tags remain.
    // That makes an unchanged re-push one HEAD plus a PUT per tag.
    if reg.has_manifest(image).await? {
        for tag in tags {
            reg.push_manifest(image, tag).await?;
        }
        return Ok((0, 0, 0));
    }
    let mut blobs = image.blobs.iter();
    // The first blob alone: its challenge fetches the token every other
    // request then reuses, instead of each concurrent upload fetching one.
    let first: Vec<_> = blobs.next().into_iter().collect();
    let mut results = vec![];
    for blob in first {
        results.push(one(blob).await?);
    }
    let rest: Vec<_> = futures_util::stream::iter(blobs.map(one))
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    results.extend(rest);
    for (sent, size) in results {
        match sent {
            Sent::Uploaded => {
                uploaded += 1;
                bytes += size;
            }
            Sent::Mounted => mounted += 1,
            Sent::Existed => {}
        }
    }
    for tag in tags {
        reg.push_manifest(image, tag).await?;
    }
    Ok((uploaded, mounted, bytes))
}

struct Push;

impl Guest for Push {
    fn describe() -> StageInfo {
        StageInfo {
            name: "registry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Pushes an OCI image layout to an OCI registry (anonymous, basic, token, refresh-token or ACR AAD-exchange auth; existing blobs skipped; concurrent uploads; retries) or into a local OCI layout.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                gantry_sdk::Capability { kind: CapabilityKind::Http, target: None, reason: "the registry's origin, and its token service".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Secret, target: None, reason: "`username-secret` + `password-secret`, `refresh-token-secret` or `aad-token-secret`, when the registry needs credentials".into() },
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
        let credentials = credentials(&cfg)?;
        let reg = Registry {
            base: format!(
                "{}://{registry}",
                if cfg.insecure { "http" } else { "https" }
            ),
            registry: registry.clone(),
            repository: repository.clone(),
            credentials,
            auth: RefCell::new(HashMap::new()),
            refresh_token: RefCell::new(secret(&cfg.refresh_token_secret)?),
            retries: cfg.retries,
            requests: Cell::new(0),
            chunk_size: cfg.chunk_size,
            mount_from: cfg.mount_from.clone(),
        };
        let (uploaded, mounted, bytes) =
            wstd::runtime::block_on(push(&reg, &image, &tags, cfg.concurrency.max(1)))?;
        let total = image.blobs.len() as u64;
        let pinned = format!("{registry}/{repository}@{}", image.digest);
        gantry_sdk::telemetry::metric("registry.bytes-uploaded", bytes as f64, &[]);
        gantry_sdk::info(format!(
            "pushed {pinned}: {uploaded} of {total} blob(s) uploaded ({bytes} bytes), {mounted} mounted, {} skipped, {} request(s)",
            total - uploaded - mounted,
            reg.requests.get()
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

    #[test]
    fn answers_and_urls_read_as_words() {
        assert_eq!(answer(503, ""), "503 Service Unavailable (empty body)");
        assert_eq!(
            answer(400, "MANIFEST_INVALID: bad"),
            "400 Bad Request: MANIFEST_INVALID: bad"
        );
        assert_eq!(answer(599, " "), "599 (empty body)");
        assert_eq!(
            shown_url("http://r:5000/v2/a/blobs/uploads/u1?_state=c2VjcmV0&digest=sha256:1"),
            "http://r:5000/v2/a/blobs/uploads/u1"
        );
    }
}
