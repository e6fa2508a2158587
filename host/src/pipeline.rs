//! Runs a plan. Every plugin is loaded first (a bad one stops the run before any
//! stage starts). Then stages run concurrently as soon as the stages they need
//! have succeeded; a failed stage skips its dependents while independent
//! branches finish. Each state change is written to the run's journal before it
//! is acted on, so a run whose host died can be resumed. At the end the run's
//! events go to the telemetry sinks.

use crate::capabilities::Subject;
use crate::capabilities::cluster::kube::Connection;
use crate::capabilities::secrets::SecretStore;
use crate::capabilities::telemetry::{Collector, EventBase, now_ms};
use crate::expr::{self, Ref};
use crate::journal::{ArtifactRecord, Journal, Record};
use crate::plan::{Plan, Unit};
use crate::plugins::PluginSource;
use crate::report::{Mark, Reporter};
use crate::runtime::bindings::types::{
    Artifact, EventKind, StageContext, StageError, StageOutputs,
};
use crate::runtime::loader::WorldKind;
use crate::runtime::state::StageState;
use crate::runtime::{Failure, InstanceContext, Plugin, Runtime};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one stage ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageResult {
    pub name: String,
    /// The provider (`uses:`) it ran with.
    pub uses: String,
    /// `succeeded`, `skipped`, `cancelled`, or the failure kind (`failed`,
    /// `denied`, `transient`, `stopped`, `timeout`, ...).
    pub status: String,
    /// The summary on success, the error otherwise.
    pub detail: String,
    pub duration_ms: u64,
    pub outputs: Vec<(String, String)>,
    /// Calls the sandbox refused, with the grant that would allow each.
    pub denials: Vec<String>,
    /// What it produced (images, files), as recorded in the journal.
    pub artifacts: Vec<ArtifactRecord>,
    /// Set when a promotion carried this result over from that run instead
    /// of running the stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

impl StageResult {
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }

    /// Skipped stages (a false `if:`, a failed need) do not fail a run by
    /// themselves: the failure that caused them does.
    pub fn ok(&self) -> bool {
        self.status == "succeeded" || self.status == "skipped"
    }

    pub fn mark(&self) -> Mark {
        match self.status.as_str() {
            "succeeded" => Mark::Succeeded,
            "skipped" => Mark::Skipped,
            _ => Mark::Failed,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub pipeline: String,
    pub environment: String,
    /// The run directory (journal, logs, summary).
    pub dir: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// Wall-clock time from the run's start to this end, including the time
    /// between a crash and `gantry resume`.
    pub duration_ms: u64,
    /// True when Ctrl-C (or SIGTERM, SIGHUP) stopped the run; `gantry resume`
    /// continues it.
    pub cancelled: bool,
    /// Programs started through `exec` ran without Landlock, because the user
    /// opted out (GANTRY_UNCONFINED_EXEC=1 or --unconfined-exec).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exec_unconfined: bool,
    /// The signal that stopped the run (2, 15 or 1): gantry exits 128 + it.
    #[serde(skip)]
    pub signal: Option<i32>,
    /// A promotion: the run whose reused stages' results this one carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    pub stages: Vec<StageResult>,
}

impl RunResult {
    pub fn succeeded(&self) -> bool {
        !self.cancelled && self.stages.iter().all(StageResult::ok)
    }
}

/// The loaded plugin of each stage and sink, by manifest field (`stages[2]`).
pub type Plugins = HashMap<String, Arc<Plugin>>;

/// Load and check every plugin of the plan. All problems are reported together.
pub fn load_plugins(
    runtime: &Runtime,
    plan: &Plan,
    reporter: &dyn Reporter,
) -> Result<HashMap<String, Arc<Plugin>>, Vec<String>> {
    let mut plugins = HashMap::new();
    let mut errors = vec![];
    let units = plan
        .stages
        .iter()
        .map(|u| (u, WorldKind::Stage))
        .chain(plan.sinks.iter().map(|u| (u, WorldKind::Sink)));
    // Several stages often use one plugin: read, hash and check it once.
    // An OCI source's bytes sit behind a OnceLock, but it hashes and compares
    // by reference and access only, so the key never changes.
    #[allow(clippy::mutable_key_type)]
    let mut by_source: HashMap<&PluginSource, Result<Arc<Plugin>, String>> = HashMap::new();
    for (unit, want) in units {
        let loaded = by_source.entry(&unit.source).or_insert_with(|| {
            unit.source
                .read()
                .and_then(|bytes| runtime.load_reporting(&bytes, reporter))
                .map_err(|e| e.to_string())
        });
        match loaded.clone() {
            Ok(p) if p.world == want => {
                plugins.insert(unit.field.clone(), p);
            }
            Ok(p) => errors.push(format!(
                "{}: `{}` is a {} plugin, but `{}` needs a {} plugin",
                unit.field,
                unit.uses,
                p.world.as_str(),
                unit.field,
                want.as_str()
            )),
            Err(e) => errors.push(format!("{}: {e}", unit.field)),
        }
    }
    if errors.is_empty() {
        Ok(plugins)
    } else {
        Err(errors)
    }
}

/// A run id: sortable by time, unique enough on one machine.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:04x}",
        nanos / 1_000_000,
        (nanos as u32 ^ std::process::id()) & 0xffff
    )
}

