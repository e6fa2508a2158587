//! The built-in `registry` stage against a real registry (Debian's
//! docker-registry on loopback): pushes that Docker pulls and runs, basic auth,
//! deduplication, faults and refusals.

use gantry_e2e::{Proxy, Registry, Workspace};
use serde_json::Value;
use std::process::Command;
use std::sync::{Arc, Mutex};

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
    let o = out.outputs("push");
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
    assert_eq!(again.outputs("push")["blobs-uploaded"], "0");
    let new: Vec<String> = proxy.requests()[before..].to_vec();
    assert!(
        new.iter()
            .all(|r| !r.starts_with("POST ") && !r.contains("/blobs/uploads")),
        "{new:?}"
    );
    // The manifest is there by digest, so its blobs are: one HEAD, then the tag.
    assert_eq!(
        new.iter()
            .map(|r| r.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["HEAD", "PUT"],
        "{new:?}"
    );
    assert!(new[0].contains("/manifests/sha256:"), "{new:?}");
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
        out.outputs("push")["image"]
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
        out.stage_line("push").contains(
            "requires a username and password: set `username-secret` and `password-secret`"
        ),
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
    let digest = out.outputs("push")["digest"].as_str().unwrap().to_string();
    assert!(out.stderr.contains("retry 1 of 8"), "{}", out.stderr);
    // Each retry warning names the method and the URL without its query (the
    // upload state), and says what happened in words.
    let retries: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("; retry "))
        .collect();
    assert!(retries.len() >= 3, "{}", out.stderr);
    for line in &retries {
        assert!(!line.contains('?') && !line.contains("_state="), "{line}");
        assert!(
            !line.contains("ErrorCode") && !line.contains("Error::"),
            "{line}"
        );
        assert!(
            ["GET ", "HEAD ", "POST ", "PATCH ", "PUT "]
                .iter()
                .any(|m| line.contains(&format!("warn: {m}http://"))),
            "{line}"
        );
    }
    assert!(
        retries
            .iter()
            .any(|l| l.contains(": 503 Service Unavailable (empty body); retry ")),
        "{}",
        out.stderr
    );
    assert!(
        retries
            .iter()
            .any(|l| l.contains(": 429 Too Many Requests (empty body); retry ")),
        "{}",
        out.stderr
    );
    assert!(
        retries.iter().any(
            |l| l.contains("the connection closed before a complete response")
                || l.contains("the server closed the connection")
        ),
        "a dropped connection is said in words: {}",
        out.stderr
    );
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
    assert_eq!(out.outputs("push")["digest"], digest.as_str());
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
    assert!(
        line.contains("transient: checking for the manifest: ")
            && line.contains("the connection was refused"),
        "{line}"
    );
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
    assert!(
        line.contains(
            "denied: checking for the manifest: the host denied the request to http://127.0.0.1:9/"
        ),
        "{line}"
    );
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
    let digest = out.outputs("push")["digest"].as_str().unwrap().to_string();
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
    let first = out.outputs("push");
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
    let second = out.outputs("push");
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

/// A registry token service, as docker-registry's `auth: token` expects, at
/// ACR's paths: checks basic credentials (`GET /oauth2/token`), implements ACR's
/// AAD exchange (`POST /oauth2/exchange`, form fields as documented) and the
/// refresh-token grant (`POST /oauth2/token`); issues ES256 JWTs carrying the
/// requested access, signed with a key whose self-signed certificate the
/// registry trusts (x5c header).
struct TokenServer {
    realm: String,
    /// Request lines, in order.
    requests: Arc<Mutex<Vec<String>>>,
    /// The form of each POST: (path, fields in order).
    forms: Arc<Mutex<Vec<Form>>>,
}

/// A POST's path and its form fields in order.
type Form = (String, Vec<(String, String)>);

/// What the token server accepts.
struct Accepts {
    user: &'static str,
    password: &'static str,
    /// The AAD access token and tenant the exchange accepts.
    aad_token: &'static str,
    tenant: &'static str,
    /// A refresh token accepted besides the ones the exchange issues.
    refresh_token: &'static str,
}

const ACCEPTS: Accepts = Accepts {
    user: "ci",
    password: "tok-pass",
    aad_token: "aad-eyJ0eXAiOiJKV1Qi.test",
    tenant: "72f988bf-0000-0000-0000-2d7cd011db47",
    refresh_token: "static-refresh-token",
};

