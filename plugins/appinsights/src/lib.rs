//! Built-in telemetry sink `appinsights`: sends each run to Azure Application
//! Insights as one transaction (the run a request, each stage a dependency of
//! it, deployments and custom events as events, metrics as metrics) through
//! the ingestion endpoint's track API over wasi:http, gzipped, in batches,
//! with the service's retry rules. See `envelope` for the mapping and
//! `transport` for delivery.

mod annotation;
mod connection;
mod envelope;
use gantry_sdk::http;
mod transport;

use connection::ConnectionString;
use gantry_sdk::{Capability, CapabilityKind, Event, EventKind, SinkGuest, StageError, StageInfo};
use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Name of a granted secret holding the connection string (preferred).
    #[serde(default)]
    connection_string_secret: Option<String>,
    /// The connection string itself.
    #[serde(default)]
    connection_string: Option<String>,
    /// `ai.cloud.role`; default: the pipeline's name.
    #[serde(default)]
    role: Option<String>,
    /// `ai.cloud.roleInstance`; default: none.
    #[serde(default)]
    role_instance: Option<String>,
    /// Envelopes per request.
    #[serde(default = "default_batch")]
    max_batch: usize,
    /// Envelopes held per publish; events beyond are dropped and counted.
    #[serde(default = "default_buffer")]
    max_buffer: usize,
    /// Resends of a batch (or of its retryable items).
    #[serde(default = "default_retries")]
    max_retries: u32,
    /// Timeout of each request (connect, first byte, between bytes).
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    /// Deployments as release annotations, through the Azure management API.
    #[serde(default)]
    release_annotations: Option<annotation::Config>,
}

fn default_batch() -> usize {
    500
}
fn default_buffer() -> usize {
    10_000
}
fn default_retries() -> u32 {
    5
}
fn default_timeout() -> u64 {
    10_000
}

/// The longest `Retry-After` the sink waits for.
const MAX_WAIT: Duration = Duration::from_secs(60);

fn schema() -> String {
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "connection-string-secret": {
                "type": "string", "minLength": 1,
                "description": "Name of a secret (granted in permissions.secrets) holding the connection string; preferred"
            },
            "connection-string": {
                "type": "string", "maxLength": connection::MAX_LENGTH,
                "pattern": connection::SCHEMA_PATTERN,
                "description": "The connection string: `InstrumentationKey=...;IngestionEndpoint=https://...` (key=value pairs separated by `;`)"
            },
            "role": {"type": "string", "minLength": 1, "maxLength": 256,
                     "description": "ai.cloud.role; default: the pipeline's name"},
            "role-instance": {"type": "string", "minLength": 1, "maxLength": 256,
                              "description": "ai.cloud.roleInstance; default: none"},
            "max-batch": {"type": "integer", "minimum": 1, "maximum": 10000,
                          "description": "Envelopes per request (default 500)"},
            "max-buffer": {"type": "integer", "minimum": 1,
                           "description": "Envelopes held at once (default 10000); events beyond are dropped and counted"},
            "max-retries": {"type": "integer", "minimum": 0, "maximum": 20,
                            "description": "Resends after 206 retryable items, 408/429/439/5xx or connection errors (default 5)"},
            "timeout-ms": {"type": "integer", "minimum": 100,
                           "description": "Timeout of each request in milliseconds (default 10000)"},
            "release-annotations": annotation::schema()
        },
        "oneOf": [
            {"required": ["connection-string-secret"]},
            {"required": ["connection-string"]}
        ]
    })
    .to_string()
}

struct Sink {
    config: Config,
    connection: ConnectionString,
    /// Events dropped because the buffer was full, over this instance's life.
    dropped: u64,
}

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

fn invalid(message: impl std::fmt::Display) -> StageError {
    StageError::InvalidConfig(format!("appinsights: {message}"))
}

