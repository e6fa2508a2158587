//! Delivery of envelopes to the track endpoint with the service's retry rules:
//!
//! - 200: every item accepted.
//! - 206 (and 400 with a per-item answer): `{itemsReceived, itemsAccepted,
//!   errors: [{index, statusCode, message}]}`, indexes into the sent batch.
//!   Items failing with 408, 429, 439, 500 or 503 are sent again (only they);
//!   other failures are dropped, counted and their messages logged.
//! - 408, 429, 439, 500, 502, 503, 504 and connection errors: the whole batch
//!   again, after exponential backoff with jitter or the `Retry-After` the
//!   service asked for (seconds or an HTTP date).
//! - Anything else, or retries used up: an error naming the endpoint, the
//!   status and the start of the body.

use gantry_sdk::StageError;
use std::io::Write;
use std::time::Duration;

/// An HTTP answer, as far as delivery cares.
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Why a request got no answer.
pub enum SendError {
    /// The host refused it: the origin is not granted.
    Denied(String),
    /// Connection refused, reset, timed out: worth retrying.
    Transport(String),
    /// It cannot be made at all.
    Invalid(String),
}

/// What delivery needs from the outside world; wasi:http and the clocks in the
/// component, a script in the tests.
pub trait Io {
    /// POST the gzip-compressed JSON array `body`.
    fn send(&mut self, body: &[u8]) -> Result<Response, SendError>;
    fn sleep(&mut self, delay: Duration);
    /// Seconds since the Unix epoch (for `Retry-After` dates).
    fn now_secs(&mut self) -> u64;
    /// A random number (for jitter).
    fn random(&mut self) -> u64;
    fn warn(&mut self, message: &str);
}

pub struct Policy {
    /// How many times a batch (or its retryable items) is sent again.
    pub max_retries: u32,
    /// The longest wait gantry accepts; a longer `Retry-After` ends delivery.
    pub max_wait: Duration,
}

/// What happened to the items handed to [`deliver`].
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub requests: u32,
    pub accepted: usize,
    /// Item sends beyond the first (items retried after a 206 or a failed request).
    pub resent: usize,
    /// Items the service refused for good, with its message.
    pub rejected: Vec<String>,
}

/// Per-item status codes worth sending again (from a 206).
pub fn retryable_item(status: u16) -> bool {
    matches!(status, 408 | 429 | 439 | 500 | 503)
}

/// Whole-request status codes worth sending again.
pub fn retryable_request(status: u16) -> bool {
    matches!(status, 408 | 429 | 439 | 500 | 502 | 503 | 504)
}

