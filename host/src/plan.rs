//! A checked manifest resolved into what will run: each stage's plugin source,
//! configuration, grants and limits. Every problem found is reported at once,
//! each with file, line, column and field; nothing runs if there is one.

use crate::capabilities::Grants;
use crate::manifest::{
    Limits as LimitsSpec, ManifestError, ManifestErrors, ManifestFile, Permissions, closest,
};
use crate::plugins::{BUILTINS, PluginSource};
use crate::runtime::MAX_MEMORY;
use crate::runtime::limits::Limits;
use crate::units::{format_size, parse_duration, parse_size};
use serde_saphyr::Spanned;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// One stage or telemetry sink, ready to run.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The stage name, or `telemetry[i]` for a sink.
    pub name: String,
    /// Its manifest field, e.g. `stages[2]`.
    pub field: String,
    /// `uses:` as written.
    pub uses: String,
    pub source: PluginSource,
    /// `with:` as JSON text (`{}` when absent).
    pub config: String,
    pub grants: Grants,
    pub limits: Limits,
    /// Names of the stages this one needs (stages only).
    pub needs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline: String,
    pub manifest: PathBuf,
    /// Canonical workspace directory.
    pub workspace: PathBuf,
    pub stages: Vec<Unit>,
    pub sinks: Vec<Unit>,
}

impl Plan {
    pub fn new(file: &ManifestFile) -> Result<Plan, ManifestErrors> {
        let m = &file.manifest;
        let mut errors = vec![];
        let workspace = resolve_workspace(file, &mut errors);

        let mut seen = BTreeSet::new();
        let mut stages = vec![];
        for (i, s) in m.stages.iter().enumerate() {
            let field = format!("stages[{i}]");
            let name = &s.name.value;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                errors.push(file.error(
                    &s.name.referenced,
                    &format!("{field}.name"),
                    format!("`{name}` is not a stage name"),
                    Some("use letters, digits, `-` and `_`".into()),
                ));
            } else if !seen.insert(name.clone()) {
                errors.push(file.error(
                    &s.name.referenced,
                    &format!("{field}.name"),
                    format!("there is already a stage named `{name}`"),
                    None,
                ));
            }
            let mut needs = vec![];
            for (j, need) in s.needs.iter().enumerate() {
                if seen.contains(&need.value) && need.value != *name {
                    needs.push(need.value.clone());
                } else {
                    let help = closest(&need.value, seen.iter().map(String::as_str))
                        .map(|n| format!("did you mean `{n}`?"))
                        .or_else(|| Some("`needs` names a stage listed above this one".into()));
                    errors.push(file.error(
                        &need.referenced,
                        &format!("{field}.needs[{j}]"),
                        format!("`{}` is not an earlier stage", need.value),
                        help,
                    ));
                }
            }
            let unit = plan_unit(
                file,
                &field,
                &s.uses,
                &s.with,
                &s.permissions,
                &s.limits,
                &mut errors,
            );
            let timeout = s.timeout.as_ref().and_then(|t| {
                parse_duration(&t.value)
                    .map_err(|e| {
                        errors.push(file.error(&t.referenced, &format!("{field}.timeout"), e, None))
                    })
                    .ok()
            });
            if let Some(mut unit) = unit {
                unit.name = name.clone();
                unit.needs = needs;
                if let Some(timeout) = timeout {
                    unit.limits.timeout = timeout;
                }
                stages.push(unit);
            }
        }
        if m.stages.is_empty() {
            errors.push(file.error(
                &m.pipeline.referenced,
                "stages",
                "the pipeline has no stages",
                None,
            ));
        }

        let mut sinks = vec![];
        for (i, s) in m.telemetry.iter().enumerate() {
            let field = format!("telemetry[{i}]");
            let unit = plan_unit(
                file,
                &field,
                &s.uses,
                &s.with,
                &s.permissions,
                &s.limits,
                &mut errors,
            );
            if let Some(mut unit) = unit {
                unit.name = field;
                sinks.push(unit);
            }
        }

        if !errors.is_empty() {
            errors.sort_by_key(ManifestError::offset);
            return Err(ManifestErrors(errors));
        }
        Ok(Plan {
            pipeline: m.pipeline.value.clone(),
            manifest: file.path.clone(),
            workspace: workspace.expect("no errors, so the workspace resolved"),
            stages,
            sinks,
        })
    }
}

