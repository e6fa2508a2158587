//! The CLI's side of the API: `gantry runs|logs|approve|reject|promote
//! --server URL` ask a running `gantry serve` instead of the local state
//! directory. The token comes from `$GANTRY_TOKEN` (never a flag: flags end up
//! in shell history and process lists).

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

/// The environment variable holding the API token.
pub const TOKEN_ENV: &str = "GANTRY_TOKEN";

pub struct ApiClient {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for the service at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("--server `{base}`: {e}"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "--server `{base}`: give the service's URL, e.g. http://127.0.0.1:8700"
        );
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| anyhow::anyhow!("cannot load the system's root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Ok(Self {
            http: HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https),
            base: base.trim_end_matches('/').to_string(),
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&b)?)
            }
            None => Bytes::new(),
        };
        let resp = self
            .http
            .request(req.body(Full::new(body))?)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{method} {url}: {e} (is `gantry serve` running there?)")
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        let hint = if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            format!(" (set ${TOKEN_ENV} to an API token of the service)")
        } else {
            String::new()
        };
        anyhow::bail!("{method} {url}: the service answered {status}: {message}{hint}")
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// Read a Server-Sent Events stream, calling `event(name, data)` for each
    /// event (`message` when unnamed) until the server ends it.
    pub async fn events(
        &self,
        path: &str,
        mut event: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let resp = self.send(Method::GET, path, None).await?;
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut name = "message".to_string();
                let mut lines = vec![];
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        lines.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if !lines.is_empty() {
                    event(&name, &lines.join("\n"));
                }
            }
        }
        Ok(())
    }
}
