//! Plugins by OCI reference against a real registry (Debian's docker-registry
//! on loopback): push, run by reference, gantry.lock, tampering, moved tags,
//! the offline cache, basic auth, and artifacts that are not components.

use gantry_e2e::registry_auth::{ACCEPTS, TokenServer, htpasswd};
use gantry_e2e::{Proxy, Registry, Workspace, plugin};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One HTTP/1.1 request to the registry at `addr`; (status, headers, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = vec![];
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[end..].to_vec())
}

/// Upload a blob with a POST and a PUT, as any client does.
fn put_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let (status, head, _) = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap()
        .trim()
        .to_string();
    let path = location
        .split_once(addr)
        .map_or(location.as_str(), |(_, p)| p);
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, head, _) = http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("content-type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(status, 201, "{head}");
    digest
}

fn put_manifest(addr: &str, repo: &str, tag: &str, manifest: &Value) -> String {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let media_type = manifest["mediaType"].as_str().unwrap();
    let (status, head, body) = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", media_type)],
        &bytes,
    );
    assert_eq!(status, 201, "{head}{}", String::from_utf8_lossy(&body));
    sha256(&bytes)
}

/// `gantry plugins push <test plugin> oci://<addr>/<repo> --insecure`; the
/// manifest digest it printed.
fn push(ws: &Workspace, name: &str, reference: &str, extra: &[&str]) -> String {
    let file = plugin(name);
    let mut args = vec![
        "plugins",
        "push",
        file.to_str().unwrap(),
        reference,
        "--insecure",
    ];
    args.extend_from_slice(extra);
    let out = ws.gantry(&args);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{reference}@sha256:")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "component: {}",
            sha256(&std::fs::read(&file).unwrap())
        )),
        "{}",
        out.stdout
    );
    first.rsplit_once('@').unwrap().1.to_string()
}

/// A registry with the echo plugin pushed as `plugins/echo:1`, a workspace
/// with a cache of its own, the reference and the manifest digest.
fn echo_in_registry() -> (Registry, Workspace, String, String) {
    let registry = Registry::start(None);
    let ws = Workspace::new().with_fresh_cache();
    let reference = format!("oci://{}/plugins/echo:1", registry.addr);
    let digest = push(&ws, "echo", &reference, &[]);
    (registry, ws, reference, digest)
}

/// `gantry plugins pull <reference> --insecure`.
fn pull(ws: &Workspace, reference: &str) -> gantry_e2e::Output {
    ws.gantry(&["plugins", "pull", reference, "--insecure"])
}

/// A pipeline whose one stage uses the alias `echo`, pointing at `oci`.
fn echo_pipeline(ws: &Workspace, oci: &str, alias_extra: &str) {
    ws.manifest(&format!(
        r#"pipeline: oci
secrets:
  reg-user: {{ env: REG_USER }}
  reg-pass: {{ env: REG_PASS }}
plugins:
  echo: {{ oci: "{oci}", insecure: true{alias_extra} }}
stages:
  - name: hello
    uses: echo
    with: {{ message: "from the registry" }}
"#
    ));
}

/// The cache's file name for the component with digest `layer`.
fn cache_file(layer: &str) -> String {
    format!("{}.wasm", layer.trim_start_matches("sha256:"))
}

