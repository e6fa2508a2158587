//! `cargo bench -p gantry --bench stage_start`
//!
//! 1. Warm stage start: a fresh Store and WASI context, instantiate from the
//!    pre-linked component, call `run` of the no-op stage, drop; median and p99
//!    over many iterations, with the pooling allocator and with on-demand
//!    allocation.
//! 2. The compile cache: `gantry run` of a one-stage manifest with an empty cache
//!    (compile) and with a warm one (deserialize).
//! 3. When a Docker engine answers: `docker run --rm` of a FROM-scratch image on
//!    the same machine in the same run, and the ratio to (1).
//!
//! Prints numbers; asserts nothing about them.

use gantry::capabilities::telemetry::{Collector, EventBase};
use gantry::capabilities::{Grants, Subject};
use gantry::plugins::PluginBytes;
use gantry::report::Silent;
use gantry::runtime::bindings::types::StageContext;
use gantry::runtime::limits::Limits;
use gantry::runtime::state::StageState;
use gantry::runtime::{InstanceContext, Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../build_guests.rs"]
mod guests;

const ITERATIONS: usize = 2000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The no-op test plugin, built if needed.
fn noop_wasm() -> PathBuf {
    let target = repo().join("target/wasm");
    guests::build(&repo().join("tests/plugins/Cargo.toml"), &target);
    target.join("wasm32-wasip2/release/noop.wasm")
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    Stats {
        median: samples[n / 2],
        p99: samples[(n * 99 / 100).min(n - 1)],
        mean: samples.iter().sum::<Duration>() / n as u32,
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn warm_start(wasm: &Path, pooling: bool) -> Stats {
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: None,
        pooling,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let bytes = PluginBytes::new("noop".into(), std::fs::read(wasm).unwrap().into());
    let plugin = runtime.load(&bytes).unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let ctx = InstanceContext {
        workspace: workspace.path().canonicalize().unwrap(),
        reporter: Arc::new(Silent),
        redactor: Default::default(),
        secrets: Default::default(),
        collector: Collector::default(),
        base: EventBase {
            run_id: "bench".into(),
            pipeline: "bench".into(),
            environment: "bench".into(),
        },
        logs: None,
        state: None,
        cluster: std::sync::Arc::new(gantry::capabilities::cluster::kube::Connection::new(
            None, "bench",
        )),
    };
    let context = StageContext {
        run_id: "bench".into(),
        pipeline: "bench".into(),
        stage: "noop".into(),
        environment: "bench".into(),
        config: "{}".into(),
        inputs: vec![],
        upstream: vec![],
    };
    let grants = Grants::default();
    let limits = Limits::default();
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..ITERATIONS + 100 {
        let start = Instant::now();
        let subject = Subject::new("noop", "stages[0]");
        let state = StageState::prepare(&ctx, subject, &grants, &limits).unwrap();
        let outcome = runtime
            .run_stage(&plugin, state, &context, &limits)
            .await
            .unwrap();
        let elapsed = start.elapsed();
        assert_eq!(outcome.summary, "nothing to do");
        if i >= 100 {
            samples.push(elapsed); // the first 100 warm up caches and the pool
        }
    }
    stats(samples)
}

/// `gantry run` of a one-stage manifest; `fresh_cache` empties the cache first.
fn gantry_run(wasm: &Path, runs: usize, fresh_cache: bool) -> Stats {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        format!(
            "pipeline: bench\nstages:\n  - name: noop\n    uses: \"{}\"\n",
            wasm.display()
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let mut samples = vec![];
    for i in 0..runs + 1 {
        if fresh_cache {
            let _ = std::fs::remove_dir_all(&cache);
        }
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "pipeline.yaml"])
            .current_dir(dir.path())
            .env("GANTRY_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i > 0 || fresh_cache {
            samples.push(elapsed);
        }
    }
    stats(samples)
}

/// Median of `docker run --rm` of a FROM-scratch image, when Docker answers.
fn docker_run(runs: usize) -> Option<Stats> {
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok(Command::new("docker").arg("info")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("true.c"), "int main(void) { return 0; }\n").unwrap();
    if !ok(Command::new("cc")
        .args(["-static", "-O2", "-o", "true", "true.c"])
        .current_dir(dir.path()))
    {
        eprintln!("docker: cannot build a static binary with cc -static; skipped");
        return None;
    }
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY true /true\nENTRYPOINT [\"/true\"]\n",
    )
    .unwrap();
    if !ok(Command::new("docker")
        .args(["build", "-q", "-t", "gantry-bench-scratch", "."])
        .current_dir(dir.path()))
    {
        eprintln!("docker: image build failed; skipped");
        return None;
    }
    let mut samples = vec![];
    for i in 0..runs + 2 {
        let start = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", "gantry-bench-scratch"])
            .status()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(status.success());
        if i >= 2 {
            samples.push(elapsed);
        }
    }
    Some(stats(samples))
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let wasm = noop_wasm();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "warm stage start (new Store + WASI ctx + instantiate + run + drop), {ITERATIONS} iterations:"
    );
    let pooled = rt.block_on(warm_start(&wasm, true));
    println!(
        "  pooling allocator:   median {}  p99 {}  mean {}",
        us(pooled.median),
        us(pooled.p99),
        us(pooled.mean)
    );
    let on_demand = rt.block_on(warm_start(&wasm, false));
    println!(
        "  on-demand allocator: median {}  p99 {}  mean {}",
        us(on_demand.median),
        us(on_demand.p99),
        us(on_demand.mean)
    );

    println!("gantry run of a one-stage manifest (whole process), 10 runs each:");
    let cold = gantry_run(&wasm, 10, true);
    let warm = gantry_run(&wasm, 10, false);
    println!("  empty compile cache: median {}", ms(cold.median));
    println!("  warm compile cache:  median {}", ms(warm.median));
    println!(
        "  ratio first/second:  {:.1}x",
        cold.median.as_secs_f64() / warm.median.as_secs_f64()
    );

    match docker_run(20) {
        Some(docker) => {
            println!("docker run --rm of a FROM-scratch image, 20 runs:");
            println!("  median {}  p99 {}", ms(docker.median), ms(docker.p99));
            println!(
                "  ratio docker run / warm stage start (pooling): {:.0}x",
                docker.median.as_secs_f64() / pooled.median.as_secs_f64()
            );
        }
        None => {
            println!("docker run: no Docker engine answered (`docker info`); comparison skipped")
        }
    }
}
