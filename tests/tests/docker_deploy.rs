//! The built-in `docker-deploy` stage and the host's `engine` pull/start/remove,
//! against a real Docker engine (`dockerd`, started by .ci/run) and a real
//! registry (Debian's docker-registry on loopback): images of the example app
//! are built daemonless, pushed by the `registry` stage and deployed in
//! blue/green slots.

use gantry_e2e::docker::{Cleanup, docker, free_port_pair, managed_containers};
use gantry_e2e::{Output, Registry, Workspace, require_docker};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The example app as a static binary, built once per test process.
fn static_binary() -> &'static PathBuf {
    gantry_e2e::docker::static_binary(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// GET `path` from `addr` (`http://127.0.0.1:port`); the whole response.
fn get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let hostport = address.trim_start_matches("http://");
    let mut body = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(hostport) {
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let _ = s.read_to_string(&mut body);
    }
    body
}

/// A pipeline that builds the example app's image with `APP_VERSION=<version>`
/// and `LISTEN=<listen>`, pushes it to `registry` and deploys it as `app` with
/// the docker-deploy config `deploy` (the rest of a YAML flow mapping body).
fn pipeline(
    ws: &Workspace,
    registry: &Registry,
    version: &str,
    listen: &str,
    app: &str,
    port: u16,
    deploy: &str,
) {
    ws.write("hello", std::fs::read(static_binary()).unwrap());
    ws.manifest(&format!(
        r#"pipeline: deploy
stages:
  - name: image
    uses: build
    with:
      image:
        ref: "hello:{version}"
        output: out/hello
        files: [{{ from: hello, to: /hello, mode: "0755" }}]
        entrypoint: [/hello]
        env: {{ LISTEN: "{listen}", APP_VERSION: "{version}" }}
        ports: ["8080"]
    permissions: {{ workspace: write }}
  - name: publish
    uses: registry
    needs: [image]
    with: {{ registry: "{reg}", repository: gantry-e2e/hello, tags: ["{version}"], insecure: true }}
    permissions: {{ http: ["http://{reg}"] }}
  - name: deploy
    uses: docker-deploy
    needs: [publish]
    with: {{ name: {app}, host-port: {port}{deploy} }}
    permissions: {{ engine: true, state: [docker-deploy/], registries: ["{reg}"] }}
telemetry:
  - uses: file
    with: {{ path: events.jsonl }}
    permissions: {{ workspace: write }}
"#,
        reg = registry.addr
    ));
}

/// Where the app listens in its container.
const OK: &str = "0.0.0.0:8080";

fn run_json(ws: &Workspace) -> Output {
    ws.gantry(&["run", "pipeline.yaml", "--output", "json"])
}

