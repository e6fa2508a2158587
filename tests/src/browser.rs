//! A real browser for the dashboard's tests: Debian's `chromium`, headless,
//! driven by playwright-core (from npm, pinned, installed once under
//! target/browser-toolchain) through the scenarios in tests/browser/.
//!
//! Each scenario is one `node` process: it gets its arguments as JSON, fails
//! (non-zero, with why on stderr) when a check fails, and prints a JSON
//! answer on its last line of output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The playwright-core the scenarios are written against.
pub const PLAYWRIGHT: &str = "1.65.2";

/// The system's Chromium (`apt-get install chromium`).
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "the dashboard's browser tests need Chromium: `apt-get install -y chromium` (scripts/test installs it as root)"
    )
}

/// node_modules holding playwright-core, installed on first use.
pub fn node_modules() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::repo()
            .join("target/browser-toolchain")
            .join(format!("playwright-core-{PLAYWRIGHT}"));
        let modules = dir.join("node_modules");
        if !modules.join("playwright-core/package.json").is_file() {
            std::fs::create_dir_all(&dir).unwrap();
            let manifest = serde_json::json!({
                "private": true,
                "dependencies": { "playwright-core": PLAYWRIGHT },
            });
            std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(&dir)
                .output()
                .expect("run npm (node and npm are needed for the browser tests)");
            assert!(
                out.status.success(),
                "npm install playwright-core@{PLAYWRIGHT} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        modules
    })
}

/// Where the tests leave their screenshots: target/screenshots/.
pub fn screenshots() -> PathBuf {
    let dir = crate::repo().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `scenario` of tests/browser/dashboard.cjs with `args`; its JSON answer.
pub fn scenario(scenario: &str, args: serde_json::Value) -> serde_json::Value {
    let script = crate::repo().join("tests/browser/dashboard.cjs");
    let mut args = args;
    args["scenario"] = scenario.into();
    args["chromium"] = chromium().display().to_string().into();
    args["screenshots"] = screenshots().display().to_string().into();
    let out = Command::new("node")
        .arg(&script)
        .arg(args.to_string())
        .env("NODE_PATH", node_modules())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser scenario `{scenario}` failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("scenario `{scenario}` answered no JSON ({e}): {stdout}"))
}