fn cached_plugins(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("plugins/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pushed_plugin_runs_by_reference_is_locked_and_runs_offline_from_the_cache() {
    let registry = Registry::start(None);
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_cache(cache.path());
    let reference = format!("oci://{}/plugins/echo:1", registry.addr);
    let manifest_digest = push(&ws, "echo", &reference, &[]);
    let layer = sha256(&std::fs::read(plugin("echo")).unwrap());

    echo_pipeline(&ws, &format!("{}/plugins/echo:1", registry.addr), "");
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.succeeded("hello"));
    assert!(
        out.all().contains("echo: from the registry"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains(&format!(
            "gantry.lock: pinned {reference} → {manifest_digest}"
        )),
        "{}",
        out.stdout
    );
    let lock = std::fs::read_to_string(ws.path().join("gantry.lock")).unwrap();
    assert!(
        lock.starts_with("# This file is generated by gantry"),
        "{lock}"
    );
    assert!(
        lock.contains(&format!(
            "[[plugin]]\nreference = \"{reference}\"\nmanifest-digest = \"{manifest_digest}\"\nlayer-digest = \"{layer}\"\n"
        )),
        "{lock}"
    );
    assert_eq!(cached_plugins(cache.path()), [cache_file(&layer)]);

    // `gantry lock` agrees with what the run wrote, byte for byte, twice.
    let out = ws.gantry(&["lock", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("gantry.lock: up to date"),
        "{}",
        out.stdout
    );
    std::fs::remove_file(ws.path().join("gantry.lock")).unwrap();
    assert!(
        ws.gantry(&["lock", "pipeline.yaml"])
            .stdout
            .contains("gantry.lock: written")
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("gantry.lock")).unwrap(),
        lock
    );
    assert!(
        ws.gantry(&["lock", "pipeline.yaml"])
            .stdout
            .contains("up to date")
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("gantry.lock")).unwrap(),
        lock
    );

    // `plan` shows the component's digest, the same as the lock's.
    let out = ws.gantry(&["plan", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains(&layer), "{}", out.stdout);

    // The registry is gone: the locked, cached plugin still runs.
    drop(registry);
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("echo: from the registry"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("pulled "), "{}", out.all());

    // Not cached and the registry gone: it says so, nothing runs.
    let empty = tempfile::tempdir().unwrap();
    let out = ws
        .command(&["run", "pipeline.yaml"])
        .env("GANTRY_CACHE_DIR", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the connection was refused"), "{stderr}");
}

#[test]
fn a_tampered_blob_is_refused_under_the_lock_and_nothing_is_cached() {
    let (registry, ws, reference, _) = echo_in_registry();
    echo_pipeline(&ws, &format!("{}/plugins/echo:1", registry.addr), "");
    assert_eq!(ws.gantry(&["lock", "pipeline.yaml"]).code, Some(0));
    let layer = sha256(&std::fs::read(plugin("echo")).unwrap());

    // The registry now serves other bytes under the locked digest.
    let noop = std::fs::read(plugin("noop")).unwrap();
    std::fs::write(registry.blob_file(&layer), &noop).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = ws
        .command(&["run", "pipeline.yaml"])
        .env("GANTRY_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stages[0] ({reference}): the component does not match the lock: expected {layer}, got {}",
            sha256(&noop)
        )),
        "{stderr}"
    );
    assert!(!ws.path().join(".gantry/runs").exists(), "nothing ran");
    assert!(
        cached_plugins(cache.path()).is_empty(),
        "{:?}",
        cached_plugins(cache.path())
    );

    // A lock whose layer digest is not the one the manifest names is refused too.
    let lock = std::fs::read_to_string(ws.path().join("gantry.lock")).unwrap();
    let forged = format!("sha256:{}", "0".repeat(64));
    ws.write("gantry.lock", lock.replace(&layer, &forged));
    let out = ws
        .command(&["validate", "pipeline.yaml"])
        .env("GANTRY_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the layer the manifest names does not match the lock: expected {forged}, got {layer}"
        )),
        "{stderr}"
    );
}

#[test]
fn a_moved_tag_keeps_the_locked_plugin_and_is_refused_with_locked() {
    let (registry, ws, reference, first) = echo_in_registry();
    echo_pipeline(&ws, &format!("{}/plugins/echo:1", registry.addr), "");
    // `validate` resolves what is not pinned, and writes nothing.
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "not in gantry.lock, resolved now: {reference} → {first}"
        )),
        "{}",
        out.stdout
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--locked"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!("stages[0] ({reference}): not pinned in gantry.lock, and --locked forbids updating it: run `gantry lock pipeline.yaml`")),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("gantry.lock").exists());
    assert_eq!(ws.run().code, Some(0));

    // `gantry runs` prints one line per run of the workspace.
    let runs = || {
        let out = ws.gantry(&["runs"]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("no runs"))
            .count()
    };
    assert_eq!(runs(), 1);

    // Someone pushes other bytes under the same tag.
    let moved = push(&ws, "noop", &reference, &[]);
    assert_ne!(first, moved);
    let out = ws.gantry(&["run", "pipeline.yaml", "--locked"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "the tag now resolves to {moved}, but gantry.lock pins {first} (--locked): run `gantry lock pipeline.yaml` to accept the new digest"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(runs(), 1, "nothing ran");
    // Without --locked the run uses the locked digest, not the moved tag.
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("echo: from the registry"),
        "{}",
        out.all()
    );
    // `gantry lock` accepts the move and says so.
    let out = ws.gantry(&["lock", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("{reference}: {first} → {moved}")),
        "{}",
        out.stdout
    );
    assert!(
        std::fs::read_to_string(ws.path().join("gantry.lock"))
            .unwrap()
            .contains(&moved)
    );
}