/// Read one HTTP/1.1 request: its head and its body (by content-length).
fn read_request(stream: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut buf = vec![];
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    (head, body)
}

fn token_server(dir: &std::path::Path) -> TokenServer {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use std::io::Write;
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
    let realm = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let forms = Arc::new(Mutex::new(Vec::new()));
    let (log, form_log) = (requests.clone(), forms.clone());
    std::thread::spawn(move || {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", ACCEPTS.user, ACCEPTS.password))
        );
        let mut issued: Vec<String> = vec![ACCEPTS.refresh_token.to_string()];
        let reply = |stream: &mut std::net::TcpStream, status: &str, body: String| {
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        };
        let unauthorized = |why: &str| {
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": why}]}).to_string()
        };
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let (head, body) = read_request(&mut stream);
            let line = head.lines().next().unwrap_or("").to_string();
            log.lock().unwrap().push(line.clone());
            let path = line.split(' ').nth(1).unwrap_or("");
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if line.starts_with("POST ") {
                let content_type = head.lines().any(|l| {
                    l.eq_ignore_ascii_case("content-type: application/x-www-form-urlencoded")
                });
                form_log
                    .lock()
                    .unwrap()
                    .push((path.to_string(), form.clone()));
                if !content_type {
                    reply(
                        &mut stream,
                        "400 Bad Request",
                        unauthorized("form expected"),
                    );
                    continue;
                }
            }
            let scopes: Vec<String> = match (line.starts_with("GET "), path) {
                (true, "/oauth2/token") => {
                    let authorized = head.lines().any(|l| {
                        l.to_ascii_lowercase().starts_with("authorization:")
                            && l[14..].trim() == expected
                    });
                    if !authorized {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("bad credentials"),
                        );
                        continue;
                    }
                    form_urlencoded::parse(query.as_bytes())
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.into_owned())
                        .collect()
                }
                (false, "/oauth2/exchange") => {
                    // ACR: grant_type=access_token, service, tenant, access_token.
                    let ok = field("grant_type") == Some("access_token")
                        && field("service") == Some("gantry-registry")
                        && field("tenant") == Some(ACCEPTS.tenant)
                        && field("access_token") == Some(ACCEPTS.aad_token);
                    if !ok {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("invalid AAD access token"),
                        );
                        continue;
                    }
                    let refresh = format!("refresh-{}", issued.len());
                    issued.push(refresh.clone());
                    reply(
                        &mut stream,
                        "200 OK",
                        serde_json::json!({"refresh_token": refresh}).to_string(),
                    );
                    continue;
                }
                (false, "/oauth2/token") => {
                    let ok = field("grant_type") == Some("refresh_token")
                        && field("service") == Some("gantry-registry")
                        && field("refresh_token").is_some_and(|r| issued.iter().any(|i| i == r));
                    if !ok {
                        reply(
                            &mut stream,
                            "401 Unauthorized",
                            unauthorized("invalid refresh token"),
                        );
                        continue;
                    }
                    form.iter()
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.clone())
                        .collect()
                }
                _ => {
                    reply(
                        &mut stream,
                        "404 Not Found",
                        unauthorized("no such endpoint"),
                    );
                    continue;
                }
            };
            let access: Vec<serde_json::Value> = scopes
                .iter()
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
                "iss": "gantry-test", "sub": ACCEPTS.user, "aud": "gantry-registry",
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
            // The distribution spec's GET answers `token`; OAuth2's POST `access_token`.
            let body = if line.starts_with("GET ") {
                serde_json::json!({"token": jwt, "expires_in": 300})
            } else {
                serde_json::json!({"access_token": jwt, "expires_in": 300})
            };
            reply(&mut stream, "200 OK", body.to_string());
        }
    });
    TokenServer {
        realm,
        requests,
        forms,
    }
}

/// A token server and a registry with `auth: token` trusting it; the token
/// server's origin, and the `http:` grant (a flow list body) for both.
fn token_setup() -> (TokenServer, Registry, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_server(dir.path());
    let auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: gantry-registry\n    issuer: gantry-test\n    rootcertbundle: {}\n",
        tokens.realm,
        dir.path().join("cert.pem").display()
    );
    let registry = Registry::start_in(dir, &auth);
    let origin = tokens.realm.trim_end_matches("/oauth2/token").to_string();
    let grant = format!("http://{}\", \"{origin}", registry.addr);
    (tokens, registry, origin, grant)
}

