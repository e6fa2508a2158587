//! A `gantry serve` process for the tests: started on a free loopback port
//! with its own data and state directories, spoken to over real HTTP, killed
//! (SIGKILL) on drop or on demand, and started again on the same data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The API token the tests' services accept (as `tester`).
pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct Serve {
    pub addr: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    env: Vec<(String, String)>,
    starts: usize,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// The status line and the headers, as received.
    pub head: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The value of header `name` (the first one).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl Serve {
    /// Start `gantry serve` with `config` (YAML; `listen` and `api-tokens`
    /// are added) and extra environment variables.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "listen: 127.0.0.1:0\napi-tokens:\n  - {{ name: tester, token: {{ env: GANTRY_TEST_TOKEN }} }}\n{config}"
        );
        std::fs::write(dir.path().join("serve.yaml"), config).unwrap();
        let mut serve = Serve {
            addr: String::new(),
            child: None,
            dir,
            state: tempfile::tempdir().unwrap(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        serve.launch();
        serve
    }

    /// The data directory (`.gantry-serve` beside the config).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join(".gantry-serve")
    }

    /// The state root the service's runs journal into.
    pub fn state_root(&self) -> &Path {
        self.state.path()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("serve-{n}.log"))
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let mut cmd = Command::new(crate::gantry());
        cmd.args(["serve", "--config", "serve.yaml", "--verbose"])
            .current_dir(self.dir.path())
            .env_remove("XDG_STATE_HOME")
            .env("GANTRY_STATE_DIR", self.state.path())
            .env("GANTRY_CACHE_DIR", crate::shared_cache())
            .env("GANTRY_TEST_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start gantry serve"));
        let line = self.wait_for_log("listening on http://", Duration::from_secs(60));
        self.addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
    }

    /// Everything the service printed, over all its starts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until the current start's output has a line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "gantry serve exited ({status}) before `{needle}`:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gantry serve never said `{needle}`:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to record anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data (after [`Serve::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// One HTTP request; `headers` as (name, value).
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.addr, method, path, headers, body)
    }

    /// An API call with the tests' token and a JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.http(
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    /// The runs, newest first.
    pub fn runs(&self) -> Vec<serde_json::Value> {
        let r = self.api("GET", "/api/v1/runs?limit=1000", None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["runs"].as_array().cloned().unwrap()
    }

    /// Wait (up to `timeout`) until run `id` has a final status; return it.
    pub fn wait_run(&self, id: i64, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.api("GET", &format!("/api/v1/runs/{id}"), None);
            if r.status == 200 {
                let v = r.json();
                let status = v["run"]["status"].as_str().unwrap_or("").to_string();
                if !matches!(status.as_str(), "queued" | "running") {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish: {}\n{}",
                r.body,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until some run satisfies `pred`; return it.
    pub fn wait_for_run(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.runs().into_iter().find(&pred) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no such run appeared: {:?}\n{}",
                self.runs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request over a fresh connection (`connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
    let mut raw = vec![];
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply {
        status,
        body,
        head: head.to_string(),
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// `X-Hub-Signature-256` as GitHub computes it: HMAC-SHA256 of the body.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub push payload for `reference` moving `before` -> `after`.
pub fn github_push(
    clone_url: &str,
    reference: &str,
    before: &str,
    after: &str,
    message: &str,
) -> String {
    serde_json::json!({
        "ref": reference,
        "before": before,
        "after": after,
        "created": before.bytes().all(|b| b == b'0'),
        "deleted": after.bytes().all(|b| b == b'0'),
        "forced": false,
        "repository": { "clone_url": clone_url, "full_name": "test/repo" },
        "pusher": { "name": "tester", "email": "tester@example.com" },
        "head_commit": { "id": after, "message": message, "added": [], "removed": [], "modified": [] },
        "commits": [ { "id": after, "message": message, "added": [], "removed": [], "modified": ["app.txt"] } ]
    })
    .to_string()
}
