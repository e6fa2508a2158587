//! What the pages show of a run, read from its journal (the records
//! [`crate::journal`] writes) and its logs ([`crate::show::log_lines`]): no
//! second parser of either.

use crate::journal::{ApprovalRecord, ArtifactRecord, Journal, PluginRecord, Record};
use crate::state_dir::PrivateDir;
use std::collections::BTreeMap;

/// How many log lines a page or a report shows per stage.
pub const LOG_TAIL: usize = 60;

/// One stage of a run, as its journal has it so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageView {
    pub name: String,
    /// What `uses:` named (from the run's plugin records).
    pub uses: String,
    /// `pending` (not started), `running`, or the journal's final status.
    pub status: String,
    pub attempts: u32,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The summary on success, the error or the reason it was skipped.
    pub detail: String,
    pub outputs: Vec<(String, String)>,
    pub denials: Vec<String>,
    pub artifacts: Vec<ArtifactRecord>,
    /// Transient failures that were retried.
    pub retries: Vec<String>,
    pub reused_from: Option<String>,
    /// `namespace/job` of the Kubernetes Job its last attempt ran as.
    pub job: Option<String>,
    /// The stages it needs (from the manifest, when it is unchanged since the
    /// run started); empty when unknown.
    pub needs: Vec<String>,
}

impl StageView {
    /// A health-gate stage's verdict with the values it measured.
    pub fn health(&self) -> Option<HealthVerdict> {
        (self.uses.contains("health-gate")
            && !matches!(self.status.as_str(), "pending" | "running"))
        .then(|| HealthVerdict::from_stage(self))
    }

    pub fn is_done(&self) -> bool {
        !matches!(self.status.as_str(), "pending" | "running")
    }
}

/// A run as its journal has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunView {
    pub id: String,
    pub pipeline: String,
    pub environment: String,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub reference: Option<String>,
    pub repository: Option<String>,
    pub promoted_from: Option<String>,
    pub approval: Option<ApprovalRecord>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Stages in the manifest's order.
    pub stages: Vec<StageView>,
    /// The telemetry sinks the run publishes to.
    pub sinks: Vec<PluginRecord>,
    pub resumed: u32,
    /// The events and metrics the run reported (recorded when it ended).
    pub telemetry: Vec<TelemetryEvent>,
}

/// One telemetry event as the run recorded it
/// ([`crate::capabilities::telemetry::RECORD_FILE`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TelemetryEvent {
    pub kind: String,
    pub timestamp_ms: u64,
    pub stage: Option<String>,
    pub name: String,
    pub value: Option<f64>,
    pub duration_ms: Option<u64>,
    pub success: Option<bool>,
    #[serde(default)]
    pub properties: Vec<(String, String)>,
}

