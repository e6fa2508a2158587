//! `gantry plugins new` for each language, built with its real toolchain
//! (cargo; componentize-py from PyPI in a venv; componentize-js and jco from
//! npm), the project's own tests run, and the component run in a real
//! pipeline: it reads a workspace file (for JavaScript, through the
//! wasi:filesystem the `stage` world now imports), a later stage gets its
//! outputs, its artifact is in summary.json, and an ungranted secret is refused.
//!
//! The toolchains are installed once under target/plugin-toolchains (keyed by
//! the versions the templates pin), so reruns do not download them again.

use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_e2e::{Workspace, gantry, repo};

fn toolchains() -> PathBuf {
    repo().join("target/plugin-toolchains")
}

/// Run `cmd` in `dir`: whether it succeeded, and its stdout and stderr.
fn output(dir: &Path, cmd: &mut Command) -> (bool, String) {
    let started = std::time::Instant::now();
    let out = cmd
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!("{cmd:?}: {:.1}s", started.elapsed().as_secs_f64());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Run `cmd` in `dir`, panicking with its output when it fails.
fn run(dir: &Path, cmd: &mut Command) -> String {
    let (ok, text) = output(dir, cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// Run `cmd` in `dir`, which must fail; its stdout and stderr.
fn fails(dir: &Path, cmd: &mut Command) -> String {
    let (ok, text) = output(dir, cmd);
    assert!(!ok, "{cmd:?} succeeded:\n{text}");
    text
}

/// `gantry plugins new NAME --lang LANG` into a fresh directory.
fn new_project(lang: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("proj");
    let mut cmd = Command::new(gantry());
    cmd.args(["plugins", "new", "word-count", "--lang", lang, "--dir"])
        .arg(&dir)
        .args(extra);
    let out = run(parent.path(), &mut cmd);
    assert!(out.contains("build it with"), "{out}");
    for file in [
        "README.md",
        "pipeline.yaml",
        "wit/worlds.wit",
        "wit/deps/filesystem.wit",
    ] {
        assert!(dir.join(file).is_file(), "{lang}: no {file}");
    }
    (parent, dir)
}

/// Run the built component `wasm` in a pipeline over a known file, with a
/// stage after it that reads its outputs and one that asks for a secret it
/// was not granted.
fn run_in_pipeline(wasm: &Path) {
    let size = std::fs::metadata(wasm).unwrap().len();
    eprintln!("{}: {:.2} MB", wasm.display(), size as f64 / 1e6);
    let ws = Workspace::new();
    ws.write("input.txt", "one two\nthree four five\n");
    let plugin = wasm.display().to_string();
    ws.manifest(&format!(
        r#"pipeline: template
stages:
  - name: count
    uses: "{plugin}"
    with: {{ file: input.txt, report: report.txt }}
    permissions: {{ workspace: write }}
  - name: after
    uses: "{{echo}}"
    needs: [count]
    with: {{ message: "words=${{{{ stages.count.outputs.words }}}} lines=${{{{ stages.count.outputs.lines }}}}" }}
  - name: no-secret
    uses: "{plugin}"
    with: {{ file: input.txt, secret: TOKEN }}
"#
    ));
    let started = std::time::Instant::now();
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    eprintln!(
        "first run (compiles it): {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.code, Some(1), "no-secret must fail:\n{}", out.all());
    assert!(out.succeeded("count"), "{}", out.all());
    assert!(out.succeeded("after"), "{}", out.all());
    assert_eq!(out.outputs("count")["words"], "5", "{}", out.all());
    assert_eq!(out.outputs("after")["message"], "words=5 lines=2");
    assert!(
        out.stderr.contains("count │ input.txt: 2 lines, 5 words"),
        "the log host call: {}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("report.txt")).unwrap(),
        "input.txt: 2 lines, 5 words\n"
    );
    let line = out.stage_line("no-secret");
    assert!(
        line.starts_with('✘')
            && line.contains("secret TOKEN")
            && line.contains("permissions.secrets"),
        "{line}"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ws.runs_dir()
                .unwrap()
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("summary.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let count = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "count")
        .unwrap();
    assert_eq!(count["artifacts"][0]["name"], "report", "{count}");
    assert_eq!(count["artifacts"][0]["path"], "report.txt", "{count}");
}

#[test]
fn a_rust_plugin_from_the_template_builds_and_runs() {
    let sdk = repo().join("sdk");
    let (_keep, dir) = new_project("rust", &["--sdk-path", sdk.to_str().unwrap()]);
    // One target directory for every run, so the SDK's dependencies are
    // compiled once.
    let target = repo().join("target/plugin-templates/rust");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("target")).unwrap();
    run(&dir, Command::new(env!("CARGO")).args(["test", "-q"]));
    run(
        &dir,
        Command::new(env!("CARGO")).args(["build", "--target", "wasm32-wasip2", "--release"]),
    );
    run_in_pipeline(&dir.join("target/wasm32-wasip2/release/word_count.wasm"));
}

/// A venv with the componentize-py the template pins (its requirements.txt);
/// made by one test at a time.
fn python_toolchain(project: &Path) -> PathBuf {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let requirements = std::fs::read_to_string(project.join("requirements.txt")).unwrap();
    let version = requirements.trim().trim_start_matches("componentize-py==");
    let venv = toolchains().join(format!("python-componentize-py-{version}"));
    if !venv.join("bin/componentize-py").is_file() {
        std::fs::create_dir_all(toolchains()).unwrap();
        run(
            &toolchains(),
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        );
        run(
            project,
            Command::new(venv.join("bin/pip")).args(["install", "-q", "-r", "requirements.txt"]),
        );
    }
    venv
}

#[test]
fn a_python_plugin_from_the_template_builds_and_runs() {
    let (_keep, dir) = new_project("python", &[]);
    let venv = python_toolchain(&dir);
    // build.sh makes .venv itself; here it is the cached one.
    std::os::unix::fs::symlink(&venv, dir.join(".venv")).unwrap();
    let out = run(&dir, &mut Command::new("./build.sh"));
    assert!(out.contains("built plugin.wasm"), "{out}");
    run_in_pipeline(&dir.join("plugin.wasm"));
}

#[test]
fn the_python_build_refuses_a_lazy_import() {
    let (_keep, dir) = new_project("python", &[]);
    let venv = python_toolchain(&dir);
    std::os::unix::fs::symlink(&venv, dir.join(".venv")).unwrap();
    let app = std::fs::read_to_string(dir.join("app.py")).unwrap();
    std::fs::write(
        dir.join("app.py"),
        app.replace(
            "        config = json.loads",
            "        import warnings\n        config = json.loads",
        ),
    )
    .unwrap();
    let text = fails(&dir, &mut Command::new("./build.sh"));
    assert!(text.contains("move these imports to the top"), "{text}");
    assert!(text.contains("import warnings"), "{text}");
    assert!(!dir.join("plugin.wasm").exists(), "nothing built");
}

/// node_modules with the componentize-js, jco and typescript the template pins, installed
/// from its package.json's devDependencies.
fn js_toolchain(project: &Path) -> PathBuf {
    let package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("package.json")).unwrap()).unwrap();
    let deps = &package["devDependencies"];
    let key: Vec<String> = deps
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{}-{}", k.rsplit('/').next().unwrap(), v.as_str().unwrap()))
        .collect();
    let dir = toolchains().join(format!("js-{}", key.join("-")));
    if !dir.join("node_modules/.bin/componentize-js").is_file() {
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = serde_json::json!({ "private": true, "devDependencies": deps });
        std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
        run(
            &dir,
            Command::new("npm").args(["install", "--no-audit", "--no-fund"]),
        );
    }
    dir.join("node_modules")
}

#[test]
fn a_javascript_plugin_from_the_template_reads_the_workspace_in_a_pipeline() {
    let (_keep, dir) = new_project("js", &[]);
    std::os::unix::fs::symlink(js_toolchain(&dir), dir.join("node_modules")).unwrap();
    run(&dir, Command::new("npm").args(["test"]));
    run(&dir, Command::new("npm").args(["run", "build"]));
    // The build type-checks the stage against the world's declaration.
    let app = std::fs::read_to_string(dir.join("app.js")).unwrap();
    std::fs::write(
        dir.join("app.js"),
        app.replace("configSchema:", "configSchemata:"),
    )
    .unwrap();
    let text = fails(&dir, Command::new("npm").args(["run", "check"]));
    assert!(
        text.contains("Property 'configSchema' is missing"),
        "{text}"
    );
    std::fs::write(dir.join("app.js"), app).unwrap();
    // The TypeScript declaration of the world, from the project's WIT.
    let world = std::fs::read_to_string(dir.join("types/stage.d.ts")).unwrap();
    assert!(
        world.contains("export * as plugin from 'gantry:pipeline/plugin@0.2.0'"),
        "{world}"
    );
    assert!(world.contains("wasi:filesystem/preopens@0.2.12"), "{world}");
    run_in_pipeline(&dir.join("plugin.wasm"));

    // Why the world imports WASI explicitly: against the 0.1 world, which
    // only promised it in a comment, the same stage does not even build.
    let old = dir.join("wit-0.1");
    run(
        &dir,
        Command::new(gantry())
            .args(["wit", "--version", "0.1.0"])
            .arg(&old),
    );
    let app = std::fs::read_to_string(dir.join("app.js")).unwrap();
    std::fs::write(dir.join("app-0.1.js"), app.replace("@0.2.0'", "@0.1.0'")).unwrap();
    let text = fails(
        &dir,
        Command::new(dir.join("node_modules/.bin/componentize-js")).args([
            "app-0.1.js",
            "--wit",
            "wit-0.1",
            "--world-name",
            "stage",
            "--out",
            "old.wasm",
        ]),
    );
    assert!(
        text.contains(r#"Error loading module "wasi:filesystem/preopens@0.2.12""#),
        "{text}"
    );
}
