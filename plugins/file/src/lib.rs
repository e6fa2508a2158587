//! Built-in telemetry sink `file`: appends every event of a run, one JSON object
//! per line, to a file in the workspace. The default provider for telemetry on a
//! laptop; Application Insights replaces it per environment.
use gantry_sdk::{CapabilityKind, Event, EventKind, SinkGuest, StageError, StageInfo};
use serde::Deserialize;
use std::cell::RefCell;
use std::io::Write;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Workspace-relative path of the file to append to.
    path: String,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

fn kind(k: EventKind) -> &'static str {
    match k {
        EventKind::RunStarted => "run-started",
        EventKind::RunFinished => "run-finished",
        EventKind::StageStarted => "stage-started",
        EventKind::StageFinished => "stage-finished",
        EventKind::Metric => "metric",
        EventKind::Deployment => "deployment",
        EventKind::Custom => "custom",
    }
}

fn to_json(e: &Event) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = e
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    serde_json::json!({
        "kind": kind(e.kind),
        "timestamp_ms": e.timestamp_ms,
        "run_id": e.run_id,
        "pipeline": e.pipeline,
        "environment": e.environment,
        "stage": e.stage,
        "name": e.name,
        "value": e.value,
        "duration_ms": e.duration_ms,
        "success": e.success,
        "properties": properties,
    })
}

struct FileSink;

impl SinkGuest for FileSink {
    fn describe() -> StageInfo {
        StageInfo {
            name: "file".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Appends the run's telemetry events to a JSON-lines file in the workspace.".into(),
            config_schema: r#"{"type":"object","required":["path"],"additionalProperties":false,"properties":{"path":{"type":"string","description":"Workspace-relative file to append to"}}}"#.into(),
            capabilities: vec![gantry_sdk::Capability {
                kind: CapabilityKind::WorkspaceWrite,
                target: None,
                reason: "appends to the file named by `path`".into(),
            }],
        }
    }

    fn configure(config: String) -> Result<(), StageError> {
        let cfg: Config = serde_json::from_str(&config)
            .map_err(|e| StageError::InvalidConfig(format!("file: {e}")))?;
        if cfg.path.starts_with('/') || cfg.path.split('/').any(|p| p == "..") {
            return Err(StageError::InvalidConfig(format!(
                "file: path `{}` must stay inside the workspace",
                cfg.path
            )));
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(cfg));
        Ok(())
    }

    fn publish(events: Vec<Event>) -> Result<(), StageError> {
        let path = CONFIG
            .with(|c| c.borrow().as_ref().map(|c| c.path.clone()))
            .ok_or_else(|| StageError::InvalidConfig("file: publish before configure".into()))?;
        if let Some(parent) = std::path::Path::new(&path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StageError::Failed(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut text = String::new();
        for e in &events {
            text.push_str(&to_json(e).to_string());
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StageError::Failed(format!("cannot open {path}: {e}")))?;
        file.write_all(text.as_bytes())
            .map_err(|e| StageError::Failed(format!("cannot write {path}: {e}")))?;
        gantry_sdk::info(format!("appended {} event(s) to {path}", events.len()));
        Ok(())
    }
}

gantry_sdk::export_sink!(FileSink);
