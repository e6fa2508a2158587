//! A strict stand-in for the Application Insights ingestion endpoint on
//! 127.0.0.1: it checks every request (path, headers, gzip, a JSON array) and
//! every envelope against the documented schema, answers like the service (200;
//! 206 or 400 with per-item errors for invalid envelopes), and can be scripted
//! to throttle, fail or partially fail requests.

use flate2::read::GzDecoder;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How the endpoint answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Like the service: 200 when every envelope is valid, else 206 (400 when
    /// none is) with a 400 error per invalid envelope.
    Validate,
    /// 206: the envelopes at these indexes fail with these status codes; the
    /// others are checked as with [`Reply::Validate`].
    Partial(Vec<(usize, u16)>),
    /// This status for the whole request (nothing accepted), with a
    /// `Retry-After` header when given.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    pub fn throttle(status: u16, retry_after: &str) -> Self {
        Reply::Status {
            status,
            retry_after: Some(retry_after.into()),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The envelopes of the body, when it was a gzipped JSON array.
    pub envelopes: Vec<Value>,
    /// The status answered.
    pub status: u16,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request or envelope the endpoint refused as invalid.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Which request (0-based).
    pub request: usize,
    /// Which envelope of it; none when the whole request was invalid.
    pub index: Option<usize>,
    pub message: String,
    pub envelope: Option<Value>,
}

#[derive(Default)]
struct State {
    script: Vec<Reply>,
    requests: Vec<Request>,
    accepted: Vec<Value>,
    rejected: Vec<Rejection>,
}

/// The endpoint. Runs until the test process ends.
pub struct Ingestion {
    pub port: u16,
    pub instrumentation_key: String,
    state: Arc<Mutex<State>>,
}

impl Ingestion {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0", &random_uuid()).unwrap()
    }

    /// On `addr`, accepting instrumentation key `instrumentation_key` (the
    /// `ingestion` binary: a local endpoint for development).
    pub fn start_on(addr: &str, instrumentation_key: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let instrumentation_key = instrumentation_key.to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (shared, ikey) = (state.clone(), instrumentation_key.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (state, ikey) = (shared.clone(), ikey.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &state, &ikey);
                });
            }
        });
        Ok(Self {
            port,
            instrumentation_key,
            state,
        })
    }

    /// `http://127.0.0.1:<port>`, the origin to grant.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `InstrumentationKey=<uuid>;IngestionEndpoint=<url>/`.
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey={};IngestionEndpoint={}/",
            self.instrumentation_key,
            self.url()
        )
    }

    /// Answer the next requests like this, in order; after the script,
    /// [`Reply::Validate`].
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Every envelope accepted, in order of arrival.
    pub fn accepted(&self) -> Vec<Value> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests and envelopes refused as invalid.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.state.lock().unwrap().rejected.clone()
    }

    /// The accepted envelopes of one `baseType` (`RequestData`, ...).
    pub fn accepted_of(&self, base_type: &str) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .filter(|e| e["data"]["baseType"] == base_type)
            .collect()
    }
}

/// A version-4 UUID from the OS's randomness (no extra dependency).
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            bytes = t.to_le_bytes();
        });
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        439 => "Daily Quota Exceeded",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Method, path, headers (names in lower case) and body of one request.
type Raw = (String, String, Vec<(String, String)>, Vec<u8>);

