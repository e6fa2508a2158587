//! A stage built against the frozen `gantry:pipeline@0.1.0` (wit/v0.1), as
//! every plugin built before 0.2 was: gantry must keep loading and running it
//! with the same host calls (log, telemetry, exec, secrets) and the same data.
wit_bindgen::generate!({ world: "stage", path: "../../../wit/v0.1", generate_all });

use exports::gantry::pipeline::plugin::Guest;
use gantry::pipeline::types::{HostError, Level, Outcome, StageContext, StageError, StageInfo};

struct Legacy;

fn message(e: HostError) -> String {
    match e {
        HostError::Denied(m) | HostError::Invalid(m) | HostError::Unavailable(m) | HostError::Failed(m) => m,
    }
}

impl Guest for Legacy {
    fn describe() -> StageInfo {
        StageInfo {
            name: "legacy".into(),
            version: "0.1.0".into(),
            description: "Built against gantry:pipeline@0.1.0 (tests only).".into(),
            config_schema: String::new(),
            capabilities: vec![],
        }
    }

    /// Logs, sends a metric, runs `echo` when the config says `exec: true`,
    /// and returns its inputs' count and the upstream outputs it saw.
    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        gantry::pipeline::log::log(Level::Info, &format!("legacy stage `{}` on the 0.1 contract", ctx.stage));
        gantry::pipeline::telemetry::metric("legacy.runs", 1.0, &[]);
        let mut outputs = vec![("contract".to_string(), "0.1.0".to_string())];
        if ctx.config.contains("\"exec\":true") {
            let status = gantry::pipeline::exec::run(&gantry::pipeline::exec::Command {
                program: "echo".into(),
                args: vec!["from-0.1".into()],
                cwd: None,
                env: vec![],
                timeout_ms: Some(10_000),
            })
            .map_err(|e| StageError::Denied(message(e)))?;
            outputs.push(("exec".into(), status.stdout.trim().to_string()));
        }
        let upstream: Vec<String> = ctx
            .upstream
            .iter()
            .flat_map(|u| u.outputs.iter().map(move |(k, v)| format!("{}.{k}={v}", u.stage)))
            .collect();
        outputs.push(("upstream".into(), upstream.join(",")));
        Ok(Outcome {
            artifacts: vec![],
            outputs,
            summary: "ran on the 0.1 contract".into(),
        })
    }
}

export!(Legacy);