/// The live slot, as the host keeps it (`gantry state get`).
fn live_slot(ws: &Workspace, app: &str) -> String {
    let out = ws.gantry(&["state", "get", &format!("docker-deploy/{app}")]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let state: Value = serde_json::from_str(&out.stdout).unwrap();
    state["live"].as_str().unwrap().to_string()
}

#[test]
fn blue_green_deploys_replace_the_old_version_only_once_the_new_one_is_healthy() {
    require_docker();
    let app = format!("gantry-e2e-bg-{}", std::process::id());
    let _cleanup = Cleanup(app.clone());
    let registry = Registry::start(None);
    let port = free_port_pair();
    let ws = Workspace::new();
    let health = ", health-path: /healthz, health-timeout: 20000";

    // v1 goes to the blue slot.
    pipeline(&ws, &registry, "v1", OK, &app, port, health);
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = out.outputs("deploy");
    let v1 = format!("http://127.0.0.1:{port}");
    assert_eq!(o["address"], v1.as_str());
    assert_eq!(o["slot"], "blue");
    assert!(
        o["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/gantry-e2e/hello@sha256:", registry.addr)),
        "the digest-pinned reference the registry stage pushed: {o}"
    );
    let body = get(&v1, "/");
    assert!(
        body.contains("200 OK") && body.contains("example app v1"),
        "{body}"
    );
    assert_eq!(managed_containers(&app), [format!("{app}-blue")]);
    assert_eq!(live_slot(&ws, &app), "blue");
    let labels = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}} {{json .HostConfig.PortBindings}}",
        &format!("{app}-blue"),
    ]);
    assert!(
        labels.contains(r#""gantry.stage":"deploy""#) && labels.contains(r#""gantry.run":""#),
        "{labels}"
    );
    assert!(
        labels.contains(r#""HostIp":"127.0.0.1""#) && !labels.contains(r#""HostIp":"""#),
        "published on loopback only: {labels}"
    );
    let events = std::fs::read_to_string(ws.path().join("events.jsonl")).unwrap();
    let deployment = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["kind"] == "deployment")
        .unwrap_or_else(|| panic!("no deployment event in {events}"));
    assert_eq!(deployment["properties"]["slot"], "blue");
    assert_eq!(deployment["properties"]["address"], v1.as_str());
    assert_eq!(deployment["properties"]["name"], app.as_str());

    // v2 goes to green; blue is removed once green is healthy.
    pipeline(&ws, &registry, "v2", OK, &app, port, health);
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = out.outputs("deploy");
    let v2 = format!("http://127.0.0.1:{}", port + 1);
    assert_eq!(o["address"], v2.as_str());
    assert_eq!(o["slot"], "green");
    let body = get(&v2, "/");
    assert!(body.contains("example app v2"), "{body}");
    assert_eq!(managed_containers(&app), [format!("{app}-green")]);
    assert_eq!(get(&v1, "/"), "", "blue no longer serves");
    assert_eq!(live_slot(&ws, &app), "green");

    // v3's health path answers 404: the stage fails, v2 keeps serving, and
    // no v3 container is left behind.
    pipeline(
        &ws,
        &registry,
        "v3",
        OK,
        &app,
        port,
        ", health-path: /not-there, health-timeout: 3000",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("deploy");
    assert!(
        line.contains(&format!(
            "container `{app}-blue` did not become healthy at {v1}/not-there within 3000 ms: HTTP 404"
        )) && line.contains(&format!(
            "the previous version (slot green) still serves at {v2}"
        )),
        "{line}"
    );
    assert!(
        out.all().contains("listening on 0.0.0.0:8080"),
        "the container's last log lines are quoted: {}",
        out.all()
    );
    assert!(get(&v2, "/").contains("example app v2"));
    assert_eq!(managed_containers(&app), [format!("{app}-green")]);
    assert_eq!(live_slot(&ws, &app), "green");

    // v4 exits at once (it cannot listen): detected before the timeout.
    pipeline(&ws, &registry, "v4", "not-an-address", &app, port, health);
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    // "exited" comes from watching the container, not from the 20 s timeout.
    let line = out.stage_line("deploy");
    assert!(
        line.contains(&format!("container `{app}-blue` did not become healthy"))
            && line.contains("it exited with code 1")
            && line.contains("still serves at"),
        "{line}"
    );
    assert!(
        out.all().contains("Error:"),
        "the app's own error is quoted from its log: {}",
        out.all()
    );
    assert!(get(&v2, "/").contains("example app v2"));
    assert_eq!(managed_containers(&app), [format!("{app}-green")]);

    // v5 deploys fine again, into blue.
    pipeline(&ws, &registry, "v5", OK, &app, port, health);
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["slot"], "blue");
    assert!(get(&v1, "/").contains("example app v5"));
    assert_eq!(managed_containers(&app), [format!("{app}-blue")]);
}

