//! Promotion (continuous deployment): `gantry promote` takes a run that
//! succeeded into the next environment of the manifest's chain, carrying the
//! `promotion.reuse` stages' results over (they are not run again) and running
//! the rest with that environment's parameters.

use gantry_e2e::{Output, Workspace, without_ci};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `build` makes the artifact (and appends its name to ran.txt each time it
/// really runs); `deploy` reads build's output through an expression, with
/// each environment's `target`; `smoke` comes after deploy.
const CD: &str = r#"pipeline: cd
variables: { target: none, pause: "0" }
stages:
  - name: build
    uses: "{echo}"
    with: { message: "built-${{ run.environment }}", append: ran.txt, write: artifact.txt }
    permissions: { workspace: write }
  - name: deploy
    uses: "{echo}"
    needs: [build]
    with: { message: "deployed ${{ stages.build.outputs.message }} to ${{ vars.target }} from ${{ run.branch }}: ${{ run.commit-messages }}", append: ran.txt }
    permissions: { workspace: write }
  - name: smoke
    uses: "{echo}"
    needs: [deploy]
    with: { message: "smoke ${{ run.promoted-from }}", append: ran.txt }
    permissions: { workspace: write }
environments:
  default: { default: true, variables: { target: local } }
  docker: { variables: { target: docker } }
  production: { variables: { target: prod } }
promotion:
  reuse: [build]
  environments:
    - default
    - name: docker
    - name: production
      approval: required
"#;

fn gantry(ws: &Workspace, args: &[&str]) -> Output {
    ws.gantry_without_ci(args)
}

/// Make the workspace a git repository on branch `main` with one commit.
fn git_init(ws: &Workspace) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(ws.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "pipeline.yaml"]);
    git(&["commit", "-q", "-m", "ship the thing"]);
}

fn run_json(ws: &Workspace, args: &[&str]) -> (Output, Value) {
    let out = gantry(ws, args);
    let v = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.all()));
    (out, v)
}

