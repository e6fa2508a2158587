//! Harness for the end-to-end tests: builds the `gantry` binary (once per test
//! process, so the tests never run a stale one), gives each test its own
//! workspace directory, and runs gantry in it like a user would.

pub mod appinsights;
pub mod boards;
pub mod browser;
pub mod cosign;
pub mod docker;
pub mod git;
pub mod github_issues;
pub mod kube;
pub mod kube_jobs;
pub mod oci;
pub mod registry_auth;
pub mod serve;
pub mod standin;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of the `gantry` binary, built from this checkout in this test's profile.
pub fn gantry() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-p",
            "gantry",
            "--bin",
            "gantry",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(repo());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build for gantry");
        assert!(
            out.status.success(),
            "building gantry failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "gantry")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no gantry executable")
    })
}

/// Path of a test plugin component from tests/plugins (e.g. `hostile`).
pub fn plugin(name: &str) -> PathBuf {
    let path =
        Path::new(env!("GANTRY_TEST_PLUGINS")).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.is_file(), "test plugin {} is missing", path.display());
    path
}

/// A compile cache shared by the tests of one process, so that each test plugin
/// is compiled once, not once per test.
pub fn shared_cache() -> &'static Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// What one gantry invocation did.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The final line for a stage: `✔ name (...)`, `✘ name (...)` or, when it
    /// was skipped, `⊘ name (...)`, from stdout (or stderr, where progress goes
    /// with `--json`).
    pub fn stage_line(&self, stage: &str) -> &str {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .find(|l| {
                (l.starts_with("✔ ") || l.starts_with("✘ ") || l.starts_with("⊘ "))
                    && l[4..].split_whitespace().next() == Some(stage)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no result line for stage `{stage}` in:\n{}\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    pub fn succeeded(&self, stage: &str) -> bool {
        self.stage_line(stage).starts_with('✔')
    }

    /// stdout and stderr together, for "appears nowhere" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The outputs of `stage` as a JSON object, from `--output json`.
    pub fn outputs(&self, stage: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.all()));
        let stage = v["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == stage))
            .unwrap_or_else(|| panic!("no stage `{stage}` in: {}", self.all()));
        let map: serde_json::Map<String, serde_json::Value> = stage["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].clone())))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// `cmd` without the CI systems' commit and branch variables, so that
/// gantry takes them from the workspace's git (as on a laptop).
pub fn without_ci(mut cmd: Command) -> Command {
    for var in [
        "GITHUB_SHA",
        "GITHUB_REF",
        "BUILD_SOURCEVERSION",
        "BUILD_SOURCEBRANCH",
        "CI_COMMIT_SHA",
        "CI_COMMIT_BRANCH",
        "GIT_COMMIT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Fail with a clear message unless a Docker engine answers.
pub fn require_docker() {
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need a running Docker engine (dockerd); .ci/run installs and starts it"
    );
}

/// A scratch workspace with a manifest in it, and its own state directory
/// (`GANTRY_STATE_DIR`, beside it, never inside), so that tests never share
/// run records or plugin state and can run in parallel.
pub struct Workspace {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    cache: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// A cache directory of its own, removed with the workspace.
    own_cache: Option<tempfile::TempDir>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            cache: Some(shared_cache().to_path_buf()),
            env: vec![],
            own_cache: None,
        }
    }

    /// Use a fresh cache directory of its own (compiled components and
    /// pulled plugins), removed with the workspace.
    pub fn with_fresh_cache(mut self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        self.cache = Some(dir.path().to_path_buf());
        self.own_cache = Some(dir);
        self
    }

    /// The cache directory gantry is given, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// Use this compile cache directory instead of the shared one.
    pub fn with_cache(mut self, dir: &Path) -> Self {
        self.cache = Some(dir.to_path_buf());
        self
    }

    /// Set an environment variable for gantry.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state root gantry uses for this workspace (`GANTRY_STATE_DIR`).
    pub fn state_root(&self) -> &Path {
        self.state.path()
    }

    /// The directory where gantry keeps this workspace's runs, once a run
    /// created it: `<state root>/workspaces/<name>-<hash>/runs`.
    pub fn runs_dir(&self) -> Option<PathBuf> {
        let all = std::fs::read_dir(self.state_root().join("workspaces")).ok()?;
        let dirs: Vec<PathBuf> = all.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        match dirs.as_slice() {
            [one] => Some(one.join("runs")).filter(|r| r.is_dir()),
            _ => None,
        }
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Run a pipeline of `stages` (YAML list items) followed by a benign
    /// `noop` stage, and check the benign one still succeeded: whatever a
    /// hostile stage tried, the rest of the run carries on.
    pub fn run_beside_benign(&self, stages: &str) -> Output {
        self.manifest(&format!(
            "pipeline: contained\nstages:\n{stages}\n  - name: benign\n    uses: \"{{noop}}\"\n"
        ));
        let out = self.run();
        assert!(
            out.succeeded("benign"),
            "the benign stage must still succeed:\n{}",
            out.all()
        );
        out
    }

    /// Write `pipeline.yaml`. `{hostile}`, `{noop}`, `{echo}`, `{future-wit}`,
    /// `{describe-loop}`, `{legacy}`, `{declares}` are replaced by the paths of
    /// those test plugins.
    pub fn manifest(&self, yaml: &str) -> PathBuf {
        let mut text = yaml.to_string();
        for name in [
            "hostile",
            "noop",
            "echo",
            "future-wit",
            "describe-loop",
            "legacy",
            "declares",
        ] {
            text = text.replace(&format!("{{{name}}}"), &plugin(name).display().to_string());
        }
        self.write("pipeline.yaml", text)
    }

    /// The command for gantry with `args`, in the workspace directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(gantry());
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("GANTRY_CACHE_DIR")
            .env_remove("TF_BUILD")
            .env_remove("XDG_STATE_HOME")
            .env("GANTRY_STATE_DIR", self.state_root())
            .env("NO_COLOR", "1");
        match &self.cache {
            Some(dir) => cmd.env("GANTRY_CACHE_DIR", dir),
            None => cmd.arg("--no-cache"),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run gantry with `args` in the workspace directory and wait for it.
    pub fn gantry(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run gantry");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Like [`Workspace::gantry`], with the CI systems' variables removed
    /// ([`without_ci`]) so that branch and commit come from the workspace's git.
    pub fn gantry_without_ci(&self, args: &[&str]) -> Output {
        let out = without_ci(self.command(args)).output().expect("run gantry");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The journal of the only run in this workspace, once it exists.
    pub fn only_journal(&self) -> Option<PathBuf> {
        let runs = std::fs::read_dir(self.runs_dir()?).ok()?;
        let dirs: Vec<PathBuf> = runs.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        match dirs.as_slice() {
            [one] => Some(one.join("journal.jsonl")),
            _ => None,
        }
    }

    /// Wait (up to a minute) until the run's journal contains `needle`.
    pub fn wait_for_journal(&self, needle: &str) -> PathBuf {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(j) = self.only_journal()
                && std::fs::read_to_string(&j).is_ok_and(|t| t.contains(needle))
            {
                return j;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the journal never showed `{needle}`"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `gantry run pipeline.yaml`.
    pub fn run(&self) -> Output {
        self.gantry(&["run", "pipeline.yaml"])
    }
}

/// A one-response-per-connection HTTP server on 127.0.0.1 that counts the
/// connections it accepted. Stops when dropped.
pub struct HttpServer {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl HttpServer {
    pub fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A real OCI registry (Debian's docker-registry) on a free loopback port, with
/// optional htpasswd basic auth. Stopped when dropped.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(htpasswd: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(entries) => {
                std::fs::write(dir.path().join("htpasswd"), entries).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        Self::start_in(dir, &auth)
    }

    /// A registry serving HTTPS with a fresh self-signed certificate for
    /// 127.0.0.1, and that certificate's PEM file (trust it with
    /// `SSL_CERT_FILE`).
    pub fn start_tls() -> (Self, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("generate the registry's certificate");
        let (cert, private) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, key.cert.pem()).unwrap();
        std::fs::write(&private, key.signing_key.serialize_pem()).unwrap();
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            private.display()
        );
        (Self::start_in(dir, &tls), cert)
    }

    /// Start with `auth` appended to the registry's config (YAML) right after
    /// `http:`'s `addr`: a top-level `auth:` section, or more `http:` keys
    /// (indented, e.g. `tls:`); the registry keeps its data in `dir`.
    pub fn start_in(dir: tempfile::TempDir, auth: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.path().join("config.yml").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "docker-registry must be installed (apt-get install docker-registry; .ci/run does)",
            );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Registry {
    /// Where the registry stores blob `digest` (`sha256:...`) on disk: tests
    /// tamper with it to play a compromised registry.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Registry {
    /// How many blobs the registry stores (its filesystem storage, counted).
    pub fn blob_count(&self) -> usize {
        let root = self
            ._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256");
        std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .flat_map(|prefix| std::fs::read_dir(prefix.path()).into_iter().flatten())
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("data").is_file())
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of `target` that records the request line of each
/// connection (wasi:http opens one per request) and can inject faults.
pub struct Proxy {
    pub addr: String,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    /// How many `slow` requests were held at the same time, at most.
    pub max_overlap: Arc<AtomicUsize>,
}

/// What the proxy does to the n-th request (1-based): `None` forwards it;
/// `Some("drop")` closes the connection; `Some("slow")` holds it 150 ms before
/// forwarding (and counts how many are held at once); any other string is sent
/// back as the raw response.
pub type Fault = fn(usize) -> Option<&'static str>;

impl Proxy {
    pub fn start(target: &str, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let max_overlap = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (log, target, max) = (requests.clone(), target.to_string(), max_overlap.clone());
        std::thread::spawn(move || {
            for (i, client) in listener.incoming().enumerate() {
                let Ok(mut client) = client else { break };
                let (log, target) = (log.clone(), target.clone());
                let (held, max) = (held.clone(), max.clone());
                std::thread::spawn(move || {
                    let mut head = vec![0u8; 65536];
                    let n = client.read(&mut head).unwrap_or(0);
                    let line = String::from_utf8_lossy(&head[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    log.lock().unwrap().push(line);
                    match fault(i + 1) {
                        Some("drop") => return,
                        Some("slow") => {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(150));
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        Some(response) => {
                            let _ = client.write_all(response.as_bytes());
                            return;
                        }
                        None => {}
                    }
                    let Ok(mut upstream) = std::net::TcpStream::connect(&target) else {
                        return;
                    };
                    let _ = upstream.write_all(&head[..n]);
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut u2);
                        let _ = u2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut upstream, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Self {
            addr,
            requests,
            max_overlap,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}