#[test]
fn the_registry_token_flow_fetches_a_token_with_granted_credentials() {
    let (tokens, registry, _, grant) = token_setup();
    let with = format!(
        "registry: \"{}\", repository: team/app, tags: [v1, v2], insecure: true, username-secret: user, password-secret: pass, retries: 0",
        registry.addr
    );
    let ws = Workspace::new()
        .env("REG_USER", "ci")
        .env("REG_PASS", "tok-pass");
    pipeline(&ws, &with, &grant, ", secrets: [user, pass]");
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("push")["tags"], "v1,v2");
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

#[test]
fn the_acr_aad_exchange_trades_a_granted_aad_token_for_registry_tokens() {
    let (tokens, registry, token_origin, grant) = token_setup();
    let with = format!(
        "registry: \"{}\", repository: team/app, tags: [v1], insecure: true, aad-token-secret: aad, tenant: \"{}\", retries: 0",
        registry.addr, ACCEPTS.tenant
    );
    let aad_pipeline = |ws: &Workspace| {
        pipeline(ws, &with, &grant, ", secrets: [aad]");
        let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
        ws.manifest(&yaml.replace(
            "  user: { env: REG_USER }",
            "  aad: { env: AAD_TOKEN }\n  user: { env: REG_USER }",
        ));
    };
    let ws = Workspace::new().env("AAD_TOKEN", ACCEPTS.aad_token);
    aad_pipeline(&ws);
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.outputs("push")["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/team/app@sha256:", registry.addr))
    );

    // Exactly the documented exchange, then one refresh-token grant for the
    // push's whole scope; the form fields in full.
    let forms = tokens.forms.lock().unwrap().clone();
    assert_eq!(forms.len(), 2, "{forms:?}");
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(forms[0].0, "/oauth2/exchange");
    assert_eq!(
        forms[0].1,
        pairs(&[
            ("grant_type", "access_token"),
            ("service", "gantry-registry"),
            ("tenant", ACCEPTS.tenant),
            ("access_token", ACCEPTS.aad_token),
        ])
    );
    assert_eq!(forms[1].0, "/oauth2/token");
    assert_eq!(
        forms[1].1,
        pairs(&[
            ("grant_type", "refresh_token"),
            ("service", "gantry-registry"),
            ("scope", "repository:team/app:pull,push"),
            ("refresh_token", "refresh-1"),
        ])
    );
    assert!(!out.all().contains(ACCEPTS.aad_token), "{}", out.all());
    assert!(!out.all().contains("refresh-1"), "{}", out.all());

    // A stale AAD token: the exchange refuses, and the stage says where.
    let stale = Workspace::new().env("AAD_TOKEN", "expired-token");
    aad_pipeline(&stale);
    let out = stale.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("push");
    assert!(
        line.contains(&format!(
            "token service {token_origin}/oauth2/exchange answered 401 Unauthorized: UNAUTHORIZED: invalid AAD access token"
        )),
        "{line}"
    );
    assert!(!out.all().contains("expired-token"), "{}", out.all());
}

#[test]
fn a_granted_refresh_token_is_used_at_the_token_service() {
    let (tokens, registry, _, grant) = token_setup();
    let with = format!(
        "registry: \"{}\", repository: team/app, insecure: true, refresh-token-secret: user, retries: 0",
        registry.addr
    );
    let ws = Workspace::new().env("REG_USER", ACCEPTS.refresh_token);
    pipeline(&ws, &with, &grant, ", secrets: [user]");
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let forms = tokens.forms.lock().unwrap().clone();
    assert_eq!(
        forms.len(),
        1,
        "no exchange without an AAD token: {forms:?}"
    );
    assert_eq!(forms[0].0, "/oauth2/token");
    assert!(
        forms[0]
            .1
            .contains(&("refresh_token".into(), ACCEPTS.refresh_token.into())),
        "{forms:?}"
    );

    // Two ways of authenticating at once is a configuration error.
    let both = format!("{with}, username-secret: user, password-secret: pass");
    // (Secret values long enough not to be redacted out of the message.)
    let ws = Workspace::new()
        .env("REG_USER", "some-user")
        .env("REG_PASS", "some-password");
    pipeline(&ws, &both, &grant, ", secrets: [user, pass]");
    let out = ws.run();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stage_line("push").contains("use one of `username-secret`/`password-secret`, `aad-token-secret` or `refresh-token-secret`"),
        "{}",
        out.stage_line("push")
    );
}

