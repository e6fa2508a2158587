//! `gantry plugins test`: run a stage plugin against the cases of a case file,
//! with the host's answers scripted (nothing outside is reached), and check
//! its outcome, outputs, artifacts, files, calls and denials; or, with
//! `--record`, run it for real once per case and write what it saw as cases.
//!
//! The plugin runs exactly as in a pipeline (same runtime, limits and grant
//! checks, so denials are the real ones); only the effect of an allowed call
//! goes through [`crate::capabilities::effects::Effects`] instead.

pub mod case;
pub mod script;

use crate::capabilities::effects::Effects;
use crate::capabilities::secrets::SecretStore;
use crate::capabilities::state::StateStore;
use crate::capabilities::telemetry::{Collector, EventBase};
use crate::capabilities::{Grants, Subject};
use crate::manifest::{ManifestError, ManifestErrors};
use crate::redact::Redactor;
use crate::report::Reporter;
use crate::runtime::bindings::types::{StageContext, StageOutputs};
use crate::runtime::limits::Limits;
use crate::runtime::state::StageState;
use crate::runtime::{InstanceContext, Plugin, Runtime};
use anyhow::Context;
use case::{Case, Expect, Loaded, Outcome, SecretValue};
use script::{Recorder, Script};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A case ready to run: its grants checked, its secrets read.
struct Prepared<'a> {
    index: usize,
    case: &'a Case,
    grants: Grants,
    limits: Limits,
    secrets: BTreeMap<String, String>,
}