#[test]
fn basic_auth_comes_from_secrets_or_env_and_wrong_credentials_are_clear() {
    let registry = Registry::start(Some(&htpasswd("ci", "plugin-pw-123")));
    let reference = format!("oci://{}/team/echo:1", registry.addr);
    let ws = Workspace::new()
        .with_fresh_cache()
        .env("REG_USER", "ci")
        .env("REG_PASS", "plugin-pw-123");
    let out = ws.gantry(&[
        "plugins",
        "push",
        plugin("echo").to_str().unwrap(),
        &reference,
        "--insecure",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "{} refused access (401); tried no credentials (anonymous)",
            registry.addr
        )),
        "{}",
        out.stderr
    );
    push(
        &ws,
        "echo",
        &reference,
        &["--username-env", "REG_USER", "--password-env", "REG_PASS"],
    );

    echo_pipeline(&ws, &format!("{}/team/echo:1", registry.addr), AUTH);
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.all().contains("plugin-pw-123"));

    let stderr = refused_run(&registry.addr, "ci");
    assert!(
        stderr.contains(&format!(
            "{} refused access (401); tried the user name and password from secrets `reg-user`/`reg-pass`",
            registry.addr
        )),
        "{stderr}"
    );
}

const AUTH: &str = ", username-secret: reg-user, password-secret: reg-pass";

/// Run the echo pipeline of `addr` as `user` with a wrong password: it fails
/// before anything runs and never prints the password. Its stderr.
fn refused_run(addr: &str, user: &str) -> String {
    let wrong = Workspace::new()
        .with_fresh_cache()
        .env("REG_USER", user)
        .env("REG_PASS", "wrong-password-456");
    echo_pipeline(&wrong, &format!("{addr}/team/echo:1"), AUTH);
    let out = wrong.run();
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(!out.all().contains("wrong-password-456"), "{}", out.all());
    out.stderr
}

#[test]
fn what_is_not_a_component_artifact_is_refused_by_name() {
    let registry = Registry::start(None);
    let addr = registry.addr.clone();
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_cache(cache.path());

    // An ordinary container image.
    let config = put_blob(
        &addr,
        "apps/web",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let layer = put_blob(&addr, "apps/web", b"not really a tar.gz");
    put_manifest(
        &addr,
        "apps/web",
        "1",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 79},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 19}],
        }),
    );
    let out = pull(&ws, &format!("oci://{addr}/apps/web:1"));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!("{addr}/apps/web:1 is not a WebAssembly component artifact: it is an artifact whose config media type is `application/vnd.oci.image.config.v1+json`")),
        "{}",
        out.stderr
    );

    // The wasm layout, but the layer is not a component.
    let bytes = b"\0asm\x01\0\0\0".to_vec();
    wasm_artifact(&addr, "plugins/core", "1", &bytes);
    let out = pull(&ws, &format!("oci://{addr}/plugins/core:1"));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr
            .contains("is a core WebAssembly module, not a component"),
        "{}",
        out.stderr
    );
    assert!(cached_plugins(cache.path()).is_empty());

    // No such tag; no such registry.
    let out = pull(&ws, &format!("oci://{addr}/plugins/none:1"));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "{addr}/plugins/none:1: no such manifest in the registry (MANIFEST_UNKNOWN"
        )),
        "{}",
        out.stderr
    );
    drop(registry);
    let out = pull(&ws, &format!("oci://{addr}/plugins/none:1"));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "cannot reach http://{addr}/v2/plugins/none/manifests/1: the connection was refused"
        )),
        "{}",
        out.stderr
    );

    let out = ws.gantry(&["plugins", "pull", "oci://registry.invalid/a/b:1"]);
    assert!(
        out.stderr.contains("cannot reach https://registry.invalid/v2/a/b/manifests/1: the registry's host name does not resolve (unknown registry?)"),
        "{}",
        out.stderr
    );

    // Plain HTTP only on loopback; HTTPS to a plain-HTTP registry says what to do.
    let out = pull(&ws, "oci://registry.example.com/a/b:1");
    assert!(
        out.stderr
            .contains("--insecure (plain HTTP) is only allowed for a registry on this machine"),
        "{}",
        out.stderr
    );
}

