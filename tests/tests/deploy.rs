//! The built-in `aks-deploy` stage and the host's `cluster` capability, against
//! the test Kubernetes API server (tests/src/kube.rs) and the real `kubectl`:
//! rollouts, revisions, rollback of a failed version, idempotent re-deploys,
//! namespace grants, the App Insights secret reference; and against a real
//! cluster when KUBECONFIG is set.

use gantry_e2e::Workspace;
use gantry_e2e::kube::KubeApi;
use std::path::Path;
use std::process::Command;

/// A manifest with one `aks-deploy` stage on the cluster of `kubeconfig`, in
/// namespace `default` unless `with` names one.
fn pipeline(ws: &Workspace, kubeconfig: &Path, with: &str, permissions: &str) {
    let ns = if with.contains("namespace:") {
        ""
    } else {
        "namespace: default, "
    };
    ws.manifest(&format!(
        r#"pipeline: deploy
cluster: {{ kubeconfig: "{}", context: test }}
secrets:
  appinsights: {{ env: AI_CONNECTION_STRING }}
stages:
  - name: deploy
    uses: aks-deploy
    with: {{ name: hello, {ns}replicas: 2, progress-deadline: 2, timeout: 30, {with} }}
    permissions: {{ {permissions} }}
"#,
        kubeconfig.display()
    ));
}

const GRANT: &str = "cluster: { namespaces: [default] }";

/// `kubectl get` through the test server's kubeconfig.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is on the PATH");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image_in_cluster(kubeconfig: &Path) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "deployment",
            "hello",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
}

#[test]
fn versions_roll_out_and_a_failed_one_is_rolled_back() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let ws = Workspace::new();
    let deploy = |image: &str| {
        pipeline(&ws, &kubeconfig, &format!("image: \"{image}\""), GRANT);
        ws.gantry(&["run", "pipeline.yaml", "--output", "json"])
    };

    let out = deploy("registry.test/hello:v1");
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = out.outputs("deploy");
    assert_eq!(o["revision"], "1");
    assert_eq!(o["deployment"], "hello");
    assert_eq!(o["service"], "hello.default.svc.cluster.local:80");
    assert_eq!(image_in_cluster(&kubeconfig), "registry.test/hello:v1");
    assert_eq!(
        kubectl(
            &kubeconfig,
            &[
                "get",
                "service",
                "hello",
                "-o",
                "jsonpath={.spec.ports[0].targetPort}"
            ]
        ),
        "8080"
    );
    let managers = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            "hello",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(managers.contains("gantry"), "{managers}");

    let out = deploy("registry.test/hello:v2");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["revision"], "2");
    assert_eq!(image_in_cluster(&kubeconfig), "registry.test/hello:v2");

    // v3 cannot be pulled: the rollout passes its deadline, the stage says why
    // and rolls back; v2's template is the Deployment's again.
    api.fail_images("broken", "ImagePullBackOff");
    let out = deploy("registry.test/hello:broken");
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("deploy");
    assert!(
        line.contains("(revision 3) failed: ProgressDeadlineExceeded"),
        "{line}"
    );
    assert!(line.contains("ImagePullBackOff"), "{line}");
    assert!(
        line.contains("rolled back to the previous version as revision 4"),
        "{line}"
    );
    assert_eq!(image_in_cluster(&kubeconfig), "registry.test/hello:v2");
    let revisions = kubectl(
        &kubeconfig,
        &[
            "get",
            "rs",
            "-o",
            "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.metadata.annotations.deployment\\.kubernetes\\.io/revision}{\"\\n\"}{end}",
        ],
    );
    assert!(
        revisions.contains("registry.test/hello:v2=4"),
        "{revisions}"
    );
}

#[test]
fn deploying_the_same_configuration_again_writes_nothing() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let ws = Workspace::new();
    pipeline(&ws, &kubeconfig, "image: \"registry.test/hello:v1\"", GRANT);
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["changed"], "true");
    let writes = api.writes();
    let version = api.resource_version();

    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = out.outputs("deploy");
    assert_eq!(o["changed"], "false");
    assert_eq!(o["revision"], "1");
    assert_eq!(api.writes(), writes, "{:?}", api.requests());
    assert_eq!(api.resource_version(), version);
}

#[test]
fn a_namespace_not_granted_is_denied_before_reaching_the_cluster() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let ws = Workspace::new();
    pipeline(&ws, &kubeconfig, "image: x, namespace: prod", GRANT);
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stage_line("deploy").contains("denied"), "{}", out.all());
    assert!(
        out.all()
            .contains("grant it with `stages[0].permissions.cluster: { namespaces: [prod] }`"),
        "{}",
        out.all()
    );
    assert!(
        api.requests()
            .iter()
            .all(|(_, path, _)| !path.contains("/namespaces/prod")),
        "{:?}",
        api.requests()
    );
}

