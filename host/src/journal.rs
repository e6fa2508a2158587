//! The run journal: every run gets `.gantry/runs/<run-id>/` in its workspace,
//! holding a write-ahead journal (`journal.jsonl`, one record per line, fsync'd
//! before the state change it records is acted on), per-stage logs
//! (`logs/<stage>.log`) and, at the end, `summary.json`.
//!
//! A run whose host died can be resumed from its journal: stages whose
//! completion was recorded are not run again; their outputs and artifacts are
//! read back from the journal.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Where runs are kept, relative to the workspace.
pub const RUNS_DIR: &str = ".gantry/runs";

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
        ts_ms: u64,
    },
    StageStarted {
        stage: String,
        attempt: u32,
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
    dir: PathBuf,
}

impl Journal {
    /// Create the run directory and its journal.
    pub fn create(workspace: &Path, run_id: &str) -> std::io::Result<Self> {
        let dir = workspace.join(RUNS_DIR).join(run_id);
        std::fs::create_dir_all(dir.join("logs"))?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        // The new directory entry must survive a crash too.
        File::open(&dir)?.sync_all()?;
        Ok(Self { file, dir })
    }

    /// Open an existing run's journal for appending (resume).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
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
    pub fn read(dir: &Path) -> std::io::Result<Vec<Record>> {
        let file = File::open(dir.join("journal.jsonl"))?;
        let mut records = vec![];
        let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_str(&line) {
                Ok(r) => records.push(r),
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "{}: line {}: {e}",
                        dir.join("journal.jsonl").display(),
                        i + 1
                    )));
                }
            }
        }
        Ok(records)
    }
}

/// The directory of run `run_id` under `workspace`, if it exists.
pub fn run_dir(workspace: &Path, run_id: &str) -> Option<PathBuf> {
    let valid = !run_id.is_empty()
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    let dir = workspace.join(RUNS_DIR).join(run_id);
    (valid && dir.join("journal.jsonl").is_file()).then_some(dir)
}

/// Every run under `workspace`, oldest first.
pub fn list_runs(workspace: &Path) -> Vec<(String, Vec<Record>)> {
    let Ok(entries) = std::fs::read_dir(workspace.join(RUNS_DIR)) else {
        return vec![];
    };
    let mut runs: Vec<(String, Vec<Record>)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            Journal::read(&e.path()).ok().map(|r| (id, r))
        })
        .collect();
    runs.sort_by_key(|(_, records)| match records.first() {
        Some(Record::RunStarted { ts_ms, .. }) => *ts_ms,
        _ => 0,
    });
    runs
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let ws = tempfile::tempdir().unwrap();
        let mut j = Journal::create(ws.path(), "r1").unwrap();
        let started = Record::StageStarted {
            stage: "a".into(),
            attempt: 1,
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
        };
        j.append(&finished).unwrap();
        let dir = run_dir(ws.path(), "r1").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"stage-sta")
            .unwrap();
        assert_eq!(Journal::read(&dir).unwrap(), vec![started, finished]);
        assert!(run_dir(ws.path(), "../r1").is_none());
        assert!(run_dir(ws.path(), "nope").is_none());
    }
}