/// Check the config and find the connection string; `secret` reads a secret.
fn configure(
    text: &str,
    secret: &dyn Fn(&str) -> Result<String, StageError>,
) -> Result<Sink, StageError> {
    let config: Config =
        serde_json::from_str(if text.trim().is_empty() { "{}" } else { text }).map_err(invalid)?;
    let connection = match (&config.connection_string_secret, &config.connection_string) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "set `connection-string-secret` or `connection-string`, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "`connection-string-secret` (the name of a granted secret holding the connection string) is required",
            ));
        }
        (Some(name), None) => {
            let text = secret(name).map_err(|e| match e {
                StageError::Denied(m) => {
                    StageError::Denied(format!("appinsights: `connection-string-secret`: {m}"))
                }
                StageError::Failed(m) | StageError::Transient(m) | StageError::InvalidConfig(m) => {
                    invalid(format!("`connection-string-secret`: {m}"))
                }
            })?;
            connection::parse(&text).map_err(|e| {
                invalid(format!(
                    "the connection string in secret `{name}` is malformed: {e}"
                ))
            })?
        }
        (None, Some(text)) => connection::parse(text)
            .map_err(|e| invalid(format!("`connection-string` is malformed: {e}")))?,
    };
    for (field, value) in [
        ("max-batch", config.max_batch),
        ("max-buffer", config.max_buffer),
    ] {
        if value == 0 {
            return Err(invalid(format!("`{field}` must be at least 1")));
        }
    }
    Ok(Sink {
        config,
        connection,
        dropped: 0,
    })
}

impl Sink {
    /// The envelopes for `events`, serialized, at most `max-buffer` of them;
    /// the run's request is always kept (it is the root of the transaction and
    /// says how many were dropped).
    fn envelopes(&mut self, events: &[Event]) -> Vec<Vec<u8>> {
        let ctx = envelope::Context {
            instrumentation_key: &self.connection.instrumentation_key,
            role: self.config.role.as_deref(),
            role_instance: self.config.role_instance.as_deref(),
        };
        let mut out = vec![];
        let mut dropped = 0;
        for e in events {
            let root = e.kind == EventKind::RunFinished;
            if !root && out.len() + 1 >= self.config.max_buffer {
                // Keep one place for the run's request.
                if envelope::map(&ctx, e, 0).is_some() {
                    dropped += 1;
                }
                continue;
            }
            if let Some(v) = envelope::map(&ctx, e, self.dropped + dropped) {
                out.push(serde_json::to_vec(&v).expect("JSON values serialize"));
            }
        }
        self.dropped += dropped;
        out
    }
}

/// The component's connection to the world: wasi:http, the clocks, the log.
struct Wasi {
    url: String,
    timeout: Duration,
}

impl transport::Io for Wasi {
    fn send(&mut self, body: &[u8]) -> Result<transport::Response, transport::SendError> {
        let headers = [
            ("content-type", "application/json".to_string()),
            ("content-encoding", "gzip".to_string()),
            ("accept", "application/json".to_string()),
        ];
        http::send("POST", &self.url, &headers, body, Some(self.timeout))
            .map(|r| transport::Response {
                status: r.status,
                retry_after: r.header("retry-after").map(str::to_string),
                body: r.body,
            })
            .map_err(|e| match e {
                http::Error::Denied(m) => transport::SendError::Denied(m),
                http::Error::Transport(m) => transport::SendError::Transport(m),
                http::Error::Invalid(m) => transport::SendError::Invalid(m),
            })
    }

    fn sleep(&mut self, delay: Duration) {
        std::thread::sleep(delay);
    }

