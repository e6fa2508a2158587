//! Reads its config, logs, optionally reads a granted secret and writes a file,
//! and returns outputs and an artifact: exercises the data path of the contract.
use gantry_sdk::{Artifact, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    message: String,
    /// Write the message to this workspace path and return it as an artifact.
    #[serde(default)]
    write: Option<String>,
    /// Read this secret and log it (the host must redact it).
    #[serde(default)]
    secret: Option<String>,
    /// Print this many lines to stdout.
    #[serde(default)]
    stdout_lines: u32,
    /// Append the stage name to this workspace file (a side-effect counter).
    #[serde(default)]
    append: Option<String>,
    /// Sleep this long after appending, before returning.
    #[serde(default)]
    sleep_ms: u64,
    /// Report a telemetry event of this name (`deployment` or any other),
    /// with the message as its `message` property.
    #[serde(default)]
    event: Option<String>,
    /// Log `tick 1` .. `tick N`, one every `tick_ms`, before returning (a
    /// log that grows while the stage runs).
    #[serde(default)]
    ticks: u32,
    #[serde(default)]
    tick_ms: u64,
    /// More outputs (e.g. a `digest`), as given.
    #[serde(default)]
    outputs: std::collections::BTreeMap<String, String>,
    /// The summary instead of `echoed N bytes`.
    #[serde(default)]
    summary: Option<String>,
}

struct Echo;

impl Guest for Echo {
    fn describe() -> StageInfo {
        StageInfo {
            name: "echo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Logs a message, optionally writes it to a file.".into(),
            config_schema: r#"{"type":"object","required":["message"],"properties":{"message":{"type":"string"},"write":{"type":"string"},"secret":{"type":"string"},"stdout_lines":{"type":"integer"},"append":{"type":"string"},"sleep_ms":{"type":"integer"},"event":{"type":"string"},"ticks":{"type":"integer"},"tick_ms":{"type":"integer"},"outputs":{"type":"object","additionalProperties":{"type":"string"}},"summary":{"type":"string"}},"additionalProperties":false}"#.into(),
            capabilities: vec![],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        gantry_sdk::info(format!("echo: {}", cfg.message));
        if let Some(name) = &cfg.event {
            gantry_sdk::telemetry::event(name, &[("message".into(), cfg.message.clone())]);
        }
        if let Some(path) = &cfg.append {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| StageError::Failed(format!("cannot open {path}: {e}")))?;
            // One write of the whole line: `writeln!` writes the name and the
            // newline separately, and a host killed between the two left a
            // torn line that the next append ran on ("secondsecond").
            f.write_all(format!("{}\n", ctx.stage).as_bytes())
                .map_err(|e| StageError::Failed(e.to_string()))?;
        }
        for i in 1..=cfg.ticks {
            gantry_sdk::info(format!("tick {i}"));
            std::thread::sleep(std::time::Duration::from_millis(cfg.tick_ms));
        }
        if cfg.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(cfg.sleep_ms));
        }
        for i in 0..cfg.stdout_lines {
            println!("stdout line {i}");
        }
        if let Some(name) = &cfg.secret {
            let value = gantry_sdk::secrets::get(name)?;
            gantry_sdk::info(format!("secret {name} is {value}"));
        }
        let upstream: Vec<String> = ctx
            .upstream
            .iter()
            .flat_map(|s| {
                s.outputs
                    .iter()
                    .map(move |(k, v)| format!("{}.{k}={v}", s.stage))
            })
            .collect();
        let mut artifacts = vec![];
        if let Some(path) = &cfg.write {
            std::fs::write(path, &cfg.message)
                .map_err(|e| StageError::Failed(format!("cannot write {path}: {e}")))?;
            artifacts.push(Artifact {
                name: "message".into(),
                media_type: "text/plain".into(),
                path: Some(path.clone()),
                reference: None,
                digest: None,
                annotations: vec![],
            });
        }
        let mut outputs = vec![
            ("message".into(), cfg.message.clone()),
            ("upstream".into(), upstream.join(",")),
            ("run-id".into(), ctx.run_id),
        ];
        outputs.extend(cfg.outputs);
        Ok(Outcome {
            artifacts,
            outputs,
            summary: cfg
                .summary
                .unwrap_or_else(|| format!("echoed {} bytes", cfg.message.len())),
        })
    }
}

gantry_sdk::export_stage!(Echo);
