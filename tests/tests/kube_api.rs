//! The test Kubernetes API server (`gantry_e2e::kube`) driven by the real
//! `kubectl`, and by raw HTTP where kubectl cannot reach a feature.

use gantry_e2e::kube::KubeApi;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A server and a kubectl configured for it.
struct Cluster {
    api: KubeApi,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let api = KubeApi::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path());
        Cluster {
            api,
            dir,
            kubeconfig,
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Run kubectl, assert success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manager: &str, yaml: &str, extra: &[&str]) -> Output {
        let file = self.dir.path().join(format!("{manager}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let manager = format!("--field-manager={manager}");
        let mut args = vec!["apply", "--server-side", &manager, "-f"];
        args.push(file.to_str().unwrap());
        args.extend_from_slice(extra);
        self.kubectl(&args)
    }

    fn apply_ok(&self, manager: &str, yaml: &str) {
        let out = self.apply(manager, yaml, &[]);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn deployment(&self, name: &str) -> Value {
        self.api
            .object("apps/v1", "deployments", "default", name)
            .expect("deployment stored")
    }
}

fn deployment(image: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
{extra_spec}  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: hello
        image: {image}
        ports:
        - containerPort: 8080
"#
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Revisions of the ReplicaSets, by name.
fn replica_sets(c: &Cluster) -> Vec<(String, String, i64)> {
    let list: Value = serde_json::from_str(&c.ok(&["get", "rs", "-o", "json"])).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["name"].as_str().unwrap().to_string(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                rs["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn rollout_new_image_and_undo_reuses_the_old_replica_set() {
    let c = Cluster::start();
    let out = c.apply("test", &deployment("registry.test/hello:v1", ""), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/hello serverside-applied")
    );
    let image = c.ok(&[
        "get",
        "deployment",
        "hello",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "registry.test/hello:v1");
    let status = c.ok(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let rs = replica_sets(&c);
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].1, "1");
    let v1_rs = rs[0].0.clone();
    assert!(v1_rs.starts_with("hello-"));
    let pods = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(pods, "Running Running");

    c.apply_ok("test", &deployment("registry.test/hello:v2", ""));
    c.ok(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    let rs = replica_sets(&c);
    assert_eq!(rs.len(), 2, "{rs:?}");
    let v2 = rs.iter().find(|r| r.0 != v1_rs).unwrap();
    assert_eq!(v2.1, "2");
    assert_eq!(v2.2, 2);
    assert_eq!(
        rs.iter().find(|r| r.0 == v1_rs).unwrap().2,
        0,
        "old RS scaled down"
    );

    let undo = c.ok(&["rollout", "undo", "deployment/hello"]);
    assert!(undo.contains("rolled back"), "{undo}");
    c.ok(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    let d = c.deployment("hello");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.test/hello:v1"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(d["metadata"]["generation"], 3, "create, v2, undo");
    let rs = replica_sets(&c);
    assert_eq!(rs.len(), 2, "the v1 ReplicaSet is reused: {rs:?}");
    let reused = rs.iter().find(|r| r.0 == v1_rs).unwrap();
    assert_eq!((reused.1.as_str(), reused.2), ("3", 2));
    // The undo's JSON patch now owns the template: applying v2 again conflicts.
    let out = c.apply("test", &deployment("registry.test/hello:v2", ""), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(".spec.template.spec.containers[name=\"hello\"].image"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn apply_conflicts_with_another_manager_unless_forced() {
    let c = Cluster::start();
    c.apply_ok("manager-a", &deployment("registry.test/hello:v1", ""));
    let b = deployment("registry.test/hello:v1", "").replace("replicas: 2", "replicas: 3");
    let out = c.apply("manager-b", &b, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"manager-a\": .spec.replicas"),
        "{err}"
    );
    assert_eq!(c.deployment("hello")["spec"]["replicas"], 2);

    let out = c.apply("manager-b", &b, &["--force-conflicts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = c.deployment("hello");
    assert_eq!(d["spec"]["replicas"], 3);
    let managers: Vec<(&str, &str)> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(managers.contains(&("manager-b", "Apply")), "{managers:?}");
    let a = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "manager-a")
        .unwrap();
    assert!(
        a["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "ownership moved: {a}"
    );
    assert!(a["fieldsV1"]["f:spec"]["f:template"].is_object());
}

#[test]
fn applying_the_same_config_twice_writes_nothing() {
    let c = Cluster::start();
    let yaml = deployment("registry.test/hello:v1", "  progressDeadlineSeconds: 30\n");
    c.apply_ok("test", &yaml);
    c.ok(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    // Let the controller settle (pods ready, old status written).
    std::thread::sleep(Duration::from_millis(300));
    let writes = c.api.writes();
    let rv = c.deployment("hello")["metadata"]["resourceVersion"].clone();
    c.apply_ok("test", &yaml);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.api.writes(), writes);
    assert_eq!(c.deployment("hello")["metadata"]["resourceVersion"], rv);
    assert_eq!(c.deployment("hello")["metadata"]["generation"], 1);

    // Dropping a field from the config removes it (and defaulting brings replicas back to 1).
    c.apply_ok("test", &yaml.replace("  replicas: 2\n", ""));
    assert_eq!(c.deployment("hello")["spec"]["replicas"], 1);
    assert_eq!(c.deployment("hello")["metadata"]["generation"], 2);
}

#[test]
fn failing_image_exceeds_the_progress_deadline() {
    let c = Cluster::start();
    c.api.fail_images("broken", "ImagePullBackOff");
    c.apply_ok(
        "test",
        &deployment("registry.test/broken:v1", "  progressDeadlineSeconds: 2\n"),
    );
    let started = Instant::now();
    let out = c.kubectl(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("deployment \"hello\" exceeded its progress deadline"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let reasons = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].status.containerStatuses[0].state.waiting.reason}",
    ]);
    assert_eq!(reasons, "ImagePullBackOff ImagePullBackOff");
    let d = c.deployment("hello");
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .ends_with("has timed out progressing.")
    );
    assert!(d["status"].get("availableReplicas").is_none());
}

#[test]
fn crash_looping_pods_report_their_reason() {
    let c = Cluster::start();
    c.api.fail_images("crashy", "CrashLoopBackOff");
    c.apply_ok(
        "test",
        &deployment("registry.test/crashy:v1", "  progressDeadlineSeconds: 1\n"),
    );
    let out = c.kubectl(&["rollout", "status", "deployment/hello", "--timeout=20s"]);
    assert!(
        stderr(&out).contains("exceeded its progress deadline"),
        "{}",
        stderr(&out)
    );
    let pods = c.ok(&["get", "pods", "-o", "jsonpath={.items[0].status.phase} {.items[0].status.containerStatuses[0].state.waiting.reason}"]);
    assert_eq!(pods, "Running CrashLoopBackOff");
}

#[test]
fn services_config_maps_and_secrets() {
    let c = Cluster::start();
    let yaml = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: hello
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: hunter2
"#;
    c.apply_ok("test", yaml);
    assert_eq!(
        c.ok(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "fast"
    );
    assert_eq!(
        c.ok(&["get", "secret", "creds", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    let svc = c.ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.type} {.spec.ports[0].protocol}",
    ]);
    assert_eq!(svc, "ClusterIP TCP");
    assert!(
        c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
            .starts_with("10.96.")
    );

    let deleted = c.ok(&["delete", "configmap", "settings"]);
    assert!(
        deleted.contains("configmap \"settings\" deleted"),
        "{deleted}"
    );
    let out = c.kubectl(&["get", "configmap", "settings"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("configmaps \"settings\" not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        c.api
            .object("v1", "configmaps", "default", "settings")
            .is_none()
    );
    assert!(c.api.object("v1", "secrets", "default", "creds").is_some());

    // Namespaces must exist before objects are written into them.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: elsewhere\ndata:\n  a: b\n";
    let out = c.apply("test", cm, &[]);
    assert!(
        stderr(&out).contains("namespaces \"elsewhere\" not found"),
        "{}",
        stderr(&out)
    );
    c.apply_ok(
        "test",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: elsewhere\n",
    );
    c.apply_ok("test", cm);
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "x",
            "-n",
            "elsewhere",
            "-o",
            "jsonpath={.data.a}"
        ]),
        "b"
    );
    // Deleting the namespace deletes what is in it.
    c.ok(&["delete", "namespace", "elsewhere"]);
    assert!(c.api.object("v1", "configmaps", "elsewhere", "x").is_none());
}

#[test]
fn discovery_falls_back_to_the_legacy_documents() {
    let c = Cluster::start();
    let resources = c.ok(&["api-resources", "--no-headers"]);
    for want in [
        "deployments",
        "replicasets",
        "horizontalpodautoscalers",
        "ingresses",
        "secrets",
    ] {
        assert!(
            resources.contains(want),
            "{want} missing from:\n{resources}"
        );
    }
    let requests = c.api.requests();
    let asked = |path: &str| {
        requests
            .iter()
            .any(|(m, p, _)| m == "GET" && p.split('?').next() == Some(path))
    };
    assert!(
        asked("/apis") && asked("/apis/apps/v1") && asked("/api/v1"),
        "{requests:?}"
    );
    assert!(c.ok(&["version", "-o", "json"]).contains("v1.32.0"));
}

/// A raw HTTP/1.1 request; returns the status and the parsed JSON body.
fn http(
    api: &KubeApi,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    auth: bool,
) -> (u16, Value) {
    let addr = api.url().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    let auth = if auth {
        format!("Authorization: Bearer {}\r\n", KubeApi::TOKEN)
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: raw-client/1.0\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn missing_token_is_unauthorized() {
    let c = Cluster::start();
    let (code, body) = http(&c.api, "GET", "/api/v1/namespaces", "", "", false);
    assert_eq!(code, 401);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    let (code, _) = http(&c.api, "GET", "/api/v1/namespaces", "", "", true);
    assert_eq!(code, 200);
}

#[test]
fn patch_types_and_apply_requirements() {
    let c = Cluster::start();
    let path = "/api/v1/namespaces/default/configmaps/cfg";
    let (code, body) = http(
        &c.api,
        "PATCH",
        path,
        "application/apply-patch+yaml",
        "data: {a: b}",
        true,
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );

    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}});
    let apply = format!("{path}?fieldManager=raw");
    let (code, _) = http(
        &c.api,
        "PATCH",
        &apply,
        "application/apply-patch+yaml",
        &cfg.to_string(),
        true,
    );
    assert_eq!(code, 201);
    // YAML bodies work too, and an identical apply is a no-op.
    let rv = c.api.resource_version();
    let yaml =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let (code, body) = http(
        &c.api,
        "PATCH",
        &apply,
        "application/apply-patch+yaml",
        yaml,
        true,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(c.api.resource_version(), rv);

    let (code, body) = http(
        &c.api,
        "PATCH",
        path,
        "application/merge-patch+json",
        r#"{"data":{"b":null,"c":"3"}}"#,
        true,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"], json!({"a": "1", "c": "3"}));
    let (code, body) = http(
        &c.api,
        "PATCH",
        path,
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/data/a","value":"9"},{"op":"remove","path":"/data/c"},{"op":"add","path":"/data/d","value":"4"}]"#,
        true,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"], json!({"a": "9", "d": "4"}));
    // The patches took data.a from "raw" and removed data.b, so "raw" owns nothing
    // any more; the patcher (named after its user agent) owns what it wrote.
    let managed = &body["metadata"]["managedFields"];
    assert_eq!(managed.as_array().unwrap().len(), 1, "{managed}");
    assert_eq!(managed[0]["manager"], "raw-client");
    assert_eq!(managed[0]["operation"], "Update");
    assert_eq!(
        managed[0]["fieldsV1"],
        json!({"f:data": {"f:a": {}, "f:d": {}}})
    );

    let (code, body) = http(
        &c.api,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &cfg.to_string(),
        true,
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (code, body) = http(&c.api, "DELETE", path, "", "", true);
    assert_eq!((code, body["status"].as_str()), (200, Some("Success")));
    let (code, body) = http(&c.api, "DELETE", path, "", "", true);
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = http(
        &c.api,
        "PATCH",
        path,
        "application/merge-patch+json",
        "{not json or yaml: [",
        true,
    );
    assert_eq!(code, 400);
}

#[test]
fn watch_streams_added_then_modified_events() {
    let c = Cluster::start();
    let start_rv = c.api.resource_version();
    let addr = c.api.url().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}&timeoutSeconds=5&fieldSelector=metadata.name%3Dwatched HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        KubeApi::TOKEN
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );

    for data in ["1", "2"] {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"}, "data": {"n": data}});
        let (code, _) = http(
            &c.api,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/watched?fieldManager=w",
            "application/apply-patch+yaml",
            &body.to_string(),
            true,
        );
        assert!(code == 200 || code == 201);
        // Another object the field selector filters out.
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("other{data}")}});
        http(
            &c.api,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            &other.to_string(),
            true,
        );
    }
    let mut events = Vec::new();
    while events.len() < 2 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // Chunk-size lines are hex (which may parse as JSON numbers); events are objects.
        if let Ok(e @ Value::Object(_)) = serde_json::from_str::<Value>(line.trim()) {
            events.push(e);
        }
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED"]);
    let rvs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(start_rv < rvs[0] && rvs[0] < rvs[1], "{rvs:?}");
    assert_eq!(events[1]["object"]["data"]["n"], "2");
}

#[test]
fn kubectl_get_watch_sees_the_rollout() {
    let c = Cluster::start();
    c.api.set_rollout_delay(Duration::from_millis(500));
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", &c.kubeconfig)
        .arg("--cache-dir")
        .arg(c.dir.path().join("cache"))
        .args([
            "get",
            "deployments",
            "-w",
            "-o",
            "jsonpath={.metadata.name}:{.status.availableReplicas}{\"\\n\"}",
            "--request-timeout=4s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.apply_ok("test", &deployment("registry.test/hello:v1", ""));
    let stdout = watch.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        lines.push(line);
        if lines.last().is_some_and(|l| l == "hello:2") {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("hello:2"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "hello:"),
        "first seen unavailable: {lines:?}"
    );
}
