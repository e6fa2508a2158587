//! Shared by host/build.rs and tests/build.rs: build a workspace of guest
//! components for wasm32-wasip2.

use std::path::Path;
use std::process::Command;

/// `cargo build --release --target wasm32-wasip2` of a guest workspace, in its
/// own target directory (so it never waits on the lock of the outer build), with
/// the outer build's flags removed (they are for the host, not for wasm).
pub fn build(manifest: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
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
    assert!(
        status.success(),
        "building {} for wasm32-wasip2 failed",
        manifest.display()
    );
}
