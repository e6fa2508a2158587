//! Telemetry: metrics and events from stages, plus the host's own run and stage
//! events, collected for the run and handed to the telemetry sinks at its end.

use crate::runtime::bindings::telemetry as wit;
use crate::runtime::bindings::types::{Event, EventKind};
use crate::runtime::state::StageState;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A bounded buffer; events past the bound are counted, not kept.
const MAX_EVENTS: usize = 100_000;

/// The run's events, shared by all stages.
#[derive(Clone, Default)]
pub struct Collector {
    inner: Arc<Mutex<Collected>>,
}

#[derive(Default)]
struct Collected {
    events: Vec<Event>,
    dropped: u64,
}

impl Collector {
    pub fn push(&self, event: Event) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.events.len() < MAX_EVENTS {
            c.events.push(event);
        } else {
            c.dropped += 1;
        }
    }

    /// All events so far, and how many were dropped.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut c.events),
            std::mem::take(&mut c.dropped),
        )
    }
}

/// What every event of a run carries.
#[derive(Clone)]
pub struct EventBase {
    pub run_id: String,
    pub pipeline: String,
    pub environment: String,
}

impl EventBase {
    pub fn event(&self, kind: EventKind, stage: Option<&str>, name: &str) -> Event {
        Event {
            kind,
            timestamp_ms: now_ms(),
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.clone(),
            environment: self.environment.clone(),
            stage: stage.map(str::to_string),
            name: name.to_string(),
            value: None,
            duration_ms: None,
            success: None,
            properties: vec![],
        }
    }
}

/// The file in a run's directory that keeps the run's events (one JSON
/// object a line), as the sinks were handed them.
pub const RECORD_FILE: &str = "telemetry.jsonl";

/// The name of an event's kind, as recorded.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::RunStarted => "run-started",
        EventKind::RunFinished => "run-finished",
        EventKind::StageStarted => "stage-started",
        EventKind::StageFinished => "stage-finished",
        EventKind::Metric => "metric",
        EventKind::Deployment => "deployment",
        EventKind::Custom => "custom",
    }
}

/// Write the run's events into its directory ([`RECORD_FILE`]).
pub fn record(dir: &crate::state_dir::PrivateDir, events: &[Event]) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for e in events {
        let line = serde_json::json!({
            "kind": kind_name(e.kind),
            "timestamp_ms": e.timestamp_ms,
            "stage": e.stage,
            "name": e.name,
            "value": e.value,
            "duration_ms": e.duration_ms,
            "success": e.success,
            "properties": e.properties,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    dir.write_atomic(RECORD_FILE, &out)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per-instance state: the stage's name on its events, and what it may still send.
pub struct TelemetryState {
    pub collector: Collector,
    pub base: EventBase,
    pub stage: String,
    pub redactor: crate::redact::Redactor,
    /// `limits.telemetry` (bytes) and `limits.events`.
    pub max_bytes: u64,
    pub max_events: u64,
    pub sent_bytes: u64,
    pub sent_events: u64,
    /// Set when the stage went past a limit: it is stopped, and the trap is
    /// explained with the limit's name.
    pub exceeded: Arc<std::sync::atomic::AtomicBool>,
}

impl TelemetryState {
    /// Count one metric or event against the stage's limits; an error stops
    /// the stage (a guest that ignores the limit would grow the host's memory).
    fn charge(&mut self, name: &str, properties: &[(String, String)]) -> wasmtime::Result<()> {
        let bytes = name.len()
            + properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        self.sent_bytes += bytes as u64;
        self.sent_events += 1;
        if self.sent_bytes > self.max_bytes || self.sent_events > self.max_events {
            self.exceeded
                .store(true, std::sync::atomic::Ordering::Relaxed);
            wasmtime::bail!("telemetry limit exceeded");
        }
        Ok(())
    }

    fn redact(&self, properties: Vec<(String, String)>) -> Vec<(String, String)> {
        properties
            .into_iter()
            .map(|(k, v)| (self.redactor.redact(&k), self.redactor.redact(&v)))
            .collect()
    }
}

impl wit::Host for StageState {
    async fn metric(
        &mut self,
        name: String,
        value: f64,
        properties: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.telemetry.charge(&name, &properties)?;
        let t = &self.telemetry;
        let mut e = t
            .base
            .event(EventKind::Metric, Some(&t.stage), &t.redactor.redact(&name));
        e.value = Some(value);
        e.properties = t.redact(properties);
        t.collector.push(e);
        Ok(())
    }

    async fn event(
        &mut self,
        name: String,
        properties: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.telemetry.charge(&name, &properties)?;
        let t = &self.telemetry;
        let kind = if name == "deployment" {
            EventKind::Deployment
        } else {
            EventKind::Custom
        };
        let mut e = t
            .base
            .event(kind, Some(&t.stage), &t.redactor.redact(&name));
        e.properties = t.redact(properties);
        t.collector.push(e);
        Ok(())
    }
}