/// Read one HTTP/1.1 request: request line, headers, body (content-length or
/// chunked).
fn read_request(stream: &TcpStream) -> std::io::Result<Raw> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = vec![];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    Ok((method, path, headers, body))
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, ikey: &str) -> std::io::Result<()> {
    let (method, path, headers, body) = read_request(&stream)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // Request-level checks.
    let mut problem: Option<(u16, String)> = None;
    if method != "POST" {
        problem = Some((405, format!("method {method}; only POST is accepted")));
    } else if path != "/v2.1/track" && path != "/v2/track" {
        problem = Some((
            404,
            format!("path {path}; expected /v2.1/track or /v2/track"),
        ));
    } else if header("content-encoding") != Some("gzip") {
        problem = Some((
            400,
            format!(
                "Content-Encoding {:?}; expected gzip",
                header("content-encoding")
            ),
        ));
    } else if header("content-type")
        .is_none_or(|v| v.split(';').next().unwrap().trim() != "application/json")
    {
        problem = Some((
            400,
            format!(
                "Content-Type {:?}; expected application/json",
                header("content-type")
            ),
        ));
    }
    let mut envelopes = vec![];
    if problem.is_none() {
        let mut text = String::new();
        match GzDecoder::new(body.as_slice()).read_to_string(&mut text) {
            Err(e) => problem = Some((400, format!("the body is not gzip: {e}"))),
            Ok(_) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(items)) if !items.is_empty() => envelopes = items,
                Ok(Value::Array(_)) => problem = Some((400, "the body is an empty array".into())),
                Ok(_) => problem = Some((400, "the body is not a JSON array".into())),
                Err(e) => problem = Some((400, format!("the body is not JSON: {e}"))),
            },
        }
    }

    let mut st = state.lock().unwrap();
    let request = st.requests.len();
    let reply = if st.script.is_empty() {
        Reply::Validate
    } else {
        st.script.remove(0)
    };
    let (status, retry_after, answer) = if let Some((status, message)) = problem {
        st.rejected.push(Rejection {
            request,
            index: None,
            message: message.clone(),
            envelope: None,
        });
        (status, None, json!({"error": message}))
    } else {
        match reply {
            Reply::Status {
                status,
                retry_after,
            } => (
                status,
                retry_after,
                json!({"itemsReceived": envelopes.len(), "itemsAccepted": 0, "errors": []}),
            ),
            Reply::Validate | Reply::Partial(_) => {
                let failing = match &reply {
                    Reply::Partial(f) => f.clone(),
                    _ => vec![],
                };
                let mut errors = vec![];
                let mut accepted = 0;
                for (index, envelope) in envelopes.iter().enumerate() {
                    if let Some((_, code)) = failing.iter().find(|(i, _)| *i == index) {
                        errors.push(json!({"index": index, "statusCode": code, "message": format!("scripted failure {code}")}));
                        continue;
                    }
                    let problems = check_envelope(envelope, ikey);
                    if problems.is_empty() {
                        accepted += 1;
                        st.accepted.push(envelope.clone());
                    } else {
                        let message = problems.join("; ");
                        errors.push(json!({"index": index, "statusCode": 400, "message": message}));
                        st.rejected.push(Rejection {
                            request,
                            index: Some(index),
                            message,
                            envelope: Some(envelope.clone()),
                        });
                    }
                }
                let status = if errors.is_empty() {
                    200
                } else if accepted == 0 && failing.is_empty() {
                    400
                } else {
                    206
                };
                (
                    status,
                    None,
                    json!({"itemsReceived": envelopes.len(), "itemsAccepted": accepted, "errors": errors}),
                )
            }
        }
    };
    st.requests.push(Request {
        method,
        path,
        headers: headers.clone(),
        envelopes,
        status,
        at: Instant::now(),
    });
    drop(st);
    let body = answer.to_string();
    let extra = retry_after
        .map(|v| format!("retry-after: {v}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    stream.flush()
}

/// Envelope types: name suffix and baseType.
const TYPES: &[(&str, &str)] = &[
    ("Request", "RequestData"),
    ("RemoteDependency", "RemoteDependencyData"),
    ("Event", "EventData"),
    ("Message", "MessageData"),
    ("Exception", "ExceptionData"),
    ("Metric", "MetricData"),
    ("Availability", "AvailabilityData"),
];

/// Known tags and their maximum lengths.
const TAGS: &[(&str, usize)] = &[
    ("ai.cloud.role", 256),
    ("ai.cloud.roleInstance", 256),
    ("ai.operation.id", 128),
    ("ai.operation.parentId", 128),
    ("ai.operation.name", 1024),
    ("ai.internal.sdkVersion", 64),
];

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().unwrap())
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,7}]Z`.
pub fn valid_time(t: &str) -> bool {
    let Some(t) = t.strip_suffix('Z') else {
        return false;
    };
    let Some((date, time)) = t.split_once('T') else {
        return false;
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = d.as_slice() else {
        return false;
    };
    let (time, fraction) = match time.split_once('.') {
        Some((t, f)) => (t, Some(f)),
        None => (time, None),
    };
    let tm: Vec<&str> = time.split(':').collect();
    let [h, mi, s] = tm.as_slice() else {
        return false;
    };
    digits(y, 4).is_some()
        && digits(mo, 2).is_some_and(|m| (1..=12).contains(&m))
        && digits(da, 2).is_some_and(|d| (1..=31).contains(&d))
        && digits(h, 2).is_some_and(|h| h < 24)
        && digits(mi, 2).is_some_and(|m| m < 60)
        && digits(s, 2).is_some_and(|s| s < 60)
        && fraction
            .is_none_or(|f| (1..=7).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
}

/// `[D.]HH:MM:SS[.f{1,7}]`, under 1000 days.
pub fn valid_duration(d: &str) -> bool {
    let (main, fraction) = match d.rsplit_once('.') {
        Some((m, f)) if m.contains(':') => (m, Some(f)),
        _ => (d, None),
    };
    let (days, hms) = match main.split_once('.') {
        Some((days, hms)) => (Some(days), hms),
        None => (None, main),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return false;
    };
    days.is_none_or(|days| {
        !days.is_empty() && days.len() <= 3 && days.bytes().all(|b| b.is_ascii_digit())
    }) && digits(h, 2).is_some_and(|h| h < 24)
        && digits(m, 2).is_some_and(|m| m < 60)
        && digits(s, 2).is_some_and(|s| s < 60)
        && fraction
            .is_none_or(|f| (1..=7).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
}

/// Every way `e` breaks the documented envelope schema.
pub fn check_envelope(e: &Value, ikey: &str) -> Vec<String> {
    let mut p: Vec<String> = vec![];
    let Some(obj) = e.as_object() else {
        return vec!["the envelope is not an object".into()];
    };
    let kind = match obj.get("name").and_then(Value::as_str) {
        None => {
            p.push("`name` is required".into());
            None
        }
        Some(name) => match name
            .strip_prefix("Microsoft.ApplicationInsights.")
            .and_then(|k| TYPES.iter().find(|(t, _)| *t == k))
        {
            Some(t) => Some(*t),
            None => {
                p.push(format!(
                    "`name` {name:?} is not Microsoft.ApplicationInsights.<Type>"
                ));
                None
            }
        },
    };
    match obj.get("time").and_then(Value::as_str) {
        None => p.push("`time` is required".into()),
        Some(t) if !valid_time(t) => p.push(format!("`time` {t:?} is not ISO-8601 UTC with Z")),
        _ => {}
    }
    match obj.get("iKey").and_then(Value::as_str) {
        Some(k) if k == ikey => {}
        Some(_) => p.push("`iKey` is not this resource's instrumentation key".into()),
        None => p.push("`iKey` is required".into()),
    }
    if let Some(rate) = obj.get("sampleRate")
        && !rate.as_f64().is_some_and(|r| r > 0.0 && r <= 100.0)
    {
        p.push(format!("`sampleRate` {rate} is not a number in (0, 100]"));
    }
    if let Some(tags) = obj.get("tags") {
        match tags.as_object() {
            None => p.push("`tags` is not an object".into()),
            Some(tags) => {
                for (k, v) in tags {
                    match v.as_str() {
                        None => p.push(format!("tag {k} is not a string")),
                        Some(v) => {
                            if let Some((_, max)) = TAGS.iter().find(|(t, _)| t == k)
                                && v.chars().count() > *max
                            {
                                p.push(format!("tag {k} is longer than {max}"));
                            }
                        }
                    }
                }
            }
        }
    }
    let Some(data) = obj.get("data").and_then(Value::as_object) else {
        p.push("`data` is required".into());
        return p;
    };
    let base_type = data.get("baseType").and_then(Value::as_str);
    match (base_type, kind) {
        (None, _) => p.push("`data.baseType` is required".into()),
        (Some(b), Some((k, expected))) if b != expected => p.push(format!(
            "`data.baseType` {b} does not match the name's type {k} ({expected})"
        )),
        _ => {}
    }
    let Some(base) = data.get("baseData").and_then(Value::as_object) else {
        p.push("`data.baseData` is required".into());
        return p;
    };
    if base.get("ver").and_then(Value::as_i64) != Some(2) {
        p.push("`baseData.ver` must be 2".into());
    }
    if let Some(props) = base.get("properties") {
        match props.as_object() {
            None => p.push("`properties` is not an object".into()),
            Some(props) => {
                for (k, v) in props {
                    if k.chars().count() > 150 {
                        p.push(format!("property key {k:?} is longer than 150"));
                    }
                    match v.as_str() {
                        None => p.push(format!("property {k} is not a string")),
                        Some(v) if v.chars().count() > 8192 => {
                            p.push(format!("property {k} is longer than 8192"))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if let Some(m) = base.get("measurements") {
        match m.as_object() {
            None => p.push("`measurements` is not an object".into()),
            Some(m) => {
                for (k, v) in m {
                    if !v.is_number() {
                        p.push(format!("measurement {k} is not a number"));
                    }
                }
            }
        }
    }
    let string =
        |p: &mut Vec<String>, field: &str, max: usize, required: bool| match base.get(field) {
            None if required => p.push(format!("`baseData.{field}` is required")),
            None => {}
            Some(Value::String(s)) if required && s.is_empty() => {
                p.push(format!("`baseData.{field}` is empty"))
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                p.push(format!("`baseData.{field}` is longer than {max}"))
            }
            Some(Value::String(_)) => {}
            Some(_) => p.push(format!("`baseData.{field}` is not a string")),
        };
    let boolean = |p: &mut Vec<String>, field: &str, required: bool| match base.get(field) {
        None if required => p.push(format!("`baseData.{field}` is required")),
        None | Some(Value::Bool(_)) => {}
        Some(_) => p.push(format!("`baseData.{field}` is not a boolean")),
    };
    let duration = |p: &mut Vec<String>| match base.get("duration").and_then(Value::as_str) {
        None => p.push("`baseData.duration` is required (a string)".into()),
        Some(d) if !valid_duration(d) => p.push(format!(
            "`baseData.duration` {d:?} is not [D.]HH:MM:SS.ffffff under 1000 days"
        )),
        _ => {}
    };
    match kind.map(|(k, _)| k) {
        Some("Request") => {
            string(&mut p, "id", 128, true);
            duration(&mut p);
            string(&mut p, "responseCode", 1024, true);
            boolean(&mut p, "success", true);
            string(&mut p, "name", 1024, false);
            string(&mut p, "url", 2048, false);
            string(&mut p, "source", 1024, false);
        }
        Some("RemoteDependency") => {
            string(&mut p, "name", 1024, true);
            duration(&mut p);
            string(&mut p, "id", 128, false);
            string(&mut p, "resultCode", 1024, false);
            string(&mut p, "data", 8192, false);
            string(&mut p, "type", 1024, false);
            string(&mut p, "target", 1024, false);
            boolean(&mut p, "success", false);
        }
        Some("Event") => string(&mut p, "name", 512, true),
        Some("Message") => string(&mut p, "message", 32768, true),
        Some("Metric") => match base.get("metrics").and_then(Value::as_array) {
            None => p.push("`baseData.metrics` is required (an array)".into()),
            Some(points) if points.is_empty() => p.push("`baseData.metrics` is empty".into()),
            Some(points) => {
                for (i, point) in points.iter().enumerate() {
                    if point["name"].as_str().is_none_or(str::is_empty) {
                        p.push(format!("`metrics[{i}].name` is required"));
                    }
                    if !point["value"].is_number() {
                        p.push(format!("`metrics[{i}].value` is required (a number)"));
                    }
                    for f in ["count", "min", "max", "stdDev"] {
                        if point.get(f).is_some_and(|v| !v.is_number()) {
                            p.push(format!("`metrics[{i}].{f}` is not a number"));
                        }
                    }
                }
            }
        },
        Some("Exception") if !base.get("exceptions").is_some_and(Value::is_array) => {
            p.push("`baseData.exceptions` is required (an array)".into());
        }
        Some("Availability") => {
            string(&mut p, "id", 128, true);
            string(&mut p, "name", 1024, true);
            duration(&mut p);
            boolean(&mut p, "success", true);
        }
        _ => {}
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        json!({
            "name": "Microsoft.ApplicationInsights.Request",
            "time": "2024-05-01T12:00:00.123Z",
            "iKey": "k",
            "sampleRate": 100.0,
            "tags": {"ai.operation.id": "r", "ai.cloud.role": "p", "ai.internal.sdkVersion": "gantry:0.1.0"},
            "data": {"baseType": "RequestData", "baseData": {
                "ver": 2, "id": "r", "name": "p", "duration": "0.00:00:01.500000",
                "responseCode": "0", "success": true, "properties": {"a": "b"}}}
        })
    }

    #[test]
    fn a_valid_envelope_passes() {
        assert_eq!(check_envelope(&request(), "k"), Vec::<String>::new());
    }

    #[test]
    fn each_violation_is_caught() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/iKey", json!("other"), "iKey"),
            ("/name", json!("Request"), "`name`"),
            (
                "/name",
                json!("Microsoft.ApplicationInsights.Event"),
                "does not match",
            ),
            ("/time", json!("2024-05-01 12:00:00"), "`time`"),
            ("/time", json!("2024-05-01T12:00:00+01:00"), "`time`"),
            ("/data/baseData/ver", json!(1), "ver"),
            ("/data/baseData/duration", json!("1500"), "duration"),
            (
                "/data/baseData/duration",
                json!("1000.00:00:00.000000"),
                "duration",
            ),
            ("/data/baseData/responseCode", json!(200), "responseCode"),
            ("/data/baseData/success", json!("true"), "success"),
            ("/data/baseData/properties/a", json!(1), "property a"),
            (
                "/data/baseData/properties/a",
                json!("x".repeat(8193)),
                "8192",
            ),
            (
                "/tags/ai.operation.id",
                json!("x".repeat(129)),
                "ai.operation.id",
            ),
            (
                "/tags/ai.internal.sdkVersion",
                json!("x".repeat(65)),
                "sdkVersion",
            ),
            ("/sampleRate", json!(0), "sampleRate"),
        ];
        for (pointer, value, expect) in cases {
            let mut e = request();
            *e.pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{pointer}")) = value;
            let problems = check_envelope(&e, "k");
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{pointer}: {problems:?}"
            );
        }
        let mut e = request();
        e["data"]["baseData"].as_object_mut().unwrap().remove("id");
        assert!(check_envelope(&e, "k").iter().any(|p| p.contains("id")));
    }

    #[test]
    fn metrics_and_events() {
        let metric = json!({"name": "Microsoft.ApplicationInsights.Metric", "time": "2024-05-01T12:00:00Z", "iKey": "k",
            "data": {"baseType": "MetricData", "baseData": {"ver": 2, "metrics": [{"name": "m", "value": 1.5}]}}});
        assert!(check_envelope(&metric, "k").is_empty());
        let mut bad = metric.clone();
        bad["data"]["baseData"]["metrics"] = json!([{"name": "m"}]);
        assert!(!check_envelope(&bad, "k").is_empty());
        let event = json!({"name": "Microsoft.ApplicationInsights.Event", "time": "2024-05-01T12:00:00Z", "iKey": "k",
            "data": {"baseType": "EventData", "baseData": {"ver": 2, "name": "x".repeat(513)}}});
        assert!(
            check_envelope(&event, "k")
                .iter()
                .any(|p| p.contains("512"))
        );
    }

    #[test]
    fn durations_and_times() {
        for ok in [
            "00:00:01",
            "0.00:00:01.500000",
            "999.23:59:59.9999999",
            "12:30:00.5",
        ] {
            assert!(valid_duration(ok), "{ok}");
        }
        for bad in [
            "",
            "1:00:00",
            "0.24:00:00",
            "00:60:00",
            "1000.00:00:00",
            "x.00:00:00",
            "00:00:01.",
        ] {
            assert!(!valid_duration(bad), "{bad}");
        }
        assert!(valid_time("2024-05-01T12:00:00Z"));
        assert!(!valid_time("2024-13-01T12:00:00Z"));
        assert!(!valid_time("2024-05-01T12:00:00.12345678Z"));
    }
}
