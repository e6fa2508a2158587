//! The plugin contract end to end: config in, outputs and artifacts out, data
//! flowing to the stages that need them, secrets redacted, guest output in the
//! log; and plugins that do not fit the contract refused before anything runs.

use gantry_e2e::{Workspace, plugin};

#[test]
fn config_outputs_and_artifacts_flow_downstream() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: flow
stages:
  - name: first
    uses: "{noop}"
  - name: second
    uses: "{echo}"
    needs: [first]
    with: { message: "hello, world", write: out/message.txt, stdout_lines: 3 }
    permissions: { workspace: write }
"#,
    );
    std::fs::create_dir(ws.path().join("out")).unwrap();
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stage_line("second").contains("echoed 12 bytes"));
    // The guest's stdout goes to the stage log, line by line; with --json the
    // log is on stderr and stdout holds only the JSON.
    assert!(
        out.stderr.contains("  second │ stdout line 2"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("  second │ echo: hello, world"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out/message.txt")).unwrap(),
        "hello, world"
    );

    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let second = &json["stages"][1];
    assert_eq!(second["status"], "succeeded");
    let outputs: std::collections::HashMap<String, String> =
        serde_json::from_value(second["outputs"].clone())
            .map(|v: Vec<(String, String)>| v.into_iter().collect())
            .unwrap();
    assert_eq!(outputs["message"], "hello, world");
    assert_eq!(
        outputs["upstream"], "first.stage=first",
        "upstream outputs of needed stages"
    );
    assert_eq!(outputs["run-id"], json["run_id"].as_str().unwrap());
}

#[test]
fn a_failed_stage_skips_its_dependents_but_not_independent_stages() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: dag
stages:
  - name: broken
    uses: "{hostile}"
    with: { attack: exec, target: sh }
  - name: dependent
    uses: "{noop}"
    needs: [broken]
  - name: independent
    uses: "{noop}"
  - name: after-dependent
    uses: "{noop}"
    needs: [dependent]
"#,
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    // Down a chain, each says why in its own terms.
    let line = out.stage_line("after-dependent");
    assert!(
        line.contains("skipped: it needs `dependent`, which was skipped"),
        "{line}"
    );
    let line = out.stage_line("dependent");
    assert!(
        line.starts_with("⊘ dependent")
            && line.contains("skipped: it needs `broken`, which did not succeed"),
        "a skipped stage has its own mark, not the success tick: {line}"
    );
    assert!(out.stage_line("broken").starts_with("✘ broken"));
    assert!(out.succeeded("independent"));
    assert!(
        !out.stdout.contains("▶ dependent"),
        "a skipped stage must not start"
    );
}

