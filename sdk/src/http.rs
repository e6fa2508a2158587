//! A small blocking HTTP client over wasi:http/outgoing-handler (feature
//! `http`): one request at a time, the whole response read, an optional
//! timeout. The host refuses origins the manifest does not grant; that comes
//! back as [`Error::Denied`].

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

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

/// The wasi:http method for a verb.
pub fn method(m: &str) -> Method {
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

/// A wasi:http error code as an [`Error`]: a refused origin is `Denied`.
pub fn code(e: &ErrorCode, url: &str) -> Error {
    let url = shown_url(url);
    match e {
        ErrorCode::HttpRequestDenied => {
            Error::Denied(format!("the host denied the request to {url}"))
        }
        other => Error::Transport(format!("{url}: {}", in_words(other))),
    }
}

/// A URL as printed in messages: without its query or fragment, which may be
/// long (upload state) or carry credentials (signatures, tokens).
pub fn shown_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// What a wasi:http error code means, for people.
pub fn in_words(e: &ErrorCode) -> String {
    match e {
        ErrorCode::DnsTimeout => "the DNS lookup timed out".into(),
        ErrorCode::DnsError(d) => format!(
            "the DNS lookup failed{}",
            d.rcode.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        ErrorCode::DestinationNotFound => "the host name was not found".into(),
        ErrorCode::DestinationUnavailable => "the destination is unavailable".into(),
        ErrorCode::DestinationIpProhibited => "the destination address is prohibited".into(),
        ErrorCode::DestinationIpUnroutable => "the destination address is unroutable".into(),
        ErrorCode::ConnectionRefused => "the connection was refused".into(),
        ErrorCode::ConnectionTerminated => "the server closed the connection".into(),
        ErrorCode::ConnectionTimeout => "connecting timed out".into(),
        ErrorCode::ConnectionReadTimeout => "reading the response timed out".into(),
        ErrorCode::ConnectionWriteTimeout => "sending the request timed out".into(),
        ErrorCode::ConnectionLimitReached => "too many open connections".into(),
        ErrorCode::TlsProtocolError => "the TLS handshake failed".into(),
        ErrorCode::TlsCertificateError => "the server's TLS certificate was not accepted".into(),
        ErrorCode::TlsAlertReceived(a) => format!(
            "the server sent a TLS alert{}",
            a.alert_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        ),
        ErrorCode::HttpResponseIncomplete | ErrorCode::HttpProtocolError => {
            "the connection closed before a complete response (the server dropped it or broke the HTTP protocol)".into()
        }
        ErrorCode::HttpResponseTimeout => "no response in time".into(),
        ErrorCode::HttpRequestDenied => "the host denied the request".into(),
        ErrorCode::InternalError(Some(m)) => format!("internal error: {m}"),
        other => format!("{other:?}"),
    }
}

/// An HTTP status with its reason phrase, e.g. `503 Service Unavailable`.
pub fn status_text(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return status.to_string(),
    };
    format!("{status} {reason}")
}

fn write_body(out: &OutgoingBody, body: &[u8], url: &str) -> Result<(), Error> {
    let shown = shown_url(url);
    if body.is_empty() {
        return Ok(());
    }
    let stream = out
        .write()
        .map_err(|()| Error::Invalid(format!("body stream of {shown}")))?;
    let mut rest = body;
    while !rest.is_empty() {
        stream.subscribe().block();
        let permit = stream
            .check_write()
            .map_err(|e| Error::Transport(format!("{shown}: writing the body: {e:?}")))?;
        let n = (permit as usize).min(rest.len());
        if n == 0 {
            continue;
        }
        stream
            .write(&rest[..n])
            .map_err(|e| Error::Transport(format!("{shown}: writing the body: {e:?}")))?;
        rest = &rest[n..];
    }
    stream
        .blocking_flush()
        .map_err(|e| Error::Transport(format!("{shown}: flushing the body: {e:?}")))
}

/// The request for `verb url` with `headers` (and a content-length for a body
/// of `body_len` bytes, or for a method that carries one), and its body.
pub fn request(
    verb: &str,
    url: &str,
    headers: &[(&str, String)],
    body_len: usize,
) -> Result<(OutgoingRequest, OutgoingBody), Error> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|e| Error::Invalid(format!("header {k}: {e:?}")))?;
    }
    if body_len > 0 || verb == "PUT" || verb == "POST" || verb == "PATCH" {
        let _ = fields.append("content-length", body_len.to_string().as_bytes());
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
    Ok((req, out_body))
}

/// Send one request and read the whole response; `timeout` bounds connecting,
/// the first response byte and each pause between body bytes.
pub fn send(
    verb: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Option<std::time::Duration>,
) -> Result<Response, Error> {
    let shown = shown_url(url);
    let (req, out_body) = request(verb, url, headers, body.len())?;
    let options = timeout.map(|t| {
        let options = RequestOptions::new();
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        // A host that does not support a timeout refuses to set it; go without.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        options
    });
    let future = outgoing_handler::handle(req, options).map_err(|e| code(&e, url))?;
    // A refused request (not granted, connection refused) shows up as a closed
    // body stream first; the response future then says why, so it takes precedence.
    let written = write_body(&out_body, body, url);
    let finished = OutgoingBody::finish(out_body, None).map_err(|e| code(&e, url));
    future.subscribe().block();
    let response = future
        .get()
        .ok_or_else(|| Error::Transport(format!("{shown}: no response")))?
        .map_err(|()| Error::Transport(format!("{shown}: response taken twice")))?
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
            .map_err(|()| Error::Transport(format!("{shown}: no body")))?;
        let stream = incoming
            .stream()
            .map_err(|()| Error::Transport(format!("{shown}: no body stream")))?;
        loop {
            match stream.blocking_read(1 << 20) {
                Ok(chunk) => bytes.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "{shown}: reading the response: {e:?}"
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
