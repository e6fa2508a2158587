//! A small async HTTP client over wasi:http/outgoing-handler, on wstd's
//! reactor so that several requests (blob uploads) can be in flight at once:
//! what the OCI distribution protocol needs (methods, headers, a body, the
//! whole response).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncPollable};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum Error {
    /// The host refused the request: the origin is not granted.
    Denied(String),
    /// Connection refused, reset, timed out...: worth retrying.
    Transport(String),
    /// A request that cannot be made (bad URL).
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied(m) | Error::Transport(m) | Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

/// Split `http://host:port/path?q` into scheme, authority and path-with-query.
pub fn split_url(url: &str) -> Result<(Scheme, String, String), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Invalid(format!("`{url}` is not an absolute URL")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(Error::Invalid(format!("scheme `{other}` in `{url}`"))),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority.to_string(), path.to_string()))
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    }
}

fn code(e: &ErrorCode, url: &str) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => {
            Error::Denied(format!("the host denied the request to {url}"))
        }
        other => Error::Transport(format!("{url}: {other:?}")),
    }
}

async fn write_body(out: &OutgoingBody, body: &[u8], url: &str) -> Result<(), Error> {
    if body.is_empty() {
        return Ok(());
    }
    let stream = AsyncOutputStream::new(
        out.write()
            .map_err(|()| Error::Invalid(format!("body stream of {url}")))?,
    );
    stream
        .write_all(body)
        .await
        .map_err(|e| Error::Transport(format!("{url}: writing the body: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| Error::Transport(format!("{url}: flushing the body: {e}")))
}

/// Send one request and read the whole response.
pub async fn send(
    verb: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|e| Error::Invalid(format!("header {k}: {e:?}")))?;
    }
    if !body.is_empty() || verb == "PUT" || verb == "POST" || verb == "PATCH" {
        let _ = fields.append("content-length", body.len().to_string().as_bytes());
    }
    let req = OutgoingRequest::new(fields);
    let bad = |what: &str| Error::Invalid(format!("{what} of {url}"));
    req.set_method(&method(verb)).map_err(|()| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(&authority))
        .map_err(|()| bad("authority"))?;
    req.set_path_with_query(Some(&path))
        .map_err(|()| bad("path"))?;
    let out_body = req.body().map_err(|()| bad("body"))?;
    let future = outgoing_handler::handle(req, None).map_err(|e| code(&e, url))?;
    // A refused request (not granted, connection refused) shows up as a closed
    // body stream first; the response future then says why, so it takes precedence.
    let written = write_body(&out_body, body, url).await;
    let finished = OutgoingBody::finish(out_body, None).map_err(|e| code(&e, url));
    AsyncPollable::new(future.subscribe()).wait_for().await;
    let response = future
        .get()
        .ok_or_else(|| Error::Transport(format!("{url}: no response")))?
        .map_err(|()| Error::Transport(format!("{url}: response taken twice")))?
        .map_err(|e| code(&e, url))?;
    // The server answered: its status says more than a body it stopped reading.
    let _ = (written, finished);
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut bytes = vec![];
    if verb != "HEAD" {
        let incoming = response
            .consume()
            .map_err(|()| Error::Transport(format!("{url}: no body")))?;
        let stream = AsyncInputStream::new(
            incoming
                .stream()
                .map_err(|()| Error::Transport(format!("{url}: no body stream")))?,
        );
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "{url}: reading the response: {e}"
                    )));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}
