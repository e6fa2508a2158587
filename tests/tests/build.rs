//! The built-in `build` stage: build and test steps with test counts, the
//! daemonless OCI image builder (reproducible), and the errors that say what
//! and where.

use gantry_e2e::Workspace;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn run_json(ws: &Workspace) -> (gantry_e2e::Output, Value) {
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    (out, v)
}

fn output<'a>(result: &'a Value, stage: &str, key: &str) -> Option<&'a str> {
    let s = result["stages"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stage)?;
    s["outputs"]
        .as_array()?
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str())
}

const IMAGE: &str = r#"pipeline: image
stages:
  - name: image
    uses: build
    with:
      image:
        ref: "app:1.0"
        output: out/layout
        files:
          - { from: dist/app, to: /app }
          - { from: dist/static, to: /srv/static }
        entrypoint: [/app]
        env: { LISTEN: "0.0.0.0:8080" }
        ports: ["8080"]
        source: https://example.com/app
        revision: abc123
        source-date-epoch: 1700000000
    permissions: { workspace: write }
"#;

fn image_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("dist/app", b"\x7fELF pretend binary");
    ws.write("dist/static/index.html", "<h1>hi</h1>");
    ws.write("dist/static/css/site.css", "body{}");
    ws.manifest(IMAGE);
    ws
}

