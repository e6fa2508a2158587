//! The cluster the `executor: kubernetes` tests and benchmark run on: the test
//! Kubernetes API server with its Docker kubelet, namespace `ci`, the claim
//! `ws` bound to a workspace, and the gantry image (built by gantry itself,
//! examples/gantry-image) in a local registry the kubelet pulls from.

use crate::kube::KubeApi;
use crate::{Output, Registry, Workspace, gantry, plugin, repo, require_docker};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `docker ARGS`, which must succeed: its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run the repository's image pipeline (examples/gantry-image): gantry builds
/// its own image, daemonless, as an OCI layout. Its cargo build is the one
/// the tests run (debug, or release in a release test run) in the
/// repository's `target/`, so with the default target directory it finds
/// the binary built already. The image's manifest digest.
pub fn build_gantry_image() -> String {
    let state = tempfile::tempdir().unwrap();
    let env = if cfg!(debug_assertions) {
        "debug"
    } else {
        "default"
    };
    let out = Command::new(gantry())
        .args(["run", "examples/gantry-image/pipeline.yaml", "--env", env])
        .current_dir(repo())
        .env("GANTRY_STATE_DIR", state.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the image pipeline failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("✔ image"))
        .unwrap_or_else(|| panic!("no image line in:\n{stdout}"));
    line.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("the image stage names its digest")
        .to_string()
}

/// A blob of the image layout the pipeline wrote.
pub fn layout_blob(digest: &str) -> PathBuf {
    repo()
        .join(".gantry/images/gantry/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The gantry image for the pods, once per test process: the one gantry
/// built of itself (its single layer imported into the engine, with its
/// entrypoint), so that the pods run the binary under test.
pub fn local_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let digest = build_gantry_image();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(layout_blob(&digest)).unwrap()).unwrap();
        let layer = layout_blob(manifest["layers"][0]["digest"].as_str().unwrap());
        // One tag for every test process: a new import replaces the last
        // (its layer is the same when the binary is).
        let tag = "gantry-kube-jobs-test:latest".to_string();
        docker(&[
            "import",
            "--change",
            "ENTRYPOINT [\"/gantry\"]",
            "--change",
            "ENV HOME=/tmp",
            layer.to_str().unwrap(),
            &tag,
        ]);
        tag
    })
}

/// The test cluster: API server with a Docker kubelet, namespace `ci`, the
/// claim `ws` bound to the workspace, the gantry image in a local registry.
pub struct Cluster {
    pub api: KubeApi,
    pub ws: Workspace,
    pub image: String,
    pub kubeconfig: PathBuf,
    pub pods: tempfile::TempDir,
    pub registry: Registry,
}

impl Cluster {
    pub fn start() -> Self {
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
            registry,
            pods,
        }
    }

    /// Write the manifest: `stages` (YAML list items) run as Jobs in `ci`.
    pub fn manifest(&self, stages: &str) {
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

    pub fn jobs(&self) -> Vec<Value> {
        self.api.objects("batch/v1", "jobs", "ci")
    }

    pub fn run(&self) -> Output {
        let mut cmd = self.ws.command(&["run", "pipeline.yaml"]);
        cmd.env("KJ_TOKEN", "s3cret-token-value")
            .env("KJ_OTHER", "other-secret-value");
        let out = cmd.output().unwrap();
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Cluster {
    /// `gantry run` in the background, output discarded.
    pub fn spawn(&self) -> std::process::Child {
        self.ws
            .command(&["run", "pipeline.yaml"])
            .env("KJ_TOKEN", "s3cret-token-value")
            .env("KJ_OTHER", "other-secret-value")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The first Job, once its pod's container runs.
    pub fn wait_for_running_pod(&self) -> String {
        let mut name = String::new();
        wait_until("a running stage pod", Duration::from_secs(120), || {
            let pods = self.api.objects("v1", "pods", "ci");
            match pods.iter().find(|p| p["status"]["phase"] == "Running") {
                Some(p) => {
                    name = p["metadata"]["labels"]["batch.kubernetes.io/job-name"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    true
                }
                None => false,
            }
        });
        name
    }

    /// The spec.json each pod was given (its Secret volume, as the kubelet
    /// wrote it), by stage.
    pub fn pod_specs(&self) -> Vec<Value> {
        let mut specs = vec![];
        for pod in std::fs::read_dir(self.pods.path().join("pods")).unwrap() {
            let file = pod.unwrap().path().join("volumes/spec/spec.json");
            if let Ok(text) = std::fs::read_to_string(file) {
                specs.push(serde_json::from_str(&text).unwrap());
            }
        }
        specs
    }

    /// The mount points of the container that ran Job `job`.
    pub fn container_mounts(&self, job: &str) -> Vec<String> {
        let id = docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=gantry-test-kubelet=1",
            "--filter",
            &format!("name=kube-{job}-"),
        ]);
        assert!(!id.is_empty(), "no container for Job {job}");
        docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Destination}} {{end}}",
            &id,
        ])
        .split_whitespace()
        .map(String::from)
        .collect()
    }
}

impl Drop for Cluster {
    /// The image the kubelet pulled from this cluster's registry goes with it.
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}