fn plan_unit(
    file: &ManifestFile,
    field: &str,
    uses: &Spanned<String>,
    with: &Option<serde_json::Value>,
    permissions: &Permissions,
    limits: &LimitsSpec,
    errors: &mut Vec<ManifestError>,
) -> Option<Unit> {
    let source = resolve_uses(file, field, uses, errors);
    let grants = Grants::configure(file, field, permissions, errors);
    let limits = resolve_limits(file, field, limits, errors);
    let config = with
        .as_ref()
        .map_or_else(|| "{}".to_string(), |v| v.to_string());
    source.map(|source| Unit {
        name: String::new(),
        field: field.to_string(),
        uses: uses.value.clone(),
        source,
        config,
        grants,
        limits,
        needs: vec![],
    })
}

/// `uses:` → an alias from `plugins:`, a `.wasm` path, or a built-in name.
fn resolve_uses(
    file: &ManifestFile,
    field: &str,
    uses: &Spanned<String>,
    errors: &mut Vec<ManifestError>,
) -> Option<PluginSource> {
    let field = format!("{field}.uses");
    let dir = file.dir();
    let source = if let Some(alias) = file.manifest.plugins.get(&uses.value) {
        match (&alias.value.path, &alias.value.builtin) {
            (Some(path), None) => Some(PluginSource::File(dir.join(path))),
            (None, Some(name)) => {
                PluginSource::parse(name, &dir).filter(|s| matches!(s, PluginSource::Builtin(_)))
            }
            _ => {
                errors.push(file.error(
                    &alias.referenced,
                    &format!("plugins.{}", uses.value),
                    "a plugin alias needs exactly one of `path` or `builtin`",
                    None,
                ));
                return None;
            }
        }
    } else {
        PluginSource::parse(&uses.value, &dir)
    };
    match source {
        Some(PluginSource::File(path)) if !path.is_file() => {
            errors.push(file.error(
                &uses.referenced,
                &field,
                format!("plugin file {} does not exist", path.display()),
                Some("paths in `uses:` are relative to the manifest's directory".into()),
            ));
            None
        }
        Some(source) => Some(source),
        None => {
            let names = BUILTINS
                .iter()
                .map(|b| b.name)
                .chain(file.manifest.plugins.keys().map(String::as_str));
            let help = match closest(&uses.value, names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "built-in plugins: {}; or give a path to a .wasm component",
                    BUILTINS
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            errors.push(file.error(
                &uses.referenced,
                &field,
                format!("unknown plugin `{}`", uses.value),
                Some(help),
            ));
            None
        }
    }
}

fn resolve_limits(
    file: &ManifestFile,
    field: &str,
    spec: &LimitsSpec,
    errors: &mut Vec<ManifestError>,
) -> Limits {
    let mut limits = Limits::default();
    let mut size = |v: &Option<Spanned<String>>, name: &str, max: u64, slot: &mut u64| {
        let Some(v) = v else { return };
        match parse_size(&v.value) {
            Ok(n) if n == 0 || n > max => errors.push(file.error(
                &v.referenced,
                &format!("{field}.limits.{name}"),
                format!("must be between 1 byte and {}", format_size(max)),
                None,
            )),
            Ok(n) => *slot = n,
            Err(e) => {
                errors.push(file.error(&v.referenced, &format!("{field}.limits.{name}"), e, None))
            }
        }
    };
    size(&spec.memory, "memory", MAX_MEMORY, &mut limits.memory);
    size(&spec.log, "log", 1 << 30, &mut limits.log);
    if let Some(v) = &spec.cpu {
        match parse_duration(&v.value) {
            Ok(d) => limits.cpu = d,
            Err(e) => {
                errors.push(file.error(&v.referenced, &format!("{field}.limits.cpu"), e, None))
            }
        }
    }
    limits
}

fn resolve_workspace(file: &ManifestFile, errors: &mut Vec<ManifestError>) -> Option<PathBuf> {
    let dir = match file.dir() {
        d if d.as_os_str().is_empty() => PathBuf::from("."),
        d => d,
    };
    let (path, at) = match &file.manifest.workspace {
        Some(w) => (dir.join(&w.value), Some(&w.referenced)),
        None => (dir, None),
    };
    match path.canonicalize() {
        Ok(p) if p.is_dir() => Some(p),
        result => {
            let why = match result {
                Ok(_) => "is not a directory".to_string(),
                Err(e) => e.to_string(),
            };
            let message = format!("workspace {}: {why}", path.display());
            errors.push(match at {
                Some(at) => file.error(at, "workspace", message, None),
                None => ManifestError::plain(message),
            });
            None
        }
    }
}
