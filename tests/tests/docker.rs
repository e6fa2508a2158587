//! Against a real Docker engine (`dockerd`, started by .ci/run) and skopeo: the
//! images both backends write are real OCI layouts that Docker runs.

use gantry_e2e::{Workspace, repo, require_docker};
use std::process::Command;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A copy of examples/hello (sources, manifest, Dockerfile) in a fresh workspace.
fn example_copy() -> Workspace {
    let ws = Workspace::new();
    let src = repo().join("examples/hello");
    for file in [
        "pipeline.yaml",
        "Dockerfile",
        ".dockerignore",
        "app/Cargo.toml",
        "app/Cargo.lock",
        "app/src/main.rs",
    ] {
        ws.write(file, std::fs::read(src.join(file)).unwrap());
    }
    ws
}

/// Load the layout into Docker with skopeo, run it, and GET `/` from it.
fn run_layout(ws: &Workspace, name: &str) -> String {
    let layout = ws.path().join(".gantry/images/hello");
    let image = format!("gantry-e2e-{name}:latest");
    sh(Command::new("skopeo")
        .args(["copy", "--insecure-policy"])
        .arg(format!("oci:{}:hello:latest", layout.display()))
        .arg(format!("docker-daemon:{image}")));
    let container =
        sh(Command::new("docker").args(["run", "-d", "--rm", "-p", "127.0.0.1::8080", &image]));
    let port = sh(Command::new("docker").args(["port", &container, "8080/tcp"]));
    let addr = port.lines().next().unwrap().to_string();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
            if !body.is_empty() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
    body
}

#[test]
fn both_backends_build_images_that_docker_runs() {
    require_docker();
    let ws = example_copy();
    let out = ws.gantry(&["run", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let body = run_layout(&ws, "daemonless");
    assert!(
        body.contains("200 OK") && body.contains("hello from gantry's example app"),
        "{body}"
    );

    // The docker environment also publishes to a registry on loopback and
    // deploys there: point it at a fresh registry, free ports and a test name.
    let registry = gantry_e2e::Registry::start(None);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = format!("gantry-e2e-example-{}", std::process::id());
    // Its telemetry goes to a local App Insights endpoint: the strict one.
    let ingestion = gantry_e2e::appinsights::Ingestion::start();
    // Its backlog stage tells a local Azure Boards about the work items the
    // commit mentions.
    let boards = gantry_e2e::boards::Boards::start("dev-pat");
    boards.add_item(1, "User Story", "greet people", "Active");
    ws.write(".gitignore", ".gantry/\napp/target/\n");
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A", "."],
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "Say hello. Fixes AB#1",
        ],
    ] {
        sh(Command::new("git").args(args).current_dir(ws.path()));
    }
    let manifest = std::fs::read_to_string(ws.path().join("pipeline.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000", &registry.addr)
        .replace("127.0.0.1:8089", &format!("127.0.0.1:{}", ingestion.port))
        .replace("http://127.0.0.1:8095", &boards.url())
        .replace(
            "00000000-0000-4000-8000-000000000000",
            &ingestion.instrumentation_key,
        )
        .replace("host-port: 8080", &format!("host-port: {port}"))
        .replace("name: hello\n", &format!("name: {app}\n"));
    ws.write("pipeline.yaml", manifest);
    let out = gantry_e2e::without_ci(ws.command(&["run", "pipeline.yaml", "--env", "docker"]))
        .env("GANTRY_BOARDS_PAT", "dev-pat")
        .output()
        .unwrap();
    let out = gantry_e2e::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let deployed = get(&format!("127.0.0.1:{port}"));
    let _ = Command::new("docker")
        .args(["rm", "-f", &format!("{app}-blue")])
        .output();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("Successfully built"),
        "the build log streams to the stage log: {}",
        out.stdout
    );
    assert!(out.succeeded("deploy"), "{}", out.all());
    assert!(out.succeeded("backlog"), "{}", out.all());
    let story = boards.item(1);
    assert_eq!(story["fields"]["System.State"], "Resolved", "{story}");
    let history = boards.history(1);
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(
        history[0].contains("Deployed to <b>docker</b>") && history[0].contains(&registry.addr),
        "what was deployed, from where: {history:?}"
    );
    assert!(
        deployed.contains("200 OK") && deployed.contains("hello from gantry's example app"),
        "the deploy stage runs the pushed image: {deployed}"
    );
    assert!(
        ingestion.rejected().is_empty(),
        "{:?}",
        ingestion.rejected()
    );
    let requests = ingestion.accepted_of("RequestData");
    assert_eq!(requests.len(), 1, "the run, as one request");
    let deployments: Vec<_> = ingestion
        .accepted_of("EventData")
        .into_iter()
        .filter(|e| e["data"]["baseData"]["name"] == "deployment")
        .collect();
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let body = run_layout(&ws, "dockerfile");
    assert!(
        body.contains("200 OK") && body.contains("hello from gantry's example app"),
        "{body}"
    );
}

