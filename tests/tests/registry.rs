//! The built-in `registry` stage against a real registry (Debian's
//! docker-registry on loopback): pushes that Docker pulls and runs, basic auth,
//! deduplication, faults and refusals.

use gantry_e2e::registry_auth::{ACCEPTS, TokenServer, htpasswd};
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

/// A token server and a registry with `auth: token` trusting it; the token
/// server's origin, and the `http:` grant (a flow list body) for both.
fn token_setup() -> (TokenServer, Registry, String, String) {
    let (tokens, registry) = TokenServer::with_registry();
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
