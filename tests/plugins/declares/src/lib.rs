//! Declares capabilities in describe() (a program and an origin by name, a
//! secret from its configuration) and uses none: what `validate` compares
//! with the stage's grants.
use gantry_sdk::{Capability, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};

struct Declares;

impl Guest for Declares {
    fn describe() -> StageInfo {
        let cap = |kind, target: Option<&str>, reason: &str| Capability {
            kind,
            target: target.map(str::to_string),
            reason: reason.into(),
        };
        StageInfo {
            name: "declares".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Declares capabilities and uses none.".into(),
            config_schema: String::new(),
            capabilities: vec![
                cap(CapabilityKind::Exec, Some("cargo"), "builds the app"),
                cap(CapabilityKind::Http, Some("https://crates.io/api"), "looks up versions"),
                cap(CapabilityKind::Secret, None, "the token named in its configuration"),
            ],
        }
    }

    fn run(_: StageContext) -> Result<Outcome, StageError> {
        Ok(Outcome {
            artifacts: vec![],
            outputs: vec![],
            summary: "declared, used nothing".into(),
        })
    }
}

gantry_sdk::export_stage!(Declares);
