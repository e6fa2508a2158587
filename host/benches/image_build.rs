//! `cargo bench -p gantry --bench image_build`
//!
//! The same static binary packed into a FROM-scratch image two ways, on the same
//! machine in the same run: `gantry run` of a one-stage pipeline using the
//! daemonless backend of the `build` plugin (whole process: plan, load, build,
//! write the OCI layout), and `docker build --no-cache` of the equivalent
//! Dockerfile. Prints medians and their ratio; asserts nothing about them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let app = repo.join("examples/hello/app");
    let built = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(&app)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .unwrap();
    assert!(
        built.success(),
        "building the example's static binary failed"
    );
    let binary = app.join("target/x86_64-unknown-linux-gnu/release/hello");
    let size = std::fs::metadata(&binary).unwrap().len();

    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("dist")).unwrap();
    std::fs::copy(&binary, ws.path().join("dist/hello")).unwrap();
    std::fs::write(
        ws.path().join("pipeline.yaml"),
        "pipeline: bench\nstages:\n  - name: image\n    uses: build\n    with:\n      image:\n        ref: \"hello:bench\"\n        output: out\n        files: [{ from: dist/hello, to: /hello }]\n        entrypoint: [/hello]\n    permissions: { workspace: write }\n",
    )
    .unwrap();
    std::fs::write(
        ws.path().join("Dockerfile"),
        "FROM scratch\nCOPY dist/hello /hello\nENTRYPOINT [\"/hello\"]\n",
    )
    .unwrap();
    let cache = ws.path().join("cache");

    println!(
        "image of a {:.1} MB static binary, FROM scratch, {RUNS} runs each:",
        size as f64 / 1e6
    );
    let mut gantry = vec![];
    for i in 0..RUNS + 1 {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "pipeline.yaml"])
            .current_dir(ws.path())
            .env("GANTRY_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let t = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        if i > 0 {
            gantry.push(t); // the first run fills the compile cache
        }
    }
    let gantry = median(gantry);
    println!("  gantry run, daemonless build:   median {}", ms(gantry));

    if !ok(Command::new("docker").arg("info")) {
        println!("  docker build: no Docker engine answered (`docker info`); comparison skipped");
        return;
    }
    let mut docker = vec![];
    for _ in 0..RUNS {
        let start = Instant::now();
        let status = Command::new("docker")
            .args([
                "build",
                "-q",
                "--no-cache",
                "-t",
                "gantry-bench-image:latest",
                ".",
            ])
            .current_dir(ws.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        docker.push(start.elapsed());
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", "gantry-bench-image:latest"])
        .output();
    let docker = median(docker);
    println!("  docker build --no-cache:        median {}", ms(docker));
    println!(
        "  ratio daemonless / docker build: {:.2}x",
        gantry.as_secs_f64() / docker.as_secs_f64()
    );
}
