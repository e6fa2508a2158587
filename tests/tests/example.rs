//! The README's first command: the example pipeline runs for real on the
//! built-in plugins (the app's unit tests, a static build, a daemonless image),
//! journaled outside the workspace, with its telemetry in the workspace.

use gantry_e2e::{Workspace, repo};
use serde_json::Value;
use std::collections::HashMap;

fn outputs(result: &Value, stage: usize) -> HashMap<String, String> {
    serde_json::from_value(result["stages"][stage]["outputs"].clone())
        .map(|v: Vec<(String, String)>| v.into_iter().collect())
        .unwrap()
}

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
        out.succeeded("test") && out.succeeded("image"),
        "{}",
        out.stderr
    );
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded", "{}", out.stdout);
    assert!(
        result["duration_ms"].as_u64().unwrap() > 0,
        "{}",
        out.stdout
    );
    assert_eq!(result["stages"][3]["name"], "deploy", "{}", out.stdout);
    assert!(
        out.stage_line("deploy").starts_with("⊘ deploy"),
        "{}",
        out.stderr
    );
    assert_eq!(
        result["stages"][3]["status"], "skipped",
        "the default environment needs no Docker: {}",
        out.stdout
    );
    assert_eq!(
        outputs(&result, 0)["tests.passed"],
        "3",
        "the app's unit tests ran"
    );
    let digest = outputs(&result, 1)["image.digest"].clone();
    let index = std::fs::read_to_string(example.join(".gantry/images/hello/index.json")).unwrap();
    assert!(
        index.contains(&digest) && index.contains("hello:latest"),
        "{index}"
    );

    let run_dir = std::path::PathBuf::from(result["dir"].as_str().unwrap());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["duration_ms"], result["duration_ms"]);
    // The image stage's artifact, in the JSON result and in the summary.
    let artifact = &result["stages"][1]["artifacts"][0];
    assert_eq!(artifact["digest"], digest.as_str(), "{}", out.stdout);
    assert_eq!(
        artifact["media_type"], "application/vnd.oci.image.layout.v1+json",
        "{artifact}"
    );
    assert_eq!(
        summary["stages"][1]["artifacts"],
        result["stages"][1]["artifacts"]
    );
    assert!(
        !run_dir.starts_with(&example),
        "the run directory {} is outside the workspace",
        run_dir.display()
    );
    let telemetry = std::fs::read_to_string(example.join(format!(
        ".gantry/telemetry/{}.jsonl",
        result["run_id"].as_str().unwrap()
    )))
    .unwrap();
    let last: Value = serde_json::from_str(telemetry.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "run-finished");
    assert_eq!(last["success"], true);
    assert_eq!(last["run_id"], result["run_id"]);
}

#[test]
fn the_environments_overlay_the_stages() {
    let manifest = repo().join("examples/hello/pipeline.yaml");
    let ws = Workspace::new();
    let plan = |env: &str| -> Value {
        let out = ws.gantry(&[
            "plan",
            manifest.to_str().unwrap(),
            "--env",
            env,
            "--output",
            "json",
        ]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str(&out.stdout).unwrap()
    };
    let ci = plan("ci");
    assert_eq!(ci["environment"], "ci");
    assert_eq!(ci["stages"][0]["retries"], 2);
    assert_eq!(ci["stages"][0]["config"]["test"][0]["run"][3], "--locked");
    // Variables are filled in; the run id is known only when the run starts.
    assert_eq!(
        ci["stages"][1]["config"]["build"][0]["run"][5],
        "x86_64-unknown-linux-gnu"
    );
    assert_eq!(
        ci["telemetry"][0]["config"]["path"],
        ".gantry/telemetry/${{ run.id }}.jsonl"
    );
    // The docker environment swaps the image backend and grants the engine.
    let docker = plan("docker");
    let image = &docker["stages"][1];
    assert_eq!(image["config"]["image"]["backend"], "dockerfile");
    assert!(
        image["config"]["image"].get("files").is_none(),
        "null removed the daemonless-only keys"
    );
    assert!(
        image["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "engine: granted")
    );
    // ... and publishes to a local registry, which the deploy stage pulls from.
    assert_eq!(docker["stages"][2]["config"]["registry"], "127.0.0.1:5000");
    let deploy = &docker["stages"][3];
    assert_eq!(deploy["name"], "deploy");
    assert_eq!(deploy["provider"], "docker-deploy");
    assert_eq!(
        deploy["if"],
        "${{ run.environment == 'docker' || run.environment == 'aks' || run.environment == 'staging' || run.environment == 'production' }}"
    );

    // `aks` swaps the deploy stage's provider and names the cluster.
    let aks = plan("aks");
    assert_eq!(aks["cluster"]["context"], "my-aks");
    let deploy = &aks["stages"][3];
    assert_eq!(deploy["provider"], "aks-deploy");
    assert_eq!(deploy["config"]["namespace"], "hello");
    assert!(
        deploy["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "cluster namespaces: hello"),
        "{deploy}"
    );
}
