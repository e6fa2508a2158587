//! Docker helpers shared by the end-to-end tests: the `docker` CLI, a guard
//! that removes a test's containers however it ends, the example app as a
//! static binary (for FROM-scratch images), and a pair of free ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `docker <args>`: its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes every container whose name contains `prefix`, however the test ends.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = docker(&["ps", "-aq", "--filter", &format!("name={}", self.0)]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// Names of the containers gantry started whose name contains `prefix`.
pub fn managed_containers(prefix: &str) -> Vec<String> {
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=gantry.managed=true",
        "--filter",
        &format!("name={prefix}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = names
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// The example app as a static binary, built once per test process into
/// `scratch` (the test's `CARGO_TARGET_TMPDIR`).
pub fn static_binary(scratch: &Path) -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target_dir = scratch.join("hello-app");
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(&target_dir)
            .current_dir(crate::repo().join("examples/hello/app"))
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the example app failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join("x86_64-unknown-linux-gnu/release/hello")
    })
}

/// Two free adjacent ports on 127.0.0.1 (blue and green).
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports on 127.0.0.1");
}