#[test]
fn optional_objects_and_the_app_insights_secret_reference_are_applied() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let connection = "InstrumentationKey=6f2c1d7e-0000-4000-8000-1234567890ab;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/";
    let ws = Workspace::new().env("AI_CONNECTION_STRING", connection);
    pipeline(
        &ws,
        &kubeconfig,
        "image: \"registry.test/hello:v1\", app-insights-connection-string-secret: appinsights, \
         config-map: { GREETING: hi }, hpa: { min: 2, max: 5 }, ingress: { host: hello.example.com, class: nginx }",
        &format!("{GRANT}, secrets: [appinsights]"),
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.all().contains("6f2c1d7e"), "{}", out.all());
    let env = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            "hello",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"APPLICATIONINSIGHTS_CONNECTION_STRING\")].valueFrom.secretKeyRef.name}",
        ],
    );
    assert_eq!(env, "hello-appinsights");
    for (what, path, want) in [
        ("configmap/hello-config", "{.data.GREETING}", "hi"),
        ("hpa/hello", "{.spec.maxReplicas}", "5"),
        (
            "ingress/hello",
            "{.spec.rules[0].host}",
            "hello.example.com",
        ),
        (
            "deployment/hello",
            "{.spec.template.spec.containers[0].envFrom[0].configMapRef.name}",
            "hello-config",
        ),
    ] {
        let got = kubectl(
            &kubeconfig,
            &["get", what, "-o", &format!("jsonpath={path}")],
        );
        assert_eq!(got, want, "{what} {path}");
    }
    let secret = api
        .object("v1", "secrets", "default", "hello-appinsights")
        .expect("the Secret was applied");
    let stored = secret.to_string();
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(connection);
    assert!(
        stored.contains(&encoded) || stored.contains("6f2c1d7e"),
        "{stored}"
    );
}

#[test]
fn an_environment_without_a_cluster_says_how_to_name_one() {
    let ws = Workspace::new();
    ws.manifest(&format!(
        "pipeline: deploy\nstages:\n  - name: deploy\n    uses: aks-deploy\n    with: {{ name: hello, namespace: default, image: x }}\n    permissions: {{ {GRANT} }}\n"
    ));
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stage_line("deploy")
            .contains("environment `default` names no cluster: add `cluster: { kubeconfig: <path>, context: <name> }`"),
        "{}",
        out.all()
    );
}

/// Against a real cluster (e.g. AKS) when KUBECONFIG is set: deploys the pause
/// image into GANTRY_TEST_NAMESPACE (default `default`) and removes it again.
#[test]
fn deploys_to_a_real_cluster_when_kubeconfig_is_set() {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG") else {
        eprintln!(
            "skipped: set KUBECONFIG (and GANTRY_TEST_NAMESPACE) to deploy to a real cluster"
        );
        return;
    };
    let ns = std::env::var("GANTRY_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let ws = Workspace::new();
    ws.manifest(&format!(
        r#"pipeline: deploy
cluster: {{ kubeconfig: "{}" }}
stages:
  - name: deploy
    uses: aks-deploy
    with: {{ name: gantry-e2e, namespace: {ns}, image: "registry.k8s.io/pause:3.10", timeout: 300 }}
    permissions: {{ cluster: {{ namespaces: [{ns}] }} }}
"#,
        Path::new(&kubeconfig).display()
    ));
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "-n",
            &ns,
            "deployment/gantry-e2e",
            "service/gantry-e2e",
        ])
        .output();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["deployment"], "gantry-e2e");
}