fn blob(ws: &Workspace, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(
        ws.path()
            .join("out/layout/blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        digest,
        "blob content matches its digest"
    );
    bytes
}

#[test]
fn an_empty_revision_leaves_the_label_out() {
    // `${{ run.commit }}` is empty outside a git repository.
    let ws = image_workspace();
    ws.manifest(&IMAGE.replace("revision: abc123", "revision: \"\""));
    let (out, result) = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let digest = output(&result, "image", "image.digest")
        .unwrap()
        .to_string();
    let manifest: Value = serde_json::from_slice(&blob(&ws, &digest)).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(&ws, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let labels = config["config"]["Labels"].as_object().unwrap();
    assert!(
        !labels.contains_key("org.opencontainers.image.revision"),
        "{labels:?}"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.com/app"
    );
}

#[test]
fn daemonless_images_are_reproducible_and_valid_oci_layouts() {
    let ws = image_workspace();
    let (out, first) = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let digest = output(&first, "image", "image.digest").unwrap().to_string();
    assert!(digest.starts_with("sha256:"));

    // The layout: oci-layout, index.json naming the ref, manifest, config, layer.
    let oci_layout: Value =
        serde_json::from_slice(&std::fs::read(ws.path().join("out/layout/oci-layout")).unwrap())
            .unwrap();
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(ws.path().join("out/layout/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "app:1.0"
    );
    let manifest: Value = serde_json::from_slice(&blob(&ws, &digest)).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: Value =
        serde_json::from_slice(&blob(&ws, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["config"]["Entrypoint"][0], "/app");
    assert_eq!(config["config"]["Env"][0], "LISTEN=0.0.0.0:8080");
    assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.revision"],
        "abc123"
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.source"],
        "https://example.com/app"
    );
    let layer = blob(&ws, manifest["layers"][0]["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(layer.as_slice()),
        &mut tar,
    )
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
    );
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries: Vec<(String, u32, u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect();
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "app",
            "srv/",
            "srv/static/",
            "srv/static/css/",
            "srv/static/css/site.css",
            "srv/static/index.html"
        ]
    );
    assert_eq!(entries[0].1, 0o755, "an ELF file is executable");
    assert_eq!(entries[5].1, 0o644);
    assert!(
        entries.iter().all(|e| e.2 == 0 && e.3 == 1_700_000_000),
        "{entries:?}"
    );

    // Same inputs, same digest.
    let (_, second) = run_json(&ws);
    assert_eq!(output(&second, "image", "image.digest").unwrap(), digest);
    // One byte changed, another digest.
    ws.write("dist/static/css/site.css", "body{ }");
    let (_, third) = run_json(&ws);
    assert_ne!(output(&third, "image", "image.digest").unwrap(), digest);
    // The artifact reaches downstream stages through the journal.
    let dir = third["dir"].as_str().unwrap();
    let journal = std::fs::read_to_string(std::path::Path::new(dir).join("journal.jsonl")).unwrap();
    assert!(
        journal.contains("application/vnd.oci.image.layout.v1+json"),
        "{journal}"
    );
}

#[test]
fn test_counts_become_outputs_and_a_failing_test_fails_the_stage() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: t
stages:
  - name: good
    uses: build
    with:
      test:
        - run: [sh, -c, "echo 'test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out'; echo 'test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out'"]
    permissions: { exec: [sh] }
  - name: bad
    uses: build
    with:
      build:
        - { name: compile, run: [sh, -c, "echo compiled"] }
      test:
        - { name: unit, run: [sh, -c, "echo 'test tests::it ... FAILED'; echo 'test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out'; exit 101"] }
    permissions: { exec: [sh] }
  - name: junit
    uses: build
    with:
      junit: report.xml
"#,
    );
    ws.write("report.xml", r#"<testsuites><testsuite name="x" tests="7" failures="1" errors="1" skipped="2"/></testsuites>"#);
    let (out, result) = run_json(&ws);
    assert_eq!(out.code, Some(1));
    assert_eq!(output(&result, "good", "tests.passed"), Some("5"));
    assert_eq!(output(&result, "good", "tests.ignored"), Some("1"));
    assert_eq!(output(&result, "junit", "tests.passed"), Some("3"));
    assert_eq!(output(&result, "junit", "tests.failed"), Some("2"));
    let bad = out.stage_line("bad");
    assert!(bad.contains("failed: step `unit`"), "{bad}");
    assert!(bad.contains("exited with 101"), "{bad}");
    assert!(
        out.stderr.contains("test tests::it ... FAILED"),
        "{}",
        out.stderr
    );
}

#[test]
fn build_errors_say_what_and_where() {
    let ws = Workspace::new();
    ws.write("dist/app", "x");
    ws.manifest(
        r#"pipeline: e
stages:
  - name: missing-output
    uses: build
    with:
      image: { ref: "a:1", output: out/a, files: [{ from: dist/nope, to: /nope }] }
    permissions: { workspace: write }
  - name: read-only
    uses: build
    with:
      image: { ref: "a:1", output: out/b, files: [{ from: dist/app, to: /app }] }
  - name: no-exec
    uses: build
    with:
      build: [{ run: [cargo, build] }]
  - name: no-engine
    uses: build
    with:
      image: { backend: dockerfile, ref: "a:1", output: out/c, context: . }
    permissions: { workspace: write }
  - name: engine-granted
    uses: build
    with:
      image: { backend: dockerfile, ref: "a:1", output: out/d, context: ., dockerfile: Dockerfile.missing }
    permissions: { workspace: write, engine: true }
"#,
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    let line = |s: &str| out.stage_line(s).to_string();
    assert!(
        line("missing-output").contains("failed: build output `dist/nope`"),
        "{}",
        line("missing-output")
    );
    assert!(
        line("read-only")
            .contains("cannot create out/b (is `permissions.workspace: write` granted?)"),
        "{}",
        line("read-only")
    );
    assert!(line("no-exec").contains("denied: stage `no-exec` is not allowed to run `cargo`: grant it with `stages[2].permissions.exec: [cargo]`"), "{}", line("no-exec"));
    assert!(
        line("no-engine").contains("grant it with `stages[3].permissions.engine: true`"),
        "{}",
        line("no-engine")
    );
    assert!(
        line("engine-granted")
            .contains("failed: no Dockerfile at `Dockerfile.missing` in the build context `.`"),
        "{}",
        line("engine-granted")
    );
}

#[test]
fn an_image_can_build_on_a_base_layout() {
    let ws = Workspace::new();
    ws.write("base/etc/motd", "base layer");
    ws.write("dist/app", b"\x7fELF app");
    ws.manifest(
        r#"pipeline: layered
stages:
  - name: base
    uses: build
    with:
      image: { ref: "base:1", output: out/base, files: [{ from: base/etc, to: /etc }], env: { A: "1" }, user: "65532" }
    permissions: { workspace: write }
  - name: app
    uses: build
    needs: [base]
    with:
      image: { ref: "app:1", output: out/app, base: out/base, files: [{ from: dist/app, to: /app }], env: { B: "2" }, entrypoint: [/app] }
    permissions: { workspace: write }
"#,
    );
    let (out, _) = run_json(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(ws.path().join(p)).unwrap()).unwrap()
    };
    let blob_json = |layout: &str, d: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(
                ws.path()
                    .join(layout)
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let base = blob_json(
        "out/base",
        read("out/base/index.json")["manifests"][0]["digest"]
            .as_str()
            .unwrap(),
    );
    let app = blob_json(
        "out/app",
        read("out/app/index.json")["manifests"][0]["digest"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(app["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        app["layers"][0], base["layers"][0],
        "the base layer comes first, unchanged"
    );
    let config = blob_json("out/app", app["config"]["digest"].as_str().unwrap());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(config["config"]["Env"], serde_json::json!(["A=1", "B=2"]));
    assert_eq!(
        config["config"]["User"], "65532",
        "settings of the base are kept"
    );
    assert_eq!(config["history"].as_array().unwrap().len(), 2);
}