/// GET `/` from `addr`, retrying for up to 5 s.
fn get(addr: &str) -> String {
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
            if !body.is_empty() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    body
}

#[test]
fn a_failing_dockerfile_step_is_named() {
    require_docker();
    let ws = Workspace::new();
    ws.write(
        "ctx/Dockerfile",
        "FROM scratch\nCOPY missing.txt /missing.txt\n",
    );
    ws.write("ctx/present.txt", "x");
    ws.manifest(
        "pipeline: p\nstages:\n  - name: img\n    uses: build\n    with:\n      image: { backend: dockerfile, ref: \"gantry-e2e-broken:1\", output: out, context: ctx }\n    permissions: { workspace: write, engine: true }\n",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    let line = out.stage_line("img");
    assert!(
        line.contains("docker build failed at Step 2/2 : COPY missing.txt /missing.txt"),
        "{line}"
    );
}

#[test]
fn dockerignore_keeps_files_out_of_the_context() {
    require_docker();
    let ws = Workspace::new();
    ws.write("ctx/Dockerfile", "FROM scratch\nCOPY . /ctx/\n");
    ws.write("ctx/.dockerignore", "secret.txt\nlogs/\n");
    ws.write("ctx/keep.txt", "keep");
    ws.write("ctx/secret.txt", "do not send");
    ws.write("ctx/logs/a.log", "noise");
    ws.manifest(
        "pipeline: p\nstages:\n  - name: img\n    uses: build\n    with:\n      image: { backend: dockerfile, ref: \"gantry-e2e-ignore:1\", output: out, context: ctx }\n    permissions: { workspace: write, engine: true }\n",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    // Read the files of the exported layout's single layer.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.path().join("out/index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        std::fs::read(
            ws.path()
                .join("out/blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let mut names = vec![];
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = blob(layer["digest"].as_str().unwrap());
        for e in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", "gantry-e2e-ignore:1"])
        .output();
    assert!(
        names.iter().any(|n| n.ends_with("ctx/keep.txt")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("secret.txt") || n.contains("a.log")),
        "{names:?}"
    );
}

#[test]
fn export_never_overwrites_a_directory_that_is_not_a_layout() {
    require_docker();
    let ws = Workspace::new();
    ws.write("ctx/Dockerfile", "FROM scratch\nCOPY keep.txt /keep.txt\n");
    ws.write("ctx/keep.txt", "precious");
    for output in [".", "ctx"] {
        ws.manifest(&format!(
            "pipeline: p\nstages:\n  - name: img\n    uses: build\n    with:\n      image: {{ backend: dockerfile, ref: \"gantry-e2e-keep:1\", output: \"{output}\", context: ctx }}\n    permissions: {{ workspace: write, engine: true }}\n"
        ));
        let out = ws.run();
        assert_eq!(out.code, Some(1), "{}", out.all());
        assert!(
            out.stage_line("img")
                .contains("is not an OCI image layout; refusing to overwrite it"),
            "{}",
            out.stage_line("img")
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("ctx/keep.txt")).unwrap(),
            "precious"
        );
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", "gantry-e2e-keep:1"])
        .output();
}