/// Write `bytes` as a Wasm OCI artifact exactly as `wkg oci push` does
/// (oci-wasm's config with `created`, `author`, `architecture`, `os`,
/// `layerDigests` and `component`; the layer titled with the file name).
/// Returns (manifest digest, layer digest).
fn wasm_artifact(addr: &str, repo: &str, tag: &str, bytes: &[u8]) -> (String, String) {
    let layer = put_blob(addr, repo, bytes);
    let config = serde_json::to_vec(&json!({
        "created": "2025-06-01T12:00:00.000000000Z",
        "author": "someone",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer],
        "component": {"exports": ["gantry:pipeline/plugin@0.1.0"], "imports": ["gantry:pipeline/log@0.1.0"], "target": null},
    }))
    .unwrap();
    let config_digest = put_blob(addr, repo, &config);
    let manifest = put_manifest(
        addr,
        repo,
        tag,
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/wasm", "digest": layer, "size": bytes.len(), "annotations": {"org.opencontainers.image.title": "echo.wasm"}}],
        }),
    );
    (manifest, layer)
}

#[test]
fn the_layout_is_the_one_wkg_reads_and_writes() {
    let registry = Registry::start(None);
    let addr = registry.addr.clone();
    let ws = Workspace::new().with_fresh_cache();

    // What wkg pushes, gantry runs.
    let echo = std::fs::read(plugin("echo")).unwrap();
    let (manifest, layer) = wasm_artifact(&addr, "wkg/echo", "0.1.0", &echo);
    echo_pipeline(&ws, &format!("{addr}/wkg/echo:0.1.0"), "");
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        std::fs::read_to_string(ws.path().join("gantry.lock"))
            .unwrap()
            .contains(&manifest)
    );
    assert_eq!(layer, sha256(&echo));

    // What gantry pushes has that layout: an OCI manifest without
    // artifactType, the wasm config, one application/wasm layer.
    let digest = push(&ws, "echo", &format!("oci://{addr}/gantry/echo:1"), &[]);
    let (status, _, body) = http(
        &addr,
        "GET",
        &format!("/v2/gantry/echo/manifests/{digest}"),
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert!(m.get("artifactType").is_none(), "{m}");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(m["layers"][0]["digest"], layer.as_str());
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "echo.wasm"
    );
    let (_, _, config) = http(
        &addr,
        "GET",
        &format!(
            "/v2/gantry/echo/blobs/{}",
            m["config"]["digest"].as_str().unwrap()
        ),
        &[],
        b"",
    );
    let c: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        (c["architecture"].as_str(), c["os"].as_str()),
        (Some("wasm"), Some("wasip2")),
        "{c}"
    );
    assert_eq!(c["layerDigests"], json!([layer]));
    assert!(
        c["component"]["exports"]
            .as_array()
            .unwrap()
            .contains(&json!("gantry:pipeline/plugin@0.2.0")),
        "{c}"
    );
    assert!(
        c["component"]["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("wasi:")),
        "{c}"
    );
    assert!(c["created"].as_str().unwrap().ends_with('Z'), "{c}");

    // `plugins pull` fetches, checks and caches it, and prints both digests.
    let cache = tempfile::tempdir().unwrap();
    let out = ws
        .command(&[
            "plugins",
            "pull",
            &format!("oci://{addr}/gantry/echo:1"),
            "--insecure",
        ])
        .env("GANTRY_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "oci://{addr}/gantry/echo:1@{digest}\ncomponent: {layer}"
        )),
        "{stdout}"
    );
    assert_eq!(cached_plugins(cache.path()), [cache_file(&layer)]);

    // A direct `uses: oci://` is anonymous HTTPS: a plain-HTTP registry says what to do.
    ws.manifest(&format!("pipeline: direct\nstages:\n  - name: a\n    uses: oci://{addr}/gantry/echo:2\n    with: {{ message: hi }}\n"));
    let out = ws.run();
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("set `insecure: true`"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_token_flow_asks_for_pull_or_push_scope_with_the_credentials() {
    let (tokens, registry) = TokenServer::with_registry();
    let reference = format!("oci://{}/team/echo:1", registry.addr);
    let ws = Workspace::new()
        .with_fresh_cache()
        .env("REG_USER", ACCEPTS.user)
        .env("REG_PASS", ACCEPTS.password);
    push(
        &ws,
        "echo",
        &reference,
        &["--username-env", "REG_USER", "--password-env", "REG_PASS"],
    );
    let asked = tokens.requests.lock().unwrap().clone();
    assert!(
        asked.iter().any(|r| r.contains("service=gantry-registry")
            && r.contains("scope=repository%3Ateam%2Fecho%3Apull%2Cpush")),
        "{asked:?}"
    );

    echo_pipeline(&ws, &format!("{}/team/echo:1", registry.addr), AUTH);
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    let asked = tokens.requests.lock().unwrap()[asked.len()..].to_vec();
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|r| r.contains("scope=repository%3Ateam%2Fecho%3Apull ")),
        "a pull needs only pull: {asked:?}"
    );
    assert!(!out.all().contains(ACCEPTS.password));

    let stderr = refused_run(&registry.addr, ACCEPTS.user);
    assert!(
        stderr.contains(&format!(
            "refused access (401); tried the user name and password from secrets `reg-user`/`reg-pass`: the token service {} answered 401 Unauthorized: UNAUTHORIZED: bad credentials",
            tokens.realm
        )),
        "{stderr}"
    );
}

