//! Built-in stage `command`: runs a list of steps, each a granted program with
//! arguments, in the workspace. The first step that exits non-zero fails the stage
//! with the tail of its output.
use gantry_sdk::exec::{self, Command};
use gantry_sdk::{CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Shown in the log and used as the output key prefix; defaults to the program.
    #[serde(default)]
    name: Option<String>,
    /// Program and arguments; the program must be granted in `permissions.exec`.
    run: Vec<String>,
    /// Working directory relative to the workspace.
    #[serde(default)]
    cwd: Option<String>,
    /// Extra environment variables for the program.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Kill the program after this many seconds.
    #[serde(default, rename = "timeout-seconds")]
    timeout_seconds: Option<u64>,
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["steps"],
  "additionalProperties": false,
  "properties": {
    "steps": {
      "type": "array",
      "minItems": 1,
      "items": {
        "type": "object",
        "required": ["run"],
        "additionalProperties": false,
        "properties": {
          "name": {"type": "string", "description": "Label for logs and outputs"},
          "run": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                  "description": "Program (granted in permissions.exec) and its arguments"},
          "cwd": {"type": "string", "description": "Working directory relative to the workspace"},
          "env": {"type": "object", "additionalProperties": {"type": "string"}},
          "timeout-seconds": {"type": "integer", "minimum": 1}
        }
      }
    }
  }
}"#;

/// The last `n` lines of `text`, for error messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct CommandStage;

impl Guest for CommandStage {
    fn describe() -> StageInfo {
        StageInfo {
            name: "command".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Runs a list of steps (granted programs with arguments) in the workspace; the first failing step fails the stage.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![gantry_sdk::Capability {
                kind: CapabilityKind::Exec,
                target: None,
                reason: "each step's program (`run[0]`)".into(),
            }],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        if cfg.steps.is_empty() {
            return Err(StageError::InvalidConfig("`steps` is empty".into()));
        }
        let mut outputs = vec![];
        let total = cfg.steps.len() as u64;
        for (i, step) in cfg.steps.iter().enumerate() {
            let Some((program, args)) = step.run.split_first() else {
                return Err(StageError::InvalidConfig(format!(
                    "steps[{i}].run is empty"
                )));
            };
            let name = step.name.clone().unwrap_or_else(|| program.clone());
            gantry_sdk::log::progress(
                i as u64,
                Some(total),
                &format!("{name}: {}", step.run.join(" ")),
            );
            let status = exec::run(&Command {
                program: program.clone(),
                args: args.to_vec(),
                cwd: step.cwd.clone(),
                env: step.env.clone().into_iter().collect(),
                timeout_ms: step.timeout_seconds.map(|s| s * 1000),
            })?;
            gantry_sdk::telemetry::metric(
                "step.duration-ms",
                status.duration_ms as f64,
                &[("step".into(), name.clone())],
            );
            outputs.push((
                format!("{name}.duration-ms"),
                status.duration_ms.to_string(),
            ));
            match status.code {
                Some(0) => outputs.push((format!("{name}.exit-code"), "0".into())),
                code => {
                    let why = if status.timed_out {
                        format!("timed out after {} s", step.timeout_seconds.unwrap_or(0))
                    } else {
                        code.map_or("was killed".into(), |c| format!("exited with {c}"))
                    };
                    let out = if status.stderr.trim().is_empty() {
                        &status.stdout
                    } else {
                        &status.stderr
                    };
                    return Err(StageError::Failed(format!(
                        "step `{name}` ({}) {why}; last lines:\n{}",
                        step.run.join(" "),
                        tail(out, 20)
                    )));
                }
            }
        }
        gantry_sdk::log::progress(total, Some(total), "done");
        Ok(Outcome {
            artifacts: vec![],
            outputs,
            summary: format!("{total} step(s) succeeded"),
        })
    }
}

gantry_sdk::export_stage!(CommandStage);
