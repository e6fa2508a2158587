//! `gantry stage --spec FILE`: what a stage's pod runs. It plans the same
//! manifest the host planned (from the workspace volume, refused unless its
//! sha256 matches), loads the stage's plugin (built-in, a file in the
//! workspace, or the OCI reference `gantry.lock` pins) and refuses it unless
//! its digest is the one the host checked, then runs the stage in-process
//! exactly as the local executor does: [`StageState::prepare`] with the
//! stage's grants and limits, [`Runtime::run_stage`]. Its log goes to stdout
//! (the pod's log, which the host follows); its report to the termination
//! message.

use super::spec::{SPEC_VERSION, StageReport, StageSpec, spill_path};
use crate::capabilities::Subject;
use crate::capabilities::secrets::SecretStore;
use crate::capabilities::telemetry::{Collector, EventBase};
use crate::report::{Level, Mark, Reporter};
use crate::runtime::bindings::types::{StageContext, StageOutputs};
use crate::runtime::state::StageState;
use crate::runtime::{Failure, InstanceContext, Runtime};
use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The worker's own timer runs this much past the stage timeout: the Job's
/// `activeDeadlineSeconds` is what enforces it (and says `DeadlineExceeded`);
/// the timer only stops a stage whose pod outlived its deadline.
const TIMER_GRACE: Duration = Duration::from_secs(30);

/// Exit status of a worker whose stage failed (the Job then fails, with
/// `BackoffLimitExceeded`, and the report says why); 0 when it succeeded.
pub const EXIT_STAGE_FAILED: u8 = 1;
/// Exit status of a worker that could not run the stage at all.
pub const EXIT_SETUP: u8 = 2;

/// Stage log lines on stdout, one per line, `<level> <text>`: what the host
/// reads back from the pod's log to rebuild the stage log.
pub struct PodLog {
    out: Mutex<std::io::Stdout>,
}