/// The commit being built: from the CI system, else from git in the workspace.
pub fn detect_commit(workspace: &Path) -> Option<String> {
    for var in [
        "GITHUB_SHA",
        "BUILD_SOURCEVERSION",
        "CI_COMMIT_SHA",
        "GIT_COMMIT",
    ] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return Some(v);
        }
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where a run starts from: nothing, or what a journal recorded.
#[derive(Default)]
pub struct Resume {
    /// When the run first started (unix ms); `None` for a new run.
    pub started_ms: Option<u64>,
    /// Stages whose completion was recorded.
    pub finished: BTreeMap<String, StageResult>,
    /// Stages that started but whose completion was not recorded, with how
    /// long they had been running when the journal stopped (ms) and whether a
    /// cancellation (rather than a crash) stopped them.
    pub interrupted: BTreeMap<String, (u64, bool)>,
    /// The last Kubernetes Job of each stage run as one (`executor:
    /// kubernetes`): a resume re-attaches to it if the stage did not finish.
    pub jobs: BTreeMap<String, String>,
}

impl Resume {
    pub fn from_records(records: &[Record]) -> Self {
        let mut finished = BTreeMap::new();
        let mut started: BTreeMap<String, u64> = BTreeMap::new();
        let mut started_ms = None;
        let mut cancelled: Vec<String> = vec![];
        let mut last_ts = 0;
        let mut jobs = BTreeMap::new();
        for r in records {
            match r {
                Record::StageJob { stage, job, .. } => {
                    jobs.insert(stage.clone(), job.clone());
                }
                Record::RunStarted { ts_ms, .. } => started_ms = Some(*ts_ms),
                Record::StageStarted { stage, ts_ms, .. } => {
                    started.entry(stage.clone()).or_insert(*ts_ms);
                }
                Record::RunCancelled { stages, .. } => cancelled.extend(stages.iter().cloned()),
                _ => {}
            }
            last_ts = last_ts.max(record_ts(r));
            if let Record::StageFinished {
                stage,
                status,
                detail,
                duration_ms,
                outputs,
                artifacts,
                denials,
                reused_from,
                ..
            } = r
            {
                finished.insert(
                    stage.clone(),
                    StageResult {
                        name: stage.clone(),
                        uses: String::new(),
                        status: status.clone(),
                        detail: detail.clone(),
                        duration_ms: *duration_ms,
                        outputs: outputs.clone(),
                        denials: denials.clone(),
                        artifacts: artifacts.clone(),
                        reused_from: reused_from.clone(),
                    },
                );
            }
        }
        let interrupted = started
            .into_iter()
            .filter(|(stage, _)| !finished.contains_key(stage))
            .map(|(stage, ts)| {
                let by_cancel = cancelled.contains(&stage);
                (stage, (last_ts.saturating_sub(ts), by_cancel))
            })
            .collect();
        jobs.retain(|stage, _| !finished.contains_key(stage));
        Self {
            started_ms,
            finished,
            interrupted,
            jobs,
        }
    }

    /// What a resume keeps and what it runs again, for the user.
    pub fn describe(&self) -> Vec<String> {
        let secs = |ms: u64| format!("{:.2}s", ms as f64 / 1000.0);
        let mut lines = vec![];
        let (reused, kept): (Vec<&StageResult>, Vec<&StageResult>) = self
            .finished
            .values()
            .partition(|r| r.reused_from.is_some());
        if let Some(from) = reused.first().and_then(|r| r.reused_from.as_deref()) {
            let names: Vec<&str> = reused.iter().map(|r| r.name.as_str()).collect();
            lines.push(format!(
                "reused {} stage(s) from run {from}, not run again: {}",
                names.len(),
                names.join(", ")
            ));
        }
        if !kept.is_empty() {
            let kept: Vec<String> = kept
                .iter()
                .map(|r| format!("{} ({}, {})", r.name, r.status, secs(r.duration_ms)))
                .collect();
            lines.push(format!(
                "kept {} finished stage(s): {}",
                kept.len(),
                kept.join(", ")
            ));
        }
        if !self.interrupted.is_empty() {
            let again: Vec<String> = self
                .interrupted
                .iter()
                .map(|(name, (ran, by_cancel))| {
                    let why = if *by_cancel { "cancelled" } else { "cut off" };
                    match self.jobs.get(name) {
                        // A Job outlives its host: it is followed again, not rerun.
                        Some(job) if !by_cancel => format!(
                            "{name} (its host {why} after {}; Kubernetes Job {job} is looked up first)",
                            secs(*ran)
                        ),
                        _ => format!("{name} ({why} after {})", secs(*ran)),
                    }
                })
                .collect();
            lines.push(format!(
                "starting again: {} (they had not finished)",
                again.join(", ")
            ));
        }
        lines
    }
}

