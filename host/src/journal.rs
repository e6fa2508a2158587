//! The run journal: every run gets `runs/<run-id>/` in its workspace's state
//! directory ([`crate::state_dir`], outside the workspace, where no stage can
//! write), holding a write-ahead journal (`journal.jsonl`, one record per line,
//! fsync'd before the state change it records is acted on), per-stage logs
//! (`logs/<stage>.log`) and, at the end, `summary.json` and the run's
//! telemetry events (`telemetry.jsonl`, for its page and report).
//!
//! A run whose host died can be resumed from its journal: stages whose
//! completion was recorded are not run again; their outputs and artifacts are
//! read back from the journal. The journal also records the manifest's hash
//! and each plugin's digest, so that a resume runs only what the run started
//! with.

use crate::state_dir::PrivateDir;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The plugin a stage or telemetry sink ran, as the run started with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginRecord {
    /// The stage's name, or the sink's field (`telemetry[0]`).
    pub unit: String,
    /// What `uses:` named.
    pub uses: String,
    /// `sha256:...` of the component's bytes.
    pub digest: String,
}

/// Who let a promotion into an environment that requires approval, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRecord {
    /// A user name (`$USER`, `--by`, or the service's authenticated caller).
    pub by: String,
    /// How: `gantry promote` by hand, or the service's approvals API.
    pub via: String,
    pub ts_ms: u64,
}

/// An artifact as recorded (the WIT record, serializable).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtifactRecord {
    pub name: String,
    pub media_type: String,
    pub path: Option<String>,
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub annotations: Vec<(String, String)>,
}

// One run-started per run among many small records, read once per resume:
// boxing it would only make every match on it noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Record {
    RunStarted {
        run_id: String,
        pipeline: String,
        environment: String,
        /// Absolute path of the manifest, and its sha256 when the run started.
        manifest: PathBuf,
        manifest_sha256: String,
        commit: Option<String>,
        /// The plugin of every stage and sink, by digest.
        #[serde(default)]
        plugins: Vec<PluginRecord>,
        ts_ms: u64,
        /// The rest of what triggered the run (branch, ref, commit messages,
        /// repository); absent in journals of older gantry versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        commit_messages: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
        /// A promotion: the run whose reused stages' results this one carries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        promoted_from: Option<String>,
        /// `run.previous-commit`, as looked up when the run started (a resumed
        /// run reports the same range of commits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_commit: Option<String>,
        /// `run.url`: the run's page, when a service runs it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Who approved it, for an environment that requires approval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<ApprovalRecord>,
    },
    StageStarted {
        stage: String,
        attempt: u32,
        /// The digest of the plugin this attempt runs.
        #[serde(default)]
        plugin_digest: Option<String>,
        ts_ms: u64,
    },
    /// A stage attempt runs as this Kubernetes Job (`executor: kubernetes`);
    /// written before the Job is created, so that a resume re-attaches to it.
    StageJob {
        stage: String,
        attempt: u32,
        namespace: String,
        job: String,
        ts_ms: u64,
    },
    /// A transient failure that will be retried.
    StageRetry {
        stage: String,
        attempt: u32,
        detail: String,
        ts_ms: u64,
    },
    /// The stage's completion: it will not run again on resume.
    StageFinished {
        stage: String,
        /// `succeeded`, `skipped`, or how it failed.
        status: String,
        detail: String,
        duration_ms: u64,
        outputs: Vec<(String, String)>,
        artifacts: Vec<ArtifactRecord>,
        denials: Vec<String>,
        ts_ms: u64,
        /// Not run here: its result was carried over from this run by a
        /// promotion.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reused_from: Option<String>,
    },
    /// Running stages were stopped (Ctrl-C); they run again on resume.
    RunCancelled {
        stages: Vec<String>,
        ts_ms: u64,
    },
    RunResumed {
        ts_ms: u64,
    },
    RunFinished {
        success: bool,
        ts_ms: u64,
    },
}

/// An open journal, appended to with fsync.
pub struct Journal {
    file: File,
    dir: PrivateDir,
}

