//! The README's first command: the example pipeline runs for real on the
//! built-in plugins (cargo test and cargo build of the example app), journaled,
//! with its telemetry in the run directory.

use gantry_e2e::{Workspace, repo};

#[test]
fn the_hello_example_pipeline_succeeds() {
    let example = repo().join("examples/hello");
    let ws = Workspace::new();
    let out = ws.gantry(&[
        "run",
        example.join("pipeline.yaml").to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.succeeded("test") && out.succeeded("build"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("test result: ok. 3 passed"),
        "the app's unit tests ran: {}",
        out.stderr
    );
    assert!(
        example.join("app/target/release/hello").is_file(),
        "the app was built"
    );
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let run_dir = std::path::PathBuf::from(result["dir"].as_str().unwrap());
    let telemetry = std::fs::read_to_string(run_dir.join("telemetry.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(telemetry.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "run-finished");
    assert_eq!(last["success"], true);
    assert_eq!(last["run_id"], result["run_id"]);
}

#[test]
fn the_ci_environment_overlays_the_test_stage() {
    let example = repo().join("examples/hello");
    let ws = Workspace::new();
    let manifest = example.join("pipeline.yaml");
    let out = ws.gantry(&[
        "plan",
        manifest.to_str().unwrap(),
        "--env",
        "ci",
        "--output",
        "json",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["environment"], "ci");
    assert_eq!(plan["stages"][0]["retries"], 2);
    assert_eq!(
        plan["stages"][0]["config"]["steps"][0]["run"][3],
        "--locked"
    );
    // Variables are filled in; the run id is known only when the run starts.
    assert_eq!(
        plan["stages"][1]["config"]["steps"][0]["run"][2],
        "--release"
    );
    assert_eq!(
        plan["telemetry"][0]["config"]["path"],
        ".gantry/runs/${{ run.id }}/telemetry.jsonl"
    );
}
