//! The command line: manifest errors that name file, line, column and field,
//! plugin listing and inspection, and help that teaches.

use gantry_e2e::Workspace;

#[test]
fn manifest_errors_name_file_line_and_field_and_suggest_fixes() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: errors
secrets:
  token: { env: TOKEN }
stages:
  - name: a
    uses: comand
    permissions:
      http: [example.com]
      secrets: [tokn]
      exec: [/bin/sh]
    limits: { memory: 9GiB }
    timeout: soon
  - name: b
    uses: "{noop}"
    needs: [c]
"#,
    );
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    for expected in [
        "pipeline.yaml:6:11: stages[0].uses: unknown plugin `comand`",
        "did you mean `command`?",
        "pipeline.yaml:8:14: stages[0].permissions.http[0]: `example.com` has no scheme",
        "stages[0].permissions.secrets[0]: secret `tokn` is granted but not defined under `secrets:`",
        "did you mean `token`?",
        "stages[0].permissions.exec[0]: `/bin/sh` is a path; programs are granted by name",
        "stages[0].limits.memory: must be between 1 byte and 4.0 GiB",
        "stages[0].timeout: `soon` is not a duration",
        "stages[1].needs[0]: there is no stage named `c`",
        "7 error(s) in pipeline.yaml; nothing was run",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    // The offending source line is shown.
    assert!(err.contains("uses: comand"), "{err}");
}

#[test]
fn unknown_fields_are_errors_with_a_location() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: a\n    uses: \"{noop}\"\n    permisions: {}\n");
    let out = ws.gantry(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("permisions"), "{}", out.stderr);
    assert!(out.stderr.contains("pipeline.yaml:5:"), "{}", out.stderr);
    assert!(!out.stdout.contains("▶"), "nothing may run");
}