fn journal(ws: &Workspace, run_id: &str) -> PathBuf {
    ws.runs_dir().unwrap().join(run_id).join("journal.jsonl")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ran(ws: &Workspace, stage: &str) -> usize {
    std::fs::read_to_string(ws.path().join("ran.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == stage)
        .count()
}

fn stage<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {result}"))
}

fn output<'a>(stage: &'a Value, key: &str) -> &'a str {
    stage["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str())
        .unwrap_or_else(|| panic!("no output {key} in {stage}"))
}

fn id(result: &Value) -> String {
    result["run_id"].as_str().unwrap().to_string()
}

#[test]
fn a_promotion_reuses_the_built_stages_and_runs_the_rest_in_the_next_environment() {
    let ws = Workspace::new();
    ws.manifest(CD);
    git_init(&ws);
    let out = gantry(&ws, &["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(
            "promotion: default → docker → production (approval required); reused: build"
        ),
        "{}",
        out.stdout
    );
    let (out, first) = run_json(&ws, &["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let first_id = id(&first);
    assert_eq!(
        output(stage(&first, "deploy"), "message"),
        "deployed built-default to local from main: ship the thing"
    );
    assert_eq!(ran(&ws, "build"), 1);
    let started = &records(&journal(&ws, &first_id))[0];
    assert_eq!(started["branch"], "main", "{started}");
    assert_eq!(started["reference"], "refs/heads/main", "{started}");

    // Skipping an environment is refused, naming the chain.
    let out = gantry(&ws, &["promote", &first_id, "production"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(
            "the next environment of the chain (default → docker → production (approval required)) is `docker`; promote it to `docker` first"
        ),
        "{}",
        out.stderr
    );

    let (out, docker) = run_json(&ws, &["promote", &first_id, "docker", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let docker_id = id(&docker);
    assert_ne!(docker_id, first_id, "a promotion is a new run");
    assert_eq!(docker["environment"], "docker");
    assert_eq!(docker["promoted_from"], first_id.as_str());
    // build was not run again: the side effect happened once, and its
    // outputs (made in `default`) reached deploy, which ran with docker's
    // parameters.
    assert_eq!(ran(&ws, "build"), 1, "the reused stage must not run again");
    assert_eq!(ran(&ws, "deploy"), 2);
    let build = stage(&docker, "build");
    assert_eq!(build["reused_from"], first_id.as_str());
    assert_eq!(output(build, "message"), "built-default");
    assert_eq!(
        output(stage(&docker, "deploy"), "message"),
        "deployed built-default to docker from main: ship the thing"
    );
    assert_eq!(
        output(stage(&docker, "smoke"), "message"),
        format!("smoke {first_id}")
    );
    assert!(
        out.stderr.contains(&format!("reused from run {first_id}")),
        "the summary says where the result came from:\n{}",
        out.stderr
    );

    // The journal: promoted_from, the reused stage recorded as finished with
    // the source's artifact and never started.
    let recs = records(&journal(&ws, &docker_id));
    assert_eq!(recs[0]["event"], "run-started");
    assert_eq!(recs[0]["promoted_from"], first_id.as_str());
    assert_eq!(recs[0]["environment"], "docker");
    assert_eq!(recs[0]["commit"], started["commit"]);
    assert!(
        recs[0].get("approval").is_none(),
        "docker needs no approval"
    );
    let source_build = records(&journal(&ws, &first_id))
        .into_iter()
        .find(|r| r["event"] == "stage-finished" && r["stage"] == "build")
        .unwrap();
    let reused = recs
        .iter()
        .find(|r| r["event"] == "stage-finished" && r["stage"] == "build")
        .unwrap();
    assert_eq!(reused["reused_from"], first_id.as_str());
    assert_eq!(reused["artifacts"], source_build["artifacts"]);
    assert_eq!(reused["artifacts"][0]["path"], "artifact.txt");
    assert!(
        !recs
            .iter()
            .any(|r| r["event"] == "stage-started" && r["stage"] == "build"),
        "build's plugin was never started: {recs:#?}"
    );

    // Production requires approval: without anyone to name, nothing runs.
    let nobody = without_ci(ws.command(&["promote", &docker_id, "production"]))
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        stderr.contains("environment `production` requires approval before run"),
        "{stderr}"
    );
    assert_eq!(ws.runs_dir().unwrap().read_dir().unwrap().count(), 2);
    // A promotion by hand is the approval, recorded with who and when.
    let (out, prod) = run_json(
        &ws,
        &[
            "promote",
            &docker_id,
            "production",
            "--by",
            "alice",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(ran(&ws, "build"), 1);
    assert_eq!(
        output(stage(&prod, "deploy"), "message"),
        "deployed built-default to prod from main: ship the thing"
    );
    let started = &records(&journal(&ws, &id(&prod)))[0];
    assert_eq!(started["approval"]["by"], "alice", "{started}");
    assert_eq!(started["approval"]["via"], "gantry promote");
    assert!(started["approval"]["ts_ms"].as_u64().unwrap() > 0);
    // The last environment has nowhere to go.
    let out = gantry(&ws, &["promote", &id(&prod), "production"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("the last environment of the chain"),
        "{}",
        out.stderr
    );
    let runs = gantry(&ws, &["runs"]);
    assert!(
        runs.stdout.contains(&format!("promoted from {first_id}")),
        "{}",
        runs.stdout
    );
}

#[test]
fn promote_refuses_an_unknown_run_a_failed_one_and_a_changed_manifest() {
    let ws = Workspace::new();
    // A chain that cannot work is caught before anything runs.
    ws.manifest(&CD.replace("reuse: [build]", "reuse: [deploy]"));
    let out = gantry(&ws, &["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(
            "pipeline.yaml:23:11: promotion.reuse[0]: `deploy` is reused, but it needs `build`, which is not"
        ),
        "{}",
        out.stderr
    );
    let out = gantry(&ws, &["promote", "nope-0000", "docker"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("no run `nope-0000`"), "{}", out.stderr);

    // deploy fails in `default` (it cannot open its file): nothing to promote.
    ws.manifest(&CD.replace(
        "append: ran.txt }\n    permissions: { workspace: write }\n  - name: smoke",
        "append: no/such/dir.txt }\n    permissions: { workspace: write }\n  - name: smoke",
    ));
    let (out, failed) = run_json(&ws, &["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let out = gantry(&ws, &["promote", &id(&failed), "docker"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "run `{}` failed; only a run that succeeded",
            id(&failed)
        )),
        "{}",
        out.stderr
    );

    ws.manifest(CD);
    let (out, good) = run_json(&ws, &["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    ws.manifest(&CD.replace("target: docker", "target: elsewhere"));
    let out = gantry(&ws, &["promote", &id(&good), "docker"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr
            .contains(&format!("changed (or is gone) since run `{}`", id(&good))),
        "{}",
        out.stderr
    );
    assert_eq!(ran(&ws, "build"), 2, "no refused promotion ran anything");
}

#[test]
fn an_interrupted_promotion_resumes_without_rerunning_finished_stages() {
    let ws = Workspace::new();
    // smoke sleeps, so that the promotion can be killed while it runs.
    ws.manifest(&CD.replace(
        "with: { message: \"smoke ${{ run.promoted-from }}\", append: ran.txt }",
        "with: { message: \"smoke ${{ run.promoted-from }}\", append: ran.txt, sleep_ms: 3000 }",
    ));
    let (out, first) = run_json(&ws, &["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let first_id = id(&first);
    let mut child = without_ci(ws.command(&["promote", &first_id, "docker"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the promotion's journal to show smoke started, then kill.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let promoted = loop {
        let found = std::fs::read_dir(ws.runs_dir().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path().join("journal.jsonl"))
            .find(|j| {
                std::fs::read_to_string(j).is_ok_and(|t| {
                    t.contains("\"promoted_from\"")
                        && t.contains("\"event\":\"stage-started\",\"stage\":\"smoke\"")
                })
            });
        if let Some(j) = found {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the promotion never started smoke"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let promoted_id = promoted
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(ran(&ws, "deploy"), 2, "deploy finished in the promotion");

    let (out, resumed) = run_json(&ws, &["resume", &promoted_id, "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "reused 1 stage(s) from run {first_id}, not run again: build"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(resumed["promoted_from"], first_id.as_str());
    assert_eq!(stage(&resumed, "build")["reused_from"], first_id.as_str());
    assert_eq!(ran(&ws, "build"), 1, "the reused stage never ran again");
    assert_eq!(ran(&ws, "deploy"), 2, "deploy finished before the kill");
    assert!((2..=3).contains(&ran(&ws, "smoke")));
    assert_eq!(
        output(stage(&resumed, "smoke"), "message"),
        format!("smoke {first_id}")
    );
    let recs = records(&promoted);
    for s in ["build", "deploy", "smoke"] {
        assert_eq!(
            recs.iter()
                .filter(|r| r["event"] == "stage-finished" && r["stage"] == s)
                .count(),
            1,
            "{s} finished once: {recs:#?}"
        );
    }
}

#[test]
fn promote_refuses_when_a_reused_stage_s_plugin_changed() {
    let ws = Workspace::new();
    let echo = std::fs::read(gantry_e2e::plugin("echo")).unwrap();
    ws.write("plug.wasm", &echo);
    ws.manifest(&CD.replacen("uses: \"{echo}\"", "uses: plug.wasm", 1));
    let (out, first) = run_json(&ws, &["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    // The same plugin with a custom section appended (id 0, 5 bytes: the
    // name `test`, no payload): it behaves alike, but is other bytes.
    let mut other = echo.clone();
    other.extend_from_slice(b"\x00\x05\x04test");
    ws.write("plug.wasm", &other);
    let out = gantry(&ws, &["promote", &id(&first), "docker"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "the plugin of reused stage `build` (plug.wasm) changed since run `{}`",
            id(&first)
        )),
        "{}",
        out.stderr
    );
    assert_eq!(ran(&ws, "build"), 1);
    assert_eq!(ran(&ws, "deploy"), 1, "nothing of the promotion ran");
}