/// Run ids are generated by [`crate::pipeline::new_run_id`]; anything else
/// (a path, `..`) names no run.
pub fn valid_run_id(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Journal {
    /// Create the run directory `runs/<run_id>/` and its journal.
    pub fn create(runs: &PrivateDir, run_id: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(valid_run_id(run_id), "invalid run id `{run_id}`");
        let dir = runs.create_subdir(run_id)?;
        dir.create_subdir("logs")?;
        let file = dir.create_new("journal.jsonl")?;
        // The new directory entries must survive a crash too.
        dir.sync()?;
        runs.sync()?;
        Ok(Self { file, dir })
    }

    /// Open an existing run's journal for appending (resume).
    pub fn open(dir: PrivateDir) -> anyhow::Result<Self> {
        let file = dir.append_existing("journal.jsonl")?;
        Ok(Self { file, dir })
    }

    pub fn dir(&self) -> &PrivateDir {
        &self.dir
    }

    /// Append a record and wait until it is on disk.
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Read a journal. A torn last line (the host died while writing it) is
    /// ignored: its state change was never acted on.
    pub fn read(dir: &PrivateDir) -> anyhow::Result<Vec<Record>> {
        let path = dir.path().join("journal.jsonl");
        let bytes = dir
            .read("journal.jsonl")?
            .ok_or_else(|| anyhow::anyhow!("{} is missing", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let n = lines.len();
        let mut records = vec![];
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(r) => records.push(r),
                Err(_) if i + 1 == n => break,
                Err(e) => anyhow::bail!("{}: line {}: {e}", path.display(), i + 1),
            }
        }
        Ok(records)
    }
}

/// The directory of run `run_id` in `runs`, if it has a journal.
pub fn run_dir(runs: &PrivateDir, run_id: &str) -> anyhow::Result<Option<PrivateDir>> {
    if !valid_run_id(run_id) {
        return Ok(None);
    }
    match runs.subdir(run_id, false)? {
        Some(dir) if dir.read("journal.jsonl")?.is_some() => Ok(Some(dir)),
        _ => Ok(None),
    }
}

/// Every run in `runs`, oldest first. A run whose directory or journal cannot
/// be read is left out.
pub fn list_runs(runs: &PrivateDir) -> anyhow::Result<Vec<(String, Vec<Record>)>> {
    let mut list: Vec<(String, Vec<Record>)> = runs
        .entries()?
        .into_iter()
        .filter(|id| valid_run_id(id))
        .filter_map(|id| {
            let dir = runs.subdir(&id, false).ok()??;
            Journal::read(&dir).ok().map(|r| (id, r))
        })
        .collect();
    list.sort_by_key(|(_, records)| match records.first() {
        Some(Record::RunStarted { ts_ms, .. }) => *ts_ms,
        _ => 0,
    });
    Ok(list)
}

/// The commit of the run of `pipeline` in `environment` that most recently
/// finished successfully, other than `except` (`run.previous-commit`: what a
/// new deployment there replaces). Runs that recorded no commit are skipped.
pub fn last_success(
    runs: &PrivateDir,
    pipeline: &str,
    environment: &str,
    except: &str,
) -> anyhow::Result<Option<String>> {
    let mut best: Option<(u64, String)> = None;
    for (id, records) in list_runs(runs)? {
        let Some(Record::RunStarted {
            pipeline: p,
            environment: e,
            commit: Some(commit),
            ..
        }) = records.first()
        else {
            continue;
        };
        if id == except || p != pipeline || e != environment {
            continue;
        }
        let finished = records.iter().rev().find_map(|r| match r {
            Record::RunFinished {
                success: true,
                ts_ms,
            } => Some(*ts_ms),
            _ => None,
        });
        if let Some(ts) = finished
            && best.as_ref().is_none_or(|(t, _)| ts >= *t)
        {
            best = Some((ts, commit.clone()));
        }
    }
    Ok(best.map(|(_, c)| c))
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn journals_of_older_versions_still_read() {
        // Written before branch, commit messages, promotion and reuse existed.
        let started: Record = serde_json::from_str(
            r#"{"event":"run-started","run_id":"r","pipeline":"p","environment":"default","manifest":"/m.yaml","manifest_sha256":"00","commit":null,"ts_ms":1}"#,
        )
        .unwrap();
        let Record::RunStarted {
            branch,
            commit_messages,
            promoted_from,
            approval,
            ..
        } = started
        else {
            panic!("{started:?}")
        };
        assert_eq!((branch, promoted_from, approval), (None, None, None));
        assert!(commit_messages.is_empty());
        let finished: Record = serde_json::from_str(
            r#"{"event":"stage-finished","stage":"a","status":"succeeded","detail":"","duration_ms":1,"outputs":[],"artifacts":[],"denials":[],"ts_ms":2}"#,
        )
        .unwrap();
        assert!(matches!(
            finished,
            Record::StageFinished {
                reused_from: None,
                ..
            }
        ));
    }

    fn started(
        run_id: &str,
        pipeline: &str,
        environment: &str,
        commit: Option<&str>,
        ts_ms: u64,
    ) -> Record {
        Record::RunStarted {
            run_id: run_id.into(),
            pipeline: pipeline.into(),
            environment: environment.into(),
            manifest: "/m.yaml".into(),
            manifest_sha256: "00".into(),
            commit: commit.map(str::to_string),
            plugins: vec![],
            ts_ms,
            branch: None,
            reference: None,
            commit_messages: vec![],
            repository: None,
            promoted_from: None,
            approval: None,
            previous_commit: None,
            url: None,
        }
    }

    #[test]
    fn the_previous_commit_is_the_newest_success_in_that_pipeline_and_environment() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let runs = PrivateDir::open_for_tests(root.path());
        // (run, pipeline, environment, commit, started, finished: success and when)
        type Run<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            u64,
            Option<(bool, u64)>,
        );
        let history: &[Run] = &[
            ("r1", "app", "prod", Some("c1"), 1, Some((true, 10))),
            // started later, finished earlier than r3
            ("r2", "app", "prod", Some("c2"), 2, Some((true, 30))),
            ("r3", "app", "prod", Some("c3"), 3, Some((true, 20))),
            ("r4", "app", "prod", Some("c4"), 4, Some((false, 40))),
            ("r5", "app", "prod", Some("c5"), 5, None),
            ("r6", "app", "staging", Some("c6"), 6, Some((true, 50))),
            ("r7", "other", "prod", Some("c7"), 7, Some((true, 60))),
            ("r8", "app", "prod", None, 8, Some((true, 70))),
        ];
        for (id, pipeline, env, commit, ts, finished) in history {
            let mut j = Journal::create(&runs, id).unwrap();
            j.append(&started(id, pipeline, env, *commit, *ts)).unwrap();
            if let Some((success, ts_ms)) = finished {
                j.append(&Record::RunFinished {
                    success: *success,
                    ts_ms: *ts_ms,
                })
                .unwrap();
            }
        }
        let last = |p: &str, e: &str, except: &str| last_success(&runs, p, e, except).unwrap();
        assert_eq!(last("app", "prod", "new").as_deref(), Some("c2"));
        assert_eq!(
            last("app", "prod", "r2").as_deref(),
            Some("c3"),
            "a run is not its own predecessor"
        );
        assert_eq!(last("app", "staging", "new").as_deref(), Some("c6"));
        assert_eq!(last("other", "prod", "new").as_deref(), Some("c7"));
        assert_eq!(last("app", "dev", "new"), None);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let runs_path = root.path().join("runs");
        std::fs::create_dir(&runs_path).unwrap();
        std::fs::set_permissions(&runs_path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let runs = PrivateDir::open_for_tests(&runs_path);
        let mut j = Journal::create(&runs, "r1").unwrap();
        let started = Record::StageStarted {
            stage: "a".into(),
            attempt: 1,
            plugin_digest: Some("sha256:00".into()),
            ts_ms: 5,
        };
        j.append(&started).unwrap();
        let finished = Record::StageFinished {
            stage: "a".into(),
            status: "succeeded".into(),
            detail: "ok".into(),
            duration_ms: 1,
            outputs: vec![("k".into(), "v".into())],
            artifacts: vec![],
            denials: vec![],
            ts_ms: 6,
            reused_from: None,
        };
        j.append(&finished).unwrap();
        let dir = run_dir(&runs, "r1").unwrap().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"stage-sta")
            .unwrap();
        assert_eq!(Journal::read(&dir).unwrap(), vec![started, finished]);
        assert!(run_dir(&runs, "../r1").unwrap().is_none());
        assert!(run_dir(&runs, "nope").unwrap().is_none());
        assert!(
            Journal::create(&runs, "r1").is_err(),
            "a run directory is never reused"
        );
    }
}