#[test]
fn a_missing_manifest_is_a_clear_error() {
    let ws = Workspace::new();
    let out = ws.gantry(&["run", "nope.yaml"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("cannot read manifest nope.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_reports_each_stage_and_its_grants() {
    let ws = Workspace::new();
    ws.manifest(
        "pipeline: ok\nstages:\n  - name: t\n    uses: command\n    with: { steps: [{ run: [cargo, test] }] }\n    permissions: { exec: [cargo], workspace: write, http: [\"https://*.azurecr.io\"] }\n",
    );
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("pipeline `ok` is valid"));
    assert!(
        out.stdout.contains("t (builtin:command): workspace: read-write; exec: cargo; exec-network: none; exec confinement: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("; http: https://*.azurecr.io:443"),
        "{}",
        out.stdout
    );
}

#[test]
fn plugins_list_shows_the_builtins() {
    let out = Workspace::new().gantry(&["plugins", "list"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let command = out
        .stdout
        .lines()
        .find(|l| l.starts_with("command "))
        .expect("command listed");
    assert!(
        command.contains("stage") && command.contains("Runs a list of steps"),
        "{command}"
    );
    let file = out
        .stdout
        .lines()
        .find(|l| l.starts_with("file "))
        .expect("file listed");
    assert!(file.contains("telemetry-sink"), "{file}");
    // Columns line up, also after names longer than 12 characters.
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("NAME "))
        .collect();
    let version = rows[0].find("VERSION").expect("a header");
    let world = rows[0].find("WORLD").unwrap();
    assert!(
        rows.iter().any(|r| r.starts_with("docker-deploy ")),
        "{}",
        out.stdout
    );
    for row in &rows[1..] {
        assert!(
            row[..version].ends_with("  ") && row[version..].starts_with("0."),
            "misaligned version: {row:?}\n{}",
            out.stdout
        );
        assert!(
            row[..world].ends_with("  ")
                && (row[world..].starts_with("stage ")
                    || row[world..].starts_with("telemetry-sink ")),
            "misaligned world: {row:?}\n{}",
            out.stdout
        );
    }
}

#[test]
fn plugins_inspect_shows_describe_wit_and_capabilities() {
    let ws = Workspace::new();
    let out = ws.gantry(&["plugins", "inspect", "command", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["name"], "command");
    assert_eq!(v["world"], "stage");
    assert_eq!(v["capabilities"][0]["kind"], "exec");
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    let imports: Vec<&str> = v["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(
        imports.contains(&"gantry:pipeline/exec@0.2.0"),
        "{imports:?}"
    );
    assert_eq!(v["exports"][0], "gantry:pipeline/plugin@0.2.0");
    assert_eq!(v["contract"], "gantry:pipeline@0.2.0");
    assert_eq!(v["config_schema"]["required"][0], "steps");

    let text = ws.gantry(&[
        "plugins",
        "inspect",
        &gantry_e2e::plugin("hostile").display().to_string(),
    ]);
    assert_eq!(text.code, Some(0), "{}", text.all());
    assert!(
        text.stdout.contains("hostile 0.1.0 (stage)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("wasi:http/outgoing-handler@"),
        "{}",
        text.stdout
    );

    let bad = ws.gantry(&["plugins", "inspect", "nonexistent"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains(
        "`nonexistent` is neither a built-in plugin, a .wasm path nor an oci:// reference"
    ));
}

#[test]
fn help_teaches_with_examples() {
    let ws = Workspace::new();
    for (args, expected) in [
        (vec!["--help"], "gantry run examples/hello/pipeline.yaml"),
        (
            vec!["run", "--help"],
            "Exit status: 0 when every stage succeeded",
        ),
        (
            vec!["validate", "--help"],
            "Errors name the file, line, column and field",
        ),
        (
            vec!["plugins", "inspect", "--help"],
            "gantry plugins inspect ./my_stage.wasm --json",
        ),
    ] {
        let out = ws.gantry(&args);
        assert_eq!(out.code, Some(0));
        // clap wraps to the terminal width; compare with whitespace collapsed.
        let text = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains(expected),
            "`gantry {}` lacks `{expected}`:\n{}",
            args.join(" "),
            out.stdout
        );
    }
}

#[test]
fn a_closed_stdout_is_no_panic() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: a\n    uses: \"{noop}\"\n");
    for args in [
        &["plugins", "list"][..],
        &["schema"],
        &["plan", "pipeline.yaml"],
        &["plan", "pipeline.yaml", "--output", "json"],
        &["run", "pipeline.yaml", "--output", "json"],
        &["runs"],
    ] {
        // A pipe whose reader is gone: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = ws.command(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "gantry {args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "gantry {args:?}: {stderr}");
    }
}

#[test]
fn gantry_wit_writes_the_contract_it_speaks() {
    let ws = Workspace::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (version, dir, out_dir) in [(None, "wit", "out"), (Some("0.1.0"), "wit/v0.1", "out01")] {
        let mut args = vec!["wit", out_dir];
        if let Some(v) = version {
            args.extend(["--version", v]);
        }
        let out = ws.gantry(&args);
        assert_eq!(out.code, Some(0), "{}", out.all());
        let mut files: Vec<String> = ["host.wit", "types.wit", "worlds.wit"]
            .map(String::from)
            .into();
        if version.is_none() {
            // The WASI packages the worlds import come along: the directory is
            // a complete WIT package for componentize-py, jco, wit-bindgen.
            for dep in std::fs::read_dir(repo.join("wit/deps")).unwrap() {
                let name = dep.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".wit") {
                    files.push(format!("deps/{name}"));
                }
            }
            assert!(
                files.contains(&"deps/filesystem.wit".to_string()),
                "{files:?}"
            );
        } else {
            assert!(
                !ws.path().join(out_dir).join("deps").exists(),
                "0.1 imports no WASI"
            );
        }
        for file in files {
            assert_eq!(
                std::fs::read_to_string(ws.path().join(out_dir).join(&file)).unwrap(),
                std::fs::read_to_string(repo.join(dir).join(&file)).unwrap(),
                "{dir}/{file}"
            );
        }
    }
    let printed = ws.gantry(&["wit"]);
    assert!(
        printed
            .stdout
            .starts_with("// file: host.wit\npackage gantry:pipeline@0.2.0;"),
        "{}",
        printed.stdout
    );
    let bad = ws.gantry(&["wit", "--version", "9.9.9"]);
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr.contains("possible values: 0.2.0, 0.1.0"),
        "{}",
        bad.stderr
    );
}

#[test]
fn declared_capabilities_are_compared_with_grants_before_the_run() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: d\n    uses: \"{declares}\"\n");
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    for text in [
        "error: stages[0] (`d`): its plugin needs to run a program `cargo` (builds the app), which is not granted: grant it with `stages[0].permissions.exec: [cargo]`",
        "error: stages[0] (`d`): its plugin needs HTTP to an origin `https://crates.io/api` (looks up versions), which is not granted: grant it with `stages[0].permissions.http: [\"https://crates.io\"]`",
        "note: stages[0] (`d`): depending on its configuration, its plugin may also ask for what `stages[0].permissions.secrets: [...]` grants (`gantry plugins inspect ",
    ] {
        assert!(out.stderr.contains(text), "{text}\n{}", out.stderr);
    }
    let run = ws.run();
    assert_eq!(run.code, Some(2), "nothing runs: {}", run.all());
    assert!(
        !run.all().contains("declared, used nothing"),
        "{}",
        run.all()
    );

    // Granted as the errors say: valid and it runs; the warning about what
    // depends on configuration is for `validate` only.
    ws.manifest("pipeline: p\nstages:\n  - name: d\n    uses: \"{declares}\"\n    permissions: { exec: [cargo], http: [\"https://crates.io\"] }\n");
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr
            .contains("may also ask for what `stages[0].permissions.secrets: [...]` grants"),
        "{}",
        out.stderr
    );
    let run = ws.run();
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(!run.all().contains("may also ask"), "{}", run.all());
}

