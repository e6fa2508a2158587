//! `cargo bench -p gantry-e2e --bench kube_jobs --profile dev`
//!
//! Per-stage overhead of `executor: kubernetes` against the test cluster
//! (the test API server, its kubelet running pods on the local Docker engine,
//! the gantry image gantry built of itself), next to the local executor, for
//! a pipeline of trivial stages run one after another (the `echo` test
//! plugin: a log line and three outputs; nothing to amortize the overhead).
//!
//! From the run's journal and stage logs, per stage:
//! - Job created -> stage started: the `stage-job` record (journaled just
//!   before the Secret and Job are created) to the first line of the stage's
//!   own log reaching the host (the pod started, the worker planned the
//!   manifest, loaded and compiled the plugin, and its log streamed back);
//! - stage started -> result read: that line to `stage-finished`;
//! - the whole stage, against `stage-started` -> `stage-finished` locally.
//!
//! One warm-up run first (the kubelet pulls the image once). Prints medians
//! and the ratio; asserts nothing about them.

use gantry_e2e::kube_jobs::Cluster;
use serde_json::Value;
use std::path::Path;

const STAGES: usize = 5;
const RUNS: usize = 3;

fn stages(n: usize) -> String {
    let mut m = String::new();
    for i in 0..n {
        m.push_str(&format!(
            "  - name: s{i}\n    uses: echo\n    with: {{ message: \"stage {i}\" }}\n"
        ));
        if i > 0 {
            m.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    m
}

fn records(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ts(records: &[Value], event: &str, stage: &str) -> Option<u64> {
    records
        .iter()
        .find(|r| r["event"] == event && r["stage"] == stage)
        .and_then(|r| r["ts_ms"].as_u64())
}

/// When the first line of the stage's log reached the host.
fn first_log_line(run: &Path, stage: &str) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("logs").join(format!("{stage}.log"))).ok()?;
    text.lines().next()?.split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2] as f64
}

/// The run directories of the workspace, oldest first.
fn runs(c: &Cluster) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(c.ws.runs_dir().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn main() {
    let c = Cluster::start();
    // Local: the same stages, without `executor:`.
    c.ws.write(
        "pipeline.yaml",
        format!(
            "pipeline: bench\nplugins:\n  echo: {{ path: echo.wasm }}\nsecrets:\n  token: {{ env: KJ_TOKEN }}\n  other: {{ env: KJ_OTHER }}\nstages:\n{}",
            stages(STAGES)
        ),
    );
    for _ in 0..=RUNS {
        assert_eq!(c.run().code, Some(0));
    }
    let mut local = vec![];
    for run in runs(&c).iter().skip(1) {
        let r = records(run);
        for i in 0..STAGES {
            let s = format!("s{i}");
            local
                .push(ts(&r, "stage-finished", &s).unwrap() - ts(&r, "stage-started", &s).unwrap());
        }
    }
    let done = runs(&c).len();
    c.manifest(&stages(STAGES));
    for _ in 0..=RUNS {
        let out = c.run();
        assert_eq!(out.code, Some(0), "{}", out.all());
    }
    let (mut to_start, mut to_result, mut total) = (vec![], vec![], vec![]);
    for run in runs(&c).iter().skip(done + 1) {
        let r = records(run);
        for i in 0..STAGES {
            let s = format!("s{i}");
            let created = ts(&r, "stage-job", &s).unwrap();
            let started = first_log_line(run, &s).unwrap();
            let finished = ts(&r, "stage-finished", &s).unwrap();
            to_start.push(started - created);
            to_result.push(finished - started);
            total.push(finished - ts(&r, "stage-started", &s).unwrap());
        }
    }
    let local_ms = median(local);
    let kube_ms = median(total);
    println!(
        "per-stage time, median of {} stages ({RUNS} runs of {STAGES}):",
        RUNS * STAGES
    );
    println!("  local executor:                    {local_ms:>8.0} ms");
    println!("  kubernetes executor (test cluster): {kube_ms:>7.0} ms");
    println!(
        "    Job created -> stage started:     {:>7.0} ms",
        median(to_start)
    );
    println!(
        "    stage started -> result read:     {:>7.0} ms",
        median(to_result)
    );
    println!(
        "  ratio kubernetes / local:          {:>8.1}x",
        kube_ms / local_ms.max(1.0)
    );
}
