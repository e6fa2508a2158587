//! The SDK a third party depends on: `cargo package` makes a crate that
//! carries the WIT it binds (not `../wit`), and it builds on its own.

use std::path::Path;
use std::process::Command;

#[test]
fn the_sdk_packages_with_its_wit_and_builds_outside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = repo.join("target/sdk-package");
    let out = Command::new(env!("CARGO"))
        .args(["package", "--allow-dirty", "--manifest-path"])
        .arg(repo.join("sdk/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Verifying builds the packaged crate from its own files only.
    assert!(out.status.success(), "{stderr}");
    let list = Command::new(env!("CARGO"))
        .args([
            "package",
            "--list",
            "--allow-dirty",
            "--offline",
            "--manifest-path",
        ])
        .arg(repo.join("sdk/Cargo.toml"))
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&list.stdout);
    let files: Vec<&str> = files.lines().collect();
    for want in [
        "wit/host.wit",
        "wit/types.wit",
        "wit/worlds.wit",
        "wit/deps/cli.wit",
        "wit/deps/filesystem.wit",
        "wit/deps/http.wit",
        "README.md",
        "src/lib.rs",
    ] {
        assert!(files.contains(&want), "{want} not in {files:?}");
    }
    assert!(
        !files.iter().any(|f| f.contains("v0.1")),
        "the frozen 0.1 WIT is the host's, not the SDK's: {files:?}"
    );
    // The packaged WIT is the contract the host speaks.
    let packaged = target.join("package/gantry-sdk-0.1.0/wit/worlds.wit");
    assert_eq!(
        std::fs::read_to_string(packaged).unwrap(),
        std::fs::read_to_string(repo.join("wit/worlds.wit")).unwrap()
    );
}
