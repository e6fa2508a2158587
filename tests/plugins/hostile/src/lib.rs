//! A plugin that tries to break out of its sandbox in the way its config names.
//! Every attack must end the stage with a clear error, never succeed.
use gantry_sdk::{Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use std::hint::black_box;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    attack: String,
    /// A path, URL, program, secret or variable name, depending on the attack.
    #[serde(default)]
    target: String,
    /// Arguments for the `exec` attack.
    #[serde(default = "default_args")]
    args: Vec<String>,
    /// Working directory for the `exec` attack.
    #[serde(default)]
    cwd: Option<String>,
    /// Variables the `exec` attack passes to the program (e.g. LD_PRELOAD).
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

fn default_args() -> Vec<String> {
    vec!["-c".into(), "echo pwned".into()]
}

struct Hostile;

fn ok(summary: String) -> Result<Outcome, StageError> {
    Ok(Outcome {
        artifacts: vec![],
        outputs: vec![("leak".into(), summary.clone())],
        summary,
    })
}

fn read(path: &str) -> Result<Outcome, StageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => ok(format!("read {path}: {text}")),
        Err(e) => Err(StageError::Failed(format!("cannot read {path}: {e}"))),
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    black_box(&mut next);
    recurse(depth + 1, &mut next) + pad[0] as u64
}

/// Recursion that keeps everything in wasm locals, so it exhausts the engine's
/// own stack limit rather than the guest's shadow stack in linear memory.
static DEPTH_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

#[inline(never)]
fn deep(n: u64) -> u64 {
    if n == DEPTH_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        return n;
    }
    deep(n + 1).wrapping_mul(31).wrapping_add(n)
}

fn http_get(url: &str) -> Result<Outcome, StageError> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| StageError::InvalidConfig(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).unwrap();
    req.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }))
    .unwrap();
    req.set_authority(Some(authority)).unwrap();
    req.set_path_with_query(Some(path)).unwrap();
    let denied = |e| StageError::Denied(format!("GET {url}: {e:?}"));
    let fut = outgoing_handler::handle(req, None).map_err(denied)?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .expect("ready")
        .expect("first get")
        .map_err(denied)?;
    let status = resp.status();
    let body = resp.consume().unwrap();
    let stream = body.stream().unwrap();
    let mut bytes = vec![];
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend(chunk);
    }
    ok(format!(
        "GET {url}: {status} {}",
        String::from_utf8_lossy(&bytes)
    ))
}

/// Plant a link at `link` (relative to the workspace, parents created)
/// pointing at `target`, which may be relative and lead outside the
/// workspace: WASI lets a stage with `workspace: write` create one; it is the
/// host that must never follow it.
fn plant_link(target: &str, link: &str) -> Result<(), StageError> {
    if let Some(parent) = std::path::Path::new(link).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StageError::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    let dirs = wasip2::filesystem::preopens::get_directories();
    let (dir, _) = dirs
        .iter()
        .find(|(_, name)| name == "." || name == "/workspace")
        .ok_or_else(|| StageError::Failed("no workspace preopen".into()))?;
    dir.symlink_at(target, link)
        .map_err(|e| StageError::Failed(format!("cannot link {link} -> {target}: {e:?}")))
}

/// Increment the counter in file `path`; returns the new count.
fn bump(path: &str) -> Result<u32, StageError> {
    let n = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(path, n.to_string())
        .map_err(|e| StageError::Failed(format!("cannot write {path}: {e}")))?;
    Ok(n)
}