#[test]
fn blobs_upload_concurrently_up_to_the_configured_bound() {
    let registry = Registry::start(None);
    // Every request is held 150 ms: requests of concurrent uploads overlap there.
    let proxy = Proxy::start(&registry.addr, |_| Some("slow"));
    let ws = Workspace::new();
    for f in ["a", "b", "c", "d"] {
        ws.write(&format!("data/{f}"), format!("layer {f}"));
    }
    ws.manifest(&format!(
        r#"pipeline: layers
stages:
  - {{ name: l1, uses: build, with: {{ image: {{ ref: "l:1", output: out/l1, files: [{{ from: data/a, to: /a }}] }} }}, permissions: {{ workspace: write }} }}
  - {{ name: l2, uses: build, needs: [l1], with: {{ image: {{ ref: "l:2", output: out/l2, base: out/l1, files: [{{ from: data/b, to: /b }}] }} }}, permissions: {{ workspace: write }} }}
  - {{ name: l3, uses: build, needs: [l2], with: {{ image: {{ ref: "l:3", output: out/l3, base: out/l2, files: [{{ from: data/c, to: /c }}] }} }}, permissions: {{ workspace: write }} }}
  - {{ name: l4, uses: build, needs: [l3], with: {{ image: {{ ref: "l:4", output: out/l4, base: out/l3, files: [{{ from: data/d, to: /d }}] }} }}, permissions: {{ workspace: write }} }}
  - name: push
    uses: registry
    needs: [l4]
    with: {{ registry: "{0}", repository: many/layers, insecure: true, concurrency: 2 }}
    permissions: {{ http: ["http://{0}"] }}
"#,
        proxy.addr
    ));
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    // Four layers and the config.
    assert_eq!(out.outputs("push")["blobs-uploaded"], "5");
    assert_eq!(
        proxy.max_overlap.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "two uploads at a time, never more: {:?}",
        proxy.requests()
    );
    let pulled = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/many/layers:latest", registry.addr))
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let layers: Value = serde_json::from_slice(&pulled.stdout).unwrap();
    assert_eq!(layers["Layers"].as_array().unwrap().len(), 4);
}

/// Against a real Azure Container Registry, when one is configured:
/// `GANTRY_TEST_ACR` (login server, e.g. `myreg.azurecr.io`) and either
/// `ACR_USERNAME` + `ACR_PASSWORD` (admin user or service principal) or
/// `ACR_AAD_TOKEN` (e.g. `az account get-access-token --scope
/// https://containerregistry.azure.net/.default --query accessToken -o tsv`).
#[test]
fn pushes_to_a_real_acr_when_credentials_are_present() {
    let Ok(acr) = std::env::var("GANTRY_TEST_ACR") else {
        eprintln!(
            "skipped: set GANTRY_TEST_ACR and ACR_USERNAME/ACR_PASSWORD or ACR_AAD_TOKEN to push to a real ACR"
        );
        return;
    };
    let mut ws = Workspace::new();
    let (auth, grant) = match (
        std::env::var("ACR_USERNAME"),
        std::env::var("ACR_PASSWORD"),
        std::env::var("ACR_AAD_TOKEN"),
    ) {
        (Ok(user), Ok(password), _) => {
            ws = ws.env("REG_USER", &user).env("REG_PASS", &password);
            (
                "username-secret: user, password-secret: pass",
                ", secrets: [user, pass]",
            )
        }
        (_, _, Ok(token)) => {
            // The AAD token travels as REG_PASS; `aad-token-secret` names it.
            ws = ws.env("REG_PASS", &token);
            ("aad-token-secret: pass", ", secrets: [pass]")
        }
        _ => {
            panic!("GANTRY_TEST_ACR is set but neither ACR_USERNAME/ACR_PASSWORD nor ACR_AAD_TOKEN")
        }
    };
    let tag = format!(
        "gantry-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    pipeline(
        &ws,
        &format!("registry: \"{acr}\", repository: gantry/e2e, tags: [{tag}], {auth}"),
        &format!("https://{acr}"),
        grant,
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let image = out.outputs("push")["image"].as_str().unwrap().to_string();
    assert!(
        image.starts_with(&format!("{acr}/gantry/e2e@sha256:")),
        "{image}"
    );
    // A re-push finds every blob in place.
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("push")["blobs-uploaded"], "0");
}
