//! Outgoing HTTP (wasi:http) only to granted origins (`permissions.http`),
//! matched on scheme, host and port. Everything else is refused with
//! `HTTP-request-denied` before any connection is made.

use super::Subject;
use super::effects::{Effects, HttpCall, HttpReply};
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use std::fmt;
use std::sync::Arc;
use wasmtime_wasi_http::WasiHttpHooks;

/// One granted origin: `scheme://host[:port]`; host may be `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    /// Lower-case host, or `*.suffix` for any subdomain of suffix.
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` has no scheme; write e.g. `https://{text}`"))?;
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("scheme `{scheme}` is not http or https")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{text}` must be an origin (scheme://host[:port]), without path or user"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty()
            || host == "*"
            || host[if host.starts_with("*.") { 2 } else { 0 }..].contains('*')
        {
            return Err(format!(
                "`{text}`: host must be a name, an address or `*.domain`"
            ));
        }
        Ok(Self {
            scheme: scheme.into(),
            host,
            port,
        })
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[derive(Debug, Clone, Default)]
pub struct HttpGrant {
    pub origins: Vec<Origin>,
}

impl HttpGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let mut origins = vec![];
        for (i, item) in perms.http.iter().enumerate() {
            match Origin::parse(&item.value) {
                Ok(o) => origins.push(o),
                Err(e) => errors.push(file.error(
                    &item.referenced,
                    &format!("{field}.http[{i}]"),
                    e,
                    Some("write an origin such as `https://myregistry.azurecr.io` or `http://127.0.0.1:5000`".into()),
                )),
            }
        }
        Self { origins }
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.origins.iter().any(|o| o.allows(scheme, host, port))
    }
}

/// The wasi:http hooks of one stage instance: the allow-list check in front of
/// wasmtime-wasi-http's own client.
pub struct HttpPolicy {
    pub grant: Arc<HttpGrant>,
    pub subject: Subject,
    /// Set by `gantry plugins test`: answers (or records) allowed requests.
    pub effects: Option<Arc<dyn Effects>>,
}

type SendResult = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendResult {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.grant.allows(&scheme, &host, port) {
            let origin = format!("{scheme}://{host}:{port}");
            self.subject.deny(
                "to send HTTP requests to",
                &origin,
                &format!("http: [\"{origin}\"]"),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        if let Some(effects) = self.effects.clone() {
            return scripted(effects, request, options);
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Send through `effects`: their answer, or the real response read whole
/// (so that it can be recorded) and handed on.
fn scripted(
    effects: Arc<dyn Effects>,
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> SendResult {
    use http_body_util::BodyExt;
    let call = HttpCall {
        method: request.method().as_str().to_ascii_uppercase(),
        url: request.uri().to_string(),
    };
    Box::new(async move {
        let reply = match effects.http(&call) {
            Some(answer) => answer,
            None => {
                let real = async {
                    let (res, io) =
                        wasmtime_wasi_http::default_send_request(request, options).await?;
                    // The connection is driven beside the body being read.
                    tokio::spawn(io);
                    let (parts, body) = res.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, wasmtime_wasi_http::Error>(HttpReply {
                        status: parts.status.as_u16(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: body.to_vec(),
                    })
                };
                let reply = real.await.map_err(|e| e.to_string());
                effects.saw_http(&call, &reply);
                reply
            }
        };
        let reply = reply.map_err(|why| failure_named(&why))?;
        let mut response = http::Response::builder().status(reply.status);
        for (k, v) in &reply.headers {
            response = response.header(k, v);
        }
        let body = http_body_util::Full::new(bytes::Bytes::from(reply.body))
            .map_err(|never| match never {})
            .boxed_unsync();
        let response = response.body(body).map_err(|e| {
            wasmtime_wasi_http::Error::InternalError(Some(format!("scripted response: {e}")))
        })?;
        Ok((
            response,
            Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
        ))
    })
}

/// The failure a request without a response had, from its text (as written
/// in a case or recorded from [`wasmtime_wasi_http::Error`]'s message), so that
/// a replayed failure reaches the plugin with the error code the real one had.
fn failure_named(why: &str) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error as E;
    if why.starts_with("connection error: ") {
        return E::Connect(std::io::Error::other(why.to_string()));
    }
    if why.starts_with("TLS error: ") {
        return E::Tls(std::io::Error::other(why.to_string()));
    }
    [
        E::DnsTimeout,
        E::DestinationNotFound,
        E::DestinationUnavailable,
        E::ConnectionRefused,
        E::ConnectionTerminated,
        E::ConnectionTimeout,
        E::ConnectionReadTimeout,
        E::ConnectionWriteTimeout,
        E::ConnectionLimitReached,
        E::TlsProtocolError,
        E::TlsCertificateError,
        E::HttpResponseIncomplete,
        E::HttpResponseTimeout,
        E::HttpProtocolError,
    ]
    .into_iter()
    .find(|e| e.to_string() == why)
    .unwrap_or_else(|| E::InternalError(Some(why.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_scheme_host_and_port() {
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert!(o.allows("http", "127.0.0.1", 8080));
        assert!(!o.allows("http", "127.0.0.1", 8081));
        assert!(!o.allows("https", "127.0.0.1", 8080));
        assert!(!o.allows("http", "localhost", 8080));
        let w = Origin::parse("https://*.azurecr.io").unwrap();
        assert_eq!(w.port, 443);
        assert!(w.allows("https", "Myreg.AzureCR.io", 443));
        assert!(!w.allows("https", "azurecr.io", 443));
        assert!(!w.allows("https", "evilazurecr.io", 443));
    }

    #[test]
    fn failures_are_told_apart_by_their_text() {
        use wasmtime_wasi_http::Error as E;
        assert!(matches!(
            failure_named("connection refused"),
            E::ConnectionRefused
        ));
        assert!(matches!(
            failure_named("connection error: Connection refused (os error 111)"),
            E::Connect(_)
        ));
        assert!(matches!(
            failure_named("no scripted response for `GET x`"),
            E::InternalError(Some(m)) if m.starts_with("no scripted")
        ));
    }

    #[test]
    fn bad_origins_are_explained() {
        assert!(
            Origin::parse("example.com")
                .unwrap_err()
                .contains("no scheme")
        );
        assert!(
            Origin::parse("ftp://x")
                .unwrap_err()
                .contains("not http or https")
        );
        assert!(
            Origin::parse("https://x/path")
                .unwrap_err()
                .contains("origin")
        );
        assert!(
            Origin::parse("https://x:99999")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            Origin::parse("https://*")
                .unwrap_err()
                .contains("host must be")
        );
    }
}
