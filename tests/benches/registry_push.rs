//! `cargo bench -p gantry-e2e --bench registry_push`
//!
//! The same image (three layers of 16 MB each, incompressible) pushed by gantry's
//! `registry` stage and by `docker push` to the same local registry (Debian's
//! docker-registry on loopback, a fresh one for every push so that nothing is
//! deduplicated), on the same machine in the same run; then the unchanged image
//! pushed again to the same repository (every blob already there). Prints
//! medians and their ratios; asserts nothing about them.

use gantry_e2e::{Registry, Workspace};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const LAYER: usize = 16 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let ws = Workspace::new();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for name in ["a", "b", "c"] {
        let mut data = Vec::with_capacity(LAYER);
        while data.len() < LAYER {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        ws.write(&format!("data/{name}"), &data);
    }
    ws.manifest(
        r#"pipeline: layers
stages:
  - { name: l1, uses: build, with: { image: { ref: "l:1", output: out/l1, files: [{ from: data/a, to: /a }] } }, permissions: { workspace: write } }
  - { name: l2, uses: build, needs: [l1], with: { image: { ref: "l:2", output: out/l2, base: out/l1, files: [{ from: data/b, to: /b }] } }, permissions: { workspace: write } }
  - { name: l3, uses: build, needs: [l2], with: { image: { ref: "l:3", output: out/l3, base: out/l2, files: [{ from: data/c, to: /c }] } }, permissions: { workspace: write } }
"#,
    );
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    let layout = ws.path().join("out/l3");

    let (mut gantry, mut gantry_again) = (vec![], vec![]);
    for i in 0..RUNS {
        let registry = Registry::start(None);
        ws.write(
            "push.yaml",
            format!(
                "pipeline: push\nstages:\n  - name: push\n    uses: registry\n    with: {{ layout: out/l3, registry: \"{0}\", repository: bench/g{i}, insecure: true }}\n    permissions: {{ http: [\"http://{0}\"] }}\n",
                registry.addr
            ),
        );
        let start = Instant::now();
        let out = ws.gantry(&["run", "push.yaml"]);
        gantry.push(start.elapsed());
        assert_eq!(out.code, Some(0), "{}", out.all());
        let start = Instant::now();
        let out = ws.gantry(&["run", "push.yaml"]);
        gantry_again.push(start.elapsed());
        assert_eq!(out.code, Some(0), "{}", out.all());
    }

    let ok = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    println!(
        "push of 3 x {} MB layers to a fresh local registry, {RUNS} runs each:",
        LAYER >> 20
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (g, ga) = (median(gantry), median(gantry_again));
    println!(
        "  gantry (registry stage, whole run): first push median {:.0} ms, unchanged re-push {:.0} ms ({:.2}x of the first)",
        ms(g),
        ms(ga),
        ga.as_secs_f64() / g.as_secs_f64()
    );
    if !ok {
        println!("  docker push: no Docker engine answered; comparison skipped");
        return;
    }
    sh(Command::new("skopeo")
        .args(["copy", "--insecure-policy"])
        .arg(format!("oci:{}:l:3", layout.display()))
        .arg("docker-daemon:gantry-bench-push:latest"));
    let (mut docker, mut docker_again) = (vec![], vec![]);
    for i in 0..RUNS {
        let registry = Registry::start(None);
        let tag = format!("{}/bench/d{i}:latest", registry.addr);
        sh(Command::new("docker").args(["tag", "gantry-bench-push:latest", &tag]));
        let start = Instant::now();
        sh(Command::new("docker").args(["push", &tag]));
        docker.push(start.elapsed());
        let start = Instant::now();
        sh(Command::new("docker").args(["push", &tag]));
        docker_again.push(start.elapsed());
        let _ = Command::new("docker").args(["rmi", &tag]).output();
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", "gantry-bench-push:latest"])
        .output();
    let (d, da) = (median(docker), median(docker_again));
    println!(
        "  docker push:                        first push median {:.0} ms, unchanged re-push {:.0} ms ({:.2}x of the first)",
        ms(d),
        ms(da),
        da.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "  ratio gantry / docker push: first push {:.2}x, unchanged re-push {:.2}x",
        g.as_secs_f64() / d.as_secs_f64(),
        ga.as_secs_f64() / da.as_secs_f64()
    );
}