    fn now_secs(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn random(&mut self) -> u64 {
        wasip2::random::random::get_random_u64()
    }

    fn warn(&mut self, message: &str) {
        gantry_sdk::warn(format!("appinsights: {message}"));
    }
}

/// Put one release annotation per deployment event.
fn annotate(
    cfg: &annotation::Config,
    events: &[Event],
    timeout: Duration,
) -> Result<(), StageError> {
    let deployments: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Deployment)
        .collect();
    if deployments.is_empty() {
        return Ok(());
    }
    let token = gantry_sdk::secrets::get(&cfg.token_secret).map_err(StageError::from)?;
    let url = annotation::url(cfg);
    let shown = url.split('?').next().unwrap_or(&url);
    for event in deployments {
        let random = (u128::from(wasip2::random::random::get_random_u64()) << 64)
            | u128::from(wasip2::random::random::get_random_u64());
        let id = annotation::guid(random);
        let Some(body) = annotation::body(event, &id) else {
            continue;
        };
        let headers = [
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {token}")),
        ];
        let r = http::send(
            "PUT",
            &url,
            &headers,
            body.to_string().as_bytes(),
            Some(timeout),
        )
        .map_err(|e| match e {
            http::Error::Denied(m) => {
                StageError::Denied(format!("appinsights: release annotation: {m}"))
            }
            other => StageError::Transient(format!(
                "appinsights: release annotation at {shown}: {other}"
            )),
        })?;
        if !(200..300).contains(&r.status) {
            let text = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
            return Err(StageError::Failed(format!(
                "appinsights: release annotation at {shown} answered {}: {text}",
                r.status
            )));
        }
        gantry_sdk::info(format!(
            "appinsights: release annotation {id} for the deployment in stage `{}`",
            event.stage.clone().unwrap_or_default()
        ));
    }
    Ok(())
}

struct AppInsights;

impl SinkGuest for AppInsights {
    fn describe() -> StageInfo {
        StageInfo {
            name: "appinsights".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sends each run to Azure Application Insights as one transaction: the run a request, its stages dependencies, deployments and events as events, metrics as metrics.".into(),
            config_schema: schema(),
            capabilities: vec![
                Capability {
                    kind: CapabilityKind::Secret,
                    target: None,
                    reason: "reads the connection string from the secret named by `connection-string-secret`, and the management API token of `release-annotations`".into(),
                },
                Capability {
                    kind: CapabilityKind::Http,
                    target: None,
                    reason: "posts telemetry to the ingestion endpoint of the connection string (default https://dc.services.visualstudio.com), and release annotations to https://management.azure.com".into(),
                },
            ],
        }
    }

    fn configure(config: String) -> Result<(), StageError> {
        let sink = configure(&config, &|name| {
            gantry_sdk::secrets::get(name).map_err(StageError::from)
        })?;
        SINK.with(|s| *s.borrow_mut() = Some(sink));
        Ok(())
    }

    fn publish(events: Vec<Event>) -> Result<(), StageError> {
        SINK.with(|s| {
            let mut guard = s.borrow_mut();
            let sink = guard
                .as_mut()
                .ok_or_else(|| invalid("publish before configure"))?;
            let before = sink.dropped;
            let items = sink.envelopes(&events);
            if sink.dropped > before {
                gantry_sdk::warn(format!(
                    "appinsights: buffer of {} envelope(s) full; {} event(s) dropped",
                    sink.config.max_buffer,
                    sink.dropped - before
                ));
            }
            let url = sink.connection.track_url();
            let mut io = Wasi {
                url: url.clone(),
                timeout: Duration::from_millis(sink.config.timeout_ms),
            };
            let policy = transport::Policy {
                max_retries: sink.config.max_retries,
                max_wait: MAX_WAIT,
            };
            let mut total = transport::Report::default();
            for (i, batch) in items.chunks(sink.config.max_batch).enumerate() {
                let report = transport::deliver(batch, &url, &mut io, &policy).map_err(|e| {
                    // The transport counts this batch's undelivered envelopes;
                    // add the later batches, which were never sent.
                    let later = items.len().saturating_sub((i + 1) * sink.config.max_batch);
                    let note = if later > 0 {
                        format!("; the {later} envelope(s) of later batches were not sent")
                    } else {
                        String::new()
                    };
                    match e {
                        StageError::Transient(m) => StageError::Transient(m + &note),
                        StageError::Failed(m) => StageError::Failed(m + &note),
                        StageError::Denied(m) => StageError::Denied(m),
                        StageError::InvalidConfig(m) => StageError::InvalidConfig(m),
                    }
                })?;
                total.requests += report.requests;
                total.accepted += report.accepted;
                total.resent += report.resent;
                total.rejected.extend(report.rejected);
            }
            if let Some(cfg) = &sink.config.release_annotations {
                annotate(cfg, &events, Duration::from_millis(sink.config.timeout_ms))?;
            }
            gantry_sdk::info(format!(
                "appinsights: {} envelope(s) to {url} in {} request(s): {} accepted, {} resent, {} refused, {} event(s) dropped (buffer full)",
                items.len(),
                total.requests,
                total.accepted,
                total.resent,
                total.rejected.len(),
                sink.dropped
            ));
            Ok(())
        })
    }
}

