//! One HTTP client for both providers: the credentials in one header, waits
//! where the service says to (`Retry-After` on 429 and on GitHub's secondary
//! limits, `x-ratelimit-reset` when the primary limit is used up), retries of
//! transport errors and 5xx, and nothing else: callers read every other status.

use gantry_sdk::http::{self, Response};
use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Client {
    /// The `Authorization` header value. Never printed.
    authorization: String,
    /// Headers every request carries (Accept, API version, User-Agent).
    headers: Vec<(&'static str, String)>,
    /// Longest single wait the service may ask for before we give up.
    pub max_wait: Duration,
    /// Attempts after the first, for throttling, 5xx and transport errors.
    pub retries: u32,
    /// Unix seconds before which no request is sent (primary limit used up).
    paused_until: Cell<u64>,
    /// Seconds waited in all, for the summary.
    pub waited: Cell<u64>,
}

/// A request that did not get an answer worth reading.
#[derive(Debug)]
pub enum Failure {
    /// Not granted by the manifest.
    Denied(String),
    /// No answer (after the retries), or throttled for longer than allowed.
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Denied(m) | Failure::Unavailable(m) => f.write_str(m),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Client {
    pub fn new(authorization: String, headers: Vec<(&'static str, String)>) -> Self {
        Client {
            authorization,
            headers,
            max_wait: Duration::from_secs(120),
            retries: 5,
            paused_until: Cell::new(0),
            waited: Cell::new(0),
        }
    }

    fn wait(&self, seconds: u64, why: &str) -> Result<(), Failure> {
        if Duration::from_secs(seconds) > self.max_wait {
            return Err(Failure::Unavailable(format!(
                "{why}: the service asks to wait {seconds}s, longer than max-wait ({}s)",
                self.max_wait.as_secs()
            )));
        }
        gantry_sdk::info(format!("{why}: waiting {seconds}s as the service asks"));
        std::thread::sleep(Duration::from_secs(seconds));
        self.waited.set(self.waited.get() + seconds);
        Ok(())
    }

    /// Send `method url` with an optional JSON-ish body of `content_type`.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, Failure> {
        let mut attempt = 0;
        loop {
            let paused = self.paused_until.get().saturating_sub(now_secs());
            if paused > 0 {
                self.wait(paused, "the rate limit is used up until its reset")?;
            }
            let mut headers: Vec<(&str, String)> = self.headers.clone();
            headers.push(("authorization", self.authorization.clone()));
            if let Some((ct, _)) = body {
                headers.push(("content-type", ct.to_string()));
            }
            let bytes = body.map_or(&[][..], |(_, b)| b);
            let shown = http::shown_url(url);
            let response =
                match http::send(method, url, &headers, bytes, Some(Duration::from_secs(30))) {
                    Ok(r) => r,
                    Err(http::Error::Denied(m)) => return Err(Failure::Denied(m)),
                    Err(http::Error::Invalid(m)) => return Err(Failure::Unavailable(m)),
                    Err(http::Error::Transport(m)) => {
                        if attempt >= self.retries {
                            return Err(Failure::Unavailable(format!(
                                "{method} {shown}: {m} (after {} attempts)",
                                attempt + 1
                            )));
                        }
                        attempt += 1;
                        self.wait(1 << attempt.min(5), &format!("{method} {shown}: {m}"))?;
                        continue;
                    }
                };
            let remaining = response
                .header("x-ratelimit-remaining")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let reset = response
                .header("x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<u64>().ok());
            if remaining == Some(0)
                && let Some(reset) = reset
            {
                // Nothing more until the window resets (GitHub's primary limit).
                self.paused_until.set(reset.max(now_secs()));
            }
            let retry_after = response
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let throttled = response.status == 429
                || (response.status == 403 && (retry_after.is_some() || remaining == Some(0)));
            let server_error = response.status >= 500;
            if !(throttled || server_error) {
                return Ok(response);
            }
            if attempt >= self.retries {
                return Ok(response);
            }
            attempt += 1;
            let why = format!(
                "{method} {shown}: HTTP {}{}",
                response.status,
                if throttled { " (throttled)" } else { "" }
            );
            match (retry_after, throttled) {
                (Some(s), _) => self.wait(s, &why)?,
                // Primary limit: the pause set above is waited at the loop's top.
                (None, true) if self.paused_until.get() > now_secs() => {}
                (None, _) => self.wait(1 << attempt.min(5), &why)?,
            }
        }
    }
}

/// HTML-escape a value for a work item's history or a comment.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a refusal says: the `message` of the service's JSON error body
/// (Azure DevOps `TF401320: ...`, GitHub `Not Found`), else the start of
/// the body; with the status.
pub fn error_text(r: &Response) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string));
    match message {
        Some(m) => format!("HTTP {}: {m}", r.status),
        None => {
            let body: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
            format!("HTTP {}: {}", r.status, body.trim())
        }
    }
}

/// Whether a response body is an HTML page (a sign-in page instead of JSON).
pub fn is_html(r: &Response) -> bool {
    r.header("content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("text/html"))
        || r.body.trim_ascii_start().starts_with(b"<")
}
