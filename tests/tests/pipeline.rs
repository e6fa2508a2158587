//! The pipeline model: environments, expressions, validation, the DAG executor,
//! retries, conditions, the journal and resume.

use gantry_e2e::{Output, Workspace};
use serde_json::Value;
use std::path::PathBuf;

/// Run with `--output json`; returns the output and the parsed result.
fn run_json(ws: &Workspace, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["run", "pipeline.yaml", "--output", "json"];
    args.extend_from_slice(extra);
    let out = ws.gantry(&args);
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    (out, v)
}

fn journal(dir: &str) -> Vec<Value> {
    std::fs::read_to_string(PathBuf::from(dir).join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events<'a>(journal: &'a [Value], event: &str, stage: &str) -> Vec<&'a Value> {
    journal
        .iter()
        .filter(|r| r["event"] == event && r["stage"] == stage)
        .collect()
}

fn stage<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

fn validate_err(ws: &Workspace, yaml: &str, extra: &[&str]) -> String {
    ws.manifest(yaml);
    let mut args = vec!["validate", "pipeline.yaml"];
    args.extend_from_slice(extra);
    let out = ws.gantry(&args);
    assert_eq!(out.code, Some(2), "{}", out.all());
    out.stderr
}

#[test]
fn cycles_and_unknown_needs_are_errors_with_their_location() {
    let ws = Workspace::new();
    let err = validate_err(
        &ws,
        r#"pipeline: p
stages:
  - name: a
    uses: "{noop}"
    needs: [c]
  - name: b
    uses: "{noop}"
    needs: [a]
  - name: c
    uses: "{noop}"
    needs: [b, d]
"#,
        &[],
    );
    assert!(
        err.contains("pipeline.yaml:11:16: stages[2].needs[1]: there is no stage named `d`"),
        "{err}"
    );
    assert!(
        err.contains("pipeline.yaml:3:11: stages[0].needs: `needs` form a cycle: a → c → b → a"),
        "{err}"
    );
}

