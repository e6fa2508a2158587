//! The README's first command: the example pipeline runs for real on the
//! built-in plugins (cargo test and cargo build of the example app).

use gantry_e2e::{Workspace, repo};

#[test]
fn the_hello_example_pipeline_succeeds() {
    let example = repo().join("examples/hello");
    let telemetry = example.join(".gantry/telemetry.jsonl");
    let _ = std::fs::remove_file(&telemetry);
    let ws = Workspace::new();
    let out = ws.gantry(&["run", example.join("pipeline.yaml").to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.succeeded("test") && out.succeeded("build"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("test result: ok. 3 passed"),
        "the app's unit tests ran: {}",
        out.stdout
    );
    assert!(
        example.join("app/target/release/hello").is_file(),
        "the app was built"
    );
    let last = std::fs::read_to_string(&telemetry)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let event: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(event["kind"], "run-finished");
    assert_eq!(event["success"], true);
}
