//! {{name}}: a gantry stage. It reads a file of the workspace, logs what it
//! found, returns the counts as outputs and, when asked, writes a report that
//! it hands on as an artifact.

// Natively (`cargo test`) nothing calls the exports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use gantry_sdk::{
    Artifact, Capability, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo,
};
use serde::Deserialize;

/// The stage's `with:`; gantry checks it against [`SCHEMA`] before the run.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    file: String,
    #[serde(default)]
    report: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["file"],
  "properties": {
    "file": { "type": "string", "description": "Workspace file to read" },
    "report": { "type": "string", "description": "Write a report here (needs workspace: write)" },
    "secret": { "type": "string", "description": "A granted secret to check is set" }
  },
  "additionalProperties": false
}"#;

/// Lines and words of `text`: the plugin's own logic, unit-tested natively.
pub fn count(text: &str) -> (usize, usize) {
    (text.lines().count(), text.split_whitespace().count())
}

struct Plugin;

impl Guest for Plugin {
    fn describe() -> StageInfo {
        StageInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Counts the lines and words of a workspace file.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                Capability {
                    kind: CapabilityKind::WorkspaceWrite,
                    target: None,
                    reason: "writes the report when `report` is set".into(),
                },
                Capability {
                    kind: CapabilityKind::Secret,
                    target: None,
                    reason: "reads the secret named by `secret`".into(),
                },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        // The workspace is the current directory (and /workspace).
        let text = std::fs::read_to_string(&cfg.file)
            .map_err(|e| StageError::Failed(format!("cannot read {}: {e}", cfg.file)))?;
        let (lines, words) = count(&text);
        gantry_sdk::info(format!("{}: {lines} lines, {words} words", cfg.file));
        let mut outputs = vec![
            gantry_sdk::output("lines", lines.to_string()),
            gantry_sdk::output("words", words.to_string()),
        ];
        if let Some(name) = &cfg.secret {
            // A host error (not granted, no value) becomes the stage's error.
            let value = gantry_sdk::secrets::get(name)
                .map_err(|e| gantry_sdk::prefix(e.into(), &format!("secret {name}")))?;
            outputs.push(gantry_sdk::output("secret-set", (!value.is_empty()).to_string()));
        }
        let mut artifacts = vec![];
        if let Some(path) = &cfg.report {
            std::fs::write(path, format!("{}: {lines} lines, {words} words\n", cfg.file))
                .map_err(|e| StageError::Failed(format!("cannot write {path}: {e}")))?;
            artifacts.push(Artifact {
                name: "report".into(),
                media_type: "text/plain".into(),
                path: Some(path.clone()),
                reference: None,
                digest: None,
                annotations: vec![],
            });
        }
        Ok(Outcome {
            artifacts,
            outputs,
            summary: format!("{lines} lines, {words} words"),
        })
    }
}

// Exported only in the component: the export names (`gantry:pipeline/...`)
// are not valid symbols for a native library, which `cargo test` also links.
#[cfg(target_arch = "wasm32")]
gantry_sdk::export_stage!(Plugin);

#[cfg(test)]
mod tests {
    #[test]
    fn counts_lines_and_words() {
        assert_eq!(super::count("one two\nthree\n"), (2, 3));
        assert_eq!(super::count(""), (0, 0));
    }

    #[test]
    fn the_config_schema_is_json() {
        let schema: serde_json::Value = serde_json::from_str(super::SCHEMA).unwrap();
        assert_eq!(schema["required"][0], "file");
    }
}
