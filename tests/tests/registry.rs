//! The built-in `registry` stage against a real registry (Debian's
//! docker-registry on loopback): pushes that Docker pulls and runs, basic auth,
//! deduplication, faults and refusals.

use gantry_e2e::{Proxy, Registry, Workspace};
use serde_json::Value;
use std::process::Command;

/// A workspace with a small image layout built by the `build` stage, and a push
/// stage after it configured by `push_with` (a YAML flow mapping body).
fn pipeline(ws: &Workspace, push_with: &str, http: &str, extra: &str) {
    ws.write("dist/app", b"\x7fELF not really a program");
    ws.manifest(&format!(
        r#"pipeline: push
secrets:
  user: {{ env: REG_USER }}
  pass: {{ env: REG_PASS }}
stages:
  - name: image
    uses: build
    with:
      image: {{ ref: "app:1", output: out/app, files: [{{ from: dist/app, to: /app }}] }}
    permissions: {{ workspace: write }}
  - name: push
    uses: registry
    needs: [image]
    with: {{ {push_with} }}
    permissions: {{ http: ["{http}"]{extra} }}
"#
    ));
}

fn outputs(out: &gantry_e2e::Output) -> Value {
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    let push = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "push")
        .unwrap()
        .clone();
    let map: serde_json::Map<String, Value> = push["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv[0].as_str().unwrap().to_string(), kv[1].clone()))
        .collect();
    Value::Object(map)
}

#[test]
fn an_anonymous_push_is_pulled_and_run_by_docker_and_a_repush_uploads_nothing() {
    let registry = Registry::start(None);
    let proxy = Proxy::start(&registry.addr, |_| None);
    let ws = Workspace::new();
    pipeline(
        &ws,
        &format!(
            "registry: \"{}\", repository: gantry/e2e, tags: [v1], insecure: true",
            proxy.addr
        ),
        &format!("http://{}", proxy.addr),
        "",
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = outputs(&out);
    let image = o["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/gantry/e2e@sha256:", proxy.addr)),
        "{image}"
    );
    assert_eq!(o["blobs-uploaded"], "2");
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert_eq!(
        puts,
        3,
        "two blobs and one manifest: {:?}",
        proxy.requests()
    );

    // Docker reads what we wrote (through the registry directly).
    let direct = image.replace(&proxy.addr, &registry.addr);
    let pull = Command::new("docker")
        .args(["pull", &direct])
        .output()
        .unwrap();
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &direct,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(o["digest"].as_str().unwrap()));
    let _ = Command::new("docker").args(["rmi", "-f", &direct]).output();

    // Unchanged image: no blob is uploaded again.
    let before = proxy.requests().len();
    let again = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert_eq!(outputs(&again)["blobs-uploaded"], "0");
    let new: Vec<String> = proxy.requests()[before..].to_vec();
    assert!(
        new.iter()
            .all(|r| !r.starts_with("POST ") && !r.contains("/blobs/uploads")),
        "{new:?}"
    );
    assert_eq!(
        new.iter().filter(|r| r.starts_with("HEAD ")).count(),
        2,
        "{new:?}"
    );
}

/// An htpasswd line with a bcrypt hash (cost 4), as docker-registry reads it.
fn htpasswd(user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).unwrap();
    format!("{user}:{hash}\n")
}

#[test]
fn basic_auth_uses_granted_secrets_and_wrong_credentials_are_clear() {
    let registry = Registry::start(Some(&htpasswd("ci", "s3cret-pw")));
    let with = format!(
        "registry: \"{}\", repository: team/app, insecure: true, username-secret: user, password-secret: pass, retries: 0",
        registry.addr
    );
    let http = format!("http://{}", registry.addr);
    let ws = Workspace::new()
        .env("REG_USER", "ci")
        .env("REG_PASS", "s3cret-pw");
    pipeline(&ws, &with, &http, ", secrets: [user, pass]");
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        outputs(&out)["image"]
            .as_str()
            .unwrap()
            .contains("/team/app@sha256:")
    );
    assert!(!out.all().contains("s3cret-pw"));

    let wrong = Workspace::new()
        .env("REG_USER", "ci")
        .env("REG_PASS", "nope");
    pipeline(&wrong, &with, &http, ", secrets: [user, pass]");
    let out = wrong.run();
    assert_eq!(out.code, Some(1));
    let line = out.stage_line("push");
    assert!(
        line.contains(&format!("{} rejected the credentials", registry.addr)),
        "{line}"
    );
    assert!(line.contains("(401 for HEAD http://"), "{line}");

    let none = Workspace::new();
    pipeline(
        &none,
        &format!(
            "registry: \"{}\", repository: team/app, insecure: true, retries: 0",
            registry.addr
        ),
        &http,
        "",
    );
    let out = none.run();
    assert!(
        out.stage_line("push")
            .contains("requires credentials: set `username-secret` and `password-secret`"),
        "{}",
        out.stage_line("push")
    );
}