impl RunView {
    /// Fold a journal's records into a view. `id` is the run's journal id.
    pub fn from_records(id: &str, records: &[Record]) -> RunView {
        let mut run = RunView {
            id: id.to_string(),
            status: "running".into(),
            ..Default::default()
        };
        let mut stages: Vec<StageView> = vec![];
        fn stage<'a>(stages: &'a mut Vec<StageView>, name: &str) -> &'a mut StageView {
            if let Some(i) = stages.iter().position(|s| s.name == name) {
                return &mut stages[i];
            }
            stages.push(StageView {
                name: name.to_string(),
                status: "pending".into(),
                ..Default::default()
            });
            stages.last_mut().expect("just pushed")
        }
        for r in records {
            match r {
                Record::RunStarted {
                    run_id,
                    pipeline,
                    environment,
                    commit,
                    plugins,
                    ts_ms,
                    branch,
                    reference,
                    repository,
                    promoted_from,
                    approval,
                    ..
                } => {
                    run.id = run_id.clone();
                    run.pipeline = pipeline.clone();
                    run.environment = environment.clone();
                    run.commit = commit.clone();
                    run.branch = branch.clone();
                    run.reference = reference.clone();
                    run.repository = repository.clone();
                    run.promoted_from = promoted_from.clone();
                    run.approval = approval.clone();
                    run.started_ms = *ts_ms;
                    for p in plugins {
                        // Sinks are recorded by their field (`telemetry[0]`).
                        if p.unit.starts_with("telemetry[") {
                            run.sinks.push(p.clone());
                        } else {
                            stage(&mut stages, &p.unit).uses = p.uses.clone();
                        }
                    }
                }
                Record::StageStarted {
                    stage: name,
                    attempt,
                    ts_ms,
                    ..
                } => {
                    let s = stage(&mut stages, name);
                    s.status = "running".into();
                    s.attempts = *attempt;
                    // The first attempt's start: a retried stage's bar covers
                    // its retries too.
                    if s.started_ms.is_none() || *attempt <= 1 {
                        s.started_ms = Some(*ts_ms);
                    }
                    s.finished_ms = None;
                }
                Record::StageJob {
                    stage: name,
                    namespace,
                    job,
                    ..
                } => {
                    stage(&mut stages, name).job = Some(format!("{namespace}/{job}"));
                }
                Record::StageRetry {
                    stage: name,
                    attempt,
                    detail,
                    ..
                } => {
                    stage(&mut stages, name)
                        .retries
                        .push(format!("attempt {attempt}: {detail}"));
                }
                Record::StageFinished {
                    stage: name,
                    status,
                    detail,
                    duration_ms,
                    outputs,
                    artifacts,
                    denials,
                    ts_ms,
                    reused_from,
                } => {
                    let s = stage(&mut stages, name);
                    s.status = status.clone();
                    s.detail = detail.clone();
                    s.duration_ms = Some(*duration_ms);
                    s.outputs = outputs.clone();
                    s.artifacts = artifacts.clone();
                    s.denials = denials.clone();
                    s.finished_ms = Some(*ts_ms);
                    s.reused_from = reused_from.clone();
                    if s.started_ms.is_none() {
                        // Skipped or reused: never started here; a point in time.
                        s.started_ms = Some(ts_ms.saturating_sub(*duration_ms));
                    }
                }
                Record::RunCancelled {
                    stages: names,
                    ts_ms,
                } => {
                    for name in names {
                        let s = stage(&mut stages, name);
                        if s.status == "running" {
                            s.status = "cancelled".into();
                            s.finished_ms = Some(*ts_ms);
                        }
                    }
                    run.status = "cancelled".into();
                    run.finished_ms = Some(*ts_ms);
                }
                Record::RunResumed { .. } => {
                    run.resumed += 1;
                    run.status = "running".into();
                    run.finished_ms = None;
                }
                Record::RunFinished { success, ts_ms } => {
                    run.status = if *success { "succeeded" } else { "failed" }.into();
                    run.finished_ms = Some(*ts_ms);
                }
            }
        }
        run.stages = stages;
        run
    }

    /// Read a run's journal, and the stages' `needs` from its manifest when
    /// that is unchanged since the run started (a changed one may describe
    /// other stages).
    pub fn load(dir: &PrivateDir) -> anyhow::Result<RunView> {
        use anyhow::Context;
        let records = Journal::read(dir)
            .with_context(|| format!("reading the journal in {}", dir.path().display()))?;
        let id = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut run = RunView::from_records(&id, &records);
        if let Some(bytes) = dir.read(crate::capabilities::telemetry::RECORD_FILE)? {
            run.telemetry = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        if let Some(Record::RunStarted {
            manifest,
            manifest_sha256,
            ..
        }) = records.first()
            && crate::journal::file_sha256(manifest).ok().as_ref() == Some(manifest_sha256)
            && let Ok(file) = crate::manifest::ManifestFile::load(manifest)
        {
            let needs: BTreeMap<String, Vec<String>> = file
                .manifest
                .stages
                .iter()
                .map(|s| {
                    (
                        s.name.value.clone(),
                        s.needs.iter().map(|n| n.value.clone()).collect(),
                    )
                })
                .collect();
            for s in &mut run.stages {
                s.needs = needs.get(&s.name).cloned().unwrap_or_default();
            }
        }
        Ok(run)
    }

    /// The run's end, or `now` while it runs.
    pub fn end_ms(&self, now: u64) -> u64 {
        self.finished_ms.unwrap_or(now).max(self.started_ms)
    }

    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_ms.map(|f| f.saturating_sub(self.started_ms))
    }
}