#[test]
fn transient_registry_errors_are_retried_and_then_given_up_on() {
    let (registry, ws, _, digest) = echo_in_registry();

    // 503, then 429 with Retry-After, then a dropped connection; then through.
    let proxy = Proxy::start(&registry.addr, |n| match n {
        1 => Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ),
        2 => Some(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ),
        3 => Some("drop"),
        _ => None,
    });
    let out = pull(&ws, &format!("oci://{}/plugins/echo:1", proxy.addr));
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains(&format!("@{digest}")), "{}", out.stdout);
    let manifest = format!("GET http://{}/v2/plugins/echo/manifests/1", proxy.addr);
    for line in [
        format!("warn: {manifest}: 503 Service Unavailable; retry 1 of 3 in 0.5s"),
        format!("warn: {manifest}: 429 Too Many Requests; retry 2 of 3 in 1.0s"),
    ] {
        assert!(out.stderr.contains(&line), "{line}\n{}", out.stderr);
    }
    assert!(
        out.stderr.contains("; retry 3 of 3 in 2.0s"),
        "{}",
        out.stderr
    );

    // A registry that keeps failing: bounded, and said so.
    let failing = Proxy::start(&registry.addr, |_| {
        Some("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    });
    let out = pull(&ws, &format!("oci://{}/plugins/echo:1", failing.addr));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "GET http://{}/v2/plugins/echo/manifests/1: gave up after 4 attempts; last: 502 Bad Gateway: (empty body)",
            failing.addr
        )),
        "{}",
        out.stderr
    );
    assert_eq!(failing.requests().len(), 4);
}

