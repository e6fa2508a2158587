//! `gantry serve` promoting a real image: built and pushed to a real registry
//! (Debian's docker-registry) in `ci`, then deployed by digest to a real
//! Docker engine in `staging` without being rebuilt or pushed again.

use gantry_e2e::docker::{Cleanup, docker, free_port_pair, static_binary};
use gantry_e2e::git::{GitDaemon, WorkClone};
use gantry_e2e::serve::Serve;
use gantry_e2e::{Registry, require_docker};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(300);

#[test]
fn promotion_deploys_the_digest_ci_pushed_without_rebuilding_or_pushing() {
    require_docker();
    let registry = Registry::start(None);
    let app = format!("gantry-e2e-promote-{}", std::process::id());
    let _cleanup = Cleanup(app.clone());
    let port = free_port_pair();
    let reg = &registry.addr;
    let manifest = format!(
        r#"pipeline: shipit
promotion:
  reuse: [image, publish]
  environments: [ci, staging]
environments:
  ci: {{ default: true }}
  staging: {{}}
stages:
  - name: image
    uses: build
    with:
      image:
        ref: "hello:${{{{ run.commit }}}}"
        output: out/hello
        files: [{{ from: hello, to: /hello, mode: "0755" }}]
        entrypoint: [/hello]
        env: {{ LISTEN: "0.0.0.0:8080", APP_VERSION: "${{{{ run.commit }}}}" }}
        ports: ["8080"]
    permissions: {{ workspace: write }}
  - name: publish
    uses: registry
    needs: [image]
    with: {{ registry: "{reg}", repository: e2e/shipit, tags: [latest], insecure: true }}
    permissions: {{ http: ["http://{reg}"] }}
  - name: deploy
    uses: docker-deploy
    needs: [publish]
    if: ${{{{ run.environment == 'staging' }}}}
    with: {{ name: {app}, host-port: {port}, health-path: /healthz }}
    permissions: {{ engine: true, state: [docker-deploy/], registries: ["{reg}"] }}
"#
    );
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("shipit");
    let work = WorkClone::new(&url);
    let binary = static_binary(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    std::fs::copy(binary, work.path().join("hello")).unwrap();
    let commit = work.commit(&[("pipeline.yaml", &manifest)], "ship it");
    work.push(&["HEAD:refs/heads/main"]);

    let serve = Serve::start(
        &format!(
            "repositories:\n  - name: shipit\n    url: {url}\n    environment: ci\n    poll: off\n"
        ),
        &[],
    );
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "shipit", "ref": "main" })),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let ci = r.json()["run"].as_i64().unwrap();
    let done = serve.wait_run(ci, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    let stage = |run: &serde_json::Value, name: &str| {
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no stage {name} in {run}"))
    };
    let pushed = stage(&done, "publish")["outputs"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest output: {done}"))
        .to_string();
    assert!(pushed.starts_with("sha256:"), "{pushed}");
    let blobs = registry.blob_count();
    assert!(blobs >= 3, "config, layer and manifest: {blobs}");

    let staging = serve.wait_for_run(LONG, |r| r["environment"] == "staging");
    let staging = serve.wait_run(staging["id"].as_i64().unwrap(), LONG);
    assert_eq!(
        staging["run"]["status"],
        "succeeded",
        "{staging}\n{}",
        serve.log()
    );
    assert_eq!(staging["run"]["commit"], commit.as_str());
    // Nothing was built or pushed again: the registry has not one blob more.
    assert_eq!(registry.blob_count(), blobs);
    assert_eq!(
        stage(&staging, "publish")["outputs"]["digest"],
        pushed.as_str()
    );
    assert_eq!(
        stage(&staging, "deploy")["status"],
        "succeeded",
        "{staging}"
    );
    // The container runs exactly the digest ci pushed.
    let container = docker(&[
        "ps",
        "--filter",
        &format!("name={app}"),
        "--filter",
        "label=gantry.managed=true",
        "--format",
        "{{.ID}}",
    ]);
    assert_eq!(container.lines().count(), 1, "{container}");
    let image = docker(&["inspect", "--format", "{{.Image}}", &container]);
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{join .RepoDigests \",\"}}",
        &image,
    ]);
    assert!(
        digests.contains(&format!("{reg}/e2e/shipit@{pushed}")),
        "{digests} vs {pushed}"
    );
    // And the service says so.
    let envs = serve.api("GET", "/api/v1/environments", None).json();
    let live = envs["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["environment"] == "staging")
        .cloned()
        .unwrap_or_else(|| panic!("{envs}"));
    assert_eq!(live["commit"], commit.as_str());
    assert_eq!(live["image_digest"], pushed.as_str(), "{envs}");
}