/// When a record was written (unix ms).
fn record_ts(r: &Record) -> u64 {
    match r {
        Record::RunStarted { ts_ms, .. }
        | Record::StageStarted { ts_ms, .. }
        | Record::StageRetry { ts_ms, .. }
        | Record::StageJob { ts_ms, .. }
        | Record::StageFinished { ts_ms, .. }
        | Record::RunCancelled { ts_ms, .. }
        | Record::RunResumed { ts_ms }
        | Record::RunFinished { ts_ms, .. } => *ts_ms,
    }
}

pub struct Pipeline<'a> {
    pub runtime: &'a Runtime,
    pub plan: &'a Plan,
    pub reporter: Arc<dyn Reporter>,
    pub run_id: String,
    /// What started the run: commit, branch, ref, commit messages.
    pub trigger: Trigger,
    /// A promotion: the run whose reused stages' results this one carries.
    pub promoted_from: Option<String>,
    /// The workspace's host-kept state (the `state` capability).
    pub state: Option<Arc<crate::capabilities::state::StateStore>>,
    /// What stops the run: `None` is the process's signals (Ctrl-C, SIGTERM,
    /// SIGHUP), as for `gantry run`; a token is how `gantry serve` stops one
    /// run of many (the service handles its own signals).
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// What started a run, as `run.*` expressions read it and RunStarted records it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trigger {
    /// The commit being built (full sha).
    pub commit: Option<String>,
    /// The branch (`main`), when the ref is one.
    pub branch: Option<String>,
    /// The full ref (`refs/heads/main`, `refs/tags/v1.2`).
    pub reference: Option<String>,
    /// The messages of the commits that triggered the run, newest first.
    pub messages: Vec<String>,
    /// Where the commit came from (a clone URL), when known.
    pub repository: Option<String>,
    /// The commit of the last run of this pipeline that succeeded in the
    /// run's environment (what the run's deployment replaces); `None` on the
    /// first one, and before the executor looked it up.
    pub previous_commit: Option<String>,
    /// The run's page (`gantry serve`), for links people follow.
    pub url: Option<String>,
}

impl Trigger {
    /// What `gantry run` knows: the CI system's variables, else git in the
    /// workspace; whatever neither says stays empty.
    pub fn detect(workspace: &Path) -> Self {
        let commit = detect_commit(workspace);
        let (branch, reference) = detect_branch(workspace);
        let messages = commit
            .as_deref()
            .and_then(|c| git(workspace, &["log", "-1", "--format=%B", c]))
            .map(|m| m.trim_end().to_string())
            .filter(|m| !m.is_empty())
            .into_iter()
            .collect();
        Self {
            commit,
            branch,
            reference,
            messages,
            repository: None,
            previous_commit: None,
            url: None,
        }
    }
}

/// The output of `git ARGS` in `dir`, when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The branch and full ref being built: from the CI system, else the branch
/// git has checked out (none when HEAD is detached).
pub fn detect_branch(workspace: &Path) -> (Option<String>, Option<String>) {
    let set = |v: &str| std::env::var(v).ok().filter(|v| !v.is_empty());
    // GitHub Actions and Azure Pipelines give the full ref; GitLab the branch.
    let reference = set("GITHUB_REF")
        .or_else(|| set("BUILD_SOURCEBRANCH"))
        .or_else(|| set("CI_COMMIT_BRANCH").map(|b| format!("refs/heads/{b}")))
        .or_else(|| git(workspace, &["symbolic-ref", "-q", "HEAD"]).map(|r| r.trim().to_string()))
        .filter(|r| !r.is_empty());
    let branch = reference
        .as_deref()
        .and_then(|r| r.strip_prefix("refs/heads/"))
        .map(str::to_string);
    (branch, reference)
}

/// Why the executor stopped early.
enum Stop {
    /// By this signal, or by the cancel token (`None`).
    Cancelled(Option<i32>),
}

