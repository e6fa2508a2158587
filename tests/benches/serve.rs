//! `cargo bench -p gantry-e2e --bench serve`
//!
//! 1. Trigger-to-first-stage latency: a commit is pushed to a real git daemon
//!    on loopback, then a signed GitHub push delivery is posted to
//!    `gantry serve`; measured from just before the POST to the first stage's
//!    `stage-started` record in the run's journal (its timestamp), the
//!    checkout included. Median over 20 pushes.
//! 2. 50 concurrent runs of a 10-stage pipeline in one `gantry serve`
//!    (`max-runs: 50`, one branch per run): all must succeed; total time and
//!    the service's peak RSS (VmHWM), against the peak RSS of one
//!    `gantry run` of the same pipeline (50 of those would be 50 processes).
//!
//! Prints the numbers; asserts nothing about them.

use gantry_e2e::git::{GitDaemon, WorkClone};
use gantry_e2e::serve::{Serve, github_push, github_signature};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "bench-secret";
const PUSHES: usize = 20;
const CONCURRENT: usize = 50;
const STAGES: usize = 10;

fn manifest(stages: usize) -> String {
    let echo = gantry_e2e::plugin("echo").display().to_string();
    let mut m = String::from("pipeline: bench\nstages:\n");
    for i in 0..stages {
        m.push_str(&format!(
            "  - name: s{i}\n    uses: \"{echo}\"\n    with: {{ message: \"stage {i}\" }}\n"
        ));
        if i > 0 {
            m.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    m
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn first_stage_started_ms(serve: &Serve, journal: &str) -> u128 {
    let all = serve.state_root().join("workspaces");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for ws in std::fs::read_dir(&all).into_iter().flatten() {
            let j = ws
                .unwrap()
                .path()
                .join("runs")
                .join(journal)
                .join("journal.jsonl");
            if let Ok(text) = std::fs::read_to_string(&j) {
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    if v["event"] == "stage-started" {
                        return v["ts_ms"].as_u64().unwrap() as u128;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no stage started in {journal}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("bench");
    let work = WorkClone::new(&url);
    work.commit(&[("pipeline.yaml", &manifest(1))], "one stage");
    work.push(&["HEAD:refs/heads/main"]);
    let serve = Serve::start(
        &format!(
            "max-runs: {CONCURRENT}\nkeep-workspaces: 200\nrepositories:\n  - name: bench\n    url: {url}\n    poll: off\n    github: {{ secret: {{ env: BENCH_SECRET }} }}\n"
        ),
        &[("BENCH_SECRET", SECRET)],
    );

    // 1. latency
    let mut latencies = vec![];
    let mut before = work.head();
    for i in 0..=PUSHES {
        let commit = work.commit(&[("app.txt", &i.to_string())], &format!("change {i}"));
        work.push(&["HEAD:refs/heads/main"]);
        let body = github_push(&url, "refs/heads/main", &before, &commit, "change");
        before = commit;
        let sig = github_signature(SECRET, body.as_bytes());
        let t0 = now_ms();
        let r = serve.http(
            "POST",
            "/hooks/github/bench",
            &[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
                ("x-github-delivery", &format!("bench-{i}")),
                ("x-hub-signature-256", &sig),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["runs"][0].as_i64().unwrap();
        let done = serve.wait_run(id, Duration::from_secs(120));
        assert_eq!(done["run"]["status"], "succeeded", "{done}");
        let started =
            first_stage_started_ms(&serve, done["run"]["journal_run_id"].as_str().unwrap());
        // The first push also compiles the plugin: a warm-up, not counted.
        if i > 0 {
            latencies.push(started.saturating_sub(t0));
        }
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    println!(
        "trigger -> first stage started (webhook received, checkout, plan, stage start), {PUSHES} pushes: \
         median {} ms, min {} ms, max {} ms",
        median(latencies),
        sorted[0],
        sorted[sorted.len() - 1]
    );

    // 2. 50 concurrent runs of a 10-stage pipeline
    work.commit(&[("pipeline.yaml", &manifest(STAGES))], "ten stages");
    let commit = work.head();
    let refspecs: Vec<String> = (0..CONCURRENT)
        .map(|i| format!("HEAD:refs/heads/b{i}"))
        .collect();
    work.push(&refspecs.iter().map(String::as_str).collect::<Vec<_>>());
    let start = Instant::now();
    let ids: Vec<i64> = (0..CONCURRENT)
        .map(|i| {
            let r = serve.api(
                "POST",
                "/api/v1/runs",
                Some(serde_json::json!({ "repository": "bench", "ref": format!("b{i}"), "commit": commit })),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["run"].as_i64().unwrap()
        })
        .collect();
    for id in &ids {
        let done = serve.wait_run(*id, Duration::from_secs(600));
        assert_eq!(done["run"]["status"], "succeeded", "{done}");
    }
    let total = start.elapsed();
    let serve_rss = peak_rss_kib(serve.pid());

    // One `gantry run` of the same pipeline, for its peak RSS.
    let ws = gantry_e2e::Workspace::new();
    ws.write("pipeline.yaml", manifest(STAGES));
    let child = ws
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let mut child = child;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(v) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(v);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{CONCURRENT} concurrent runs x {STAGES} stages in one gantry serve: all succeeded in {:.2} s; \
         peak RSS of the service {:.1} MB; one `gantry run` of the pipeline peaks at {:.1} MB \
         ({CONCURRENT} processes: ~{:.0} MB, {:.1}x the service)",
        total.as_secs_f64(),
        serve_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 * CONCURRENT as f64 / 1024.0,
        peak as f64 * CONCURRENT as f64 / serve_rss as f64
    );
}