/// Check every case before any runs: grants as in a manifest, timeouts,
/// secret sources, workspace paths. Errors name the file and line.
fn prepare(loaded: &Loaded, recording: bool) -> Result<Vec<Prepared<'_>>, ManifestErrors> {
    let file = &loaded.as_manifest;
    let mut errors: Vec<ManifestError> = vec![];
    let mut names = BTreeSet::new();
    let mut prepared = vec![];
    if loaded.file.cases.is_empty() {
        errors.push(ManifestError::plain(format!(
            "{}: no cases under `cases:`",
            loaded.path.display()
        )));
    }
    for (i, case) in loaded.file.cases.iter().enumerate() {
        let field = format!("cases[{i}]");
        if !names.insert(case.name.value.as_str()) {
            errors.push(file.error(
                &case.name.referenced,
                &format!("{field}.name"),
                format!("a second case named `{}`", case.name.value),
                Some("give each case its own name".into()),
            ));
        }
        let defined: BTreeSet<String> = case.secrets.keys().cloned().collect();
        let grants = Grants::configure(file, &field, &case.permissions, &defined, &mut errors);
        // Only HTTP and exec are recorded: a case cannot reach a cluster, and
        // engine calls change the machine.
        let scripted_only = [
            (
                "engine",
                case.permissions
                    .engine
                    .as_ref()
                    .filter(|e| e.value)
                    .map(|e| e.referenced),
            ),
            (
                "cluster",
                case.permissions
                    .cluster
                    .as_ref()
                    .and_then(|c| c.namespaces.first())
                    .map(|n| n.referenced),
            ),
        ];
        for (what, at) in scripted_only {
            if let (true, Some(at)) = (recording, at) {
                errors.push(file.error(
                    &at,
                    &format!("{field}.permissions.{what}"),
                    format!("--record records HTTP requests and programs, not {what} calls"),
                    Some(format!(
                        "write the answers under `{what}:` in the case by hand"
                    )),
                ));
            }
        }
        let mut limits = Limits {
            timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        if let Some(t) = &case.timeout {
            match crate::units::parse_duration(&t.value) {
                Ok(d) => limits.timeout = d,
                Err(e) => errors.push(file.error(
                    &t.referenced,
                    &format!("{field}.timeout"),
                    e,
                    Some("write e.g. `30s` or `2m`".into()),
                )),
            }
        }
        let mut secrets = BTreeMap::new();
        for (name, value) in &case.secrets {
            let at = &value.referenced;
            let field = format!("{field}.secrets.{name}");
            match &value.value {
                SecretValue::Value(_) if recording => errors.push(file.error(
                    at,
                    &field,
                    "with --record, secret values come from the environment, so that the recorded file holds none",
                    Some(format!("write `{name}: {{ env: SOME_VARIABLE }}`")),
                )),
                SecretValue::Value(v) => {
                    secrets.insert(name.clone(), v.clone());
                }
                SecretValue::Env { env } => match std::env::var(env) {
                    Ok(v) => {
                        secrets.insert(name.clone(), v);
                    }
                    Err(_) => errors.push(file.error(
                        at,
                        &field,
                        format!("environment variable `{env}` is not set"),
                        None,
                    )),
                },
            }
        }
        for key in case.state.keys() {
            if let Some(why) = crate::capabilities::state::check_key(key) {
                errors.push(file.error(
                    &case.name.referenced,
                    &format!("{field}.state"),
                    why,
                    None,
                ));
            }
        }
        for path in case.workspace.files.keys() {
            if !is_relative_inside(path) {
                errors.push(file.error(
                    &case.name.referenced,
                    &format!("{field}.workspace.files"),
                    format!("`{path}` is not a relative path inside the workspace"),
                    None,
                ));
            }
        }
        prepared.push(Prepared {
            index: i,
            case,
            grants,
            limits,
            secrets,
        });
    }
    if errors.is_empty() {
        Ok(prepared)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Check a case file (as [`test`] and [`record`] will) without running it.
pub fn check(loaded: &Loaded, recording: bool) -> Result<(), ManifestErrors> {
    prepare(loaded, recording).map(|_| ())
}

fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The stage's config: `with`, or an empty object.
fn config(case: &Case) -> serde_json::Value {
    case.with
        .as_ref()
        .map_or(serde_json::Value::Object(Default::default()), |w| {
            w.value.clone()
        })
}

/// Check each case's `with` against the config schema the plugin describes,
/// as `gantry validate` does for a stage: a pipeline would never run it.
async fn check_configs(
    runtime: &Runtime,
    plugin: &Plugin,
    loaded: &Loaded,
    prepared: &[Prepared<'_>],
) -> anyhow::Result<()> {
    let ctx = instance_context(
        PathBuf::new(),
        Arc::new(crate::report::Silent),
        SecretStore::default(),
    );
    let info = runtime.describe(plugin, &ctx).await?;
    let Ok(schema) = serde_json::from_str::<serde_json::Value>(&info.config_schema) else {
        return Ok(());
    };
    let file = &loaded.as_manifest;
    let mut errors = vec![];
    for p in prepared {
        let at = p
            .case
            .with
            .as_ref()
            .map_or(p.case.name.referenced, |w| w.referenced);
        errors.extend(crate::schema::config_errors(
            file,
            &at,
            &format!("cases[{}]", p.index),
            &schema,
            &config(p.case),
            plugin
                .label
                .strip_prefix("builtin:")
                .unwrap_or(&plugin.label),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ManifestErrors(errors).into())
    }
}

/// The context a case's stage (or describe()) runs in: nothing of a real run.
fn instance_context(
    workspace: PathBuf,
    reporter: Arc<dyn Reporter>,
    store: SecretStore,
) -> InstanceContext {
    InstanceContext {
        workspace,
        reporter,
        redactor: store.redactor(),
        secrets: Arc::new(store),
        collector: Collector::default(),
        base: EventBase {
            run_id: "certify".into(),
            pipeline: "certify".into(),
            environment: "certify".into(),
        },
        logs: None,
        state: None,
        // No cluster is configured: a cluster call the effects leave to the real
        // world fails, reaching nothing.
        cluster: Arc::new(crate::capabilities::cluster::kube::Connection::new(
            None, "certify",
        )),
    }
}

/// How one run of a case ended, with everything the expectations look at.
pub struct Observed {
    /// `success` or the failure's kind.
    pub kind: String,
    /// The summary, or the failure in words.
    pub message: String,
    pub outputs: Vec<(String, String)>,
    /// (name, path) of each artifact.
    pub artifacts: Vec<(String, Option<String>)>,
    pub calls: Vec<String>,
    pub denials: Vec<String>,
    /// Calls the script had no answer for.
    pub unmatched: Vec<String>,
    /// Workspace files after the run, for the paths `expect.files` names
    /// (or that artifacts point at): `None` when missing.
    pub files: BTreeMap<String, Option<String>>,
    /// Host-kept state after the run.
    pub state: BTreeMap<String, Option<String>>,
}

/// A fresh workspace holding the case's files, and beside it (out of the
/// plugin's reach) the host-kept state seeded with the case's values.
fn make_workspace(case: &Case) -> anyhow::Result<(tempfile::TempDir, PathBuf, Arc<StateStore>)> {
    let dir = tempfile::Builder::new()
        .prefix("gantry-case-")
        .tempdir()
        .context("creating the case's workspace")?;
    let workspace = dir.path().join("workspace");
    std::fs::create_dir(&workspace).context("creating the case's workspace")?;
    for (path, content) in &case.workspace.files {
        let to = workspace.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&to, content).with_context(|| format!("writing {}", to.display()))?;
    }
    let private = crate::state_dir::PrivateDir::open_private(dir.path())?;
    let state = StateStore::new(private.create_subdir("state")?);
    for (key, value) in &case.state {
        state
            .set(key, value.as_bytes(), None)?
            .map_err(anyhow::Error::msg)?;
    }
    Ok((dir, workspace.canonicalize()?, Arc::new(state)))
}

/// Run one case once in `workspace` with `effects` in place of the outside world.
async fn run_case(
    runtime: &Runtime,
    plugin: &Plugin,
    p: &Prepared<'_>,
    (workspace, kept): (&Path, Arc<StateStore>),
    effects: Arc<dyn Effects>,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<(Observed, Redactor)> {
    let workspace = workspace.to_path_buf();
    let mut ctx = instance_context(
        workspace.clone(),
        reporter,
        SecretStore::from_values(p.secrets.clone()),
    );
    ctx.state = Some(kept.clone());
    let redactor = ctx.redactor.clone();
    let subject = Subject::new(&p.case.stage, &format!("cases[{}]", p.index));
    let denials = subject.denials.clone();
    let mut state = StageState::prepare(&ctx, subject, &p.grants, &p.limits)?;
    state.http_policy.effects = Some(effects.clone());
    state.exec.effects = Some(effects.clone());
    state.cluster.effects = Some(effects.clone());
    state.engine.effects = Some(effects);
    let context = StageContext {
        run_id: "certify".into(),
        pipeline: "certify".into(),
        stage: p.case.stage.clone(),
        environment: "certify".into(),
        config: config(p.case).to_string(),
        inputs: vec![],
        upstream: p
            .case
            .upstream
            .iter()
            .map(|(stage, outputs)| StageOutputs {
                stage: stage.clone(),
                outputs: outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
    };
    let result = runtime
        .run_stage(plugin, state, &context, &p.limits)
        .await
        .and_then(|o| {
            crate::pipeline::check_artifacts(&o.artifacts)
                .map(|()| o)
                .map_err(|why| {
                    crate::runtime::Failure::Stage(
                        crate::runtime::bindings::types::StageError::Denied(why),
                    )
                })
        });
    let mut observed = Observed {
        kind: "success".into(),
        message: String::new(),
        outputs: vec![],
        artifacts: vec![],
        calls: vec![],
        denials: denials.take(),
        unmatched: vec![],
        files: BTreeMap::new(),
        state: BTreeMap::new(),
    };
    for key in kept.keys()? {
        let value = kept
            .get(&key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        observed.state.insert(key, value);
    }
    match result {
        Ok(o) => {
            observed.message = o.summary;
            observed.outputs = o.outputs;
            observed.artifacts = o.artifacts.into_iter().map(|a| (a.name, a.path)).collect();
        }
        Err(f) => {
            observed.kind = f.kind().into();
            observed.message = f.message(&p.case.stage);
        }
    }
    let wanted = p
        .case
        .expect
        .files
        .iter()
        .flat_map(|f| f.keys().cloned())
        .chain(observed.artifacts.iter().filter_map(|(_, p)| p.clone()));
    for path in wanted.collect::<Vec<_>>() {
        // Resolved as the host resolves a stage's paths: a link the plugin
        // planted that leads out of the workspace is not read.
        let content = crate::capabilities::workspace::resolve_inside(&workspace, &path)
            .ok()
            .and_then(|at| std::fs::read(at).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        observed.files.insert(path, content);
    }
    Ok((observed, redactor))
}

/// What differs between `expect` and what was observed, in words; empty when
/// the case passes. Calls nothing answered fail the case whatever it expects.
pub fn differences(expect: &Expect, seen: &Observed) -> Vec<String> {
    let mut out: Vec<String> = seen.unmatched.clone();
    if let Some(outcome) = expect.outcome
        && !outcome.accepts(&seen.kind)
    {
        out.push(format!(
            "outcome: expected {}, got {}{}",
            outcome.as_str(),
            seen.kind,
            if seen.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", seen.message)
            }
        ));
    }
    if let Some(m) = &expect.message
        && !seen.message.contains(m.as_str())
    {
        out.push(format!(
            "message: expected it to contain `{m}`, got `{}`",
            seen.message
        ));
    }
    for (k, v) in expect.outputs.iter().flatten() {
        match seen.outputs.iter().find(|(key, _)| key == k) {
            Some((_, got)) if got == v => {}
            Some((_, got)) => out.push(format!("outputs.{k}: expected `{v}`, got `{got}`")),
            None => out.push(format!(
                "outputs.{k}: expected `{v}`, but there is no such output"
            )),
        }
    }
    for want in expect.artifacts.iter().flatten() {
        let found = seen
            .artifacts
            .iter()
            .find(|(name, path)| name == want || path.as_deref() == Some(want.as_str()));
        match found {
            None => out.push(format!(
                "artifacts: expected `{want}`, got [{}]",
                seen.artifacts
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some((name, Some(path))) if seen.files.get(path).is_none_or(Option::is_none) => out
                .push(format!(
                    "artifacts: `{name}` points at `{path}`, which is not in the workspace"
                )),
            Some(_) => {}
        }
    }
    if let Some(calls) = &expect.calls
        && *calls != seen.calls
    {
        out.push(calls_differ(calls, &seen.calls));
    }
    if let Some(denials) = &expect.denials {
        let mut left: Vec<&String> = seen.denials.iter().collect();
        let mut missing = vec![];
        for want in denials {
            match left.iter().position(|d| d.contains(want.as_str())) {
                Some(i) => {
                    left.remove(i);
                }
                None => missing.push(want.as_str()),
            }
        }
        for m in missing {
            out.push(format!("denials: expected one containing `{m}`"));
        }
        for d in left {
            out.push(format!("denials: unexpected `{d}`"));
        }
    }
    for (key, want) in expect.state.iter().flatten() {
        let got = seen.state.get(key).cloned().flatten();
        if got != *want {
            let shown = |v: &Option<String>| v.as_ref().map_or("none".into(), |v| format!("`{v}`"));
            out.push(format!(
                "state.{key}: expected {}, got {}",
                shown(want),
                shown(&got)
            ));
        }
    }
    for (path, want) in expect.files.iter().flatten() {
        match seen.files.get(path) {
            Some(Some(got)) if got == want => {}
            Some(Some(got)) => out.push(format!("files.{path}: expected `{want}`, got `{got}`")),
            _ => out.push(format!(
                "files.{path}: expected `{want}`, but there is no such file"
            )),
        }
    }
    out
}

/// Where two call lists part: the whole lists when short, else the first
/// call that differs and the counts.
fn calls_differ(expected: &[String], made: &[String]) -> String {
    if expected.len() + made.len() <= 6 {
        return format!(
            "calls: expected [{}], got [{}]",
            expected.join(", "),
            made.join(", ")
        );
    }
    let i = expected
        .iter()
        .zip(made)
        .take_while(|(a, b)| a == b)
        .count();
    let at = |list: &[String]| {
        list.get(i)
            .map_or("no more calls".into(), |c| format!("`{c}`"))
    };
    format!(
        "calls[{i}]: expected {}, got {} ({} call(s) expected, {} made)",
        at(expected),
        at(made),
        expected.len(),
        made.len()
    )
}

/// The result of one case.
pub struct Verdict {
    pub name: String,
    pub differences: Vec<String>,
}

impl Verdict {
    /// `✓ name`, or `✗ name: what differed; ...`.
    pub fn line(&self) -> String {
        if self.differences.is_empty() {
            format!("✓ {}", self.name)
        } else {
            format!("✗ {}: {}", self.name, self.differences.join("; "))
        }
    }
}

/// Run every case of `loaded` against its script.
pub async fn test(
    runtime: &Runtime,
    plugin: &Plugin,
    loaded: &Loaded,
    reporter: Arc<dyn Reporter>,
    mut each: impl FnMut(&Verdict),
) -> anyhow::Result<Vec<Verdict>> {
    let prepared = prepare(loaded, false)?;
    check_configs(runtime, plugin, loaded, &prepared).await?;
    let mut verdicts = vec![];
    for p in &prepared {
        let (_dir, workspace, state) = make_workspace(p.case)?;
        let script = Arc::new(Script::new(p.case, &workspace, p.grants.workspace.write));
        let (mut seen, redactor) = run_case(
            runtime,
            plugin,
            p,
            (&workspace, state),
            script.clone(),
            reporter.clone(),
        )
        .await
        .with_context(|| format!("case `{}`", p.case.name.value))?;
        (seen.calls, seen.unmatched) = script.finish();
        let verdict = Verdict {
            name: p.case.name.value.clone(),
            differences: differences(&p.case.expect, &seen)
                .iter()
                .map(|d| redactor.redact(d))
                .collect(),
        };
        each(&verdict);
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// One recorded case as written: config, grants and workspace copied as
/// written, then what the real world answered and what came out.
#[derive(serde::Serialize)]
struct RecordedCase {
    name: String,
    #[serde(flatten)]
    given: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http: Vec<case::HttpScript>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exec: Vec<case::ExecScript>,
    expect: Expect,
}

#[derive(serde::Serialize)]
struct RecordedFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<String>,
    cases: Vec<RecordedCase>,
}

/// What a case copies from its source into the recording.
const GIVEN: &[&str] = &[
    "stage",
    "with",
    "permissions",
    "timeout",
    "workspace",
    "secrets",
    "state",
    "upstream",
];

/// Run every case of `loaded` for real once and write them, with the answers
/// seen and the outcome as expectations, to `out`. Secret values are masked
/// in everything written. Returns one line per case.
pub async fn record(
    runtime: &Runtime,
    plugin: &Plugin,
    plugin_written: Option<String>,
    loaded: &Loaded,
    out: &Path,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<Vec<String>> {
    let prepared = prepare(loaded, true)?;
    check_configs(runtime, plugin, loaded, &prepared).await?;
    let mut cases = vec![];
    let mut lines = vec![];
    let mut redactors = vec![];
    for p in &prepared {
        let (_dir, workspace, state) = make_workspace(p.case)?;
        let recorder = Arc::new(Recorder::new(&workspace));
        let (seen, redactor) = run_case(
            runtime,
            plugin,
            p,
            (&workspace, state),
            recorder.clone(),
            reporter.clone(),
        )
        .await
        .with_context(|| format!("case `{}`", p.case.name.value))?;
        let recorded = recorder.finish();
        let outcome = if seen.kind == "success" {
            Outcome::Success
        } else {
            serde_json::from_value(serde_json::Value::String(seen.kind.clone()))?
        };
        lines.push(format!(
            "● {}: {} ({} call(s))",
            p.case.name.value,
            outcome.as_str(),
            recorded.calls.len()
        ));
        let raw = &loaded.raw["cases"][p.index];
        let given = GIVEN
            .iter()
            .filter_map(|k| Some((k.to_string(), raw.get(*k)?.clone())))
            .collect();
        let files: BTreeMap<String, String> = p
            .case
            .expect
            .files
            .iter()
            .flat_map(|f| f.keys())
            .filter_map(|k| Some((k.clone(), seen.files.get(k)?.clone()?)))
            .collect();
        cases.push(RecordedCase {
            name: p.case.name.value.clone(),
            given,
            http: recorded.http,
            exec: recorded.exec,
            expect: Expect {
                outcome: Some(outcome),
                message: (!seen.message.is_empty()).then(|| seen.message.clone()),
                outputs: Some(seen.outputs.into_iter().collect()),
                artifacts: Some(seen.artifacts.into_iter().map(|(n, _)| n).collect()),
                calls: Some(recorded.calls),
                denials: Some(seen.denials),
                files: (!files.is_empty()).then_some(files),
                state: (!seen.state.is_empty()).then_some(seen.state),
            },
        });
        redactors.push(redactor);
    }
    let file = RecordedFile {
        plugin: plugin_written.or_else(|| loaded.file.plugin.clone()),
        cases,
    };
    let mut text = format!(
        "# Recorded by `gantry plugins test --record`: the answers below are what the\n\
         # plugin got from the real world; secret values are masked.\n{}",
        serde_saphyr::to_string(&file)?
    );
    for r in &redactors {
        text = r.redact(&text);
    }
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(kind: &str, calls: &[&str]) -> Observed {
        Observed {
            kind: kind.into(),
            message: "done".into(),
            outputs: vec![("n".into(), "3".into())],
            artifacts: vec![("report".into(), Some("report.json".into()))],
            calls: calls.iter().map(|c| c.to_string()).collect(),
            denials: vec!["stage `s` is not allowed to read secret `t`".into()],
            unmatched: vec![],
            files: BTreeMap::from([("report.json".into(), None)]),
            state: BTreeMap::new(),
        }
    }

    #[test]
    fn each_difference_is_named() {
        let expect = Expect {
            outcome: Some(Outcome::Failure),
            outputs: Some(BTreeMap::from([("n".into(), "4".into())])),
            artifacts: Some(vec!["report".into()]),
            denials: Some(vec![]),
            state: Some(BTreeMap::from([("k".into(), Some("v".into()))])),
            ..Expect::default()
        };
        let d = differences(&expect, &observed("success", &[]));
        assert_eq!(
            d,
            [
                "outcome: expected failure, got success (done)",
                "outputs.n: expected `4`, got `3`",
                "artifacts: `report` points at `report.json`, which is not in the workspace",
                "denials: unexpected `stage `s` is not allowed to read secret `t``",
                "state.k: expected `v`, got none",
            ]
        );
        let met = Expect {
            outcome: Some(Outcome::Success),
            denials: Some(vec!["secret `t`".into()]),
            ..Expect::default()
        };
        assert!(differences(&met, &observed("success", &[])).is_empty());
        assert!(Outcome::Failure.accepts("transient"));
        assert!(!Outcome::Denied.accepts("failed"));
    }

    #[test]
    fn long_call_lists_are_compared_at_the_first_difference() {
        let made: Vec<String> = (0..50).map(|_| "GET https://x/".to_string()).collect();
        let expected = vec!["GET https://x/".to_string(), "engine remove a".to_string()];
        assert_eq!(
            calls_differ(&expected, &made),
            "calls[1]: expected `engine remove a`, got `GET https://x/` (2 call(s) expected, 50 made)"
        );
        assert_eq!(
            calls_differ(&made[..8], &made[..7]),
            "calls[7]: expected `GET https://x/`, got no more calls (8 call(s) expected, 7 made)"
        );
    }
}