#[test]
fn expressions_are_checked_before_anything_runs() {
    let ws = Workspace::new();
    let manifest = |extra: &str| {
        format!(
            r#"pipeline: p
variables: {{ region: westeurope }}
secrets:
  token: {{ env: TOKEN }}
stages:
  - name: a
    uses: "{{noop}}"
  - name: b
    uses: "{{echo}}"
    with:
      message: "${{{{ vars.regoin }}}} ${{{{ secrets.token }}}} ${{{{ stages.a.outputs.stage }}}}{extra}"
    if: ${{{{ secrets.token == 'x' }}}}
"#
        )
    };
    // A syntax error is reported on its own.
    let err = validate_err(&ws, &manifest(" ${{ run.nope }}"), &[]);
    let expected = "pipeline.yaml:11:7: stages[1].with.message: `run.nope`: `run` has id, commit, environment, pipeline";
    assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    // With the syntax fixed, each reference is checked.
    let err = validate_err(&ws, &manifest(""), &[]);
    for expected in [
        "pipeline.yaml:11:7: stages[1].with.message: `vars.regoin` is not defined in environment `default`",
        "did you mean `vars.region`?",
        "stages[1].with.message: `secrets.token` is read, but stage `b` is not granted secret `token`",
        "grant it with `stages[1].permissions.secrets: [token]`",
        "stages[1].with.message: `stages.a.outputs.stage` reads stage `a`, which `b` does not need",
        "add `a` to `stages[1].needs`",
        "pipeline.yaml:12:9: stages[1].if: `secrets.token` cannot be used in a condition",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn a_stage_without_a_provider_in_the_environment_is_an_error() {
    let ws = Workspace::new();
    let yaml = r#"pipeline: p
stages:
  - name: push
environments:
  local:
    default: true
    stages:
      push: { uses: "{noop}" }
  production:
    stages:
      pusher: { uses: "{noop}" }
"#;
    ws.manifest(yaml);
    assert_eq!(ws.gantry(&["validate", "pipeline.yaml"]).code, Some(0));
    let err = validate_err(&ws, yaml, &["--env", "production"]);
    assert!(err.contains("pipeline.yaml:3:11: stages[0].uses: stage `push` has no provider in environment `production`"), "{err}");
    assert!(
        err.contains("set `environments.production.stages.push.uses`"),
        "{err}"
    );
    assert!(err.contains("pipeline.yaml:11:15: environments.production.stages.pusher: there is no stage named `pusher`"), "{err}");
    assert!(err.contains("did you mean `push`?"), "{err}");
    let err = validate_err(&ws, yaml, &["--env", "prod"]);
    assert!(
        err.contains("there is no environment `prod`; did you mean `production`?"),
        "{err}"
    );
}

#[test]
fn with_is_checked_against_the_plugin_schema() {
    let ws = Workspace::new();
    let err = validate_err(
        &ws,
        "pipeline: p\nstages:\n  - name: t\n    uses: command\n    with: { steps: [{ run: cargo test }], step: 1 }\n    permissions: { exec: [cargo] }\n",
        &[],
    );
    // Each error points at the offending key inside `with:`, not at `with:`.
    assert!(err.contains("pipeline.yaml:5:23: stages[0].with.steps[0].run: \"cargo test\" is not of type \"array\""), "{err}");
    assert!(err.contains("pipeline.yaml:5:43: stages[0].with: Additional properties are not allowed ('step' was unexpected)"), "{err}");
    assert!(
        err.contains("`gantry plugins inspect command` shows its config schema"),
        "{err}"
    );

    // Under an alias, in block style: the key is found, and the hint names
    // what `plugins inspect` takes (the path), not the alias.
    let err = validate_err(
        &ws,
        "pipeline: p\nplugins:\n  say: { path: \"{echo}\" }\nstages:\n  - name: t\n    uses: say\n    with:\n      message: hi\n      sleep_ms: soon\n",
        &[],
    );
    assert!(
        err.contains(
            "pipeline.yaml:9:7: stages[0].with.sleep_ms: \"soon\" is not of type \"integer\""
        ),
        "{err}"
    );
    let hint = format!(
        "`gantry plugins inspect {}` shows its config schema",
        gantry_e2e::plugin("echo").display()
    );
    assert!(err.contains(&hint), "{hint}\n{err}");
    let out = ws.gantry(&[
        "plugins",
        "inspect",
        &gantry_e2e::plugin("echo").display().to_string(),
    ]);
    assert_eq!(out.code, Some(0), "the hint must work: {}", out.all());
}

#[test]
fn environments_swap_providers_and_config() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: p
variables: { target: laptop }
stages:
  - name: deliver
    uses: "{noop}"
    with: { where: "${{ vars.target }}", keep: true }
environments:
  local:
    default: true
  production:
    variables: { target: cloud }
    stages:
      deliver:
        uses: "{echo}"
        with: { message: "to ${{ vars.target }} in ${{ run.environment }}" }
"#,
    );
    let plan = |env: &str| -> Value {
        let out = ws.gantry(&["plan", "pipeline.yaml", "--env", env, "--output", "json"]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str(&out.stdout).unwrap()
    };
    let local = plan("local");
    let prod = plan("production");
    assert!(
        local["stages"][0]["plugin"]
            .as_str()
            .unwrap()
            .ends_with("noop.wasm")
    );
    assert!(
        prod["stages"][0]["plugin"]
            .as_str()
            .unwrap()
            .ends_with("echo.wasm")
    );
    assert_ne!(local["stages"][0]["digest"], prod["stages"][0]["digest"]);
    assert_eq!(
        local["stages"][0]["config"],
        serde_json::json!({"where": "laptop", "keep": true})
    );
    assert_eq!(
        prod["stages"][0]["config"],
        serde_json::json!({"message": "to cloud in production"}),
        "a swapped provider gets its own config, not a merge"
    );
    // And a real run under production uses the echo provider.
    let (out, result) = run_json(&ws, &["--env", "production"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(result["environment"], "production");
    let outputs = &stage(&result, "deliver")["outputs"];
    assert_eq!(
        outputs[0],
        serde_json::json!(["message", "to cloud in production"])
    );
}

#[test]
fn independent_stages_run_in_parallel() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: p
stages:
  - name: left
    uses: "{echo}"
    with: { message: l, sleep_ms: 1500 }
  - name: right
    uses: "{echo}"
    with: { message: r, sleep_ms: 1500 }
  - name: join
    uses: "{echo}"
    needs: [left, right]
    with: { message: "${{ stages.left.outputs.message }}${{ stages.right.outputs.message }}" }
"#,
    );
    let (out, result) = run_json(&ws, &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let j = journal(result["dir"].as_str().unwrap());
    let ts = |event: &str, s: &str| events(&j, event, s)[0]["ts_ms"].as_u64().unwrap();
    // Both started before either finished: they overlapped.
    assert!(
        ts("stage-started", "right") < ts("stage-finished", "left"),
        "{j:#?}"
    );
    assert!(
        ts("stage-started", "left") < ts("stage-finished", "right"),
        "{j:#?}"
    );
    // The join started only after both finished, and got both outputs.
    assert!(
        ts("stage-started", "join")
            >= ts("stage-finished", "left").max(ts("stage-finished", "right"))
    );
    assert_eq!(
        stage(&result, "join")["outputs"][0],
        serde_json::json!(["message", "lr"])
    );
}

#[test]
fn dotted_output_keys_of_built_in_stages_are_addressable() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: p
stages:
  - name: check
    uses: command
    with: { steps: [{ name: lint, run: ["true"] }] }
    permissions: { exec: ["true"] }
  - name: report
    uses: "{echo}"
    needs: [check]
    with: { message: "plain=${{ stages.check.outputs.lint.exit-code }} quoted=${{ stages.check.outputs['lint.exit-code'] }}" }
"#,
    );
    let (out, result) = run_json(&ws, &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        stage(&result, "report")["outputs"][0],
        serde_json::json!(["message", "plain=0 quoted=0"])
    );
}