#[test]
fn gantry_lock_pins_the_plugins_of_every_environment_and_only_those() {
    let registry = Registry::start(None);
    let addr = registry.addr.clone();
    let ws = Workspace::new().with_fresh_cache();
    let echo = push(&ws, "echo", &format!("oci://{addr}/plugins/echo:1"), &[]);
    let noop = push(&ws, "noop", &format!("oci://{addr}/plugins/noop:1"), &[]);
    ws.manifest(&format!(
        r#"pipeline: envs
plugins:
  noop: {{ oci: "{addr}/plugins/noop:1", insecure: true }}
  unused: {{ oci: "{addr}/plugins/unused:1", insecure: true }}
stages:
  - name: a
    uses: "{{noop}}"
environments:
  dev: {{ default: true }}
  staging:
    stages:
      a: {{ uses: noop }}
"#
    ));
    ws.write("gantry.lock", "version = 1\n[[plugin]]\nreference = \"oci://gone/x:1\"\nmanifest-digest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nlayer-digest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n");
    let out = ws.gantry(&["lock", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let lock = std::fs::read_to_string(ws.path().join("gantry.lock")).unwrap();
    assert!(
        lock.contains(&format!(
            "reference = \"oci://{addr}/plugins/noop:1\"\nmanifest-digest = \"{noop}\""
        )),
        "{lock}"
    );
    assert!(
        !lock.contains("gone/x") && !lock.contains("unused") && !lock.contains(&echo),
        "{lock}"
    );
    assert_eq!(lock.matches("[[plugin]]").count(), 1, "{lock}");
}

#[test]
fn a_stage_uses_an_oci_reference_over_https() {
    let (registry, ca) = Registry::start_tls();
    let reference = format!("oci://{}/plugins/echo:1", registry.addr);
    let ws = Workspace::new()
        .with_fresh_cache()
        .env("SSL_CERT_FILE", ca.to_str().unwrap());
    let echo = plugin("echo");
    let out = ws.gantry(&["plugins", "push", echo.to_str().unwrap(), &reference]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    ws.manifest(&format!(
        "pipeline: direct\nstages:\n  - name: a\n    uses: {reference}\n    with: {{ message: over https }}\n"
    ));
    let out = ws.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.all().contains("echo: over https"), "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("gantry.lock: pinned {reference} → sha256:")),
        "{}",
        out.stdout
    );

    // A certificate the machine does not trust: refused at once, not retried.
    let untrusted = Workspace::new().with_fresh_cache();
    untrusted.manifest(&std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap());
    let out = untrusted.run();
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "cannot reach https://{}/v2/plugins/echo/manifests/1: ",
            registry.addr
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("invalid peer certificate"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("retry"), "{}", out.stderr);
}

#[test]
fn a_schema_error_under_an_oci_plugin_hints_an_inspect_that_works() {
    let (_registry, ws, reference, _) = echo_in_registry();
    let oci = reference.trim_start_matches("oci://");
    echo_pipeline(&ws, oci, "");
    let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    ws.manifest(&yaml.replace(
        "with: { message: \"from the registry\" }",
        "with: { message: 1 }",
    ));
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let hint = format!("`gantry plugins inspect {reference} --insecure` shows its config schema");
    assert!(out.stderr.contains(&hint), "{hint}\n{}", out.stderr);
    let inspect = ws.gantry(&["plugins", "inspect", &reference, "--insecure", "--json"]);
    assert_eq!(inspect.code, Some(0), "{}", inspect.all());
    let info: Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert!(
        info.to_string().contains("stdout_lines"),
        "the schema names echo's fields: {info}"
    );
}

#[test]
fn pull_and_lock_compile_the_plugin_so_the_first_run_does_not() {
    let (_registry, ws, reference, _) = echo_in_registry();
    let out = pull(&ws, &reference);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("compiled for this machine in"),
        "{}",
        out.all()
    );
    echo_pipeline(&ws, &reference, "");
    let run = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stdout.contains("(compile cache: Hit)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("compiling "), "{}", run.stdout);

    // `gantry lock` on a cold cache does the same for every locked plugin.
    let cold = Workspace::new().with_fresh_cache();
    echo_pipeline(&cold, &reference, "");
    let out = cold.gantry(&["lock", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("compiled for this machine in"),
        "{}",
        out.all()
    );
    let run = cold.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert!(run.stdout.contains("(compile cache: Hit)"), "{}", run.all());

    // --no-compile leaves it to the first run, which says so.
    let lazy = Workspace::new().with_fresh_cache();
    let out = lazy.gantry(&["plugins", "pull", &reference, "--insecure", "--no-compile"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.all().contains("compiled"), "{}", out.all());
    echo_pipeline(&lazy, &reference, "");
    let run = lazy.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert!(
        run.stdout.contains("(compile cache: Stored)"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("compiling "), "{}", run.stdout);
}
