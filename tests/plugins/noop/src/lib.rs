//! Does nothing and succeeds: the baseline for start-up benchmarks and for
//! "a benign stage in the same invocation still succeeds".
use gantry_sdk::{Guest, Outcome, StageContext, StageError, StageInfo};

struct Noop;

impl Guest for Noop {
    fn describe() -> StageInfo {
        StageInfo {
            name: "noop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Does nothing and succeeds.".into(),
            config_schema: String::new(),
            capabilities: vec![],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        Ok(Outcome {
            artifacts: vec![],
            outputs: vec![("stage".into(), ctx.stage)],
            summary: "nothing to do".into(),
        })
    }
}

gantry_sdk::export_stage!(Noop);
