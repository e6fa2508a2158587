//! Built-in stage `health-gate`: after a deploy, decide whether the new version
//! is healthy, and when it is not, restore the previous one and fail the run
//! with what was measured against what was required.
//!
//! Checks (one or both): an HTTP probe that must answer 2xx N times in a row
//! within a window, and an Application Insights Query API check of the app's
//! failed-request rate over a window against a threshold.
//!
//! Restoring uses what the deploy stage (a stage this one `needs`) reported:
//! - `aks-deploy` (outputs `namespace`, `deployment`): the cluster's rollback to
//!   the previous revision, then its rollout is awaited;
//! - `docker-deploy` with `keep-previous: true` (outputs `container` and
//!   `previous-*`): the new container is removed and the previous slot, still
//!   running, is recorded as live again in the host-kept state
//!   `docker-deploy/<name>` (`permissions.state: [docker-deploy/]`), with a
//!   compare-and-set so that a newer deploy's record is never undone. When the
//!   gate passes, the previous slot is retired instead.

mod query;

use gantry_sdk::{CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo, http};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The deploy stage judged; default: the needed stage that deployed.
    #[serde(default)]
    deploy: Option<String>,
    #[serde(default)]
    probe: Option<Probe>,
    #[serde(default)]
    query: Option<Query>,
    /// Restore the previous version when the gate fails.
    #[serde(default = "yes")]
    rollback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Probe {
    /// URL to probe; default: the deploy stage's `address` output + `path`.
    #[serde(default)]
    url: Option<String>,
    #[serde(default = "root")]
    path: String,
    /// Consecutive 2xx answers needed.
    #[serde(default = "three")]
    successes: u32,
    #[serde(default = "second")]
    interval_ms: u64,
    /// Seconds the probe may take in all.
    #[serde(default = "minute")]
    window: u64,
    #[serde(default = "five_seconds")]
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Query {
    app_id: String,
    /// A granted secret with an API key of the Application Insights resource.
    api_key_secret: String,
    #[serde(default = "api")]
    endpoint: String,
    /// Minutes of requests the rate is computed over.
    #[serde(default = "ten")]
    window: u64,
    max_failure_rate: f64,
    /// Fewer requests than this in the window: the check cannot judge, and
    /// the gate fails (a gate that passes on no traffic proves nothing).
    #[serde(default = "one")]
    min_requests: u64,
    /// Only requests of this `cloud_RoleName`.
    #[serde(default)]
    role: Option<String>,
    /// Seconds to wait before querying (ingestion takes a while).
    #[serde(default)]
    delay: u64,
}

fn yes() -> bool {
    true
}
fn root() -> String {
    "/".into()
}
fn three() -> u32 {
    3
}
fn one() -> u64 {
    1
}
fn ten() -> u64 {
    10
}
fn second() -> u64 {
    1000
}
fn minute() -> u64 {
    60
}
fn five_seconds() -> u64 {
    5000
}
fn api() -> String {
    "https://api.applicationinsights.io".into()
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "anyOf": [{"required": ["probe"]}, {"required": ["query"]}],
  "properties": {
    "deploy": {"type": "string", "description": "the deploy stage judged (default: the needed stage that deployed)"},
    "probe": {"type": "object", "additionalProperties": false, "properties": {
      "url": {"type": "string", "pattern": "^https?://", "description": "default: the deploy stage's address output + path"},
      "path": {"type": "string", "pattern": "^/"},
      "successes": {"type": "integer", "minimum": 1, "description": "consecutive 2xx answers needed (default 3)"},
      "interval-ms": {"type": "integer", "minimum": 1},
      "window": {"type": "integer", "minimum": 1, "description": "seconds the probe may take in all (default 60)"},
      "timeout-ms": {"type": "integer", "minimum": 1}}},
    "query": {"type": "object", "additionalProperties": false, "required": ["app-id", "api-key-secret", "max-failure-rate"], "properties": {
      "app-id": {"type": "string", "description": "the Application Insights application id"},
      "api-key-secret": {"type": "string", "description": "granted secret with an API key (read telemetry)"},
      "endpoint": {"type": "string", "pattern": "^https?://", "description": "default https://api.applicationinsights.io"},
      "window": {"type": "integer", "minimum": 1, "description": "minutes (default 10)"},
      "max-failure-rate": {"type": "number", "minimum": 0, "maximum": 1, "description": "e.g. 0.05 for 5%"},
      "min-requests": {"type": "integer", "minimum": 0, "description": "fewer requests fail the gate (default 1)"},
      "role": {"type": "string", "description": "only requests of this cloud_RoleName"},
      "delay": {"type": "integer", "minimum": 0, "description": "seconds to wait before querying"}}},
    "rollback": {"type": "boolean", "description": "restore the previous version when the gate fails (default true)"}
  }
}"#;

fn invalid(m: impl Into<String>) -> StageError {
    StageError::InvalidConfig(m.into())
}

/// N consecutive 2xx within the window; the failure says how far it got.
fn probe(p: &Probe, url: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(p.window);
    let (mut streak, mut attempts) = (0u32, 0u32);
    loop {
        attempts += 1;
        let last = match http::send(
            "GET",
            url,
            &[],
            &[],
            Some(Duration::from_millis(p.timeout_ms)),
        ) {
            Ok(r) => {
                streak = if (200..300).contains(&r.status) {
                    streak + 1
                } else {
                    0
                };
                format!("HTTP {}", r.status)
            }
            Err(http::Error::Denied(m)) => return Err(m),
            Err(e) => {
                streak = 0;
                e.to_string()
            }
        };
        if streak >= p.successes {
            return Ok(format!(
                "{url} answered 2xx {streak} times in a row ({attempts} probes)"
            ));
        }
        if Instant::now() + Duration::from_millis(p.interval_ms) > deadline {
            return Err(format!(
                "{url}: {streak} of {} consecutive 2xx answers within {}s ({attempts} probes, last: {last})",
                p.successes, p.window
            ));
        }
        std::thread::sleep(Duration::from_millis(p.interval_ms));
    }
}

fn check_query(q: &Query) -> Result<String, String> {
    if q.delay > 0 {
        gantry_sdk::info(format!("waiting {}s for telemetry to arrive", q.delay));
        std::thread::sleep(Duration::from_secs(q.delay));
    }
    let key = gantry_sdk::secrets::get(&q.api_key_secret)
        .map_err(|e| gantry_sdk::message(&StageError::from(e)).to_string())?;
    let m = query::run(&q.endpoint, &q.app_id, &key, q.window, q.role.as_deref())?;
    let measured = format!(
        "failed-request rate {:.1}% ({} of {} requests over {}m)",
        m.rate() * 100.0,
        m.failed,
        m.total,
        q.window
    );
    gantry_sdk::telemetry::metric("health-gate.failure-rate", m.rate(), &[]);
    if m.total < q.min_requests {
        return Err(format!(
            "only {} requests over {}m, fewer than min-requests {}: nothing to judge",
            m.total, q.window, q.min_requests
        ));
    }
    if m.rate() > q.max_failure_rate {
        return Err(format!(
            "{measured} is above the threshold {:.1}%",
            q.max_failure_rate * 100.0
        ));
    }
    Ok(format!(
        "{measured} is within the threshold {:.1}%",
        q.max_failure_rate * 100.0
    ))
}

/// The judged deploy stage's outputs.
fn deploy_outputs(cfg: &Config, ctx: &StageContext) -> Option<(String, BTreeMap<String, String>)> {
    ctx.upstream
        .iter()
        .find(|u| match &cfg.deploy {
            Some(name) => &u.stage == name,
            None => u
                .outputs
                .iter()
                .any(|(k, _)| k == "deployment" || k == "container"),
        })
        .map(|u| (u.stage.clone(), u.outputs.iter().cloned().collect()))
}

fn host(e: gantry_sdk::HostError) -> String {
    gantry_sdk::message(&StageError::from(e)).to_string()
}

/// Put the previous version back; says what it did.
fn restore(outputs: &BTreeMap<String, String>) -> Result<String, String> {
    let get = |k: &str| outputs.get(k).cloned();
    if let (Some(ns), Some(deployment)) = (get("namespace"), get("deployment")) {
        let revision = gantry_sdk::cluster::rollback(&ns, &deployment).map_err(host)?;
        let rollout =
            gantry_sdk::cluster::rollout_status(&ns, &deployment, 300_000).map_err(host)?;
        let state = if rollout.complete {
            "available"
        } else {
            "not available yet"
        };
        return Ok(format!(
            "rolled Deployment {deployment} in {ns} back to the previous version (revision {revision}, {state})"
        ));
    }
    if let (Some(name), Some(container)) = (get("name"), get("container")) {
        let (Some(prev), Some(slot), Some(address), Some(image)) = (
            get("previous-container"),
            get("previous-slot"),
            get("previous-address"),
            get("previous-image"),
        ) else {
            return Err(
                "the deploy stage kept no previous version (set `keep-previous: true` on docker-deploy)".into(),
            );
        };
        // The previous slot is still running: record it as live, then remove
        // the new one (in that order, so that a failure in between leaves a
        // state pointing at something that serves). Only while the state still
        // names the container judged: a later deploy's record is not undone.
        let key = format!("docker-deploy/{name}");
        let current = gantry_sdk::state::get(&key).map_err(host)?;
        let judged = current
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .is_some_and(|v| v["container"] == container.as_str());
        if !judged {
            return Err(format!(
                "state `{key}` no longer names the container judged ({container}): another deploy happened since, so it was left alone"
            ));
        }
        let state = serde_json::json!({"live": slot, "container": prev, "image": image, "address": address});
        let recorded = gantry_sdk::json_state::compare_and_set(&key, current.as_deref(), &state)
            .map_err(|e| format!("recording slot {slot} as live in state `{key}`: {}", gantry_sdk::message(&e)))?;
        if !recorded {
            return Err(format!("state `{key}` changed while the gate switched back; it was left alone"));
        }
        gantry_sdk::engine::remove(&container).map_err(host)?;
        return Ok(format!(
            "switched back to the previous version {image} (slot {slot}) at {address}"
        ));
    }
    Err(
        "the deploy stage reported nothing to roll back (no `deployment` or `container` output)"
            .into(),
    )
}

/// After a passing gate on docker-deploy, the previous slot is retired.
fn retire(outputs: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    match outputs.get("previous-container") {
        Some(prev) => {
            gantry_sdk::engine::remove(prev).map_err(host)?;
            Ok(Some(format!(
                "retired the previous slot's container {prev}"
            )))
        }
        None => Ok(None),
    }
}

struct Gate;

impl Guest for Gate {
    fn describe() -> StageInfo {
        StageInfo {
            name: "health-gate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Decides whether a fresh deployment is healthy (HTTP probe: N consecutive 2xx within a window; Application Insights failed-request rate against a threshold) and restores the previous version when it is not.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                gantry_sdk::Capability { kind: CapabilityKind::Http, target: None, reason: "the probed URL and the Query API".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Secret, target: None, reason: "the Query API key".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Cluster, target: None, reason: "rolling back an aks-deploy".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Engine, target: None, reason: "switching back a docker-deploy".into() },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        if cfg.probe.is_none() && cfg.query.is_none() {
            return Err(invalid("set `probe`, `query` or both"));
        }
        let deploy = deploy_outputs(&cfg, &ctx);
        let mut passed = vec![];
        let mut failure = None;
        if let Some(p) = &cfg.probe {
            let url = match (&p.url, deploy.as_ref().and_then(|(_, o)| o.get("address"))) {
                (Some(u), _) => u.clone(),
                (None, Some(a)) => format!("{}{}", a.trim_end_matches('/'), p.path),
                (None, None) => {
                    return Err(invalid(
                        "probe: set `url` (the deploy stage has no `address` output)",
                    ));
                }
            };
            gantry_sdk::info(format!("probing {url}"));
            match probe(p, &url) {
                Ok(m) => passed.push(m),
                Err(m) => failure = Some(format!("probe failed: {m}")),
            }
        }
        if failure.is_none()
            && let Some(q) = &cfg.query
        {
            match check_query(q) {
                Ok(m) => passed.push(m),
                Err(m) => failure = Some(format!("Application Insights check failed: {m}")),
            }
        }
        let outputs = deploy.as_ref().map(|(_, o)| o.clone()).unwrap_or_default();
        let Some(why) = failure else {
            if let Some(note) = retire(&outputs).map_err(StageError::Failed)? {
                gantry_sdk::info(note);
            }
            gantry_sdk::telemetry::event("health-gate", &[("result".into(), "passed".into())]);
            return Ok(Outcome {
                artifacts: vec![],
                outputs: vec![gantry_sdk::output("healthy", "true")],
                summary: format!("healthy: {}", passed.join("; ")),
            });
        };
        gantry_sdk::warn(&why);
        gantry_sdk::telemetry::event(
            "health-gate",
            &[
                ("result".into(), "failed".into()),
                ("reason".into(), why.clone()),
            ],
        );
        let restored = match (cfg.rollback, &deploy) {
            (false, _) => "rollback: false, so the new version stays".to_string(),
            (true, None) => {
                "no deploy stage among the needed stages, so nothing was restored".into()
            }
            (true, Some((stage, outputs))) => match restore(outputs) {
                Ok(done) => done,
                Err(e) => format!("restoring the version before stage `{stage}` failed: {e}"),
            },
        };
        Err(StageError::Failed(format!("{why}; {restored}")))
    }
}

gantry_sdk::export_stage!(Gate);
