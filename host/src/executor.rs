//! The one executor: how a run is started, resumed and promoted, whoever asks
//! (`gantry run`, `gantry resume`, `gantry promote`, and the service). It plans
//! the manifest, loads and checks the plugins, creates or reopens the run's
//! journal, checks what a resume or promotion must find unchanged, and hands
//! the plan to [`Pipeline::run`]. It prints nothing itself: progress goes to
//! the caller's [`Reporter`], and a manifest or plugin that is wrong comes back
//! as an [`Invalid`] error holding the rendered diagnostics.

use crate::capabilities::state::StateStore;
use crate::journal::{ApprovalRecord, Journal, PluginRecord, Record};
use crate::manifest::{Approval, ManifestFile};
use crate::oci::fetch::LockMode;
use crate::pipeline::{Pipeline, Plugins, Resume, RunResult, Trigger, load_plugins};
use crate::plan::{Plan, environment_arg};
use crate::plugins::PluginSource;
use crate::report::{Reporter, Silent};
use crate::runtime::{InstanceContext, Runtime};
use crate::state_dir::{PrivateDir, WorkspaceState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The manifest or a plugin is invalid; nothing ran. The text is the rendered
/// diagnostics (file:line:column: field: message, with the line shown), ready
/// to print as is.
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Start a new run.
pub struct RunRequest {
    /// The pipeline manifest.
    pub manifest: PathBuf,
    /// The environment; `None`: the manifest's default.
    pub environment: Option<String>,
    /// The run's id; `None`: a new one ([`crate::pipeline::new_run_id`]).
    /// It must be new in the workspace: a run directory is never reused.
    pub run_id: Option<String>,
    /// What triggered the run; `None`: detect it from the CI system's
    /// variables and git in the workspace ([`Trigger::detect`]). Its
    /// `previous_commit`, when `None`, is looked up in the workspace's runs.
    pub trigger: Option<Trigger>,
    /// How OCI plugins are fetched and pinned (`gantry run`: `Update`).
    pub lock: LockMode,
    /// Stops the run (`gantry serve`); `None`: the process's signals do.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// Continue a run whose host died or which was cancelled.
pub struct ResumeRequest {
    /// The workspace the run belongs to.
    pub workspace: PathBuf,
    pub run_id: String,
    /// Stops the run (`gantry serve`); `None`: the process's signals do.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// Promote a run that succeeded into the next environment of the chain.
pub struct PromoteRequest {
    /// The workspace of the source run (its artifacts are there).
    pub workspace: PathBuf,
    /// The run whose reused stages' results are carried over.
    pub from_run: String,
    /// The environment to promote into: the next one in the chain.
    pub environment: String,
    /// The new run's id; `None`: a new one.
    pub run_id: Option<String>,
    /// Who approves, recorded when the environment requires approval; a
    /// promotion into such an environment without one is refused.
    pub approver: Option<Approver>,
    /// `run.previous-commit` when the caller knows it (`gantry serve`'s
    /// deployment history); `None`: looked up in the workspace's runs.
    pub previous_commit: Option<String>,
    /// `run.url`: the new run's page, when a service runs it.
    pub url: Option<String>,
    /// Stops the run (`gantry serve`); `None`: the process's signals do.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// Who approved a promotion, and through what.
#[derive(Debug, Clone)]
pub struct Approver {
    pub by: String,
    /// `gantry promote`, or the service's approvals API.
    pub via: String,
}

/// Where a run that succeeded would go next.
#[derive(Debug, Clone, PartialEq)]
pub struct NextEnvironment {
    pub name: String,
    /// Promoting into it needs an approval.
    pub approval_required: bool,
    /// The whole chain, for messages: `default → docker → production`.
    pub chain: String,
}

/// Start a run of `req.manifest`.
pub async fn start(
    runtime: &Runtime,
    reporter: Arc<dyn Reporter>,
    req: RunRequest,
) -> anyhow::Result<RunResult> {
    let (file, plan) = plan_manifest(&req.manifest, req.environment.as_deref())?;
    let (plugins, _) = check_plugins(runtime, &file, &plan, reporter.as_ref(), req.lock, false)
        .await
        .map_err(anyhow::Error::new)?;
    let run_id = req.run_id.unwrap_or_else(crate::pipeline::new_run_id);
    let mut trigger = req
        .trigger
        .unwrap_or_else(|| Trigger::detect(&plan.workspace));
    let ws_state = open_state(&plan.workspace)?;
    let runs = ws_state
        .runs(true)?
        .ok_or_else(|| anyhow::anyhow!("cannot create the runs directory"))?;
    if trigger.previous_commit.is_none() {
        trigger.previous_commit =
            crate::journal::last_success(&runs, &plan.pipeline, &plan.environment, &run_id)?;
    }
    let mut journal = Journal::create(&runs, &run_id)?;
    journal.append(&run_started(
        &run_id, &file, &plan, &plugins, &trigger, None, None,
    )?)?;
    let pipeline = Pipeline {
        runtime,
        plan: &plan,
        reporter,
        run_id,
        trigger,
        promoted_from: None,
        state: Some(state_store(&ws_state)?),
        cancel: req.cancel,
    };
    pipeline.run(&plugins, journal, Resume::default()).await
}

/// Resume run `req.run_id`: stages whose completion was recorded keep their
/// result; the others run. Refused when the run finished, or when the manifest,
/// its workspace or any plugin is not the one the run started with.
pub async fn resume(
    runtime: &Runtime,
    reporter: Arc<dyn Reporter>,
    req: ResumeRequest,
) -> anyhow::Result<RunResult> {
    let run_id = req.run_id;
    let (ws_state, dir) = find_run(&req.workspace, &run_id)?;
    let records = Journal::read(&dir)?;
    let started = Started::of(&records, &dir)?;
    if finished(&records).is_some() {
        anyhow::bail!("run `{run_id}` already finished; start a new one with `gantry run`");
    }
    let fresh = format!(
        "start a new run with `gantry run {}`",
        started.manifest.display()
    );
    if crate::journal::file_sha256(started.manifest)
        .ok()
        .as_deref()
        != Some(started.manifest_sha256)
    {
        anyhow::bail!(
            "{} changed (or is gone) since run `{run_id}` started; resuming would mix two \
             pipelines: {fresh}",
            started.manifest.display()
        );
    }
    let file = load_file(started.manifest)?;
    let plan = plan_file(&file, environment_arg(&file, started.environment))?;
    same_workspace(&plan, &ws_state, &run_id, started.manifest, &fresh)?;
    let (plugins, _) = check_plugins(
        runtime,
        &file,
        &plan,
        reporter.as_ref(),
        LockMode::Update,
        false,
    )
    .await
    .map_err(anyhow::Error::new)?;
    let changed = changed_plugins(started.plugins, &plugin_records(&plan, &plugins));
    if !changed.is_empty() {
        anyhow::bail!(
            "{} since run `{run_id}` started; resuming would run code the run did not \
             start with: {fresh}",
            changed.join("; ")
        );
    }
    let trigger = started.trigger();
    let promoted_from = started.promoted_from.cloned();
    let mut journal = Journal::open(dir)?;
    journal.append(&Record::RunResumed {
        ts_ms: crate::capabilities::telemetry::now_ms(),
    })?;
    let pipeline = Pipeline {
        runtime,
        plan: &plan,
        reporter,
        run_id,
        trigger,
        promoted_from,
        state: Some(state_store(&ws_state)?),
        cancel: req.cancel,
    };
    pipeline
        .run(&plugins, journal, Resume::from_records(&records))
        .await
}

/// Promote run `req.from_run` into `req.environment`: a new run, in the same
/// workspace, whose journal first records the `promotion.reuse` stages as
/// finished with the source run's outputs and artifacts; the other stages then
/// run with that environment's parameters. Nothing reused is run or rebuilt.
pub async fn promote(
    runtime: &Runtime,
    reporter: Arc<dyn Reporter>,
    req: PromoteRequest,
) -> anyhow::Result<RunResult> {
    let from = &req.from_run;
    let (ws_state, dir) = find_run(&req.workspace, from)?;
    let records = Journal::read(&dir)?;
    let source = Started::of(&records, &dir)?;
    let (file, source_plan) = unchanged_manifest(&source, from)?;
    let next = next_of(&source_plan, source.environment, from)?;
    if next.name != req.environment {
        let chain = source_plan.promotion.as_ref().map(|c| c.describe());
        let chain = chain.unwrap_or_default();
        anyhow::bail!(
            "cannot promote run `{from}` to `{}`: the run ran in `{}`, and the next environment \
             of the chain ({chain}) is `{}`; promote it to `{}` first",
            req.environment,
            source.environment,
            next.name,
            next.name
        );
    }
    match finished(&records) {
        Some(true) => {}
        Some(false) => anyhow::bail!(
            "run `{from}` failed; only a run that succeeded (its health gate, if any, passed) \
             can be promoted (`gantry logs {from}` says why it failed)"
        ),
        None => anyhow::bail!(
            "run `{from}` has not finished; `gantry resume {from}` continues it, and once it \
             has succeeded it can be promoted"
        ),
    }
    let approval = match (next.approval_required, &req.approver) {
        (false, _) => None,
        (true, Some(a)) => Some(ApprovalRecord {
            by: a.by.clone(),
            via: a.via.clone(),
            ts_ms: crate::capabilities::telemetry::now_ms(),
        }),
        (true, None) => anyhow::bail!(
            "environment `{}` requires approval before run `{from}` is promoted into it; \
             say who approves (`gantry promote --by NAME`)",
            next.name
        ),
    };
    let plan = plan_file(&file, environment_arg(&file, &req.environment))?;
    let fresh = format!(
        "start a new run with `gantry run {}`",
        source.manifest.display()
    );
    same_workspace(&plan, &ws_state, from, source.manifest, &fresh)?;
    let (plugins, _) = check_plugins(
        runtime,
        &file,
        &plan,
        reporter.as_ref(),
        LockMode::Update,
        false,
    )
    .await
    .map_err(anyhow::Error::new)?;
    let chain = plan
        .promotion
        .as_ref()
        .expect("the source plan had a promotion chain, and the manifest is the same");
    let now = plugin_records(&plan, &plugins);
    let source_results = Resume::from_records(&records).finished;
    let mut reused = vec![];
    for unit in plan.stages.iter().filter(|u| chain.reuse.contains(&u.name)) {
        let recorded = source.plugins.iter().find(|p| p.unit == unit.name);
        let current = now.iter().find(|p| p.unit == unit.name);
        match (recorded, current) {
            (Some(r), Some(c)) if r.digest == c.digest => {}
            (Some(r), Some(c)) => anyhow::bail!(
                "the plugin of reused stage `{}` ({}) changed since run `{from}`: {} then, {} \
                 now; its results were made by the old one, so they are not promoted: {fresh}",
                unit.name,
                unit.uses,
                r.digest,
                c.digest
            ),
            _ => anyhow::bail!(
                "run `{from}` records no plugin for reused stage `{}` (it was written by an \
                 older gantry): {fresh}",
                unit.name
            ),
        }
        let Some(result) = source_results.get(&unit.name) else {
            anyhow::bail!(
                "run `{from}` has no result for reused stage `{}`: {fresh}",
                unit.name
            );
        };
        reused.push(result.clone());
    }

    let run_id = req.run_id.unwrap_or_else(crate::pipeline::new_run_id);
    let mut trigger = source.trigger();
    let runs = ws_state
        .runs(true)?
        .ok_or_else(|| anyhow::anyhow!("cannot create the runs directory"))?;
    trigger.url = req.url;
    // What the promotion replaces in its own environment, not the source's.
    trigger.previous_commit = match req.previous_commit {
        Some(c) => Some(c),
        None => crate::journal::last_success(&runs, &plan.pipeline, &plan.environment, &run_id)?,
    };
    let mut journal = Journal::create(&runs, &run_id)?;
    journal.append(&run_started(
        &run_id,
        &file,
        &plan,
        &plugins,
        &trigger,
        Some(from.clone()),
        approval.clone(),
    )?)?;
    // The carried-over results go in first, as finished stages: the run (and
    // a resume of it) then treats them like stages finished before a crash.
    let now_ms = crate::capabilities::telemetry::now_ms();
    let mut seeded = vec![];
    for r in &reused {
        let record = Record::StageFinished {
            stage: r.name.clone(),
            status: r.status.clone(),
            detail: r.detail.clone(),
            duration_ms: r.duration_ms,
            outputs: r.outputs.clone(),
            artifacts: r.artifacts.clone(),
            denials: r.denials.clone(),
            ts_ms: now_ms,
            reused_from: Some(from.clone()),
        };
        journal.append(&record)?;
        seeded.push(record);
    }
    reporter.note(&format!(
        "promoting run {from} from `{}` to `{}` (chain: {}){}",
        source.environment,
        req.environment,
        chain.describe(),
        approval.as_ref().map_or(String::new(), |a| format!(
            "; approved by {} via {}",
            a.by, a.via
        ))
    ));
    let resume = Resume {
        started_ms: None,
        ..Resume::from_records(&seeded)
    };
    let pipeline = Pipeline {
        runtime,
        plan: &plan,
        reporter,
        run_id,
        trigger,
        promoted_from: Some(from.clone()),
        state: Some(state_store(&ws_state)?),
        cancel: req.cancel.clone(),
    };
    pipeline.run(&plugins, journal, resume).await
}

/// Where run `run_id` of `workspace` would be promoted next, and whether that
/// needs an approval; `None` when the manifest has no chain or the run's
/// environment is its last. For the service, to hold a promotion for approval.
/// Errors when the run is unknown or its manifest changed since.
pub fn next_environment(workspace: &Path, run_id: &str) -> anyhow::Result<Option<NextEnvironment>> {
    let (_, dir) = find_run(workspace, run_id)?;
    let records = Journal::read(&dir)?;
    let source = Started::of(&records, &dir)?;
    let (_, plan) = unchanged_manifest(&source, run_id)?;
    Ok(plan.promotion.as_ref().and_then(|chain| {
        chain.next(source.environment).map(|n| NextEnvironment {
            name: n.name.clone(),
            approval_required: n.approval == Approval::Required,
            chain: chain.describe(),
        })
    }))
}

/// The environment after the source run's, or why there is none.
fn next_of(plan: &Plan, environment: &str, from: &str) -> anyhow::Result<NextEnvironment> {
    let Some(chain) = &plan.promotion else {
        anyhow::bail!(
            "{} has no `promotion:` section, so run `{from}` has nowhere to be promoted to",
            plan.manifest.display()
        );
    };
    let Some(next) = chain.next(environment) else {
        if chain.environments.iter().any(|s| s.name == environment) {
            anyhow::bail!(
                "run `{from}` ran in `{environment}`, the last environment of the chain ({}); \
                 there is nothing to promote it to",
                chain.describe()
            );
        }
        anyhow::bail!(
            "run `{from}` ran in `{environment}`, which is not in the promotion chain ({})",
            chain.describe()
        );
    };
    Ok(NextEnvironment {
        name: next.name.clone(),
        approval_required: next.approval == Approval::Required,
        chain: chain.describe(),
    })
}

/// The manifest of the source run, refused when it changed since (a promotion
/// must carry results made by the same pipeline), planned for its environment.
fn unchanged_manifest(source: &Started, from: &str) -> anyhow::Result<(ManifestFile, Plan)> {
    if crate::journal::file_sha256(source.manifest).ok().as_deref() != Some(source.manifest_sha256)
    {
        anyhow::bail!(
            "{} changed (or is gone) since run `{from}`; a promotion deploys what that run \
             built with that pipeline: start a new run with `gantry run {}` and promote it",
            source.manifest.display(),
            source.manifest.display()
        );
    }
    let file = load_file(source.manifest)?;
    let plan = plan_file(&file, environment_arg(&file, source.environment))?;
    Ok((file, plan))
}

/// What a journal's run-started record says.
struct Started<'a> {
    manifest: &'a Path,
    manifest_sha256: &'a str,
    environment: &'a str,
    plugins: &'a [PluginRecord],
    promoted_from: Option<&'a String>,
    record: &'a Record,
}

impl<'a> Started<'a> {
    fn of(records: &'a [Record], dir: &PrivateDir) -> anyhow::Result<Self> {
        let Some(
            record @ Record::RunStarted {
                manifest,
                manifest_sha256,
                environment,
                plugins,
                promoted_from,
                ..
            },
        ) = records.first()
        else {
            anyhow::bail!(
                "{}: the journal does not start with run-started",
                dir.path().display()
            );
        };
        Ok(Self {
            manifest,
            manifest_sha256,
            environment,
            plugins,
            promoted_from: promoted_from.as_ref(),
            record,
        })
    }

    fn trigger(&self) -> Trigger {
        match self.record {
            Record::RunStarted {
                commit,
                branch,
                reference,
                commit_messages,
                repository,
                previous_commit,
                url,
                ..
            } => Trigger {
                commit: commit.clone(),
                branch: branch.clone(),
                reference: reference.clone(),
                messages: commit_messages.clone(),
                repository: repository.clone(),
                previous_commit: previous_commit.clone(),
                url: url.clone(),
            },
            _ => Trigger::default(),
        }
    }
}

/// Whether the run finished, and if so whether it succeeded.
fn finished(records: &[Record]) -> Option<bool> {
    records.iter().rev().find_map(|r| match r {
        Record::RunFinished { success, .. } => Some(*success),
        _ => None,
    })
}

fn run_started(
    run_id: &str,
    file: &ManifestFile,
    plan: &Plan,
    plugins: &Plugins,
    trigger: &Trigger,
    promoted_from: Option<String>,
    approval: Option<ApprovalRecord>,
) -> anyhow::Result<Record> {
    Ok(Record::RunStarted {
        run_id: run_id.to_string(),
        pipeline: plan.pipeline.clone(),
        environment: plan.environment.clone(),
        manifest: std::path::absolute(&file.path)?,
        manifest_sha256: crate::journal::file_sha256(&file.path)?,
        commit: trigger.commit.clone(),
        plugins: plugin_records(plan, plugins),
        ts_ms: crate::capabilities::telemetry::now_ms(),
        branch: trigger.branch.clone(),
        reference: trigger.reference.clone(),
        commit_messages: trigger.messages.clone(),
        repository: trigger.repository.clone(),
        promoted_from,
        approval,
        previous_commit: trigger.previous_commit.clone(),
        url: trigger.url.clone(),
    })
}

/// A run must stay in the workspace it started in (its journal is there).
fn same_workspace(
    plan: &Plan,
    ws_state: &WorkspaceState,
    run_id: &str,
    manifest: &Path,
    fresh: &str,
) -> anyhow::Result<()> {
    if plan.workspace.canonicalize().ok().as_ref() != Some(&ws_state.workspace) {
        anyhow::bail!(
            "run `{run_id}` belongs to workspace {}, but {} now names {}: {fresh}",
            ws_state.workspace.display(),
            manifest.display(),
            plan.workspace.display()
        );
    }
    Ok(())
}

/// Parse a manifest; its problems as an [`Invalid`].
pub fn load_file(path: &Path) -> Result<ManifestFile, Invalid> {
    ManifestFile::load(path).map_err(|errors| Invalid(errors.to_string()))
}

/// Plan `file` for `env`; its problems as an [`Invalid`].
pub fn plan_file(file: &ManifestFile, env: Option<&str>) -> Result<Plan, Invalid> {
    Plan::new(file, env).map_err(|errors| {
        Invalid(format!(
            "{errors}\n{} error(s) in {}; nothing was run",
            errors.0.len(),
            file.path.display()
        ))
    })
}

/// Parse and plan a manifest.
pub fn plan_manifest(path: &Path, env: Option<&str>) -> Result<(ManifestFile, Plan), Invalid> {
    let file = load_file(path)?;
    let plan = plan_file(&file, env)?;
    Ok((file, plan))
}

/// Fetch the OCI plugins (as `mode` says), load every plugin and check each
/// stage's `with` against the JSON Schema its plugin's describe() returns.
/// The loaded plugins, which the run then uses, and notes worth showing; or
/// every problem.
pub async fn check_plugins(
    runtime: &Runtime,
    file: &ManifestFile,
    plan: &Plan,
    reporter: &dyn Reporter,
    mode: LockMode,
    // Also note declared capabilities without a target that nothing grants
    // (`validate`: they may not be needed, so `run` stays quiet).
    warn_declared: bool,
) -> Result<(Plugins, Vec<String>), Invalid> {
    let as_lines = |errors: &[String]| {
        errors
            .iter()
            .map(|e| format!("error: {e}"))
            .collect::<Vec<_>>()
    };
    if let Err(errors) =
        crate::oci::fetch::fetch_plan(plan, runtime.cache_root.as_deref(), mode, reporter).await
    {
        return Err(Invalid(as_lines(&errors).join("\n")));
    }
    let plugins = load_plugins(runtime, plan, reporter)
        .map_err(|errors| Invalid(as_lines(&errors).join("\n")))?;
    let ctx = bare_context();
    let mut errors = vec![];
    let mut plugin_errors = vec![];
    let mut warnings = vec![];
    let mut schemas: std::collections::HashMap<String, Option<serde_json::Value>> =
        Default::default();
    let mut declared: std::collections::HashMap<String, Vec<_>> = Default::default();
    for unit in plan.stages.iter().chain(&plan.sinks) {
        let plugin = &plugins[&unit.field];
        if !schemas.contains_key(&plugin.digest) {
            let (schema, capabilities) = match describe(runtime, plugin, &ctx, reporter).await {
                Ok(info) if info.config_schema.trim().is_empty() => (None, info.capabilities),
                Ok(info) => (
                    serde_json::from_str(&info.config_schema)
                        .map_err(|e| {
                            plugin_errors.push(format!(
                                "{}: its config schema is not JSON: {e}",
                                plugin.label
                            ))
                        })
                        .ok(),
                    info.capabilities,
                ),
                Err(e) => {
                    plugin_errors.push(format!("{}: {e:#}", unit.field));
                    (None, vec![])
                }
            };
            schemas.insert(plugin.digest.clone(), schema);
            declared.insert(plugin.digest.clone(), capabilities);
        }
        let missing = crate::capabilities::declared::missing(
            &unit.grants,
            &unit.field,
            &unit.name,
            &inspect_argument(&unit.source),
            &declared[&plugin.digest],
        );
        plugin_errors.extend(missing.errors);
        if warn_declared {
            warnings.extend(missing.warnings);
        }
        if let Some(schema) = &schemas[&plugin.digest] {
            let at = unit.with_at().unwrap_or(file.manifest.pipeline.referenced);
            errors.extend(crate::schema::config_errors(
                file,
                &at,
                &unit.field,
                schema,
                &unit.config,
                &inspect_argument(&unit.source),
            ));
        }
    }
    if plugin_errors.is_empty() && errors.is_empty() {
        return Ok((plugins, warnings));
    }
    // The notes still matter when something else is wrong.
    let mut lines: Vec<String> = warnings.iter().map(|w| format!("note: {w}")).collect();
    lines.extend(as_lines(&plugin_errors));
    if !errors.is_empty() {
        lines.push(crate::manifest::ManifestErrors(errors).to_string());
    }
    Err(Invalid(lines.join("\n")))
}

/// What `gantry plugins inspect` takes for `source`: a built-in's name, or the
/// path (an alias in the manifest means nothing to that command).
pub(crate) fn inspect_argument(source: &PluginSource) -> String {
    match source {
        PluginSource::Builtin(name) => name.to_string(),
        PluginSource::File(path) => path.display().to_string(),
        PluginSource::Oci(oci) if oci.insecure => format!("{} --insecure", oci.written),
        PluginSource::Oci(oci) => oci.written.clone(),
    }
}

/// `describe()`, with the trap behind a failure shown at debug level
/// (`--verbose`); the error itself says which budget or trap ended it.
pub(crate) async fn describe(
    runtime: &Runtime,
    plugin: &crate::runtime::Plugin,
    ctx: &InstanceContext,
    reporter: &dyn Reporter,
) -> anyhow::Result<crate::runtime::bindings::types::StageInfo> {
    runtime.describe(plugin, ctx).await.inspect_err(|e| {
        if let Some(f) = e.downcast_ref::<crate::runtime::DescribeFailed>() {
            reporter.debug(&f.detail);
        }
    })
}

/// For describe(): no workspace, no secrets, no output.
pub(crate) fn bare_context() -> InstanceContext {
    InstanceContext {
        workspace: PathBuf::new(),
        reporter: Arc::new(Silent),
        redactor: Default::default(),
        secrets: Default::default(),
        collector: Default::default(),
        logs: None,
        state: None,
        cluster: std::sync::Arc::new(crate::capabilities::cluster::kube::Connection::new(
            None, "",
        )),
        base: crate::capabilities::telemetry::EventBase {
            run_id: String::new(),
            pipeline: String::new(),
            environment: String::new(),
        },
    }
}

/// Open (creating) the state directory of `workspace`.
pub fn open_state(workspace: &Path) -> anyhow::Result<WorkspaceState> {
    WorkspaceState::open(workspace, true)?
        .ok_or_else(|| anyhow::anyhow!("cannot create the state of {}", workspace.display()))
}

/// The plugin state of a workspace (`state/` in its state directory).
pub fn state_store(ws: &WorkspaceState) -> anyhow::Result<Arc<StateStore>> {
    let dir = ws
        .dir
        .subdir("state", true)?
        .ok_or_else(|| anyhow::anyhow!("cannot create {}/state", ws.dir.path().display()))?;
    Ok(Arc::new(StateStore::new(dir)))
}

/// The runs directory of `workspace`, if it has one.
pub fn runs_dir(workspace: &Path) -> anyhow::Result<Option<(WorkspaceState, PrivateDir)>> {
    let Some(ws) = WorkspaceState::open(workspace, false)? else {
        return Ok(None);
    };
    Ok(ws.runs(false)?.map(|runs| (ws, runs)))
}

/// The directory of run `run_id` of `workspace`.
pub fn find_run(workspace: &Path, run_id: &str) -> anyhow::Result<(WorkspaceState, PrivateDir)> {
    if let Some((ws, runs)) = runs_dir(workspace)?
        && let Some(dir) = crate::journal::run_dir(&runs, run_id)?
    {
        return Ok((ws, dir));
    }
    anyhow::bail!(
        "no run `{run_id}` for workspace {} (`gantry runs -C {}` lists them)",
        workspace.display(),
        workspace.display()
    )
}

/// The plugin of every stage and sink of the plan, by digest.
pub fn plugin_records(plan: &Plan, plugins: &Plugins) -> Vec<PluginRecord> {
    plan.stages
        .iter()
        .chain(&plan.sinks)
        .map(|u| PluginRecord {
            unit: u.name.clone(),
            uses: u.uses.clone(),
            digest: plugins[&u.field].digest.clone(),
        })
        .collect()
}

/// What differs between the plugins a run started with and those it would
/// resume with, in words; empty when nothing does.
fn changed_plugins(recorded: &[PluginRecord], now: &[PluginRecord]) -> Vec<String> {
    if recorded.is_empty() {
        return vec![
            "the journal records no plugin digests (it was written by an older gantry)".into(),
        ];
    }
    let mut changed = vec![];
    for n in now {
        match recorded.iter().find(|r| r.unit == n.unit) {
            Some(r) if r.digest == n.digest => {}
            Some(r) => changed.push(format!(
                "the plugin of `{}` ({}) changed: {} when the run started, {} now",
                n.unit, n.uses, r.digest, n.digest
            )),
            None => changed.push(format!("`{}` was not part of the run", n.unit)),
        }
    }
    changed
}