/// A stand-in for the Application Insights Query API
/// (`GET /v1/apps/{app}/query?query=...&timespan=...`, `x-api-key`): answers
/// `requests | summarize total, failed` with the counts set in `answer`, and
/// records each query.
struct QueryApi {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
    queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const QUERY_KEY: &str = "query-api-key-123";

fn query_api() -> QueryApi {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
    let queries = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let (a, q) = (answer.clone(), queries.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut head = vec![];
            let mut reader = BufReader::new(&stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let target = head[0].split(' ').nth(1).unwrap_or("").to_string();
            let keyed = head
                .iter()
                .any(|l| l.to_ascii_lowercase().trim() == format!("x-api-key: {QUERY_KEY}"));
            let (status, body) = if !keyed {
                (
                    "403 Forbidden",
                    r#"{"error":{"code":"InvalidApiKey"}}"#.to_string(),
                )
            } else if !target.starts_with("/v1/apps/app-123/query?") {
                ("404 Not Found", "{}".to_string())
            } else {
                q.lock().unwrap().push(target);
                let (total, failed) = *a.lock().unwrap();
                (
                    "200 OK",
                    serde_json::json!({"tables": [{"name": "PrimaryResult",
                        "columns": [{"name": "total", "type": "long"}, {"name": "failed", "type": "long"}],
                        "rows": [[total, failed]]}]})
                    .to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    QueryApi {
        url,
        answer,
        queries,
    }
}

#[test]
fn the_health_gate_rolls_back_a_version_whose_failed_request_rate_is_too_high() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let queries = query_api();
    let ws = Workspace::new().env("AI_CONNECTION_STRING", QUERY_KEY);
    let deploy = |image: &str| {
        pipeline(&ws, &kubeconfig, &format!("image: \"{image}\""), GRANT);
        let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
        ws.manifest(&format!(
            r#"{yaml}  - name: gate
    uses: health-gate
    needs: [deploy]
    with:
      query: {{ app-id: app-123, api-key-secret: appinsights, endpoint: "{url}", window: 5, max-failure-rate: 0.05, min-requests: 10, role: hello }}
    permissions: {{ http: ["{url}"], secrets: [appinsights], cluster: {{ namespaces: [default] }} }}
"#,
            url = queries.url
        ));
        ws.gantry(&["run", "pipeline.yaml", "--output", "json"])
    };

    // v1: 1 failed request in 100 passes the gate.
    *queries.answer.lock().unwrap() = (100, 1);
    let out = deploy("registry.test/hello:v1");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stage_line("gate").contains(
            "failed-request rate 1.0% (1 of 100 requests over 5m) is within the threshold 5.0%"
        ),
        "{}",
        out.all()
    );
    let asked = queries.queries.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].contains("timespan=PT5M")
            && asked[0].contains("cloud_RoleName%20%3D%3D%20%27hello%27"),
        "{asked:?}"
    );

    // v2 rolls out, then 6 of 50 requests fail: the gate rolls it back.
    *queries.answer.lock().unwrap() = (50, 6);
    let out = deploy("registry.test/hello:v2");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.succeeded("deploy"), "{}", out.all());
    let line = out.stage_line("gate");
    assert!(
        line.contains(
            "Application Insights check failed: failed-request rate 12.0% (6 of 50 requests over 5m) is above the threshold 5.0%"
        ) && line.contains("rolled Deployment hello in default back to the previous version (revision 3, available)"),
        "{line}"
    );
    assert_eq!(image_in_cluster(&kubeconfig), "registry.test/hello:v1");
    assert!(!out.all().contains(QUERY_KEY), "{}", out.all());
}

/// AKS kubeconfigs get their token from an exec credential plugin (kubelogin);
/// the host runs it, the stage never sees the token.
#[test]
fn an_exec_credential_plugin_supplies_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for `kubelogin get-token`: an ExecCredential on stdout.
    let plugin = dir.path().join("get-token");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho \"$@\" > \"$0.args\"\ncat <<'EOF'\n{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{}\"}}}}\nEOF\n",
            KubeApi::TOKEN
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubeconfig = dir.path().join("kubeconfig-exec");
    std::fs::write(
        &kubeconfig,
        format!(
            r#"apiVersion: v1
kind: Config
clusters:
  - name: aks
    cluster: {{ server: "{}", insecure-skip-tls-verify: true }}
users:
  - name: aks-user
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1beta1
        command: {}
        args: [get-token, --login, azurecli, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630]
        interactiveMode: Never
contexts:
  - name: aks
    context: {{ cluster: aks, user: aks-user }}
current-context: aks
"#,
            api.https_url(),
            plugin.display()
        ),
    )
    .unwrap();
    let ws = Workspace::new();
    pipeline(&ws, &kubeconfig, "image: \"registry.test/hello:v1\"", GRANT);
    let yaml = std::fs::read_to_string(ws.path().join("pipeline.yaml"))
        .unwrap()
        .replace("context: test", "context: aks");
    ws.manifest(&yaml);
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("deploy")["revision"], "1");
    let args = std::fs::read_to_string(dir.path().join("get-token.args")).unwrap();
    assert!(args.starts_with("get-token --login azurecli"), "{args}");
    assert!(!out.all().contains(KubeApi::TOKEN), "{}", out.all());
}