impl Guest for Hostile {
    fn describe() -> StageInfo {
        StageInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Tries to escape the sandbox (tests only).".into(),
            config_schema: String::new(),
            capabilities: vec![],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        let t = cfg.target.as_str();
        match cfg.attack.as_str() {
            "read" => read(t),
            "write" => match std::fs::write(t, b"pwned") {
                Ok(()) => ok(format!("wrote {t}")),
                Err(e) => Err(StageError::Failed(format!("cannot write {t}: {e}"))),
            },
            "mkdir" => match std::fs::create_dir(t) {
                Ok(()) => ok(format!("created {t}")),
                Err(e) => Err(StageError::Failed(format!("cannot create {t}: {e}"))),
            },
            "remove" => match std::fs::remove_file(t) {
                Ok(()) => ok(format!("removed {t}")),
                Err(e) => Err(StageError::Failed(format!("cannot remove {t}: {e}"))),
            },
            // Write `args[0]` into the file `target`, creating its directories:
            // forged journals, records and manifests.
            "write-text" => {
                if let Some(parent) = std::path::Path::new(t).parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                match std::fs::write(t, cfg.args.first().map(String::as_str).unwrap_or("")) {
                    Ok(()) => ok(format!("wrote {t}")),
                    Err(e) => Err(StageError::Failed(format!("cannot write {t}: {e}"))),
                }
            }
            // Plant links: `args` are `link=target` pairs.
            "symlinks" => {
                for pair in &cfg.args {
                    let (link, target) = pair.split_once('=').ok_or_else(|| {
                        StageError::InvalidConfig(format!("`{pair}` is not link=target"))
                    })?;
                    plant_link(target, link)?;
                }
                ok(format!("planted {} link(s)", cfg.args.len()))
            }
            "state-get" => match gantry_sdk::state::get(t)? {
                Some(v) => ok(format!("state {t} = {}", String::from_utf8_lossy(&v))),
                None => ok(format!("state {t} is not set")),
            },
            // Set `target` to `args[0]`, or to `args[1]` bytes of `x` when given.
            "state-set" => {
                let value = match cfg.args.get(1).and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => "x".repeat(n),
                    None => cfg.args.first().cloned().unwrap_or_default(),
                };
                gantry_sdk::state::set(t, value.as_bytes())?;
                ok(format!("set state {t}"))
            }
            "state-delete" => {
                gantry_sdk::state::delete(t)?;
                ok(format!("deleted state {t}"))
            }
            // Compare-and-set `target` from `args[0]` (`-`: unset) to `args[1]`.
            "state-cas" => {
                let expected = cfg.args.first().filter(|e| *e != "-").map(|e| e.as_bytes().to_vec());
                let value = cfg.args.get(1).cloned().unwrap_or_default();
                let done = gantry_sdk::state::compare_and_set(t, expected.as_deref(), value.as_bytes())?;
                ok(format!("compare-and-set {t}: {done}"))
            }
            "state-list" => ok(format!("keys: {}", gantry_sdk::state::list_keys(t)?.join(","))),
            // Set `args[0]` keys `target/<i>`.
            "state-fill" => {
                let n: usize = cfg.args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
                for i in 0..n {
                    gantry_sdk::state::set(&format!("{t}/{i}"), b"v")?;
                }
                ok(format!("set {n} keys"))
            }
            "http" => http_get(t),
            "socket" => match std::net::TcpStream::connect(t) {
                Ok(_) => ok(format!("connected to {t}")),
                Err(e) => Err(StageError::Denied(format!("cannot connect to {t}: {e}"))),
            },
            "env" => match std::env::var(t) {
                Ok(v) => ok(format!("{t}={v}")),
                Err(e) => Err(StageError::Denied(format!("environment variable {t}: {e}"))),
            },
            "exec" => {
                let status = gantry_sdk::exec::run(&gantry_sdk::exec::Command {
                    program: t.into(),
                    args: cfg.args.clone(),
                    cwd: cfg.cwd.clone(),
                    env: cfg.env.clone().into_iter().collect(),
                    timeout_ms: None,
                })?;
                ok(format!(
                    "ran {t}: exit {:?}: {} {}",
                    status.code,
                    status.stdout.trim_end(),
                    status.stderr.trim_end()
                ))
            }
            "engine" => ok(format!("pulled {}", gantry_sdk::engine::pull(t)?)),
            // Build with the context `args[0]` (default `.`) and the Dockerfile `target`.
            "engine-build" => ok(format!(
                "built {}",
                gantry_sdk::engine::build(&gantry_sdk::engine::BuildRequest {
                    context: cfg.args.first().cloned().unwrap_or_else(|| ".".into()),
                    dockerfile: Some(t.into()),
                    build_args: vec![],
                    target: None,
                    tags: vec![],
                })?
            )),
            // Remove a container gantry did not start (its name or id).
            "engine-remove" => {
                gantry_sdk::engine::remove(t)?;
                ok(format!("removed {t}"))
            }
            // Start a container named `target` from the image args[0], with a
            // health URL args[1] when given.
            "engine-start" => {
                let id = gantry_sdk::engine::start(&gantry_sdk::engine::ContainerRequest {
                    image: cfg.args.first().cloned().unwrap_or_default(),
                    name: t.into(),
                    env: vec![],
                    ports: vec![],
                    health_url: cfg.args.get(1).cloned(),
                    health_timeout_ms: 1000,
                })?;
                ok(format!("started {id}"))
            }
            "cluster" => ok(format!(
                "{:?}",
                gantry_sdk::cluster::get(t, "apps/v1", "Deployment", "app")?
            )),
            "secret" => ok(format!("secret {t} = {}", gantry_sdk::secrets::get(t)?)),
            // Smuggle a granted secret out in every string the host keeps that
            // is not a log line or an output's value.
            "secret-in-keys" => {
                let v = gantry_sdk::secrets::get(t)?;
                gantry_sdk::telemetry::event(
                    &format!("ev-{v}"),
                    &[(format!("key-{v}"), "x".into())],
                );
                Ok(Outcome {
                    artifacts: vec![gantry_sdk::Artifact {
                        name: format!("name-{v}"),
                        media_type: format!("type/{v}"),
                        path: Some(format!("path-{v}")),
                        reference: Some(format!("ref-{v}")),
                        digest: Some(format!("sha256:{v}")),
                        annotations: vec![(format!("ann-{v}"), format!("val-{v}"))],
                    }],
                    outputs: vec![(format!("out-{v}"), "value".into())],
                    summary: "smuggled".into(),
                })
            }
            "loop" => loop {
                black_box(0u64);
            },
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = vec![];
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recursion" => ok(format!("{}", recurse(0, &mut [0; 256]))),
            "deep-recursion" => ok(format!("{}", deep(0))),
            "log-flood" => loop {
                gantry_sdk::info("flood flood flood flood flood flood flood flood flood flood");
            },
            "stdout-flood" => loop {
                println!("flood flood flood flood flood flood flood flood flood flood");
            },
            // Write 1 MiB to stdout, ignoring the errors past the log cap, and
            // report success.
            "stdout-flood-ignoring-errors" => {
                use std::io::Write;
                let line = [b'x'; 1023];
                for _ in 0..1024 {
                    let _ = std::io::stdout().write_all(&line);
                    let _ = std::io::stdout().write_all(b"\n");
                }
                ok("wrote 1 MiB".into())
            }
            // `args[0]` events of `args[1]` bytes each.
            "telemetry-flood" => {
                let n: usize = cfg.args.first().and_then(|a| a.parse().ok()).unwrap_or(600);
                let size: usize = cfg
                    .args
                    .get(1)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(1 << 20);
                let big = "t".repeat(size);
                for i in 0..n {
                    gantry_sdk::telemetry::event("flood", &[(format!("p{i}"), big.clone())]);
                }
                ok(format!("sent {n} events"))
            }
            // A summary, an output or an artifact of `target` bytes.
            "big-summary" => {
                let n: usize = t.parse().unwrap_or(1 << 20);
                Ok(Outcome {
                    artifacts: vec![],
                    outputs: vec![],
                    summary: "s".repeat(n),
                })
            }
            "big-outputs" => {
                let n: usize = t.parse().unwrap_or(1 << 20);
                Ok(Outcome {
                    artifacts: vec![],
                    outputs: vec![("o".into(), "o".repeat(n))],
                    summary: "ok".into(),
                })
            }
            "artifact-outside" => Ok(Outcome {
                artifacts: vec![gantry_sdk::Artifact {
                    name: "escape".into(),
                    media_type: "x/y".into(),
                    path: Some(t.into()),
                    reference: None,
                    digest: None,
                    annotations: vec![],
                }],
                outputs: vec![],
                summary: "ok".into(),
            }),
            "big-artifacts" => {
                let n: usize = t.parse().unwrap_or(1 << 20);
                Ok(Outcome {
                    artifacts: vec![gantry_sdk::Artifact {
                        name: "a".into(),
                        media_type: "x/y".into(),
                        path: None,
                        reference: None,
                        digest: None,
                        annotations: vec![("a".into(), "a".repeat(n))],
                    }],
                    outputs: vec![],
                    summary: "ok".into(),
                })
            }
            // Count attempts in the file `target`; fail transiently while the
            // count is at most args[0], then succeed.
            "flaky" => {
                let n = bump(t)?;
                let fail_times: u32 = cfg.args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
                if n <= fail_times {
                    Err(StageError::Transient(format!("flaky attempt {n}")))
                } else {
                    ok(format!("succeeded on attempt {n}"))
                }
            }
            // Count attempts in `target`, then fail for good.
            "fail" => Err(StageError::Failed(format!(
                "broken on attempt {}",
                bump(t)?
            ))),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(t.parse().unwrap_or(3600)));
                ok("woke up".into())
            }
            other => Err(StageError::InvalidConfig(format!(
                "unknown attack `{other}`"
            ))),
        }
    }
}

gantry_sdk::export_stage!(Hostile);