/// One stage's log: the last [`LOG_TAIL`] lines, how many there were, and
/// the log's size in bytes (where a live tail continues from).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogTail {
    pub lines: Vec<String>,
    pub total: usize,
    pub bytes: u64,
}

/// The log tails of `stages` in the run directory `dir`; a stage without a
/// log is left out.
pub fn log_tails(
    dir: &PrivateDir,
    stages: &[StageView],
) -> anyhow::Result<BTreeMap<String, LogTail>> {
    let mut tails = BTreeMap::new();
    let Some(logs) = dir.subdir("logs", false)? else {
        return Ok(tails);
    };
    for s in stages {
        let Some(lines) = crate::show::log_lines(&logs, &s.name)? else {
            continue;
        };
        let bytes = logs
            .read(&format!("{}.log", s.name))?
            .map_or(0, |b| b.len() as u64);
        let total = lines.len();
        let lines = lines
            .into_iter()
            .skip(total.saturating_sub(LOG_TAIL))
            .map(|(_, t)| t)
            .collect();
        tails.insert(
            s.name.clone(),
            LogTail {
                lines,
                total,
                bytes,
            },
        );
    }
    Ok(tails)
}

/// What a health-gate stage decided, with the values it measured. The gate
/// (plugins/health-gate) states them in its summary, or in its error when it
/// failed: `<url> answered 2xx N times in a row (A probes)`,
/// `<url>: S of N consecutive 2xx answers within Ws (A probes, last: ...)`,
/// `failed-request rate R% (F of T requests over Wm) ...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthVerdict {
    pub healthy: bool,
    /// What the HTTP probe found, as the gate said it.
    pub probe: Option<String>,
    /// Application Insights' failed-request rate, in percent.
    pub failure_rate_pct: Option<f64>,
    pub failed_requests: Option<u64>,
    pub requests: Option<u64>,
    pub window_minutes: Option<u64>,
    /// The whole summary or error.
    pub detail: String,
}

