//! Stages as Kubernetes Jobs (`executor: kubernetes`), end to end: the real
//! gantry binary as the host, the test Kubernetes API server, and its kubelet
//! running each Job's pod for real on the Docker engine — the gantry image
//! (pulled from a local registry) running `gantry stage`, which runs the
//! stage's plugin on the workspace claim (a host directory: the workspace).

use gantry_e2e::kube::KubeApi;
use gantry_e2e::{Registry, Workspace, gantry, plugin, require_docker};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `docker ARGS`, which must succeed: its stdout.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The gantry image, once per test process: the binary under test and the
/// shared libraries it links (`ldd`), on `scratch` (no base image to fetch).
fn local_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy(gantry(), root.join("gantry")).unwrap();
        let ldd = Command::new("ldd").arg(gantry()).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap();
        }
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nENV HOME=/tmp\nENTRYPOINT [\"/gantry\"]\n",
        )
        .unwrap();
        let tag = format!("gantry-kube-jobs-test:{}", std::process::id());
        docker(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);
        tag
    })
}

/// The test cluster: API server with a Docker kubelet, namespace `ci`, the
/// claim `ws` bound to the workspace, the gantry image in a local registry.
struct Cluster {
    api: KubeApi,
    ws: Workspace,
    image: String,
    kubeconfig: PathBuf,
    _registry: Registry,
    _pods: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        require_docker();
        let api = KubeApi::start();
        let pods = tempfile::tempdir().unwrap();
        api.run_pods_on_docker(pods.path());
        api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ci"}}));
        api.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ws", "namespace": "ci"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }));
        let ws = Workspace::new();
        api.bind_claim("ci", "ws", ws.path());
        ws.write("echo.wasm", std::fs::read(plugin("echo")).unwrap());
        let registry = Registry::start(None);
        // Pushed, then removed from the engine: the kubelet pulls it.
        let pushed = format!("{}/gantry:test", registry.addr);
        docker(&["tag", local_image(), &pushed]);
        let push = docker(&["push", &pushed]);
        let digest = push
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("docker push prints the digest")
            .to_string();
        docker(&["rmi", &pushed]);
        let image = format!("{}/gantry@{digest}", registry.addr);
        let kubeconfig = api.kubeconfig_http(pods.path());
        Self {
            api,
            ws,
            image,
            kubeconfig,
            _registry: registry,
            _pods: pods,
        }
    }

    /// Write the manifest: `stages` (YAML list items) run as Jobs in `ci`.
    fn manifest(&self, stages: &str) {
        self.ws.write(
            "pipeline.yaml",
            format!(
                "pipeline: kube\ncluster: {{ kubeconfig: {} }}\nexecutor:\n  kubernetes:\n    \
                 namespace: ci\n    image: \"{}\"\n    workspace-claim: ws\n    \
                 ttl-seconds-after-finished: 600\nplugins:\n  echo: {{ path: echo.wasm }}\n\
                 secrets:\n  token: {{ env: KJ_TOKEN }}\n  other: {{ env: KJ_OTHER }}\n\
                 stages:\n{stages}",
                self.kubeconfig.display(),
                self.image
            ),
        );
    }

    fn jobs(&self) -> Vec<Value> {
        self.api.objects("batch/v1", "jobs", "ci")
    }

    fn run(&self) -> gantry_e2e::Output {
        let mut cmd = self.ws.command(&["run", "pipeline.yaml"]);
        cmd.env("KJ_TOKEN", "s3cret-token-value")
            .env("KJ_OTHER", "other-secret-value");
        let out = cmd.output().unwrap();
        gantry_e2e::Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn three_stages_run_as_jobs_and_share_the_workspace() {
    let c = Cluster::start();
    c.manifest(
        "  - name: one\n    uses: echo\n    with: { message: first, append: trail.txt, write: one.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: two\n    uses: echo\n    needs: [one]\n    with: { message: \"after ${{ stages.one.outputs.message }}\", append: trail.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: three\n    uses: echo\n    needs: [two]\n    with: { message: last, append: trail.txt, stdout_lines: 3 }\n    \
         permissions: { workspace: write }\n",
    );
    let out = c.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    for stage in ["one", "two", "three"] {
        assert!(out.succeeded(stage), "{}", out.all());
    }
    // Each stage appended to the same file, in order: one workspace.
    assert_eq!(read(&c.ws.path().join("trail.txt")), "one\ntwo\nthree\n");
    assert_eq!(read(&c.ws.path().join("one.txt")), "first");
    // The upstream output reached stage two through the host.
    assert!(out.all().contains("echo: after first"), "{}", out.all());
    // The pod's log was streamed into the stage log.
    assert!(out.all().contains("stdout line 2"), "{}", out.all());
    let jobs = c.jobs();
    assert_eq!(jobs.len(), 3, "one Job per stage: {jobs:#?}");
    for job in &jobs {
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(
            job["spec"]["template"]["spec"]["automountServiceAccountToken"],
            false
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["image"],
            c.image
        );
        assert!(job["metadata"]["labels"]["gantry.dev/run-id"].is_string());
        let conditions = job["status"]["conditions"].as_array().unwrap();
        assert!(
            conditions.iter().any(|c| c["type"] == "Complete"),
            "{job:#}"
        );
    }
    // The stage Secrets went once their pods ended.
    assert!(c.api.objects("v1", "secrets", "ci").is_empty());
}