#[test]
fn faults_are_retried_and_the_digest_is_the_same() {
    let registry = Registry::start(None);
    // Every 3rd request 503, every 4th 429 with Retry-After, every 5th dropped.
    let proxy = Proxy::start(&registry.addr, |n| match n {
        n if n % 5 == 0 => Some("drop"),
        n if n % 4 == 0 => Some(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ),
        n if n % 3 == 0 => Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ),
        _ => None,
    });
    let ws = Workspace::new();
    pipeline(
        &ws,
        &format!(
            "registry: \"{}\", repository: faulty/app, insecure: true, retries: 8",
            proxy.addr
        ),
        &format!("http://{}", proxy.addr),
        "",
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let digest = outputs(&out)["digest"].as_str().unwrap().to_string();
    assert!(out.stderr.contains("retry 1 of 8"), "{}", out.stderr);
    // The same image pushed cleanly has the same digest.
    let clean = Workspace::new();
    pipeline(
        &clean,
        &format!(
            "registry: \"{}\", repository: faulty/app, insecure: true",
            registry.addr
        ),
        &format!("http://{}", registry.addr),
        "",
    );
    let out = clean.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(outputs(&out)["digest"], digest.as_str());
}

#[test]
fn a_registry_that_is_down_fails_clearly_and_an_ungranted_host_is_denied() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new();
    pipeline(
        &ws,
        &format!("registry: \"127.0.0.1:{port}\", repository: a/b, insecure: true, retries: 1"),
        &format!("http://127.0.0.1:{port}"),
        "",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    let line = out.stage_line("push");
    assert!(line.contains("transient: blob sha256:"), "{line}");
    assert!(line.contains("gave up after 2 attempts"), "{line}");

    let denied = Workspace::new();
    pipeline(
        &denied,
        "registry: \"127.0.0.1:9\", repository: a/b, insecure: true",
        "http://127.0.0.1:8",
        "",
    );
    let out = denied.run();
    let line = out.stage_line("push");
    assert!(line.contains("denied: blob sha256:"), "{line}");
    assert!(
        out.stdout
            .contains("grant it with `stages[1].permissions.http: [\"http://127.0.0.1:9\"]`"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_local_provider_writes_an_oci_layout() {
    let ws = Workspace::new();
    pipeline(
        &ws,
        "provider: layout, destination: pushed, tags: [v1, stable]",
        "http://127.0.0.1:9",
        ", workspace: write",
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let index: Value =
        serde_json::from_slice(&std::fs::read(ws.path().join("pushed/index.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["v1", "stable"]);
    let digest = outputs(&out)["digest"].as_str().unwrap().to_string();
    assert!(
        ws.path()
            .join("pushed/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .is_file()
    );
    // skopeo, a third-party reader, accepts it.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v1", ws.path().join("pushed").display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
}

#[test]
fn large_blobs_go_in_chunks_and_blobs_are_mounted_across_repositories() {
    let registry = Registry::start(None);
    let proxy = Proxy::start(&registry.addr, |_| None);
    let ws = Workspace::new();
    let http = format!("http://{}", proxy.addr);
    pipeline(
        &ws,
        &format!(
            "registry: \"{}\", repository: big/one, insecure: true, chunk-size: 65536",
            proxy.addr
        ),
        &http,
        "",
    );
    // ~300 KB that gzip cannot shrink: the layer needs several chunks.
    let mut noise = Vec::with_capacity(300_000);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    while noise.len() < 300_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    ws.write("dist/app", &noise);
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let first = outputs(&out);
    let patches = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH "))
        .count();
    assert!(
        patches >= 4,
        "a ~300 KB layer in 64 KiB chunks: {:?}",
        proxy.requests()
    );
    let direct = first["image"]
        .as_str()
        .unwrap()
        .replace(&proxy.addr, &registry.addr);
    let pull = Command::new("docker")
        .args(["pull", &direct])
        .output()
        .unwrap();
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let _ = Command::new("docker").args(["rmi", "-f", &direct]).output();

    // The same image into another repository: every blob mounted, none uploaded.
    let before = proxy.requests().len();
    pipeline(
        &ws,
        &format!(
            "registry: \"{}\", repository: big/two, insecure: true, mount-from: big/one",
            proxy.addr
        ),
        &http,
        "",
    );
    ws.write("dist/app", &noise);
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let second = outputs(&out);
    assert_eq!(second["blobs-mounted"], "2");
    assert_eq!(second["blobs-uploaded"], "0");
    assert_eq!(second["digest"], first["digest"]);
    let new = proxy.requests()[before..].to_vec();
    assert!(
        new.iter().any(|r| r.starts_with("POST ")
            && r.contains("mount=sha256")
            && r.contains("from=big%2Fone")),
        "{new:?}"
    );
    assert!(
        !new.iter()
            .any(|r| r.starts_with("PATCH ") || (r.starts_with("PUT ") && r.contains("/blobs/"))),
        "{new:?}"
    );
}

/// A registry token service, as docker-registry's `auth: token` expects: checks
/// basic credentials, issues ES256 JWTs carrying the requested access, signed
/// with a key whose self-signed certificate the registry trusts (x5c header).
struct TokenServer {
    realm: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn token_server(dir: &std::path::Path, user: &'static str, password: &'static str) -> TokenServer {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use std::io::{Read, Write};
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=gantry-test-token",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = vec![0u8; 16384];
            let n = stream.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let line = req.lines().next().unwrap_or("").to_string();
            log.lock().unwrap().push(line.clone());
            let authorized = req.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == expected
            });
            if !authorized {
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            let scope = line
                .split(['?', '&', ' '])
                .find_map(|p| p.strip_prefix("scope="))
                .unwrap_or("");
            let scope = scope
                .replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/")
                .replace("%20", " ");
            let access: Vec<serde_json::Value> = scope
                .split(' ')
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [der_b64]});
            let claims = serde_json::json!({
                "iss": "gantry-test", "sub": user, "aud": "gantry-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", log.lock().unwrap().len()),
                "access": access,
            });
            let input = format!(
                "{}.{}",
                b64.encode(header.to_string()),
                b64.encode(claims.to_string())
            );
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            let jwt = format!("{input}.{}", b64.encode(sig.to_bytes()));
            let body = serde_json::json!({"token": jwt, "expires_in": 300}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    TokenServer { realm, requests }
}

#[test]
fn the_registry_token_flow_fetches_a_token_with_granted_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_server(dir.path(), "ci", "tok-pass");
    let auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: gantry-registry\n    issuer: gantry-test\n    rootcertbundle: {}\n",
        tokens.realm,
        dir.path().join("cert.pem").display()
    );
    let registry = Registry::start_in(dir, &auth);
    let token_origin = tokens.realm.trim_end_matches("/token").to_string();
    let with = format!(
        "registry: \"{}\", repository: team/app, tags: [v1, v2], insecure: true, username-secret: user, password-secret: pass, retries: 0",
        registry.addr
    );
    let grant = format!("http://{}\", \"{token_origin}", registry.addr);
    let ws = Workspace::new()
        .env("REG_USER", "ci")
        .env("REG_PASS", "tok-pass");
    pipeline(&ws, &with, &grant, ", secrets: [user, pass]");
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(outputs(&out)["tags"], "v1,v2");
    let asked = tokens.requests.lock().unwrap().clone();
    assert_eq!(
        asked.len(),
        1,
        "one token for the scope, cached for every request after: {asked:?}"
    );
    assert!(
        asked[0].contains("service=gantry-registry")
            && asked[0].contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush"),
        "{asked:?}"
    );
    assert!(!out.all().contains("tok-pass"));

    // Wrong credentials: the token service refuses, and the stage says so.
    let wrong = Workspace::new()
        .env("REG_USER", "ci")
        .env("REG_PASS", "nope");
    pipeline(&wrong, &with, &grant, ", secrets: [user, pass]");
    let out = wrong.run();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stage_line("push")
            .contains(&format!("token service {} answered 401", tokens.realm)),
        "{}",
        out.stage_line("push")
    );
}