impl HealthVerdict {
    pub fn from_stage(stage: &StageView) -> HealthVerdict {
        let detail = stage.detail.as_str();
        let mut v = HealthVerdict {
            healthy: stage.status == "succeeded",
            detail: detail.to_string(),
            ..Default::default()
        };
        let body = detail
            .strip_prefix("healthy: ")
            .or_else(|| detail.strip_prefix("failed: "))
            .unwrap_or(detail);
        for part in body.split("; ") {
            let part = part
                .strip_prefix("probe failed: ")
                .or_else(|| part.strip_prefix("Application Insights check failed: "))
                .unwrap_or(part);
            if part.contains("2xx") && v.probe.is_none() {
                v.probe = Some(part.to_string());
            }
            if let Some(at) = part.find("failed-request rate ") {
                let rest = &part[at + "failed-request rate ".len()..];
                // `5.0% (3 of 60 requests over 10m)`
                let number = |s: &str| -> Option<u64> { s.trim().parse().ok() };
                if let Some((rate, rest)) = rest.split_once("% (") {
                    v.failure_rate_pct = rate.trim().parse().ok();
                    if let Some((failed, rest)) = rest.split_once(" of ") {
                        v.failed_requests = number(failed);
                        if let Some((total, rest)) = rest.split_once(" requests over ") {
                            v.requests = number(total);
                            v.window_minutes = rest.split_once("m)").and_then(|(w, _)| number(w));
                        }
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(plugins: &[(&str, &str)]) -> Record {
        Record::RunStarted {
            run_id: "r1".into(),
            pipeline: "p".into(),
            environment: "staging".into(),
            manifest: "/m.yaml".into(),
            manifest_sha256: "00".into(),
            commit: Some("abc".into()),
            plugins: plugins
                .iter()
                .map(|(u, p)| PluginRecord {
                    unit: u.to_string(),
                    uses: p.to_string(),
                    digest: "sha256:00".into(),
                })
                .collect(),
            ts_ms: 1000,
            branch: Some("main".into()),
            reference: None,
            commit_messages: vec![],
            repository: None,
            promoted_from: None,
            approval: None,
            previous_commit: None,
            url: None,
        }
    }

    fn finished(stage: &str, status: &str, detail: &str, ts: u64) -> Record {
        Record::StageFinished {
            stage: stage.into(),
            status: status.into(),
            detail: detail.into(),
            duration_ms: 500,
            outputs: vec![("digest".into(), "sha256:ff".into())],
            artifacts: vec![],
            denials: vec!["http GET example.org: needs permissions.http".into()],
            ts_ms: ts,
            reused_from: None,
        }
    }

    #[test]
    fn stages_keep_the_manifest_order_and_their_journal_state() {
        let records = vec![
            started(&[
                ("build", "build"),
                ("gate", "health-gate"),
                ("telemetry[0]", "appinsights"),
            ]),
            Record::StageStarted {
                stage: "build".into(),
                attempt: 1,
                plugin_digest: None,
                ts_ms: 1100,
            },
            Record::StageRetry {
                stage: "build".into(),
                attempt: 1,
                detail: "registry 503".into(),
                ts_ms: 1200,
            },
            Record::StageStarted {
                stage: "build".into(),
                attempt: 2,
                plugin_digest: None,
                ts_ms: 1300,
            },
            Record::StageJob {
                stage: "build".into(),
                attempt: 2,
                namespace: "ci".into(),
                job: "gantry-r1-build-2".into(),
                ts_ms: 1310,
            },
            finished("build", "succeeded", "built", 1800),
        ];
        let run = RunView::from_records("r1", &records);
        assert_eq!(run.status, "running");
        assert_eq!(run.sinks.len(), 1);
        let names: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["build", "gate"]);
        let b = &run.stages[0];
        assert_eq!(
            (b.status.as_str(), b.attempts, b.started_ms, b.finished_ms),
            ("succeeded", 2, Some(1100), Some(1800))
        );
        assert_eq!(b.retries, ["attempt 1: registry 503"]);
        assert_eq!(b.job.as_deref(), Some("ci/gantry-r1-build-2"));
        assert_eq!(run.stages[1].job, None);
        assert_eq!(run.stages[1].status, "pending");
        let mut records = records;
        records.push(finished("gate", "failed", "failed: probe failed: http://x/: 1 of 3 consecutive 2xx answers within 30s (9 probes, last: HTTP 503); rolled back", 2000));
        records.push(Record::RunFinished {
            success: false,
            ts_ms: 2100,
        });
        let run = RunView::from_records("r1", &records);
        assert_eq!(
            (run.status.as_str(), run.duration_ms()),
            ("failed", Some(1100))
        );
        let h = run.stages[1].health().expect("a health gate");
        assert!(!h.healthy);
        assert_eq!(
            h.probe.as_deref(),
            Some("http://x/: 1 of 3 consecutive 2xx answers within 30s (9 probes, last: HTTP 503)")
        );
        assert!(run.stages[0].health().is_none(), "build is no gate");
    }

    #[test]
    fn the_gate_s_measured_values_are_read_from_its_summary() {
        // As plugins/health-gate words them.
        let stage = StageView {
            uses: "health-gate".into(),
            status: "succeeded".into(),
            detail: "healthy: http://127.0.0.1:8080/healthz answered 2xx 3 times in a row (4 probes); failed-request rate 1.5% (3 of 200 requests over 10m) is within the threshold 5.0%".into(),
            ..Default::default()
        };
        let h = stage.health().unwrap();
        assert!(h.healthy);
        assert_eq!(
            h.probe.as_deref(),
            Some("http://127.0.0.1:8080/healthz answered 2xx 3 times in a row (4 probes)")
        );
        assert_eq!(h.failure_rate_pct, Some(1.5));
        assert_eq!(
            (h.failed_requests, h.requests, h.window_minutes),
            (Some(3), Some(200), Some(10))
        );
        let failed = StageView {
            uses: "oci://r/health-gate:1".into(),
            status: "failed".into(),
            detail: "failed: Application Insights check failed: failed-request rate 12.0% (12 of 100 requests over 5m) is above the threshold 5.0%; rolled Deployment web in prod back".into(),
            ..Default::default()
        };
        let h = failed.health().unwrap();
        assert!(!h.healthy);
        assert_eq!(h.failure_rate_pct, Some(12.0));
        assert_eq!(
            (h.failed_requests, h.requests, h.window_minutes),
            (Some(12), Some(100), Some(5))
        );
        assert_eq!(h.probe, None);
    }
}
