//! Built-in stage `command`: runs a list of steps, each a granted program with
//! arguments, in the workspace. The first step that exits non-zero fails the stage
//! with the tail of its output.
use gantry_sdk::steps::{STEP_SCHEMA, Step};
use gantry_sdk::{CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    steps: Vec<Step>,
}

struct CommandStage;

impl Guest for CommandStage {
    fn describe() -> StageInfo {
        StageInfo {
            name: "command".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Runs a list of steps (granted programs with arguments) in the workspace; the first failing step fails the stage.".into(),
            config_schema: format!(
                r#"{{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["steps"], "additionalProperties": false,
                    "properties": {{"steps": {{"type": "array", "minItems": 1, "items": {STEP_SCHEMA}}}}}}}"#
            ),
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
            let name = step.label();
            gantry_sdk::log::progress(
                i as u64,
                Some(total),
                &format!("{name}: {}", step.run.join(" ")),
            );
            let status = step.run()?;
            outputs.push((
                format!("{name}.duration-ms"),
                status.duration_ms.to_string(),
            ));
            outputs.push((format!("{name}.exit-code"), "0".into()));
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