/// The signals that cancel a run: Ctrl-C (SIGINT), SIGTERM (what service
/// managers, `kill` and CI runners send) and SIGHUP (a closed terminal).
const CANCEL_SIGNALS: [(i32, &str); 3] = [
    (libc::SIGINT, "Ctrl-C"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
];

/// Exit at once, with 128 + its number, on the next cancelling signal. The
/// programs stages started die with gantry (their parent-death signal).
fn exit_on_next_signal() {
    tokio::spawn(async move {
        if let Ok(again) = cancel_signal().await {
            std::process::exit(128 + again);
        }
    });
}

/// The next cancelling signal's number.
pub(crate) async fn cancel_signal() -> std::io::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = vec![];
    for (n, _) in CANCEL_SIGNALS {
        streams.push((n, signal(SignalKind::from_raw(n))?));
    }
    let waits = streams.iter_mut().map(|(n, s)| {
        let n = *n;
        Box::pin(async move {
            s.recv().await;
            n
        })
    });
    Ok(futures::future::select_all(waits).await.0)
}

impl Pipeline<'_> {
    /// Run (or resume) the plan with its `plugins` (from [`load_plugins`]),
    /// journaling into `journal`. Errors here are the host's (a journal that
    /// cannot be written); stage failures are in the result.
    pub async fn run(
        &self,
        plugins: &Plugins,
        journal: Journal,
        resume: Resume,
    ) -> anyhow::Result<RunResult> {
        let mut seen = std::collections::HashSet::new();
        for p in plugins.values().filter(|p| seen.insert(&p.digest)) {
            self.reporter.debug(&format!(
                "{} {} (compile cache: {:?})",
                p.label, p.digest, p.cache
            ));
        }
        let secrets = Arc::new(SecretStore::resolve(
            &self.plan.secrets,
            &manifest_dir(&self.plan.manifest),
        ));
        let base = EventBase {
            run_id: self.run_id.clone(),
            pipeline: self.plan.pipeline.clone(),
            environment: self.plan.environment.clone(),
        };
        let ctx = InstanceContext {
            workspace: self.plan.workspace.clone(),
            reporter: self.reporter.clone(),
            redactor: secrets.redactor(),
            secrets,
            collector: Collector::default(),
            base: base.clone(),
            logs: Some(Arc::new(journal.dir().subdir("logs", true)?.ok_or_else(
                || anyhow::anyhow!("{}: no logs directory", journal.dir().path().display()),
            )?)),
            state: self.state.clone(),
            cluster: Arc::new(Connection::new(
                self.plan.cluster.clone(),
                &self.plan.environment,
            )),
        };
        let dir = journal.dir().path().to_path_buf();
        let journal = Mutex::new(journal);
        let resumed = resume.started_ms.is_some();
        self.reporter.note(&format!(
            "run {}{}: pipeline `{}`, environment `{}`, {} stage(s); journal in {}",
            self.run_id,
            if resumed { " (resumed)" } else { "" },
            self.plan.pipeline,
            self.plan.environment,
            self.plan.stages.len(),
            dir.display()
        ));
        for line in resume.describe() {
            self.reporter.note(&line);
        }
        let execs = self
            .plan
            .stages
            .iter()
            .any(|u| !u.grants.exec.programs.is_empty());
        if execs {
            let how = crate::sandbox::Support::get().describe();
            if crate::sandbox::unconfined_opted_in() {
                self.reporter
                    .note(&format!("warning: exec'd programs run {how}"));
            } else {
                self.reporter
                    .debug(&format!("exec'd programs run confined: {how}"));
            }
        }
        // Programs of a stage cut off by a crash die with their host (their
        // parent-death signal), but make sure before starting it again.
        if let Some(root) = &crate::sandbox::Support::get().cgroup {
            for stage in resume.interrupted.keys() {
                crate::capabilities::exec::remove_stale_tmp(&self.run_id, stage);
                if crate::sandbox::cgroup::reap_leftovers(root, &self.run_id, stage) {
                    self.reporter.debug(&format!(
                        "{stage}: emptied its cgroup from the interrupted run"
                    ));
                }
            }
        }
        let run_started_ms = resume.started_ms.unwrap_or_else(now_ms);
        ctx.collector
            .push(base.event(EventKind::RunStarted, None, &self.plan.pipeline));
        let started = Instant::now();

        let (done, stop) = self.execute(plugins, &ctx, &journal, resume).await?;
        let cancelled = stop.is_some();
        let signal = stop.and_then(|Stop::Cancelled(n)| n);
        if !cancelled && self.cancel.is_none() {
            // The handlers stay installed; while the sinks publish and the
            // summary is written, a signal ends gantry as it would by default.
            exit_on_next_signal();
        }
        let stages = self
            .plan
            .stages
            .iter()
            .map(|u| {
                done.get(&u.name).cloned().unwrap_or_else(|| StageResult {
                    name: u.name.clone(),
                    uses: u.uses.clone(),
                    status: "cancelled".into(),
                    detail: "cancelled before it finished".into(),
                    duration_ms: 0,
                    outputs: vec![],
                    denials: vec![],
                    artifacts: vec![],
                    reused_from: None,
                })
            })
            .collect();
        let mut result = RunResult {
            run_id: self.run_id.clone(),
            pipeline: self.plan.pipeline.clone(),
            environment: self.plan.environment.clone(),
            dir: dir.display().to_string(),
            status: "",
            duration_ms: now_ms().saturating_sub(run_started_ms),
            cancelled,
            exec_unconfined: execs && crate::sandbox::unconfined_opted_in(),
            signal,
            promoted_from: self.promoted_from.clone(),
            stages,
        };
        result.status = if cancelled {
            "cancelled"
        } else if result.succeeded() {
            "succeeded"
        } else {
            "failed"
        };
        if !cancelled {
            journal.lock().unwrap().append(&Record::RunFinished {
                success: result.succeeded(),
                ts_ms: now_ms(),
            })?;
        }
        let mut finished = base.event(EventKind::RunFinished, None, &self.plan.pipeline);
        finished.duration_ms = Some(started.elapsed().as_millis() as u64);
        finished.success = Some(result.succeeded());
        ctx.collector.push(finished);
        let (events, dropped) = ctx.collector.drain();
        // What the sinks are handed, kept with the run for its page and report.
        if let Err(e) =
            crate::capabilities::telemetry::record(journal.lock().unwrap().dir(), &events)
        {
            self.reporter.note(&format!(
                "warning: cannot record the run's telemetry: {e:#}"
            ));
        }
        self.publish(plugins, &ctx, events, dropped).await;
        journal
            .lock()
            .unwrap()
            .dir()
            .write_atomic("summary.json", &serde_json::to_vec_pretty(&result)?)?;
        Ok(result)
    }

    /// The DAG: start every stage whose needs are done, as soon as they are.
    async fn execute(
        &self,
        plugins: &HashMap<String, Arc<Plugin>>,
        ctx: &InstanceContext,
        journal: &Mutex<Journal>,
        resume: Resume,
    ) -> anyhow::Result<(BTreeMap<String, StageResult>, Option<Stop>)> {
        let mut done: BTreeMap<String, StageResult> = BTreeMap::new();
        for unit in &self.plan.stages {
            if let Some(r) = resume.finished.get(&unit.name) {
                let mut r = r.clone();
                r.uses = unit.uses.clone();
                let why = match &r.reused_from {
                    Some(from) => format!("reused from run {from}"),
                    None => "kept: finished before the resume".into(),
                };
                self.reporter.stage_finished(
                    &unit.name,
                    r.mark(),
                    Duration::from_millis(r.duration_ms),
                    &format!("{} ({why})", r.detail),
                );
                done.insert(unit.name.clone(), r);
            }
        }
        let mut started: Vec<String> = done.keys().cloned().collect();
        let mut running = FuturesUnordered::new();
        let ctrl_c = async {
            match &self.cancel {
                Some(token) => {
                    token.cancelled().await;
                    Ok(None)
                }
                None => cancel_signal().await.map(Some),
            }
        };
        tokio::pin!(ctrl_c);
        loop {
            let mut progressed = true;
            while progressed {
                progressed = false;
                for unit in &self.plan.stages {
                    if started.contains(&unit.name)
                        || !unit.needs.iter().all(|n| done.contains_key(n))
                    {
                        continue;
                    }
                    started.push(unit.name.clone());
                    progressed = true;
                    let skip = match unit.needs.iter().find(|n| !done[*n].succeeded()) {
                        Some(need) => Some(match done[need].status.as_str() {
                            "skipped" => format!("skipped: it needs `{need}`, which was skipped"),
                            _ => format!("skipped: it needs `{need}`, which did not succeed"),
                        }),
                        None => match self.condition(unit, &done) {
                            Ok(true) => None,
                            Ok(false) => Some(format!(
                                "skipped: `if: {}` is false",
                                unit.condition.as_ref().unwrap().0
                            )),
                            Err(e) => Some(format!("skipped: `if:` could not be evaluated: {e}")),
                        },
                    };
                    if let Some(detail) = skip {
                        let result = skipped(unit, detail);
                        self.finish(journal, ctx, &result, Duration::ZERO)?;
                        done.insert(unit.name.clone(), result);
                        continue;
                    }
                    journal.lock().unwrap().append(&Record::StageStarted {
                        stage: unit.name.clone(),
                        attempt: 1,
                        plugin_digest: Some(plugins[&unit.field].digest.clone()),
                        ts_ms: now_ms(),
                    })?;
                    let context = self.context(unit, ctx, &done);
                    running.push(self.run_stage(
                        unit,
                        plugins[&unit.field].clone(),
                        ctx,
                        context,
                        journal,
                        resume.jobs.get(&unit.name).cloned(),
                    ));
                }
            }
            if running.is_empty() {
                return Ok((done, None));
            }
            tokio::select! {
                Some((result, elapsed)) = running.next() => {
                    let result: StageResult = result;
                    self.finish(journal, ctx, &result, elapsed)?;
                    done.insert(result.name.clone(), result);
                }
                signo = &mut ctrl_c => {
                    let signo = signo?;
                    if signo.is_some() {
                        // A second signal does not wait for the journal.
                        exit_on_next_signal();
                    }
                    // Dropping the futures drops their Stores and kills the
                    // programs they started; the stages run again on resume.
                    drop(running);
                    // Stages running as Kubernetes Jobs stop with their Jobs.
                    for job in crate::kubernetes::job::cancel_run(&self.run_id).await {
                        self.reporter.debug(&format!("deleted Job {job}"));
                    }
                    let stopped: Vec<String> = started.iter().filter(|s| !done.contains_key(*s)).cloned().collect();
                    journal.lock().unwrap().append(&Record::RunCancelled { stages: stopped.clone(), ts_ms: now_ms() })?;
                    let by = match signo {
                        Some(signo) => CANCEL_SIGNALS.iter().find(|(n, _)| *n == signo).map_or("a signal", |(_, w)| w),
                        None => "request",
                    };
                    self.reporter.note(&format!(
                        "cancelled by {by}: stopped {}; `gantry resume {}` continues the run",
                        if stopped.is_empty() { "nothing".to_string() } else { stopped.join(", ") },
                        self.run_id
                    ));
                    return Ok((done, Some(Stop::Cancelled(signo))));
                }
            }
        }
    }

    /// Journal, report and emit telemetry for a finished (or skipped) stage.
    fn finish(
        &self,
        journal: &Mutex<Journal>,
        ctx: &InstanceContext,
        r: &StageResult,
        elapsed: Duration,
    ) -> anyhow::Result<()> {
        journal.lock().unwrap().append(&Record::StageFinished {
            stage: r.name.clone(),
            status: r.status.clone(),
            detail: r.detail.clone(),
            duration_ms: r.duration_ms,
            outputs: r.outputs.clone(),
            artifacts: r.artifacts.clone(),
            denials: r.denials.clone(),
            ts_ms: now_ms(),
            reused_from: r.reused_from.clone(),
        })?;
        self.reporter
            .stage_finished(&r.name, r.mark(), elapsed, &r.detail);
        let mut event = ctx
            .base
            .event(EventKind::StageFinished, Some(&r.name), &r.name);
        event.duration_ms = Some(r.duration_ms);
        event.success = Some(r.succeeded());
        event.properties = vec![
            ("plugin".into(), r.uses.clone()),
            ("status".into(), r.status.clone()),
        ];
        event.properties.extend(
            r.outputs
                .iter()
                .map(|(k, v)| (format!("output.{k}"), v.clone())),
        );
        ctx.collector.push(event);
        Ok(())
    }

    /// Resolve a reference at run time.
    fn lookup(
        &self,
        r: &Ref,
        done: &BTreeMap<String, StageResult>,
        secrets: Option<&SecretStore>,
    ) -> Option<String> {
        match r {
            Ref::Var(n) => self.plan.variables.get(n).cloned(),
            Ref::Secret(n) => secrets?.value(n).map(str::to_string),
            Ref::Run(f) => match f.as_str() {
                "id" => Some(self.run_id.clone()),
                "commit" => Some(self.trigger.commit.clone().unwrap_or_default()),
                "branch" => Some(self.trigger.branch.clone().unwrap_or_default()),
                "ref" => Some(self.trigger.reference.clone().unwrap_or_default()),
                "commit-messages" => Some(self.trigger.messages.join("\n\n")),
                "previous-commit" => Some(self.trigger.previous_commit.clone().unwrap_or_default()),
                "url" => Some(self.trigger.url.clone().unwrap_or_default()),
                "promoted-from" => Some(self.promoted_from.clone().unwrap_or_default()),
                "environment" => Some(self.plan.environment.clone()),
                "pipeline" => Some(self.plan.pipeline.clone()),
                _ => None,
            },
            Ref::Output { stage, key } => done
                .get(stage)?
                .outputs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone()),
        }
    }

    fn condition(&self, unit: &Unit, done: &BTreeMap<String, StageResult>) -> Result<bool, String> {
        match &unit.condition {
            None => Ok(true),
            Some((_, e)) => e.eval_bool(&|r| self.lookup(r, done, None)),
        }
    }

    /// The stage's context, with expressions in its config resolved.
    fn context(
        &self,
        unit: &Unit,
        ctx: &InstanceContext,
        done: &BTreeMap<String, StageResult>,
    ) -> Result<StageContext, String> {
        let config = resolve(&unit.config, &|r| self.lookup(r, done, Some(&ctx.secrets)))?;
        Ok(StageContext {
            run_id: self.run_id.clone(),
            pipeline: self.plan.pipeline.clone(),
            stage: unit.name.clone(),
            environment: self.plan.environment.clone(),
            config: config.to_string(),
            inputs: unit
                .needs
                .iter()
                .flat_map(|n| done[n].artifacts.iter().map(to_wit))
                .collect(),
            upstream: unit
                .needs
                .iter()
                .map(|n| StageOutputs {
                    stage: n.clone(),
                    outputs: done[n].outputs.clone(),
                })
                .collect(),
        })
    }

    /// Run one stage, retrying `transient` failures with exponential backoff.
    async fn run_stage(
        &self,
        unit: &Unit,
        plugin: Arc<Plugin>,
        ctx: &InstanceContext,
        context: Result<StageContext, String>,
        journal: &Mutex<Journal>,
        mut reattach: Option<String>,
    ) -> (StageResult, Duration) {
        self.reporter.stage_started(&unit.name, &unit.uses);
        ctx.collector.push(
            ctx.base
                .event(EventKind::StageStarted, Some(&unit.name), &unit.name),
        );
        let started = Instant::now();
        let mut attempt = 1;
        let mut job_note = None;
        let (outcome, denials) = loop {
            let (outcome, denials) = match &context {
                Err(e) => (
                    Err(Failure::Setup(format!("cannot resolve its config: {e}"))),
                    vec![],
                ),
                // `executor: kubernetes`: the attempt runs as a Job (same
                // grants and limits, in the pod's worker), followed from here.
                Ok(context) if self.plan.executor.is_some() => {
                    let jobs = self.plan.executor.as_ref().expect("checked by the guard");
                    let r = self
                        .run_job(
                            jobs,
                            unit,
                            &plugin,
                            ctx,
                            context,
                            attempt,
                            journal,
                            reattach.take(),
                        )
                        .await;
                    job_note = r.note;
                    (r.outcome, r.denials)
                }
                Ok(context) => {
                    let subject = Subject::new(&unit.name, &unit.field);
                    match StageState::prepare(ctx, subject, &unit.grants, &unit.limits) {
                        Ok(state) => {
                            let denials = state.denials().clone();
                            let outcome = self
                                .runtime
                                .run_stage(&plugin, state, context, &unit.limits)
                                .await;
                            (outcome, denials.take())
                        }
                        Err(e) => (Err(Failure::Setup(format!("{e:#}"))), vec![]),
                    }
                }
            };
            match &outcome {
                Err(Failure::Stage(StageError::Transient(why))) if attempt <= unit.retries => {
                    let delay = backoff(attempt);
                    let why = ctx.redactor.redact(why);
                    self.reporter.note(&format!(
                        "  {}: transient failure ({why}); retry {attempt} of {} in {delay:?}",
                        unit.name, unit.retries
                    ));
                    let _ = journal.lock().unwrap().append(&Record::StageRetry {
                        stage: unit.name.clone(),
                        attempt,
                        detail: why,
                        ts_ms: now_ms(),
                    });
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => break (outcome, denials),
            }
        };
        let outcome = outcome.and_then(|o| {
            check_artifacts(&o.artifacts)
                .map(|()| o)
                .map_err(|why| Failure::Stage(StageError::Denied(why)))
        });
        let elapsed = started.elapsed();
        for d in &denials {
            self.reporter
                .note(&format!("  denied: {}", ctx.redactor.redact(d)));
        }
        let denials: Vec<String> = denials.iter().map(|d| ctx.redactor.redact(d)).collect();
        let mut result = StageResult {
            name: unit.name.clone(),
            uses: unit.uses.clone(),
            status: String::new(),
            detail: String::new(),
            duration_ms: elapsed.as_millis() as u64,
            outputs: vec![],
            denials,
            artifacts: vec![],
            reused_from: None,
        };
        match outcome {
            Ok(o) => {
                result.status = "succeeded".into();
                result.detail = ctx.redactor.redact(&o.summary);
                // Keys and artifact fields too: a plugin chooses every string.
                let r = &ctx.redactor;
                result.outputs = o
                    .outputs
                    .iter()
                    .map(|(k, v)| (r.redact(k), r.redact(v)))
                    .collect();
                result.artifacts = o
                    .artifacts
                    .iter()
                    .map(|a| redact_artifact(from_wit(a), r))
                    .collect();
            }
            Err(f) => {
                result.status = f.kind().into();
                result.detail =
                    ctx.redactor
                        .redact(&format!("{}: {}", f.kind(), f.message(&unit.name)));
            }
        }
        if let Some(note) = job_note {
            result.detail = format!("{} ({note})", result.detail);
        }
        (result, elapsed)
    }

    /// Hand the run's events to every sink. A sink that fails is reported; it
    /// does not change the run's result.
    async fn publish(
        &self,
        plugins: &HashMap<String, Arc<Plugin>>,
        ctx: &InstanceContext,
        events: Vec<crate::runtime::bindings::types::Event>,
        dropped: u64,
    ) {
        if self.plan.sinks.is_empty() {
            return;
        }
        if dropped > 0 {
            self.reporter.note(&format!(
                "telemetry: {dropped} event(s) dropped (buffer full)"
            ));
        }
        let done = BTreeMap::new();
        for sink in &self.plan.sinks {
            let subject = Subject::new(&sink.name, &sink.field);
            let config = resolve(&sink.config, &|r| self.lookup(r, &done, Some(&ctx.secrets)));
            let result = match (
                config,
                StageState::prepare(ctx, subject, &sink.grants, &sink.limits),
            ) {
                (Ok(config), Ok(state)) => {
                    let denials = state.denials().clone();
                    let r = self
                        .runtime
                        .publish(
                            &plugins[&sink.field],
                            state,
                            &config.to_string(),
                            &events,
                            &sink.limits,
                        )
                        .await;
                    for d in denials.take() {
                        self.reporter.note(&format!("  denied: {d}"));
                    }
                    r
                }
                (Err(e), _) => Err(Failure::Setup(format!("cannot resolve its config: {e}"))),
                (_, Err(e)) => Err(Failure::Setup(format!("{e:#}"))),
            };
            match result {
                Ok(()) => self.reporter.debug(&format!(
                    "{}: published {} event(s)",
                    sink.field,
                    events.len()
                )),
                Err(f) => self.reporter.note(&ctx.redactor.redact(&format!(
                    "warning: telemetry sink {} ({}) failed: {}: {}",
                    sink.field,
                    sink.uses,
                    f.kind(),
                    f.message(&sink.name)
                ))),
            }
        }
    }
}