/// The body for `items` (each a serialized envelope): a JSON array, gzipped.
pub fn body(items: &[&[u8]]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut write = || -> std::io::Result<()> {
        gz.write_all(b"[")?;
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                gz.write_all(b",")?;
            }
            gz.write_all(item)?;
        }
        gz.write_all(b"]")
    };
    write().expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// The start of a response body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.replace(['\r', '\n'], " ")
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate).
pub fn retry_after(value: &str, now_secs: u64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    http_date(value).map(|at| Duration::from_secs(at.saturating_sub(now_secs)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as Unix seconds.
pub fn http_date(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok().filter(|y| *y >= 1970)?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    let days = crate::envelope::days_from_civil(year, month, day);
    Some(days as u64 * 86_400 + h * 3600 + m * 60 + s)
}

/// Backoff before retry `attempt` (1-based): 0.5 s, 1 s, 2 s, ... up to 30 s,
/// plus up to 25% jitter.
fn backoff(attempt: u32, random: u64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << (attempt - 1).min(6));
    let base = base.min(Duration::from_secs(30));
    base + base.mul_f64((random % 1000) as f64 / 4000.0)
}

/// One 206 (or per-item 400) answer: the indexes to send again, and the
/// messages of the items refused for good. None when the body is unreadable.
fn per_item(body: &[u8], sent: usize) -> Option<(Vec<usize>, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let mut retry = vec![];
    let mut rejected = vec![];
    for e in errors {
        let index = e.get("index")?.as_u64()? as usize;
        let status = e.get("statusCode")?.as_u64()? as u16;
        let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
        if index >= sent {
            continue;
        }
        if retryable_item(status) {
            if !retry.contains(&index) {
                retry.push(index);
            }
        } else {
            rejected.push(format!("item {index}: {status} {message}"));
        }
    }
    retry.sort_unstable();
    Some((retry, rejected))
}

/// Send `items` (serialized envelopes, at most one batch) to `url` until every
/// one is accepted, refused for good, or the retries are used up.
pub fn deliver(
    items: &[Vec<u8>],
    url: &str,
    io: &mut dyn Io,
    policy: &Policy,
) -> Result<Report, StageError> {
    let mut report = Report::default();
    // Indexes into `items` still to send.
    let mut pending: Vec<usize> = (0..items.len()).collect();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        if report.requests > 0 {
            report.resent += pending.len();
        }
        let batch: Vec<&[u8]> = pending.iter().map(|&i| items[i].as_slice()).collect();
        report.requests += 1;
        let (why, wait) = match io.send(&body(&batch)) {
            Err(SendError::Denied(m)) => {
                let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
                return Err(StageError::Denied(format!(
                    "{m}; grant the ingestion endpoint with this sink's `permissions.http: [\"{origin}\"]`"
                )));
            }
            Err(SendError::Invalid(m)) => return Err(StageError::InvalidConfig(m)),
            Err(SendError::Transport(m)) => (m, None),
            Ok(r) if r.status == 200 => {
                report.accepted += pending.len();
                pending.clear();
                break;
            }
            Ok(r) if r.status == 206 || r.status == 400 => {
                let Some((retry, rejected)) = per_item(&r.body, pending.len()) else {
                    return Err(StageError::Failed(format!(
                        "POST {url}: {} with a body that does not say which items failed: {}",
                        r.status,
                        snippet(&r.body)
                    )));
                };
                report.accepted += pending.len().saturating_sub(retry.len() + rejected.len());
                for m in &rejected {
                    io.warn(&format!("the service refused an envelope: {m}"));
                }
                report.rejected.extend(rejected);
                pending = retry.iter().map(|&i| pending[i]).collect();
                if pending.is_empty() {
                    break;
                }
                (
                    format!(
                        "POST {url}: {} with {} item(s) to send again",
                        r.status,
                        pending.len()
                    ),
                    r.retry_after,
                )
            }
            Ok(r) if retryable_request(r.status) => (
                format!("POST {url}: {} {}", r.status, snippet(&r.body)),
                r.retry_after,
            ),
            Ok(r) => {
                return Err(StageError::Failed(format!(
                    "POST {url}: {} {} ({} envelope(s) not delivered)",
                    r.status,
                    snippet(&r.body),
                    pending.len()
                )));
            }
        };
        if attempt >= policy.max_retries {
            return Err(StageError::Transient(format!(
                "{why}; gave up after {} attempt(s), {} envelope(s) not delivered",
                attempt + 1,
                pending.len()
            )));
        }
        attempt += 1;
        let now = io.now_secs();
        let delay = match wait.as_deref().and_then(|v| retry_after(v, now)) {
            Some(asked) if asked > policy.max_wait => {
                return Err(StageError::Transient(format!(
                    "{why}; the service asked to retry after {} s, longer than the {} s this sink waits; {} envelope(s) not delivered",
                    asked.as_secs(),
                    policy.max_wait.as_secs(),
                    pending.len()
                )));
            }
            // A little jitter on top, never less than asked.
            Some(asked) => asked + Duration::from_millis(io.random() % 100),
            None => backoff(attempt, io.random()),
        };
        io.warn(&format!(
            "{why}; retry {attempt} of {} in {} ms",
            policy.max_retries,
            delay.as_millis()
        ));
        io.sleep(delay);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Answers from a script; records what was sent (decompressed) and waited.
    struct Script {
        answers: Vec<Result<Response, SendError>>,
        sent: Vec<serde_json::Value>,
        slept: Vec<Duration>,
        warnings: Vec<String>,
    }

    impl Script {
        fn new(answers: Vec<Result<Response, SendError>>) -> Self {
            Self {
                answers,
                sent: vec![],
                slept: vec![],
                warnings: vec![],
            }
        }
    }

    impl Io for Script {
        fn send(&mut self, body: &[u8]) -> Result<Response, SendError> {
            let mut text = String::new();
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut text)
                .unwrap();
            self.sent.push(serde_json::from_str(&text).unwrap());
            if self.answers.is_empty() {
                return Ok(ok(200, ""));
            }
            self.answers.remove(0)
        }
        fn sleep(&mut self, delay: Duration) {
            self.slept.push(delay);
        }
        fn now_secs(&mut self) -> u64 {
            784_111_777 // Sun, 06 Nov 1994 08:49:37 GMT
        }
        fn random(&mut self) -> u64 {
            0
        }
        fn warn(&mut self, message: &str) {
            self.warnings.push(message.into());
        }
    }

    fn ok(status: u16, body: &str) -> Response {
        Response {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn items(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect()
    }

    const POLICY: Policy = Policy {
        max_retries: 3,
        max_wait: Duration::from_secs(60),
    };

    fn indexes(v: &serde_json::Value) -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["i"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn all_accepted_in_one_request() {
        let mut io = Script::new(vec![]);
        let r = deliver(&items(3), "http://x/v2.1/track", &mut io, &POLICY).unwrap();
        assert_eq!(r.requests, 1);
        assert_eq!(r.accepted, 3);
        assert_eq!(indexes(&io.sent[0]), [0, 1, 2]);
        assert!(io.slept.is_empty());
    }

    #[test]
    fn partial_success_resends_only_retryable_items() {
        let answer = r#"{"itemsReceived":5,"itemsAccepted":2,"errors":[
            {"index":1,"statusCode":500,"message":"Internal"},
            {"index":3,"statusCode":429,"message":"Throttled"},
            {"index":4,"statusCode":400,"message":"Field 'name' is required"}]}"#;
        let mut io = Script::new(vec![Ok(ok(206, answer))]);
        let r = deliver(&items(5), "http://x/v2.1/track", &mut io, &POLICY).unwrap();
        assert_eq!(indexes(&io.sent[0]), [0, 1, 2, 3, 4]);
        assert_eq!(indexes(&io.sent[1]), [1, 3]);
        assert_eq!(io.sent.len(), 2);
        assert_eq!(r.accepted, 4);
        assert_eq!(r.resent, 2);
        assert_eq!(r.rejected, ["item 4: 400 Field 'name' is required"]);
        assert!(io.warnings[0].contains("Field 'name' is required"));
    }

    #[test]
    fn indexes_of_a_resend_refer_to_the_resent_batch() {
        let first = r#"{"errors":[{"index":0,"statusCode":503,"message":""},{"index":2,"statusCode":503,"message":""}]}"#;
        let second = r#"{"errors":[{"index":1,"statusCode":500,"message":""}]}"#;
        let mut io = Script::new(vec![Ok(ok(206, first)), Ok(ok(206, second))]);
        let r = deliver(&items(3), "u", &mut io, &POLICY).unwrap();
        assert_eq!(indexes(&io.sent[1]), [0, 2]);
        assert_eq!(indexes(&io.sent[2]), [2]);
        assert_eq!(r.accepted, 3);
        assert_eq!(r.resent, 3);
    }

    #[test]
    fn throttling_honours_retry_after_seconds_and_dates() {
        let mut throttled = ok(429, "");
        throttled.retry_after = Some("2".into());
        let mut dated = ok(503, "busy");
        dated.retry_after = Some("Sun, 06 Nov 1994 08:49:40 GMT".into());
        let mut io = Script::new(vec![Ok(throttled), Ok(dated)]);
        let r = deliver(&items(2), "u", &mut io, &POLICY).unwrap();
        assert_eq!(io.sent.len(), 3);
        assert_eq!(r.accepted, 2);
        assert_eq!(r.resent, 4);
        assert_eq!(io.slept, [Duration::from_secs(2), Duration::from_secs(3)]);
    }

    #[test]
    fn backoff_grows_and_retries_end() {
        let answers = (0..4)
            .map(|_| Err(SendError::Transport("connection refused".into())))
            .collect();
        let mut io = Script::new(answers);
        let e = deliver(&items(1), "http://x/v2.1/track", &mut io, &POLICY).unwrap_err();
        assert_eq!(io.sent.len(), 4);
        assert_eq!(
            io.slept,
            [500, 1000, 2000].map(Duration::from_millis).to_vec()
        );
        let StageError::Transient(m) = e else {
            panic!("{e:?}")
        };
        assert!(m.contains("connection refused"), "{m}");
        assert!(m.contains("gave up after 4 attempt(s)"), "{m}");
    }

    #[test]
    fn a_long_retry_after_ends_delivery() {
        let mut throttled = ok(439, "");
        throttled.retry_after = Some("3600".into());
        let mut io = Script::new(vec![Ok(throttled)]);
        let e = deliver(&items(1), "u", &mut io, &POLICY).unwrap_err();
        assert!(matches!(e, StageError::Transient(m) if m.contains("retry after 3600 s")));
    }

    #[test]
    fn other_statuses_fail_with_the_body() {
        let mut io = Script::new(vec![Ok(ok(403, "{\"error\":\"forbidden\"}"))]);
        let e = deliver(&items(2), "http://x/v2.1/track", &mut io, &POLICY).unwrap_err();
        let StageError::Failed(m) = e else {
            panic!("{e:?}")
        };
        assert!(m.contains("POST http://x/v2.1/track: 403"), "{m}");
        assert!(m.contains("forbidden"), "{m}");
        assert_eq!(io.sent.len(), 1);
        let mut io = Script::new(vec![Ok(ok(206, "not json"))]);
        assert!(matches!(
            deliver(&items(2), "u", &mut io, &POLICY),
            Err(StageError::Failed(_))
        ));
    }

    #[test]
    fn all_invalid_is_a_400_with_per_item_errors() {
        let answer = r#"{"itemsReceived":2,"itemsAccepted":0,"errors":[{"index":0,"statusCode":400,"message":"a"},{"index":1,"statusCode":400,"message":"b"}]}"#;
        let mut io = Script::new(vec![Ok(ok(400, answer))]);
        let r = deliver(&items(2), "u", &mut io, &POLICY).unwrap();
        assert_eq!(r.accepted, 0);
        assert_eq!(r.rejected.len(), 2);
    }

    #[test]
    fn denial_names_the_permission() {
        let mut io = Script::new(vec![Err(SendError::Denied("denied".into()))]);
        let e = deliver(
            &items(1),
            "https://dc.example:443/v2.1/track",
            &mut io,
            &POLICY,
        )
        .unwrap_err();
        assert!(
            matches!(&e, StageError::Denied(m) if m.contains("permissions.http: [\"https://dc.example:443\"]")),
            "{e:?}"
        );
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date("garbage"), None);
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:30 GMT", 784_111_777),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(" 5 ", 0), Some(Duration::from_secs(5)));
        assert_eq!(retry_after("1.5", 0), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after("soon", 0), None);
    }
}