#[test]
fn plugins_new_refuses_bad_names_and_non_empty_directories_and_writes_nothing() {
    let ws = Workspace::new();
    let out = ws.gantry(&["plugins", "new", "My_Stage", "--lang", "js"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr
            .contains("plugin name `My_Stage` must be lower-case"),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("My_Stage").exists());

    ws.write("taken/mine.txt", "keep");
    let out = ws.gantry(&["plugins", "new", "wc", "--lang", "python", "--dir", "taken"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("taken already exists and is not empty"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(ws.path().join("taken")).unwrap().count(),
        1
    );

    let out = ws.gantry(&["plugins", "new", "wc", "--lang", "rust", "--sdk-path", "."]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("no Cargo.toml of gantry-sdk there"),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("wc").exists());

    let out = ws.gantry(&["plugins", "new", "wc", "--lang", "cobol"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("possible values: rust, python, js"),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_reports_a_bad_trigger_glob_with_file_and_line() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: triggers
on:
  push:
    branches: [main, "release/{1.x"]
    tags: ["v*"]
    path: ["src/**"]
stages:
  - name: a
    uses: "{noop}"
"#,
    );
    // An unknown key under `on.push` is a shape error, reported first.
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("pipeline.yaml:6:5: unknown field `path`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `paths`?"),
        "{}",
        out.stderr
    );

    ws.manifest(
        r#"pipeline: triggers
on:
  push:
    branches: [main, "release/{1.x"]
    tags: ["v*"]
    paths: ["src/**"]
stages:
  - name: a
    uses: "{noop}"
"#,
    );
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains(
            "pipeline.yaml:4:22: on.push.branches[1]: `release/{1.x` is not a valid glob"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("1 error(s) in pipeline.yaml"),
        "{}",
        out.stderr
    );

    // Fixed, it validates.
    ws.manifest(
        "pipeline: triggers\non:\n  push:\n    branches: [main, \"release/**\"]\nstages:\n  - name: a\n    uses: \"{noop}\"\n",
    );
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