gantry_sdk::export_sink!(AppInsights);

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "InstrumentationKey=k-1;IngestionEndpoint=http://127.0.0.1:9";

    fn no_secret(_: &str) -> Result<String, StageError> {
        panic!("no secret expected")
    }

    fn message(e: StageError) -> String {
        match e {
            StageError::InvalidConfig(m)
            | StageError::Denied(m)
            | StageError::Failed(m)
            | StageError::Transient(m) => m,
        }
    }

    #[test]
    fn schema_is_json() {
        let v: serde_json::Value = serde_json::from_str(&schema()).unwrap();
        assert_eq!(
            v["properties"]["connection-string"]["pattern"],
            connection::SCHEMA_PATTERN
        );
    }

    #[test]
    fn config_needs_exactly_one_connection_string() {
        let e = configure("{}", &no_secret).err().unwrap();
        assert!(message(e).contains("`connection-string-secret`"));
        let both = r#"{"connection-string":"InstrumentationKey=a","connection-string-secret":"s"}"#;
        assert!(message(configure(both, &no_secret).err().unwrap()).contains("not both"));
        let s = configure(
            &serde_json::json!({"connection-string": CS}).to_string(),
            &no_secret,
        )
        .unwrap();
        assert_eq!(s.connection.track_url(), "http://127.0.0.1:9/v2.1/track");
        assert_eq!(s.config.max_batch, 500);
        let e = configure(r#"{"connection-string":"x","colour":1}"#, &no_secret)
            .err()
            .unwrap();
        assert!(message(e).contains("colour"));
    }

    #[test]
    fn a_malformed_secret_is_reported_without_its_value() {
        let secret = |name: &str| {
            assert_eq!(name, "ai");
            Ok("not-a-connection-string-value".to_string())
        };
        let e = configure(r#"{"connection-string-secret":"ai"}"#, &secret)
            .err()
            .unwrap();
        let m = message(e);
        assert!(m.contains("secret `ai` is malformed"), "{m}");
        assert!(!m.contains("not-a-connection-string-value"), "{m}");
        let denied = |_: &str| Err(StageError::Denied("not granted".into()));
        assert!(matches!(
            configure(r#"{"connection-string-secret":"ai"}"#, &denied),
            Err(StageError::Denied(_))
        ));
    }

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            timestamp_ms: 1_000_000,
            run_id: "r".into(),
            pipeline: "p".into(),
            environment: "e".into(),
            stage: Some("s".into()),
            name: "m".into(),
            value: Some(1.0),
            duration_ms: Some(10),
            success: Some(true),
            properties: vec![],
        }
    }

    #[test]
    fn the_buffer_drops_beyond_its_size_but_keeps_the_request() {
        let config = serde_json::json!({"connection-string": CS, "max-buffer": 3}).to_string();
        let mut sink = configure(&config, &no_secret).unwrap();
        let mut events = vec![event(EventKind::RunStarted)];
        events.extend((0..5).map(|_| event(EventKind::Metric)));
        events.push(event(EventKind::RunFinished));
        let items = sink.envelopes(&events);
        assert_eq!(items.len(), 3);
        assert_eq!(sink.dropped, 3);
        let request: serde_json::Value = serde_json::from_slice(&items[2]).unwrap();
        assert_eq!(request["data"]["baseType"], "RequestData");
        assert_eq!(
            request["data"]["baseData"]["properties"]["gantry.telemetry.dropped"],
            "3"
        );
    }
}
