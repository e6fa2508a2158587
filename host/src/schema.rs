//! Checking a stage's `with:` against the JSON Schema its plugin describes.

/// One violation: where in the config (`.steps[0].run`) and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub path: String,
    /// The same place as a JSON pointer (`/steps/0/run`), for finding it in the
    /// source; for an unexpected key, the key itself.
    pub pointer: String,
    pub message: String,
}

/// [`check_config`] as manifest errors: each points inside the `with:`
/// written at `at` in `file` (field `field`, e.g. `stages[2]`), with a hint
/// to `gantry plugins inspect <inspect>`.
pub fn config_errors(
    file: &crate::manifest::ManifestFile,
    at: &serde_saphyr::Location,
    field: &str,
    schema: &serde_json::Value,
    config: &serde_json::Value,
    inspect: &str,
) -> Vec<crate::manifest::ManifestError> {
    check_config(schema, config)
        .into_iter()
        .map(|e| {
            file.error_inside(
                at,
                &e.pointer,
                &format!("{field}.with{}", e.path),
                e.message,
                Some(format!(
                    "`gantry plugins inspect {inspect}` shows its config schema"
                )),
            )
        })
        .collect()
}

/// Every violation of `schema` by `config`. Strings holding `${{ }}`
/// expressions are checked as written: their values are known only at run time.
pub fn check_config(schema: &serde_json::Value, config: &serde_json::Value) -> Vec<ConfigError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![ConfigError {
                path: String::new(),
                pointer: String::new(),
                message: format!("the plugin's schema is invalid: {e}"),
            }];
        }
    };
    validator
        .iter_errors(config)
        .filter(|e| {
            // A string with an expression is only known at run time.
            let at = config.pointer(&e.instance_path.to_string());
            !at.and_then(|v| v.as_str())
                .is_some_and(|s| s.contains("${{"))
        })
        .map(|e| {
            let mut pointer = e.instance_path.to_string();
            // "Additional properties are not allowed": point at the first one.
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                &e.kind
                && let Some(key) = unexpected.first()
            {
                pointer = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
            }
            ConfigError {
                path: pointer_to_path(&e.instance_path.to_string()),
                pointer,
                message: e.to_string(),
            }
        })
        .collect()
}

/// `/steps/0/run` → `.steps[0].run`.
fn pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                format!("[{p}]")
            } else {
                format!(".{p}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_name_the_path() {
        let schema = json!({"type": "object", "required": ["steps"], "properties": {"steps": {"type": "array", "items": {"type": "object", "properties": {"run": {"type": "array"}}}}}, "additionalProperties": false});
        let errs = check_config(
            &schema,
            &json!({"steps": [{"run": "cargo test"}], "extra": 1}),
        );
        let text: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with(".steps[0].run: ") && t.contains("array")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("extra")), "{text:?}");
        assert!(check_config(&schema, &json!({"steps": []})).is_empty());
        let tags = json!({"type": "object", "properties": {"tag": {"type": "string", "pattern": "^[a-z]+$"}}});
        assert!(
            check_config(&tags, &json!({"tag": "${{ run.id }}"})).is_empty(),
            "expressions are checked at run time"
        );
        assert_eq!(check_config(&tags, &json!({"tag": "UPPER"})).len(), 1);
    }
}
