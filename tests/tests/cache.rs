//! The compile cache: a second invocation deserializes instead of compiling, and
//! a cache directory others could write to is never trusted.

use gantry_e2e::Workspace;
use std::os::unix::fs::PermissionsExt;

const MANIFEST: &str = "pipeline: cache\nstages:\n  - name: a\n    uses: \"{noop}\"\n";

#[test]
fn the_second_run_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_cache(cache.path());
    ws.manifest(MANIFEST);
    let first = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert!(
        first.stdout.contains("(compile cache: Stored)"),
        "{}",
        first.stdout
    );
    // On a cold cache each plugin's compile is announced (seconds in a debug
    // build); a warm cache compiles and says nothing.
    let noop = gantry_e2e::plugin("noop");
    assert!(
        first.stdout.lines().any(
            |l| l.starts_with(&format!("compiling {} (", noop.display()))
                && l.ends_with("for this machine; later runs reuse it")
        ),
        "{}",
        first.stdout
    );
    let second = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert!(
        second.stdout.contains("(compile cache: Hit)"),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("compiling "), "{}", second.stdout);

    let dir = cache.path().join("components");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_tampered_cache_file_is_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_cache(cache.path());
    ws.manifest(MANIFEST);
    assert_eq!(ws.run().code, Some(0));
    let dir = cache.path().join("components");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // Made writable by others: gantry must recompile rather than load it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        !out.stdout.contains("(compile cache: Hit)"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("components");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ws = Workspace::new().with_cache(cache.path());
    ws.manifest(MANIFEST);
    let out = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("compile cache disabled"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("writable by group or others"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(compile cache: Bypassed)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written to an untrusted directory"
    );
}

#[test]
fn the_cache_is_bounded_and_prunes_the_least_recently_used() {
    let cache = tempfile::tempdir().unwrap();
    let two = "pipeline: cache\nstages:\n  - name: a\n    uses: \"{noop}\"\n  - name: b\n    uses: \"{echo}\"\n    needs: [a]\n    with: { message: hi }\n";
    let ws = Workspace::new().with_cache(cache.path());
    ws.manifest(two);
    let out = ws.gantry(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let info = ws.gantry(&["cache", "info"]);
    assert!(info.stdout.contains("2 component(s)"), "{}", info.all());
    assert!(info.stdout.contains("(bound: 1.0 GiB)"), "{}", info.all());

    // With a bound smaller than one component, each new one replaces the rest.
    let bounded = Workspace::new()
        .with_cache(cache.path())
        .env("GANTRY_CACHE_MAX_SIZE", "1KiB");
    bounded.manifest(&two.replace("{noop}", "{hostile}").replace(
        "name: a\n",
        "name: a\n    with: { attack: env, target: X }\n",
    ));
    let out = bounded.gantry(&["run", "pipeline.yaml"]);
    let info = bounded.gantry(&["cache", "info"]);
    assert!(
        info.stdout.contains("1 component(s)"),
        "{}\n{}",
        out.all(),
        info.all()
    );

    let pruned = ws.gantry(&["cache", "prune", "--all"]);
    assert_eq!(pruned.code, Some(0), "{}", pruned.all());
    assert!(
        pruned.stdout.starts_with("removed 1 component(s)"),
        "{}",
        pruned.stdout
    );
    let info = ws.gantry(&["cache", "info"]);
    assert!(info.stdout.contains("0 component(s)"), "{}", info.all());
}

#[test]
fn each_compiler_has_its_own_cache_entries_and_a_wrong_name_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_cache(cache.path());
    ws.manifest(MANIFEST);
    let winch = ws.gantry(&["--compiler", "winch", "run", "pipeline.yaml", "--verbose"]);
    assert_eq!(winch.code, Some(0), "{}", winch.all());
    assert!(
        winch.stdout.contains("(compile cache: Stored)"),
        "{}",
        winch.stdout
    );
    // Cranelift's code is not Winch's: compiled again, kept beside it.
    let cranelift = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert!(
        cranelift.stdout.contains("(compile cache: Stored)"),
        "{}",
        cranelift.stdout
    );
    assert_eq!(
        std::fs::read_dir(cache.path().join("components"))
            .unwrap()
            .count(),
        2
    );
    let again = Workspace::new()
        .with_cache(cache.path())
        .env("GANTRY_COMPILER", "WINCH");
    again.manifest(MANIFEST);
    let out = again.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert!(out.stdout.contains("(compile cache: Hit)"), "{}", out.all());

    let wrong = Workspace::new()
        .with_cache(cache.path())
        .env("GANTRY_COMPILER", "llvm");
    wrong.manifest(MANIFEST);
    let out = wrong.gantry(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr
            .contains("GANTRY_COMPILER=llvm: expected cranelift or winch"),
        "{}",
        out.stderr
    );
    let out = ws.gantry(&["--compiler", "llvm", "run", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("invalid value 'llvm'"),
        "{}",
        out.stderr
    );
}
