//! A small OCI distribution client: what pulling and pushing one plugin needs
//! (manifests, blobs, monolithic uploads), the registry's `401` challenge
//! answered anonymously, with Basic credentials or through its token service
//! (`WWW-Authenticate: Bearer realm=...`), and transient failures (connection
//! errors, 429, 5xx) retried a bounded number of times, honouring `Retry-After`.
//!
//! Written on hyper-util's client (which kube already builds) instead of a full
//! OCI crate so that every status, header and retry is ours to report in words.

use super::OciError;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retries after the first attempt, for connection errors, 429 and 5xx.
const RETRIES: u32 = 3;
/// A `Retry-After` longer than this ends the attempts instead of stalling a run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Per request: connecting, sending, and reading the whole response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Redirects followed for a blob (registries hand blobs to a storage service).
const MAX_REDIRECTS: usize = 5;

/// Credentials and where they came from. The values are never printed; only
/// `origin` and the user name are.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// E.g. "secrets `reg-user`/`reg-pass`" or "$REG_USER/$REG_PASS".
    pub origin: String,
}

/// Called with a line each time a request is retried.
pub type RetryNote = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    registry: String,
    base: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value that last worked, reused until a 401.
    authorization: Mutex<Option<String>>,
    note: RetryNote,
}

/// A response: status, headers and the whole body.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// A client for `registry` (`host[:port]`), over plain HTTP when
    /// `insecure` (the caller allows that for loopback registries only).
    pub fn new(
        registry: &str,
        insecure: bool,
        credentials: Option<Credentials>,
        note: RetryNote,
    ) -> Result<Self, OciError> {
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| OciError::Tls(format!("cannot load the system's root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let scheme = if insecure { "http" } else { "https" };
        Ok(Self {
            http,
            registry: registry.to_string(),
            base: format!("{scheme}://{registry}"),
            credentials,
            authorization: Mutex::new(None),
            note,
        })
    }

    /// What was tried at a 401, for the error: never a secret value.
    fn tried(&self) -> String {
        match &self.credentials {
            Some(c) => format!("the user name and password from {}", c.origin),
            None => "no credentials (anonymous)".to_string(),
        }
    }

    /// The manifest `reference` (tag or digest) of `repo`, with its content type.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Response, OciError> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let accept = [
            super::artifact::OCI_MANIFEST,
            super::artifact::OCI_INDEX,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
        .join(", ");
        let r = self.get_accepting(&url, accept, repo).await?;
        match r.status {
            StatusCode::OK => Ok(r),
            StatusCode::NOT_FOUND => Err(OciError::NotFound {
                what: "manifest",
                reference: format!("{}/{repo}:{reference}", self.registry)
                    .replace(":sha256:", "@sha256:"),
                detail: error_text(&r.body),
            }),
            _ => Err(unexpected(&Method::GET, &url, &r)),
        }
    }

    /// The referrers of manifest `digest` (an image index), asked for those
    /// of `artifact_type`; `None` when the registry has no referrers API
    /// (404: the client then reads the referrers tag).
    pub async fn get_referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: &str,
    ) -> Result<Option<Response>, OciError> {
        let url = format!(
            "{}/v2/{repo}/referrers/{digest}?artifactType={}",
            self.base,
            pct_encode(artifact_type)
        );
        let r = self
            .get_accepting(&url, super::artifact::OCI_INDEX.to_string(), repo)
            .await?;
        match r.status {
            StatusCode::OK => Ok(Some(r)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(unexpected(&Method::GET, &url, &r)),
        }
    }

    /// A GET of a manifest-sized document (at most 4 MiB) with `Accept: accept`.
    async fn get_accepting(
        &self,
        url: &str,
        accept: String,
        repo: &str,
    ) -> Result<Response, OciError> {
        self.send(
            Method::GET,
            url,
            &[(header::ACCEPT, accept)],
            Bytes::new(),
            repo,
            false,
            4 << 20,
        )
        .await
    }

    /// The blob `digest` of `repo`, at most `max` bytes.
    pub async fn get_blob(&self, repo: &str, digest: &str, max: usize) -> Result<Bytes, OciError> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let r = self
            .send(Method::GET, &url, &[], Bytes::new(), repo, false, max)
            .await?;
        match r.status {
            StatusCode::OK => Ok(r.body),
            StatusCode::NOT_FOUND => Err(OciError::NotFound {
                what: "blob",
                reference: format!("{}/{repo}@{digest}", self.registry),
                detail: error_text(&r.body),
            }),
            _ => Err(unexpected(&Method::GET, &url, &r)),
        }
    }

    /// Upload `bytes` as blob `digest` unless the registry has it.
    pub async fn push_blob(&self, repo: &str, digest: &str, bytes: Bytes) -> Result<(), OciError> {
        let head = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let r = self
            .send(Method::HEAD, &head, &[], Bytes::new(), repo, true, 0)
            .await?;
        if r.status == StatusCode::OK {
            return Ok(());
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let r = self
            .send(Method::POST, &start, &[], Bytes::new(), repo, true, 1 << 16)
            .await?;
        if r.status != StatusCode::ACCEPTED {
            return Err(unexpected(&Method::POST, &start, &r));
        }
        let location = r
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                OciError::Protocol(format!("POST {start} answered 202 without a Location"))
            })?;
        // The Location may be relative and may carry a query (the upload state).
        let mut url = resolve_location(&self.base, location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", pct_encode(digest)));
        let r = self
            .send(
                Method::PUT,
                &url,
                &[(header::CONTENT_TYPE, "application/octet-stream".to_string())],
                bytes,
                repo,
                true,
                1 << 16,
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(unexpected(&Method::PUT, &strip_query(&url), &r));
        }
        Ok(())
    }

    /// Store `manifest` (its exact bytes) under `reference` (a tag or digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: Bytes,
        media_type: &str,
    ) -> Result<(), OciError> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let r = self
            .send(
                Method::PUT,
                &url,
                &[(header::CONTENT_TYPE, media_type.to_string())],
                manifest,
                repo,
                true,
                1 << 16,
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(unexpected(&Method::PUT, &url, &r));
        }
        Ok(())
    }

    /// One request with auth, retries and (for GET) redirects. `push` widens
    /// the token scope to `pull,push`; the body is read up to `max` bytes.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        repo: &str,
        push: bool,
        max: usize,
    ) -> Result<Response, OciError> {
        let mut challenged = false;
        let mut url = url.to_string();
        let mut redirects = 0;
        // Authorization is only sent to the registry itself, not to a storage
        // service it redirects to.
        let mut at_registry = true;
        loop {
            let auth = if at_registry {
                self.authorization.lock().unwrap().clone()
            } else {
                None
            };
            let r = self
                .send_retrying(&Attempt {
                    method: &method,
                    url: &url,
                    headers,
                    body: &body,
                    authorization: auth.as_deref(),
                    max,
                })
                .await?;
            if r.status == StatusCode::UNAUTHORIZED && at_registry && !challenged {
                challenged = true;
                let scope = format!(
                    "repository:{repo}:{}",
                    if push { "pull,push" } else { "pull" }
                );
                let value = self.answer_challenge(&r.headers, &scope).await?;
                *self.authorization.lock().unwrap() = Some(value);
                continue;
            }
            if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
                return Err(OciError::Unauthorized {
                    registry: self.registry.clone(),
                    status: r.status.as_u16(),
                    tried: self.tried(),
                    detail: format!("{method} {}: {}", strip_query(&url), error_text(&r.body)),
                });
            }
            if r.status.is_redirection()
                && method == Method::GET
                && redirects < MAX_REDIRECTS
                && let Some(to) = r
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
            {
                let next = resolve_location(&url, to);
                at_registry = at_registry && origin(&next) == origin(&self.base);
                url = next;
                redirects += 1;
                continue;
            }
            return Ok(r);
        }
    }

    /// Send until the answer is not transient, at most `RETRIES` times more.
    async fn send_retrying(&self, request: &Attempt<'_>) -> Result<Response, OciError> {
        let (method, url) = (request.method, request.url);
        let mut attempt = 0;
        loop {
            let result = self.send_once(request).await;
            let (why, wait) = match &result {
                Err(OciError::Connect {
                    reason,
                    retryable: true,
                    ..
                }) => (reason.clone(), None),
                Ok(r) if is_transient(r.status) => (
                    format!(
                        "{} {}",
                        r.status.as_u16(),
                        r.status.canonical_reason().unwrap_or("")
                    ),
                    retry_after(&r.headers),
                ),
                _ => return result,
            };
            let wait = match wait {
                Some(w) if w > MAX_RETRY_AFTER => return result,
                Some(w) => w,
                None => Duration::from_millis(500 << attempt),
            };
            if attempt == RETRIES {
                return match result {
                    Ok(r) => Err(OciError::GaveUp {
                        request: format!("{method} {}", strip_query(url)),
                        attempts: attempt + 1,
                        last: format!("{why}: {}", error_text(&r.body)),
                    }),
                    Err(e) => Err(e),
                };
            }
            attempt += 1;
            (self.note)(&format!(
                "{method} {}: {why}; retry {attempt} of {RETRIES} in {:.1}s",
                strip_query(url),
                wait.as_secs_f64()
            ));
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(&self, request: &Attempt<'_>) -> Result<Response, OciError> {
        let Attempt {
            method,
            url,
            headers,
            body,
            authorization,
            max,
        } = *request;
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        req = req.header(
            header::USER_AGENT,
            concat!("gantry/", env!("CARGO_PKG_VERSION")),
        );
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| OciError::Protocol(format!("{method} {}: {e}", strip_query(url))))?;
        let work = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| connect_error(url, &e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max.max(1 << 16))
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OciError::TooLarge {
                            url: strip_query(url),
                            max,
                        }
                    } else {
                        OciError::Connect {
                            url: strip_query(url),
                            reason: format!("the response was cut off: {e}"),
                            retryable: true,
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(OciError::Connect {
                    url: strip_query(url),
                    reason: format!("no complete answer within {}s", REQUEST_TIMEOUT.as_secs()),
                    retryable: true,
                })
            })
    }

    /// The `Authorization` value that answers a 401's challenge.
    async fn answer_challenge(&self, headers: &HeaderMap, scope: &str) -> Result<String, OciError> {
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.credentials.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password))
            )
        });
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| OciError::Unauthorized {
                registry: self.registry.clone(),
                status: 401,
                tried: self.tried(),
                detail: "the registry asks for a username and password".into(),
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(OciError::Unauthorized {
                registry: self.registry.clone(),
                status: 401,
                tried: self.tried(),
                detail: format!("unsupported challenge `{challenge}`"),
            });
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                OciError::Protocol(format!("a Bearer challenge without realm: `{challenge}`"))
            })?;
        if realm.starts_with("http://") && !super::reference::is_loopback_host(&origin(&realm)[7..])
        {
            return Err(OciError::Protocol(format!(
                "the token service {realm} is plain HTTP; refusing to send credentials to it"
            )));
        }
        let mut query = vec![];
        if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
            query.push(format!("service={}", pct_encode(service)));
        }
        query.push(format!("scope={}", pct_encode(scope)));
        let url = format!(
            "{realm}{}{}",
            if realm.contains('?') { '&' } else { '?' },
            query.join("&")
        );
        let r = self
            .send_retrying(&Attempt {
                method: &Method::GET,
                url: &url,
                headers: &[],
                body: &Bytes::new(),
                authorization: basic.as_deref(),
                max: 1 << 20,
            })
            .await?;
        if !r.status.is_success() {
            return Err(OciError::Unauthorized {
                registry: self.registry.clone(),
                status: r.status.as_u16(),
                tried: self.tried(),
                detail: format!(
                    "the token service {realm} answered {}: {}",
                    r.status,
                    error_text(&r.body)
                ),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .ok_or_else(|| {
                OciError::Protocol(format!("the token service {realm} returned no token"))
            })?;
        Ok(format!("Bearer {token}"))
    }
}

/// One request as sent, and sent again on a retry.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    method: &'a Method,
    url: &'a str,
    headers: &'a [(header::HeaderName, String)],
    body: &'a Bytes,
    authorization: Option<&'a str>,
    /// Read at most this many bytes of the response body.
    max: usize,
}