/// An image in the engine that gantry did not make, and a container of it.
fn foreign_container(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY x /x\nCMD [\"/x\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("x"), "not a program").unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", "gantry-e2e-foreign:1"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let created = Command::new("docker")
        .args(["create", "--name", name, "gantry-e2e-foreign:1"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    String::from_utf8_lossy(&created.stdout).trim().to_string()
}

fn hostile(ws: &Workspace, attack: &str, target: &str, args: &[&str]) -> Output {
    let args = args
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    ws.manifest(&format!(
        "pipeline: p\nstages:\n  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: {attack}, target: \"{target}\", args: [{args}] }}\n    permissions: {{ engine: true, registries: [\"127.0.0.1:1\"] }}\n"
    ));
    ws.run()
}

#[test]
fn gantry_removes_and_replaces_only_containers_it_started() {
    require_docker();
    let name = format!("gantry-e2e-foreign-{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let id = foreign_container(&name);
    let ws = Workspace::new();

    for target in [name.as_str(), &id[..12]] {
        let out = hostile(&ws, "engine-remove", target, &[]);
        assert_eq!(out.code, Some(1), "{}", out.all());
        let line = out.stage_line("evil");
        assert!(
            line.contains("denied: ")
                && line.contains(&format!("may not remove container `{target}`"))
                && line.contains("gantry removes only containers it started"),
            "{line}"
        );
    }
    let out = hostile(&ws, "engine-start", &name, &["gantry-e2e-foreign:1"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stage_line("evil")
            .contains(&format!("may not replace container `{name}`")),
        "{}",
        out.stage_line("evil")
    );
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("name={name}")
        ]),
        id,
        "the container is still there"
    );

    // Removing what does not exist is fine (removal is idempotent).
    let out = hostile(&ws, "engine-remove", &format!("{name}-never-existed"), &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());

    // Health checks go to loopback only; refused before anything starts.
    let out = hostile(
        &ws,
        "engine-start",
        &format!("{name}-2"),
        &["gantry-e2e-foreign:1", "http://192.0.2.1:8080/"],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stage_line("evil")
            .contains("denied: stage `evil` may health-check containers only over http:// on 127.0.0.1 or localhost"),
        "{}",
        out.stage_line("evil")
    );
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &format!("name={name}-2")]),
        ""
    );
    let _ = Command::new("docker")
        .args(["rmi", "-f", "gantry-e2e-foreign:1"])
        .output();
}

