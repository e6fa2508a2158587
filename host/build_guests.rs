//! Shared by host/build.rs and tests/build.rs: build a workspace of guest
//! components for wasm32-wasip2, installing that target first when rustup can.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// `cargo build --release --target wasm32-wasip2` of a guest workspace, in its
/// own target directory (so it never waits on the lock of the outer build), with
/// the outer build's flags removed (they are for the host, not for wasm).
pub fn build(manifest: &Path, target_dir: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    // Both build scripts may get here at once: one installs, the other waits.
    let _lock = lock(target_dir);
    match ensure_target(&rustc, toolchain.as_deref(), "rustup") {
        Ok(None) => {}
        Ok(Some(notice)) => println!("cargo::warning={notice}"),
        Err(message) => {
            // One line, before any guest crate is compiled.
            println!("cargo::error={message}");
            std::process::exit(1);
        }
    }
    drop(_lock);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .expect("run cargo for the wasm plugins");
    if !status.success() {
        println!(
            "cargo::error=building {} for {TARGET} failed (its errors are above)",
            manifest.display()
        );
        std::process::exit(1);
    }
}

/// An exclusive lock on a file in the guest target directory, held while the
/// target is checked and installed.
fn lock(target_dir: &Path) -> Option<std::fs::File> {
    std::fs::create_dir_all(target_dir).ok()?;
    let file = std::fs::File::create(target_dir.join(".install-target.lock")).ok()?;
    file.lock().ok()?;
    Some(file)
}

/// Makes sure `rustc` has the wasm32-wasip2 standard library. `Ok(None)` when
/// it has; `Ok(Some(notice))` when `rustup` (a program name or path) added it;
/// `Err(one line saying what to run)` when it is missing and cannot be added.
pub fn ensure_target(
    rustc: &str,
    toolchain: Option<&str>,
    rustup: &str,
) -> Result<Option<String>, String> {
    let sysroot = sysroot(rustc)?;
    if has_target(&sysroot) {
        return Ok(None);
    }
    let by_hand = match toolchain {
        Some(t) => format!("rustup target add {TARGET} --toolchain {t}"),
        None => format!("rustup target add {TARGET}"),
    };
    let mut add = Command::new(rustup);
    add.args(["target", "add", TARGET]);
    if let Some(t) = toolchain {
        add.args(["--toolchain", t]);
    }
    let out = match add.output() {
        Ok(out) => out,
        Err(_) => {
            return Err(format!(
                "the {TARGET} target (for gantry's built-in plugins) is not installed in {} and \
                 there is no rustup to add it: install it for this Rust, e.g. with `{by_hand}`",
                sysroot.display()
            ));
        }
    };
    if out.status.success() && has_target(&sysroot) {
        return Ok(Some(format!(
            "installed the {TARGET} target for gantry's built-in plugins (`{by_hand}`)"
        )));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let why = why
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no output");
    Err(format!(
        "the {TARGET} target (for gantry's built-in plugins) is not installed and `{by_hand}` \
         failed ({why}): run it where it can reach the Rust distribution server, then build again"
    ))
}

fn sysroot(rustc: &str) -> Result<PathBuf, String> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run `{rustc} --print sysroot`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{rustc} --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_target(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}