#[test]
fn transient_failures_are_retried_and_final_ones_are_not() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: p
stages:
  - name: flaky
    uses: "{hostile}"
    with: { attack: flaky, target: flaky.count, args: ["2"] }
    permissions: { workspace: write }
    retries: 2
  - name: broken
    uses: "{hostile}"
    with: { attack: fail, target: broken.count }
    permissions: { workspace: write }
    retries: 3
  - name: never-enough
    uses: "{hostile}"
    with: { attack: flaky, target: never.count, args: ["5"] }
    permissions: { workspace: write }
    retries: 1
"#,
    );
    let (out, result) = run_json(&ws, &[]);
    assert_eq!(out.code, Some(1));
    assert_eq!(result["status"], "failed", "the run-level result");
    let count = |f: &str| std::fs::read_to_string(ws.path().join(f)).unwrap();
    assert_eq!(stage(&result, "flaky")["status"], "succeeded");
    assert_eq!(count("flaky.count"), "3");
    assert_eq!(stage(&result, "broken")["status"], "failed");
    assert_eq!(
        count("broken.count"),
        "1",
        "a `failed` error is not retried"
    );
    assert_eq!(stage(&result, "never-enough")["status"], "transient");
    assert_eq!(count("never.count"), "2");
    let j = journal(result["dir"].as_str().unwrap());
    assert_eq!(events(&j, "stage-retry", "flaky").len(), 2);
    assert_eq!(events(&j, "stage-retry", "broken").len(), 0);
    assert!(
        out.stderr
            .contains("flaky: transient failure (flaky attempt 1); retry 1 of 2"),
        "{}",
        out.stderr
    );
}

#[test]
fn conditions_skip_stages_without_failing_the_run() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: p
stages:
  - name: always
    uses: "{noop}"
  - name: prod-only
    uses: "{noop}"
    if: ${{ run.environment == 'production' }}
  - name: after
    uses: "{noop}"
    needs: [prod-only]
"#,
    );
    let (out, result) = run_json(&ws, &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(stage(&result, "prod-only")["status"], "skipped");
    assert!(
        stage(&result, "prod-only")["detail"]
            .as_str()
            .unwrap()
            .contains("`if: ${{ run.environment == 'production' }}` is false")
    );
    assert_eq!(stage(&result, "after")["status"], "skipped");
}

#[test]
fn secrets_reach_the_plugin_but_no_log_journal_summary_or_json() {
    let ws = Workspace::new().env("GANTRY_TEST_TOKEN", "tok-7f3a9c-secret");
    ws.manifest(
        r#"pipeline: p
secrets:
  token: { env: GANTRY_TEST_TOKEN }
stages:
  - name: leaky
    uses: "{echo}"
    with: { message: "the token is ${{ secrets.token }}", secret: token }
    permissions: { secrets: [token] }
"#,
    );
    let (out, result) = run_json(&ws, &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    // The plugin saw the value (it logged it, masked by the host).
    assert!(
        out.stderr.contains("echo: the token is ***"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("secret token is ***"), "{}", out.stderr);
    assert!(!out.all().contains("tok-7f3a9c"));
    let dir = PathBuf::from(result["dir"].as_str().unwrap());
    for file in ["journal.jsonl", "summary.json", "logs/leaky.log"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            !text.contains("tok-7f3a9c"),
            "{file} leaks the secret:\n{text}"
        );
        assert!(!text.is_empty());
    }
    assert!(
        std::fs::read_to_string(dir.join("logs/leaky.log"))
            .unwrap()
            .contains("secret token is ***")
    );
}

#[test]
fn runs_and_logs_show_the_history() {
    let ws = Workspace::new();
    ws.manifest("pipeline: hist\nstages:\n  - name: hello\n    uses: \"{echo}\"\n    with: { message: hi there }\n");
    let (_, first) = run_json(&ws, &[]);
    let (_, second) = run_json(&ws, &[]);
    let runs = ws.gantry(&["runs"]);
    let lines: Vec<&str> = runs.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", runs.stdout);
    assert!(
        lines[0].starts_with(first["run_id"].as_str().unwrap())
            && lines[0].contains("hist  env=default  succeeded")
    );
    assert!(lines[1].starts_with(second["run_id"].as_str().unwrap()));
    let logs = ws.gantry(&["logs", first["run_id"].as_str().unwrap(), "hello"]);
    assert_eq!(logs.stdout, "echo: hi there\n");
    let bad = ws.gantry(&["logs", "nope"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("no run `nope`"), "{}", bad.stderr);
}

#[test]
fn azure_pipelines_gets_logging_commands() {
    let ws = Workspace::new().env("TF_BUILD", "True");
    ws.manifest("pipeline: p\nstages:\n  - name: e\n    uses: \"{echo}\"\n    with: { message: hi }\n  - name: x\n    uses: \"{hostile}\"\n    with: { attack: exec, target: sh }\n");
    let out = ws.run();
    assert!(
        out.stdout
            .contains("##vso[task.setvariable variable=e.message;isoutput=true]hi"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("##vso[task.logissue type=error;code=denied]stage x: denied: stage `x` is not allowed to run `sh`"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("##vso[task.logissue type=warning]stage `x` is not allowed to run `sh`"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("##vso[task.complete result=Failed]"),
        "{}",
        out.stdout
    );
}
