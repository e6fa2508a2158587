//! A fresh machine: the build adds the wasm32-wasip2 target itself where rustup
//! can, and otherwise stops at once with one line saying what to run. These
//! drive the same function the build scripts call (host/build_guests.rs) with
//! stand-ins for rustc and rustup, so each path is taken for real.

#[path = "../../host/build_guests.rs"]
#[allow(dead_code)]
mod guests;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// These tests write scripts and run them. Writing one while another test's
/// thread forks lets the child inherit the still-open file until it execs, and
/// running the script then fails with "Text file busy" (ETXTBSY); so they run
/// one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// An executable shell script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A rustc stand-in whose sysroot is `dir/sysroot` (with no targets yet).
fn fake_rustc(dir: &Path) -> (String, PathBuf) {
    let sysroot = dir.join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/lib")).unwrap();
    let rustc = script(dir, "rustc", &format!("echo {}", sysroot.display()));
    (rustc.display().to_string(), sysroot)
}

#[test]
fn a_present_target_is_left_alone() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (rustc, sysroot) = fake_rustc(dir.path());
    std::fs::create_dir_all(sysroot.join("lib/rustlib/wasm32-wasip2/lib")).unwrap();
    // A rustup that would fail if it were called.
    let rustup = script(dir.path(), "rustup", "echo called >&2; exit 1");
    let got = guests::ensure_target(&rustc, None, rustup.to_str().unwrap());
    assert_eq!(got, Ok(None));
}

#[test]
fn a_missing_target_is_added_with_rustup_for_the_active_toolchain() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (rustc, sysroot) = fake_rustc(dir.path());
    let args = dir.path().join("args");
    let rustup = script(
        dir.path(),
        "rustup",
        &format!(
            "echo \"$@\" > {}; mkdir -p {}/lib/rustlib/wasm32-wasip2/lib",
            args.display(),
            sysroot.display()
        ),
    );
    let notice = guests::ensure_target(&rustc, Some("1.95.0"), rustup.to_str().unwrap())
        .unwrap()
        .expect("a notice that the target was installed");
    assert_eq!(
        std::fs::read_to_string(&args).unwrap().trim(),
        "target add wasm32-wasip2 --toolchain 1.95.0"
    );
    assert_eq!(notice.lines().count(), 1, "{notice}");
    assert!(
        notice.contains("installed the wasm32-wasip2 target"),
        "{notice}"
    );
}

#[test]
fn without_rustup_it_stops_with_one_line_saying_what_to_run() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (rustc, _) = fake_rustc(dir.path());
    let err = guests::ensure_target(&rustc, None, dir.path().join("no-rustup").to_str().unwrap())
        .unwrap_err();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("there is no rustup"), "{err}");
    assert!(err.contains("`rustup target add wasm32-wasip2`"), "{err}");
}

#[test]
fn offline_rustup_stops_with_its_reason_and_the_command() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (rustc, _) = fake_rustc(dir.path());
    let rustup = script(
        dir.path(),
        "rustup",
        "echo 'info: downloading component rust-std' >&2; \
         echo 'error: could not download file from https://static.rust-lang.org/...' >&2; exit 1",
    );
    let err = guests::ensure_target(&rustc, Some("1.95.0"), rustup.to_str().unwrap()).unwrap_err();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("error: could not download file"), "{err}");
    assert!(
        err.contains("`rustup target add wasm32-wasip2 --toolchain 1.95.0` failed"),
        "{err}"
    );
}

#[test]
fn a_rustup_that_succeeds_without_installing_is_not_believed() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (rustc, _) = fake_rustc(dir.path());
    let rustup = script(dir.path(), "rustup", "exit 0");
    let err = guests::ensure_target(&rustc, None, rustup.to_str().unwrap()).unwrap_err();
    assert!(err.contains("is not installed"), "{err}");
}