fn is_transient(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A hyper error in words; refused connections are worth retrying, an
/// unknown host is not.
fn connect_error(url: &str, e: &hyper_util::client::legacy::Error) -> OciError {
    let mut chain = vec![];
    let mut refused = false;
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            refused = true;
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    let (reason, retryable) = if refused {
        (
            "the connection was refused (is the registry running?)".to_string(),
            true,
        )
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        (
            "the registry's host name does not resolve (unknown registry?)".to_string(),
            false,
        )
    } else if url.starts_with("https://")
        && (text.contains("InvalidContentType") || text.contains("corrupt message"))
    {
        (
            "it does not speak TLS: for a plain-HTTP registry on this machine set `insecure: true` (or --insecure)"
                .to_string(),
            false,
        )
    } else {
        // Resets and closed connections are worth another attempt; a
        // certificate the system does not trust is not.
        let retryable = !text.to_ascii_lowercase().contains("certificate");
        (text, retryable)
    };
    OciError::Connect {
        url: strip_query(url),
        reason,
        retryable,
    }
}

fn unexpected(method: &Method, url: &str, r: &Response) -> OciError {
    OciError::Status {
        request: format!("{method} {}", strip_query(url)),
        status: r.status.to_string(),
        detail: error_text(&r.body),
    }
}

/// The registry's `{"errors":[{code,message}]}` as text, else the start of the body.
pub fn error_text(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".into();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(errors) = v["errors"].as_array()
    {
        return errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

/// `Bearer realm="x",service="y"` → ("Bearer", [(realm, x), (service, y)]);
/// quoted values may hold commas.
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = vec![];
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (scheme.to_string(), params)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> String {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    url[..end].to_string()
}

/// A `Location` header against the URL it answered.
fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
        format!("{dir}/{location}")
    }
}

/// A URL without its query: upload states and signed storage URLs stay out
/// of messages.
pub fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_keep_commas_inside_quotes() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://r.io/token",service="r.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            p,
            [
                ("realm".to_string(), "https://r.io/token".to_string()),
                ("service".into(), "r.io".into()),
                ("scope".into(), "repository:a/b:pull,push".into())
            ]
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#).0, "Basic");
    }

    #[test]
    fn locations_and_retry_after() {
        assert_eq!(
            resolve_location(
                "http://h:1/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/x?s=1"
            ),
            "http://h:1/v2/a/blobs/uploads/x?s=1"
        );
        assert_eq!(
            resolve_location("http://h:1/v2/a", "https://s/x"),
            "https://s/x"
        );
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        assert_eq!(
            pct_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            error_text(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
    }
}