#[test]
fn pulling_names_the_reference_and_the_engine_s_message() {
    require_docker();
    let ws = Workspace::new();
    let out = hostile(&ws, "engine", "127.0.0.1:1/gantry-e2e/none:1", &[]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("evil");
    assert!(
        line.contains("failed: pulling `127.0.0.1:1/gantry-e2e/none:1` failed: ")
            && line.contains("connection refused"),
        "{line}"
    );
}

#[test]
fn the_deploy_stage_needs_the_engine_and_its_state() {
    let ws = Workspace::new();
    let stage = |perms: &str| {
        ws.manifest(&format!(
            "pipeline: p\nstages:\n  - name: deploy\n    uses: docker-deploy\n    with: {{ name: app, image: \"127.0.0.1:1/app:1\" }}\n    permissions: {{ {perms} }}\n"
        ));
        ws.run()
    };
    let out = stage("state: [docker-deploy/]");
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("deploy");
    assert!(
        line.contains("denied: ")
            && line.contains("grant it with `stages[0].permissions.engine: true`"),
        "{line}"
    );
    // A writable workspace is no longer what it needs: the live slot is the
    // host's to keep.
    let out = stage("engine: true, workspace: write");
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("deploy");
    assert!(
        line.contains("denied: ")
            && line.contains("state key `docker-deploy/app`")
            && line.contains("grant it with `stages[0].permissions.state: [docker-deploy/]`"),
        "{line}"
    );

    // Without `image` and without a needed stage that published one.
    ws.manifest(
        "pipeline: p\nstages:\n  - name: deploy\n    uses: docker-deploy\n    with: { name: app }\n    permissions: { engine: true, state: [docker-deploy/] }\n",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stage_line("deploy").contains("no image to deploy"),
        "{}",
        out.stage_line("deploy")
    );
}

/// The pipeline of [`pipeline`] with a `health-gate` stage after the deploy,
/// probing `path` on the deployed address.
fn gated_pipeline(
    ws: &Workspace,
    registry: &Registry,
    version: &str,
    app: &str,
    port: u16,
    path: &str,
) {
    pipeline(
        ws,
        registry,
        version,
        OK,
        app,
        port,
        ", health-path: /healthz, health-timeout: 20000, keep-previous: true",
    );
    let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let gate = format!(
        r#"  - name: gate
    uses: health-gate
    needs: [deploy]
    with: {{ probe: {{ path: {path}, successes: 2, interval-ms: 200, window: 3 }} }}
    permissions: {{ http: ["http://127.0.0.1:{port}", "http://127.0.0.1:{}"], engine: true, state: [docker-deploy/] }}
telemetry:
"#,
        port + 1
    );
    ws.manifest(&yaml.replacen("telemetry:\n", &gate, 1));
}

#[test]
fn a_failing_health_gate_switches_back_to_the_previous_version() {
    require_docker();
    let app = format!("gantry-e2e-gate-{}", std::process::id());
    let _cleanup = Cleanup(app.clone());
    let registry = Registry::start(None);
    let port = free_port_pair();
    let ws = Workspace::new();
    let (blue, green) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
    );

    // v1 (blue) passes the gate; there is nothing before it.
    gated_pipeline(&ws, &registry, "v1", &app, port, "/healthz");
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.succeeded("gate"), "{}", out.all());

    // v2 (green) passes: the gate retires v1's slot.
    gated_pipeline(&ws, &registry, "v2", &app, port, "/healthz");
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(managed_containers(&app), [format!("{app}-green")]);
    assert!(get(&green, "/").contains("example app v2"));

    // v3 (blue) is up and passes the deploy's own check, but the gate's probe
    // fails: the gate switches back to v2, which never stopped serving.
    gated_pipeline(&ws, &registry, "v3", &app, port, "/not-there");
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.succeeded("deploy"), "{}", out.all());
    let line = out.stage_line("gate");
    assert!(
        line.contains(&format!(
            "probe failed: {blue}/not-there: 0 of 2 consecutive 2xx answers within 3s"
        )) && line.contains("last: HTTP 404"),
        "{line}"
    );
    assert!(
        line.contains("switched back to the previous version")
            && line.contains(&format!("(slot green) at {green}")),
        "{line}"
    );
    assert!(get(&green, "/").contains("example app v2"));
    assert_eq!(get(&blue, "/"), "", "v3 is gone");
    assert_eq!(managed_containers(&app), [format!("{app}-green")]);
    assert_eq!(live_slot(&ws, &app), "green");

    // The next deploy goes to the idle slot again, not over v2.
    gated_pipeline(&ws, &registry, "v4", &app, port, "/healthz");
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["slot"], "blue");
    assert!(get(&blue, "/").contains("example app v4"));
    assert_eq!(managed_containers(&app), [format!("{app}-blue")]);
}

#[test]
fn the_app_insights_connection_string_reaches_the_container_and_nothing_else() {
    require_docker();
    let app = format!("gantry-e2e-ai-{}", std::process::id());
    let _cleanup = Cleanup(app.clone());
    let registry = Registry::start(None);
    let port = free_port_pair();
    let connection = "InstrumentationKey=9d3c4e1a-0000-4000-8000-00000000abcd;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/";
    let ws = Workspace::new().env("GANTRY_TEST_AI", connection);
    pipeline(
        &ws,
        &registry,
        "v1",
        OK,
        &app,
        port,
        ", health-path: /healthz, app-insights-connection-string-secret: ai",
    );
    let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml"))
        .unwrap()
        .replacen(
            "stages:\n",
            "secrets:\n  ai: { env: GANTRY_TEST_AI }\nstages:\n",
            1,
        )
        .replace(
            "permissions: { engine: true, state: [docker-deploy/]",
            "permissions: { engine: true, state: [docker-deploy/], secrets: [ai]",
        );
    ws.manifest(&yaml);
    let out = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let env = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &format!("{app}-blue"),
    ]);
    assert!(
        env.contains(&format!(
            "APPLICATIONINSIGHTS_CONNECTION_STRING={connection}"
        )),
        "{env}"
    );
    assert!(!out.all().contains("9d3c4e1a"), "{}", out.all());
    let journal = std::fs::read_to_string(ws.only_journal().unwrap()).unwrap();
    assert!(!journal.contains("9d3c4e1a"), "{journal}");
}