/// Delay before retry `attempt` (1-based): 0.5 s, 1 s, 2 s, ... up to 30 s,
/// with up to 20% jitter so that retries from parallel stages spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << (attempt - 1).min(6));
    let jitter = (now_ms() % 200) as u32;
    base.min(Duration::from_secs(30)) * (1000 + jitter) / 1000
}

fn skipped(unit: &Unit, detail: String) -> StageResult {
    StageResult {
        name: unit.name.clone(),
        uses: unit.uses.clone(),
        status: "skipped".into(),
        detail,
        duration_ms: 0,
        outputs: vec![],
        denials: vec![],
        artifacts: vec![],
        reused_from: None,
    }
}

/// A copy of `config` with every `${{ }}` expression in its strings replaced.
pub fn resolve(
    config: &serde_json::Value,
    lookup: &dyn Fn(&Ref) -> Option<String>,
) -> Result<serde_json::Value, String> {
    Ok(match config {
        serde_json::Value::String(s) if s.contains("${{") => {
            serde_json::Value::String(expr::render(&expr::parse_template(s)?, lookup)?)
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|v| resolve(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

pub(crate) fn manifest_dir(manifest: &Path) -> std::path::PathBuf {
    match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

pub(crate) fn from_wit(a: &Artifact) -> ArtifactRecord {
    ArtifactRecord {
        name: a.name.clone(),
        media_type: a.media_type.clone(),
        path: a.path.clone(),
        reference: a.reference.clone(),
        digest: a.digest.clone(),
        annotations: a.annotations.clone(),
    }
}

fn redact_artifact(a: ArtifactRecord, r: &crate::redact::Redactor) -> ArtifactRecord {
    let opt = |v: Option<String>| v.map(|v| r.redact(&v));
    ArtifactRecord {
        name: r.redact(&a.name),
        media_type: r.redact(&a.media_type),
        path: opt(a.path),
        reference: opt(a.reference),
        digest: opt(a.digest),
        annotations: a
            .annotations
            .iter()
            .map(|(k, v)| (r.redact(k), r.redact(v)))
            .collect(),
    }
}

pub(crate) fn to_wit(a: &ArtifactRecord) -> Artifact {
    Artifact {
        name: a.name.clone(),
        media_type: a.media_type.clone(),
        path: a.path.clone(),
        reference: a.reference.clone(),
        digest: a.digest.clone(),
        annotations: a.annotations.clone(),
    }
}

/// Artifact paths must stay inside the workspace: relative, without `..`.
pub(crate) fn check_artifacts(artifacts: &[Artifact]) -> Result<(), String> {
    for a in artifacts {
        if let Some(p) = &a.path
            && Path::new(p)
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "returned artifact `{}` with path `{p}` outside the workspace: an artifact's \
                 path must be relative to the workspace, without `..`",
                a.name
            ));
        }
    }
    Ok(())
}