impl PodLog {
    fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// The word a level is written as in the pod log.
pub fn level_word(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// A pod log line read back: its level and text. Lines the worker did not
/// write as `<level> <text>` (a crash's panic message) are errors.
pub fn parse_line(line: &str) -> (Level, &str) {
    let (word, text) = line.split_once(' ').unwrap_or((line, ""));
    let level = match word {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" => Level::Warn,
        "error" => Level::Error,
        "gantry:" => return (Level::Debug, line),
        _ => return (Level::Error, line),
    };
    (level, text)
}

impl Reporter for PodLog {
    fn stage_started(&self, _: &str, _: &str) {}
    fn log(&self, _: &str, level: Level, line: &str) {
        self.line(&format!("{} {line}", level_word(level)));
    }
    fn progress(&self, _: &str, done: u64, total: Option<u64>, message: &str) {
        let of = total.map_or(String::new(), |t| format!("/{t}"));
        self.line(&format!("debug progress {done}{of} {message}"));
    }
    fn stage_finished(&self, _: &str, _: Mark, _: Duration, _: &str) {}
    fn note(&self, text: &str) {
        self.line(&format!("gantry: {text}"));
    }
    fn debug(&self, text: &str) {
        self.line(&format!("gantry: {text}"));
    }
}

/// Run the stage of `spec_path` in `workspace`; write its report to
/// `result` (the termination-message path). The exit status: 0 when the
/// stage succeeded, [`EXIT_STAGE_FAILED`] when it failed, [`EXIT_SETUP`] when
/// it could not run (the report says why in every case).
pub async fn run(runtime: &Runtime, spec_path: &Path, workspace: &Path, result: &Path) -> u8 {
    let log = Arc::new(PodLog {
        out: Mutex::new(std::io::stdout()),
    });
    let spec = std::fs::read(spec_path)
        .with_context(|| format!("cannot read the stage spec {}", spec_path.display()))
        .and_then(|b| {
            serde_json::from_slice::<StageSpec>(&b)
                .with_context(|| format!("{} is not a stage spec", spec_path.display()))
        });
    let (report, spill) = match spec {
        Err(e) => (setup_report(&e), None),
        Ok(spec) => {
            let spill = spill_path(&spec.run_id, &spec.stage, spec.attempt);
            let report = match run_spec(runtime, &spec, workspace, log.clone()).await {
                Ok(r) => r,
                Err(e) => setup_report(&e),
            };
            (report, Some(spill))
        }
    };
    let code = match report.status.as_str() {
        "succeeded" => 0,
        "setup" => EXIT_SETUP,
        _ => EXIT_STAGE_FAILED,
    };
    if code == EXIT_SETUP {
        log.line(&format!("error {}", report.message));
    }
    let spill = spill.unwrap_or_else(|| "report.json".into());
    let message = report.message(&spill, |bytes| {
        let path = workspace.join(&spill);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    });
    let written = message.and_then(|m| {
        std::fs::write(result, m).with_context(|| format!("cannot write {}", result.display()))
    });
    if let Err(e) = written {
        log.line(&format!("error cannot report the stage's result: {e:#}"));
        return EXIT_SETUP;
    }
    code
}

fn setup_report(e: &anyhow::Error) -> StageReport {
    StageReport {
        status: "setup".into(),
        message: format!("{e:#}"),
        ..Default::default()
    }
}

async fn run_spec(
    runtime: &Runtime,
    spec: &StageSpec,
    workspace: &Path,
    log: Arc<PodLog>,
) -> anyhow::Result<StageReport> {
    if spec.version != SPEC_VERSION {
        anyhow::bail!(
            "the stage spec is version {}, this gantry speaks version {SPEC_VERSION}: the image \
             and the host must be the same gantry",
            spec.version
        );
    }
    for (k, v) in &spec.env {
        // SAFETY: the worker's own threads (tokio's) do not read the
        // environment; this is set before the stage that reads it exists.
        unsafe { std::env::set_var(k, v) };
    }
    let manifest = workspace.join(&spec.manifest);
    let digest = crate::journal::file_sha256(&manifest)
        .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
    if digest != spec.manifest_sha256 {
        anyhow::bail!(
            "{} in the workspace volume is not the manifest the host planned (sha256 {digest}, \
             the host's {}): is the workspace claim the host's workspace?",
            manifest.display(),
            spec.manifest_sha256
        );
    }
    let file = crate::executor::load_file(&manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = crate::executor::plan_file(
        &file,
        crate::plan::environment_arg(&file, &spec.environment),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(unit) = plan.stages.iter().find(|u| u.name == spec.stage) else {
        anyhow::bail!("{} has no stage `{}`", manifest.display(), spec.stage);
    };
    crate::oci::fetch::fetch_plan(
        &plan,
        runtime.cache_root.as_deref(),
        crate::oci::fetch::LockMode::Locked,
        log.as_ref(),
    )
    .await
    .map_err(|errors| anyhow::anyhow!("{}", errors.join("; ")))?;
    let bytes = unit.source.read()?;
    let plugin = runtime.load_reporting(&bytes, log.as_ref())?;
    if plugin.digest != spec.plugin_digest {
        anyhow::bail!(
            "the plugin of `{}` ({}) is {} here, but the host checked {}: the pod refuses to run \
             other code than the host planned",
            unit.name,
            unit.uses,
            plugin.digest,
            spec.plugin_digest
        );
    }
    let secrets = Arc::new(SecretStore::from_values(spec.secrets.clone()));
    let ctx = InstanceContext {
        workspace: plan.workspace.clone(),
        reporter: log.clone(),
        redactor: secrets.redactor(),
        secrets,
        collector: Collector::default(),
        base: EventBase {
            run_id: spec.run_id.clone(),
            pipeline: spec.pipeline.clone(),
            environment: spec.environment.clone(),
        },
        logs: None,
        state: None,
        // A pod granted `cluster` has its service account's token: the
        // cluster it runs in is the one it reaches.
        cluster: Arc::new(crate::capabilities::cluster::kube::Connection::in_cluster(
            &spec.environment,
        )),
    };
    let mut limits = unit.limits;
    limits.timeout = Duration::from_millis(spec.timeout_ms) + TIMER_GRACE;
    let context = StageContext {
        run_id: spec.run_id.clone(),
        pipeline: spec.pipeline.clone(),
        stage: spec.stage.clone(),
        environment: spec.environment.clone(),
        config: spec.config.clone(),
        inputs: spec.inputs.iter().map(crate::pipeline::to_wit).collect(),
        upstream: spec
            .upstream
            .iter()
            .map(|(stage, outputs)| StageOutputs {
                stage: stage.clone(),
                outputs: outputs.clone(),
            })
            .collect(),
    };
    let subject = Subject::new(&unit.name, &unit.field);
    let state = StageState::prepare(&ctx, subject, &unit.grants, &limits)?;
    let denials = state.denials().clone();
    let outcome = runtime.run_stage(&plugin, state, &context, &limits).await;
    let denials = denials.take();
    let r = &ctx.redactor;
    Ok(match outcome {
        Ok(o) => StageReport {
            status: "succeeded".into(),
            message: r.redact(&o.summary),
            outputs: o.outputs.clone(),
            artifacts: o.artifacts.iter().map(crate::pipeline::from_wit).collect(),
            denials,
        },
        Err(f) => StageReport {
            status: f.kind().into(),
            message: r.redact(&failure_text(&f)),
            denials,
            ..Default::default()
        },
    })
}

/// The failure's own message, without the stage name the host adds.
fn failure_text(f: &Failure) -> String {
    use crate::runtime::bindings::types::StageError as E;
    match f {
        Failure::Stage(E::InvalidConfig(m) | E::Denied(m) | E::Transient(m) | E::Failed(m)) => {
            m.clone()
        }
        Failure::Stopped(m) | Failure::Setup(m) => m.clone(),
        Failure::Timeout(d) => format!("{}", d.as_millis()),
    }
}

/// The failure a report describes, for the host's retry rules and messages.
pub fn failure_of(report: &StageReport) -> Option<Failure> {
    use crate::runtime::bindings::types::StageError as E;
    let m = report.message.clone();
    Some(match report.status.as_str() {
        "succeeded" => return None,
        "invalid-config" => Failure::Stage(E::InvalidConfig(m)),
        "denied" => Failure::Stage(E::Denied(m)),
        "transient" => Failure::Stage(E::Transient(m)),
        "failed" => Failure::Stage(E::Failed(m)),
        "stopped" => Failure::Stopped(m),
        "timeout" => Failure::Timeout(Duration::from_millis(m.parse().unwrap_or(0))),
        _ => Failure::Setup(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip() {
        for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
            let line = format!("{} hello world", level_word(level));
            assert_eq!(parse_line(&line), (level, "hello world"));
        }
        assert_eq!(parse_line("thread 'main' panicked").0, Level::Error);
    }

    #[test]
    fn failures_round_trip_through_reports() {
        use crate::runtime::bindings::types::StageError as E;
        for f in [
            Failure::Stage(E::Transient("flaky".into())),
            Failure::Stage(E::Failed("no".into())),
            Failure::Stopped("exceeded its memory limit".into()),
            Failure::Timeout(Duration::from_secs(3)),
        ] {
            let report = StageReport {
                status: f.kind().into(),
                message: failure_text(&f),
                ..Default::default()
            };
            let back = failure_of(&report).unwrap();
            assert_eq!(back.kind(), f.kind());
            assert_eq!(back.message("s"), f.message("s"));
        }
    }
}
