//! What the stand-ins for hosted services ([`crate::boards`],
//! [`crate::github_issues`]) share: an HTTP/1.1 server on its own tokio
//! runtime that hands each request to a synchronous handler, and the record of
//! every request and of every request a stand-in throttled.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One request as a stand-in received it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub status: u16,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, as text (lossy UTF-8).
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

impl Req {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request a stand-in refused because of a rate limit (on cue), and when the
/// client came back.
#[derive(Debug, Clone)]
pub struct Throttled {
    /// Method and path (with query) of the refused request.
    pub request: String,
    pub at: Instant,
    /// The `Retry-After` it was given.
    pub retry_after: Duration,
    /// When the next request (of any kind) arrived, if one did.
    pub next: Option<Instant>,
}

impl Throttled {
    /// How long the client waited before its next request.
    pub fn waited(&self) -> Option<Duration> {
        self.next.map(|n| n.duration_since(self.at))
    }
}

/// A request, decoded for a handler.
pub(crate) struct Incoming {
    pub method: String,
    /// The path alone (no query).
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Decoded query parameters, in order (repeated names kept).
    pub fn params(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The last value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Path segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The media type of the body (`Content-Type` without parameters), lower case.
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
}

/// A handler's answer.
pub(crate) struct Outgoing {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set when this answer throttles the client for this long (recorded as a
    /// [`Throttled`]).
    pub throttled: Option<Duration>,
}

impl Outgoing {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: body.to_string().into_bytes(),
            throttled: None,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.as_bytes().to_vec(),
            throttled: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.into(), value.to_string()));
        self
    }
}

pub(crate) type Handler = dyn Fn(&Incoming) -> Outgoing + Send + Sync;

#[derive(Default)]
struct Log {
    requests: Vec<Req>,
    throttled: Vec<Throttled>,
}

/// A running server; dropping it stops it.
pub(crate) struct Server {
    pub addr: std::net::SocketAddr,
    log: Arc<Mutex<Log>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The state stays usable when a handler panicked while holding the lock (the
/// test that caused it fails anyway; the others should see the real record).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// Serve `listener` (already bound) with `handler`, on a runtime of its own
    /// whose threads are named `name`.
    pub fn start(
        listener: std::net::TcpListener,
        name: &str,
        handler: Arc<Handler>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (log, handler) = (shared.clone(), handler.clone());
                async move { respond(&log, &*handler, method, uri, headers, body) }
            },
        );
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            log,
            runtime: Some(runtime),
        })
    }

    pub fn requests(&self) -> Vec<Req> {
        lock(&self.log).requests.clone()
    }

    pub fn throttled(&self) -> Vec<Throttled> {
        lock(&self.log).throttled.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn respond(
    log: &Mutex<Log>,
    handler: &Handler,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    // The first request after a throttled one is when the client came back.
    for t in lock(log).throttled.iter_mut().filter(|t| t.next.is_none()) {
        t.next = Some(at);
    }
    let incoming = Incoming {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let out = handler(&incoming);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    {
        let mut log = lock(log);
        if let Some(retry_after) = out.throttled {
            log.throttled.push(Throttled {
                request: format!("{} {path}", incoming.method),
                at,
                retry_after,
                next: None,
            });
        }
        log.requests.push(Req {
            method: incoming.method,
            path,
            status: out.status,
            headers: incoming.headers,
            body: String::from_utf8_lossy(&incoming.body).into_owned(),
            at,
        });
    }
    let mut response = Response::builder()
        .status(StatusCode::from_u16(out.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &out.headers {
        response = response.header(k, v);
    }
    response
        .body(Body::from(out.body))
        .unwrap_or_else(|e| panic!("a stand-in built an invalid response header: {e}"))
}

/// Now as RFC 3339 with milliseconds (`2026-12-06T10:41:47.123Z`), as both
/// services write dates.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Seconds since the Unix epoch.
pub(crate) fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