#[test]
fn secret_values_are_redacted_everywhere() {
    let ws = Workspace::new().env("GANTRY_TEST_SECRET", "s3cr3t-value-42");
    ws.manifest(
        r#"pipeline: redact
secrets:
  token: { env: GANTRY_TEST_SECRET }
stages:
  - name: reader
    uses: "{echo}"
    with: { message: "token=s3cr3t-value-42", secret: token }
    permissions: { secrets: [token] }
  - name: smuggler
    uses: "{hostile}"
    with: { attack: secret-in-keys, target: token }
    permissions: { secrets: [token] }
telemetry:
  - uses: file
    with: { path: events.jsonl }
    permissions: { workspace: write }
"#,
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stderr.contains("secret token is ***"), "{}", out.stderr);
    assert!(out.stderr.contains("echo: token=***"), "{}", out.stderr);
    assert!(!out.all().contains("s3cr3t-value-42"), "{}", out.all());
    // Output keys, artifact fields and event names/keys are masked too, in
    // everything the host stores.
    assert!(out.stdout.contains("out-***"), "{}", out.stdout);
    let events = std::fs::read_to_string(ws.path().join("events.jsonl")).unwrap();
    assert!(!events.contains("s3cr3t-value-42"), "{events}");
    assert!(
        events.contains("ev-***") && events.contains("key-***"),
        "{events}"
    );
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let dir = std::path::PathBuf::from(result["dir"].as_str().unwrap());
    let mut stored = String::new();
    for f in ["journal.jsonl", "summary.json"] {
        stored += &std::fs::read_to_string(dir.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        stored += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    assert!(!stored.contains("s3cr3t-value-42"), "{stored}");
    for masked in [
        "name-***",
        "type/***",
        "path-***",
        "ref-***",
        "sha256:***",
        "ann-***",
        "val-***",
        "out-***",
    ] {
        assert!(
            stored.contains(masked),
            "`{masked}` in the journal: {stored}"
        );
    }
}

#[test]
fn a_secret_from_a_file_reaches_a_granted_stage() {
    let ws = Workspace::new();
    ws.write("token.txt", "file-secret-value\n");
    ws.manifest(
        r#"pipeline: redact
secrets:
  token: { file: token.txt }
  missing: { env: GANTRY_TEST_NOT_SET_ANYWHERE }
stages:
  - name: reader
    uses: "{echo}"
    with: { message: "m", secret: token }
    permissions: { secrets: [token] }
  - name: unset
    uses: "{echo}"
    with: { message: "m", secret: missing }
    permissions: { secrets: [missing] }
"#,
    );
    let out = ws.run();
    assert!(out.succeeded("reader"), "{}", out.all());
    assert!(out.stdout.contains("secret token is ***"));
    assert!(!out.all().contains("file-secret-value"));
    assert!(out.stage_line("unset").contains("secret `missing` has no value: environment variable `GANTRY_TEST_NOT_SET_ANYWHERE` is not set"));
}

#[test]
fn telemetry_sink_receives_run_and_stage_events() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: telemetry
stages:
  - name: a
    uses: "{noop}"
  - name: b
    uses: "{hostile}"
    needs: [a]
    with: { attack: exec, target: sh }
telemetry:
  - uses: file
    with: { path: .gantry/events.jsonl }
    permissions: { workspace: write }
"#,
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(ws.path().join(".gantry/events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "run-started",
            "stage-started",
            "stage-finished",
            "stage-started",
            "stage-finished",
            "run-finished"
        ]
    );
    assert_eq!(events[2]["success"], true);
    assert_eq!(events[4]["success"], false);
    assert_eq!(events[4]["properties"]["status"], "denied");
    assert_eq!(events[5]["success"], false);
    let run_ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(run_ids.len(), 1);
}

/// Write a manifest whose second stage uses `bad`; nothing may run.
fn refused(ws: &Workspace, bad: &str) -> String {
    ws.manifest(&format!(
        "pipeline: refuse\nstages:\n  - name: benign\n    uses: \"{{noop}}\"\n  - name: bad\n    uses: \"{bad}\"\n"
    ));
    let out = ws.run();
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        !out.stdout.contains("▶ benign"),
        "nothing may run: {}",
        out.stdout
    );
    let validate = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(validate.code, Some(2));
    assert!(validate.stderr.contains("stages[1]"), "{}", validate.stderr);
    out.stderr
}

#[test]
fn a_plugin_built_against_another_wit_version_is_refused() {
    let ws = Workspace::new();
    let err = refused(&ws, &plugin("future-wit").display().to_string());
    assert!(
        err.contains("was built against gantry:pipeline@0.3.0"),
        "{err}"
    );
    assert!(
        err.contains("this gantry implements gantry:pipeline@0.2.0"),
        "{err}"
    );
    assert!(
        err.contains("runs plugins built against gantry:pipeline@0.2.x or gantry:pipeline@0.1.x"),
        "{err}"
    );
}

#[test]
fn a_corrupt_wasm_file_is_refused() {
    let ws = Workspace::new();
    let mut bytes = std::fs::read(plugin("noop")).unwrap();
    bytes.truncate(bytes.len() / 2);
    ws.write("truncated.wasm", &bytes);
    let err = refused(&ws, "truncated.wasm");
    assert!(
        err.contains("truncated.wasm is corrupt or not a valid component"),
        "{err}"
    );

    ws.write("text.wasm", "this is not wasm");
    let err = refused(&ws, "text.wasm");
    assert!(err.contains("text.wasm is not a WebAssembly file"), "{err}");
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let ws = Workspace::new();
    // The smallest valid core module: magic and version 1, no sections.
    ws.write("core.wasm", b"\0asm\x01\0\0\0");
    let err = refused(&ws, "core.wasm");
    assert!(
        err.contains("core.wasm is a core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(err.contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_telemetry_sink_cannot_be_used_as_a_stage() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: s\n    uses: file\n");
    let out = ws.run();
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("`file` is a telemetry-sink plugin, but `stages[0]` needs a stage plugin"),
        "{}",
        out.stderr
    );
}
