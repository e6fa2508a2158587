//! Queued runs are claimed (the store enforces one run per (pipeline, branch)
//! and the global cap) and executed by the one executor ([`crate::executor`])
//! that `gantry run`, `resume` and `promote` use. A finished run that
//! succeeded queues its promotion into the next environment of the
//! manifest's chain, waiting for an approval where the environment asks.

use super::Service;
use crate::queue::{NewRun, Run, RunStatus};
use crate::report::{Level, Mark, Reporter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Bounds each git command of a checkout.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Resume the runs a previous process left running (killed, or stopped by a
/// signal): from their journals, without running finished stages again.
pub(super) async fn recover(svc: &Arc<Service>) -> anyhow::Result<()> {
    let left = svc.db(|s| s.recover()).await?;
    for run in left {
        svc.say(&format!(
            "run {}: left running by an earlier gantry serve; resuming it{}",
            run.id,
            run.journal_run_id
                .as_ref()
                .map(|j| format!(" (journal {j})"))
                .unwrap_or_default()
        ));
        tokio::spawn(execute(svc.clone(), run));
    }
    Ok(())
}

/// Claim and start queued runs whenever something changes.
pub(super) async fn dispatch_loop(svc: Arc<Service>) {
    loop {
        while !svc.shutdown.is_cancelled() {
            let max = svc.max_runs;
            match svc.db(move |s| s.claim_next(max)).await {
                Ok(Some(run)) => {
                    tokio::spawn(execute(svc.clone(), run));
                }
                Ok(None) => break,
                Err(e) => {
                    svc.say(&format!("dispatch: {e:#}"));
                    break;
                }
            }
        }
        tokio::select! {
            _ = svc.wake.notified() => {}
            // Approvals decided by another process (`gantry approve` on the
            // same data directory) are seen within this.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = svc.shutdown.cancelled() => return,
        }
    }
}

/// How a run ended, as the store records it.
struct Ended {
    status: RunStatus,
    detail: String,
    result: Option<crate::pipeline::RunResult>,
}

/// Execute one claimed (or recovered) run to its end, and record it.
pub(super) async fn execute(svc: Arc<Service>, run: Run) {
    let token = CancellationToken::new();
    svc.active.lock().unwrap().insert(run.id, token.clone());
    svc.metrics.run_started();
    let ended = match drive(&svc, &run, &token).await {
        Ok(e) => e,
        Err(e) => Ended {
            status: RunStatus::Failed,
            detail: format!("{e:#}"),
            result: None,
        },
    };
    if svc.shutdown.is_cancelled() && ended.status == RunStatus::Cancelled {
        // Stopped because the service stops: it stays `running` in the store
        // and the next start resumes it.
        svc.active.lock().unwrap().remove(&run.id);
        svc.metrics.run_ended();
        return;
    }
    let (status, detail) = (ended.status, ended.detail.clone());
    let id = run.id;
    // As recorded now (with its journal id, which the claimed copy lacks).
    let run = match svc.db(move |s| s.finish_with(id, status, &detail)).await {
        Ok(r) => r,
        Err(e) => {
            svc.say(&format!("run {id}: cannot record its end: {e:#}"));
            run
        }
    };
    svc.say(&format!(
        "run {id} [{} {} {}]: {}{}",
        run.pipeline,
        run.branch,
        short(&run.commit),
        ended.status.as_str(),
        if ended.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", ended.detail)
        }
    ));
    if ended.status == RunStatus::Succeeded
        && let Err(e) = after_success(&svc, &run, ended.result.as_ref()).await
    {
        svc.say(&format!("run {id}: cannot queue its promotion: {e:#}"));
    }
    svc.active.lock().unwrap().remove(&run.id);
    svc.metrics.run_ended();
    svc.wake.notify_one();
    if let Err(e) = prune(&svc).await {
        svc.debug(&format!("workspace retention: {e:#}"));
    }
}

/// The directory a run works in: its own checkout, or for a promotion the
/// checkout of the run it promotes (its artifacts are there).
pub(super) async fn workspace_of(svc: &Service, run: &Run) -> anyhow::Result<PathBuf> {
    let mut root = run.clone();
    while let Some(source) = root.source_run {
        root = svc.db(move |s| s.run(source)).await?;
    }
    Ok(svc.workspaces.join(root.id.to_string()))
}

async fn drive(svc: &Arc<Service>, run: &Run, token: &CancellationToken) -> anyhow::Result<Ended> {
    let repo = svc
        .repo_by_url(&run.repository)
        .ok_or_else(|| anyhow::anyhow!("{} is no longer a watched repository", run.repository))?;
    let ws = workspace_of(svc, run).await?;
    let promotion = run.source_run.is_some();
    if !promotion && !ws.join(".git").exists() {
        checkout(svc, run, &ws).await?;
    }
    let manifest = ws.join(&repo.config.manifest);
    anyhow::ensure!(
        manifest.is_file(),
        "commit {} has no {} (the manifest `repositories[].manifest` names)",
        short(&run.commit),
        repo.config.manifest
    );
    // The push as git has it (webhook payloads and polling alike): its
    // commits, messages and changed files, for `on:` and `run.commit-messages`.
    let mut event = crate::webhook::PushEvent::from_refs(
        &run.repository,
        &run.git_ref,
        run.before.as_deref(),
        &run.commit,
    );
    if let Err(e) = crate::git::fill_push_event(&mut event, &ws).await {
        svc.debug(&format!("run {}: commits of the push unknown: {e}", run.id));
    }
    if !promotion && run.journal_run_id.is_none() {
        // Whether the manifest at this commit wants this push.
        let file =
            crate::manifest::ManifestFile::load(&manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
        let rules = crate::triggers::PushRules::new(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let decision = rules.decide(&event);
        if !decision.run {
            return Ok(Ended {
                status: RunStatus::Skipped,
                detail: decision.reason,
                result: None,
            });
        }
    }
    let journal_id = match &run.journal_run_id {
        Some(j) => j.clone(),
        None => {
            let j = crate::pipeline::new_run_id();
            let (id, j2) = (run.id, j.clone());
            svc.db(move |s| s.attach_journal(id, &j2)).await?;
            j
        }
    };
    let reporter: Arc<dyn Reporter> = Arc::new(RunReporter {
        run: run.id,
        svc: svc.clone(),
        pipeline: run.pipeline.clone(),
    });
    let mut messages = run.commit_messages.clone();
    if messages.is_empty() {
        messages = event.messages().iter().map(|m| m.to_string()).collect();
    }
    // Newest first, as `run.commit-messages` lists them.
    messages.reverse();
    // `run.previous-commit`: what is live in the environment now, by this
    // service's deployment history (each run's workspace is new, so the
    // workspace's own run history would not know).
    let previous = {
        let (pipeline, env, id) = (run.pipeline.clone(), run.environment.clone(), run.id);
        svc.db(move |s| s.deployment_history(&pipeline, &env))
            .await?
            .into_iter()
            .find(|d| d.run != id)
            .map(|d| d.commit)
    };
    let trigger = crate::pipeline::Trigger {
        commit: Some(run.commit.clone()),
        branch: run
            .git_ref
            .starts_with("refs/heads/")
            .then(|| run.branch.clone()),
        reference: Some(run.git_ref.clone()),
        messages,
        repository: Some(run.repository.clone()),
        previous_commit: previous.clone(),
        url: Some(format!("{}/runs/{}", svc.public_url, run.id)),
    };
    let runtime = &svc.runtime;
    let cancel = Some(token.clone());
    let journal = crate::executor::find_run(&ws, &journal_id).ok();
    if let Some((_, dir)) = &journal
        && let Some(success) = crate::journal::Journal::read(dir)?
            .iter()
            .find_map(|r| match r {
                crate::journal::Record::RunFinished { success, .. } => Some(*success),
                _ => None,
            })
    {
        // It finished before the service died, but its end was never
        // recorded here: record it, do not run it again.
        return Ok(Ended {
            status: if success {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            detail: "finished before the service stopped; recorded from its journal".into(),
            result: None,
        });
    }
    let result = if journal.is_some() {
        crate::executor::resume(
            runtime,
            reporter,
            crate::executor::ResumeRequest {
                workspace: ws.clone(),
                run_id: journal_id,
                cancel,
            },
        )
        .await?
    } else if let Some(source) = run.source_run {
        let source = svc.db(move |s| s.run(source)).await?;
        let from = source
            .journal_run_id
            .ok_or_else(|| anyhow::anyhow!("run {} has no journal to promote", source.id))?;
        crate::executor::promote(
            runtime,
            reporter,
            crate::executor::PromoteRequest {
                workspace: ws.clone(),
                from_run: from,
                environment: run.environment.clone(),
                run_id: Some(journal_id),
                approver: approval_by(svc, run).await?,
                previous_commit: previous,
                url: trigger.url.clone(),
                cancel,
            },
        )
        .await?
    } else {
        crate::executor::start(
            runtime,
            reporter,
            crate::executor::RunRequest {
                manifest: manifest.clone(),
                environment: Some(run.environment.clone()),
                run_id: Some(journal_id),
                trigger: Some(trigger),
                lock: crate::oci::fetch::LockMode::Update,
                cancel,
            },
        )
        .await?
    };
    let status = match result.status {
        "succeeded" => RunStatus::Succeeded,
        "cancelled" => RunStatus::Cancelled,
        _ => RunStatus::Failed,
    };
    let detail = if status == RunStatus::Failed {
        result
            .stages
            .iter()
            .filter(|s| !s.ok())
            .map(|s| format!("{}: {}", s.name, s.status))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        String::new()
    };
    Ok(Ended {
        status,
        detail,
        result: Some(result),
    })
}

/// Who approved a promotion into `run`'s environment, if it needed one.
async fn approval_by(
    svc: &Service,
    run: &Run,
) -> anyhow::Result<Option<crate::executor::Approver>> {
    let (id, env) = (run.id, run.environment.clone());
    let a = svc.db(move |s| s.approval(id, &env)).await?;
    Ok(a.and_then(|a| a.decided_by)
        .map(|by| crate::executor::Approver {
            by,
            via: "gantry serve (approvals API)".into(),
        }))
}

/// Fetch the run's commit into a fresh workspace; a half-made checkout is
/// never mistaken for a finished one (made aside, then renamed).
async fn checkout(svc: &Service, run: &Run, ws: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let aside = ws.with_extension("checkout");
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    crate::git::checkout(&run.repository, &run.commit, &aside, GIT_TIMEOUT).await?;
    std::fs::rename(&aside, ws)?;
    svc.debug(&format!(
        "run {}: checked out {} at {} in {:.0?}",
        run.id,
        run.repository,
        short(&run.commit),
        started.elapsed()
    ));
    Ok(())
}

/// Record what is now live in the run's environment, and queue the
/// promotion into the next one.
async fn after_success(
    svc: &Arc<Service>,
    run: &Run,
    result: Option<&crate::pipeline::RunResult>,
) -> anyhow::Result<()> {
    let digest = result.and_then(image_digest);
    {
        let (pipeline, env, commit, id) = (
            run.pipeline.clone(),
            run.environment.clone(),
            run.commit.clone(),
            run.id,
        );
        let _ = pipeline;
        svc.db(move |s| s.set_live(id, &env, &commit, digest.as_deref()).map(|_| ()))
            .await?;
    }
    let Some(next) = next_environment(svc, run).await? else {
        return Ok(());
    };
    queue_into(svc, run, next, None).await.map(|_| ())
}

/// The environment after `run`'s in its manifest's promotion chain.
async fn next_environment(
    svc: &Service,
    run: &Run,
) -> anyhow::Result<Option<crate::executor::NextEnvironment>> {
    let ws = workspace_of(svc, run).await?;
    let journal = run
        .journal_run_id
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("run {} never started a journal", run.id))?;
    crate::executor::next_environment(&ws, journal)
}

/// Promote `run` into `environment` by hand (the API's `promote`): it must
/// have succeeded and `environment` must come next. `by` counts as the
/// approval where the environment needs one; a promotion already queued and
/// waiting for it is approved rather than queued twice.
pub(super) async fn queue_promotion(
    svc: &Arc<Service>,
    run: &Run,
    environment: &str,
    by: Option<&str>,
) -> anyhow::Result<i64> {
    anyhow::ensure!(
        run.status == RunStatus::Succeeded,
        "run {} is {}; only a run that succeeded is promoted",
        run.id,
        run.status.as_str()
    );
    let next = next_environment(svc, run).await?;
    let Some(next) = next.filter(|n| n.name == environment) else {
        anyhow::bail!(
            "`{environment}` is not the environment after `{}` in the manifest's promotion chain",
            run.environment
        );
    };
    queue_into(svc, run, next, by).await
}

async fn queue_into(
    svc: &Arc<Service>,
    run: &Run,
    next: crate::executor::NextEnvironment,
    by: Option<&str>,
) -> anyhow::Result<i64> {
    let new = NewRun {
        pipeline: run.pipeline.clone(),
        repository: run.repository.clone(),
        git_ref: run.git_ref.clone(),
        commit: run.commit.clone(),
        before: run.before.clone(),
        environment: next.name.clone(),
        trigger: "promotion".into(),
        source_run: Some(run.id),
        needs_approval: next.approval_required,
        ..NewRun::default()
    };
    let by = by.map(str::to_string);
    let env = next.name.clone();
    let (queued, approved) = svc
        .db(move |s| {
            let queued = s.enqueue(&new)?;
            let mut approved = false;
            if let Some(by) = &by
                && next.approval_required
                && s.approval(queued.run(), &env)?
                    .is_some_and(|a| a.state == crate::queue::ApprovalState::Pending)
            {
                s.decide_approval(
                    queued.run(),
                    &env,
                    crate::queue::Decision::Approve,
                    by,
                    Some("promoted by hand"),
                )?;
                approved = true;
            }
            Ok((queued, approved))
        })
        .await?;
    svc.say(&format!(
        "run {}: promotion of run {} into `{}` {}",
        queued.run(),
        run.id,
        next.name,
        if next.approval_required && !approved {
            format!(
                "waits for an approval (`gantry approve {} {}`)",
                queued.run(),
                next.name
            )
        } else {
            "queued".to_string()
        }
    ));
    super::intake::after_enqueue(svc, std::slice::from_ref(&queued));
    Ok(queued.run())
}

/// The digest of the image the run produced or deployed, if it names one.
fn image_digest(result: &crate::pipeline::RunResult) -> Option<String> {
    let stages = || result.stages.iter().filter(|s| s.succeeded());
    stages()
        .flat_map(|s| s.artifacts.iter())
        .filter(|a| a.media_type.contains("image"))
        .find_map(|a| a.digest.clone())
        .or_else(|| {
            stages()
                .flat_map(|s| s.outputs.iter())
                .find(|(k, v)| k == "digest" && v.starts_with("sha256:"))
                .map(|(_, v)| v.clone())
        })
}

/// Keep the newest workspaces, and every one a run still needs.
async fn prune(svc: &Arc<Service>) -> anyhow::Result<()> {
    let open = svc.db(|s| s.unfinished_runs()).await?;
    let mut protected = vec![];
    for run in &open {
        protected.push(workspace_of(svc, run).await?);
    }
    let removed = crate::git::prune_workspaces(&svc.workspaces, svc.keep_workspaces, &protected)?;
    if !removed.is_empty() {
        svc.debug(&format!("removed {} old workspace(s)", removed.len()));
    }
    Ok(())
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// What a run says goes to the service's output, one line per stage event,
/// prefixed with the run; stage logs stay in the run's journal directory
/// (where `gantry logs` and the API's log stream read them).
struct RunReporter {
    run: i64,
    svc: Arc<Service>,
    pipeline: String,
}

impl Reporter for RunReporter {
    fn stage_started(&self, stage: &str, plugin: &str) {
        self.svc
            .debug(&format!("run {} {stage}: started ({plugin})", self.run));
    }
    fn log(&self, _stage: &str, _level: Level, _line: &str) {}
    fn progress(&self, _stage: &str, _done: u64, _total: Option<u64>, _message: &str) {}
    fn stage_finished(&self, stage: &str, mark: Mark, elapsed: Duration, detail: &str) {
        self.svc
            .metrics
            .stage_finished(&self.pipeline, stage, mark, elapsed);
        self.svc.say(&format!(
            "run {} {stage}: {} in {:.2}s{}",
            self.run,
            mark.word(),
            elapsed.as_secs_f64(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.lines().next().unwrap_or(""))
            }
        ));
    }
    fn note(&self, text: &str) {
        self.svc.debug(&format!("run {}: {text}", self.run));
    }
    fn debug(&self, text: &str) {
        self.svc.debug(&format!("run {}: {text}", self.run));
    }
}
