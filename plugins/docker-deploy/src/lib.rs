//! Built-in stage `docker-deploy`: deploys an image to the local Docker engine
//! through the host's `engine` capability; the development provider of a deploy
//! stage (AKS is the production one).
//!
//! Blue/green slots, so that the old version keeps serving until the new one is
//! healthy. An app `name` has two slots: `<name>-blue` on `host-port` and
//! `<name>-green` on `host-port + 1`, both published on 127.0.0.1 only. The live
//! slot is kept by the host, under the state key `docker-deploy/<name>` (the
//! stage needs `permissions.state: [docker-deploy/]`), outside the workspace,
//! where no other stage can forge what a later deploy or rollback trusts. A
//! deploy:
//!
//! 1. pulls the image (by default the digest-pinned `image` artifact of a
//!    needed `registry` stage);
//! 2. starts it in the slot that is not live, and waits until
//!    `http://127.0.0.1:<slot port><health-path>` answers 2xx;
//! 3. if it does: records the new live slot, removes the previous slot's
//!    container, and outputs `address`, `container`, `slot` and `image`, with a
//!    `deployment` telemetry event;
//! 4. if it does not (a timeout, an error status, the container exits): the
//!    host has already removed the new container; the previous version still
//!    serves in its slot, and the stage fails saying so, with the container's
//!    last log lines.
//!
//! The address therefore alternates between `host-port` and `host-port + 1`
//! from one successful deploy to the next; read it from the `address` output.

use gantry_sdk::engine::{self, ContainerRequest};
use gantry_sdk::{Capability, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The app's name; its containers are `<name>-blue` and `<name>-green`.
    name: String,
    /// Image reference; default: the `image` artifact's reference of a needed
    /// stage (the `registry` stage's `registry/repo@sha256:...`).
    #[serde(default)]
    image: Option<String>,
    /// Pull the image first (false: use an image the engine already has).
    #[serde(default = "yes")]
    pull: bool,
    /// The port the app listens on inside the container.
    #[serde(default = "default_port")]
    port: u16,
    /// The blue slot's port on 127.0.0.1; green is this + 1.
    #[serde(default = "default_port")]
    host_port: u16,
    /// Path polled on the new slot until it answers 2xx.
    #[serde(default = "default_health_path")]
    health_path: String,
    /// How long the new slot has to become healthy, in milliseconds.
    #[serde(default = "default_health_timeout")]
    health_timeout: u64,
    /// Environment variables for the container.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// A granted secret whose value becomes `APPLICATIONINSIGHTS_CONNECTION_STRING`.
    #[serde(default)]
    app_insights_connection_string_secret: Option<String>,
    /// Leave the previous slot running (for a `health-gate` stage after this
    /// one, which retires it when the new version proves healthy, or switches
    /// back to it when not).
    #[serde(default)]
    keep_previous: bool,
}

fn yes() -> bool {
    true
}
fn default_port() -> u16 {
    8080
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_timeout() -> u64 {
    30_000
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name"],
  "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,100}$", "description": "app name; its containers are <name>-blue and <name>-green"},
    "image": {"type": "string", "minLength": 1, "description": "image reference (default: the image artifact's reference of a needed stage, e.g. the registry stage's digest-pinned reference)"},
    "pull": {"type": "boolean", "description": "pull the image first (default true); false uses an image the engine already has"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "the port the app listens on in the container (default 8080)"},
    "host-port": {"type": "integer", "minimum": 1, "maximum": 65534, "description": "the blue slot's port on 127.0.0.1; green is host-port + 1 (default 8080)"},
    "health-path": {"type": "string", "pattern": "^/", "description": "path polled until it answers 2xx (default /)"},
    "health-timeout": {"type": "integer", "minimum": 1, "description": "milliseconds the new slot has to become healthy (default 30000)"},
    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "environment variables for the container"},
    "app-insights-connection-string-secret": {"type": "string", "description": "granted secret passed to the container as APPLICATIONINSIGHTS_CONNECTION_STRING"},
    "keep-previous": {"type": "boolean", "description": "leave the previous slot running for a health-gate stage to retire or restore (default false)"}
  }
}"#;

/// What the state key `docker-deploy/<name>` records.
#[derive(Serialize, Deserialize, Default)]
struct State {
    /// `blue` or `green`.
    live: String,
    container: String,
    image: String,
    address: String,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Slot {
    Blue,
    Green,
}

impl Slot {
    fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }
    fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }
    fn port(self, base: u16) -> u16 {
        match self {
            Slot::Blue => base,
            Slot::Green => base + 1,
        }
    }
    fn container(self, name: &str) -> String {
        format!("{name}-{}", self.as_str())
    }
}

fn failed(m: impl std::fmt::Display) -> StageError {
    StageError::Failed(m.to_string())
}

/// The state key of app `name`; health-gate writes the same key.
fn state_key(name: &str) -> String {
    format!("docker-deploy/{name}")
}

/// The recorded state and its exact bytes (to compare-and-set against);
/// none when nothing was deployed. A missing grant fails here, before
/// anything changes.
fn read_state(name: &str) -> Result<Option<(State, Vec<u8>)>, StageError> {
    let key = state_key(name);
    let Some(bytes) = gantry_sdk::state::get(&key).map_err(|e| {
        gantry_sdk::prefix(
            StageError::from(e),
            "docker-deploy keeps the live slot in the host's state",
        )
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(|s| Some((s, bytes)))
        .map_err(|e| {
            failed(format!(
                "state `{key}` is corrupt ({e}); `gantry state delete {key}` starts over"
            ))
        })
}

/// Record the new live slot, unless another deploy of the same app changed it
/// since `expected` was read.
fn write_state(name: &str, expected: Option<&[u8]>, state: &State) -> Result<(), String> {
    let key = state_key(name);
    match gantry_sdk::json_state::compare_and_set(&key, expected, state) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "another deploy of `{name}` changed the live slot (state `{key}`) meanwhile"
        )),
        Err(e) => Err(format!(
            "recording the live slot in state `{key}` failed: {}",
            gantry_sdk::message(&e)
        )),
    }
}

/// The image to deploy: `image`, else the reference of a needed stage's
/// `image` artifact.
fn image(cfg: &Config, ctx: &StageContext) -> Result<String, StageError> {
    if let Some(image) = &cfg.image {
        return Ok(image.clone());
    }
    let artifacts: Vec<_> = ctx.inputs.iter().filter(|a| a.name == "image").collect();
    if let Some(reference) = artifacts.iter().find_map(|a| a.reference.clone()) {
        return Ok(reference);
    }
    Err(StageError::InvalidConfig(if artifacts.is_empty() {
        "no image to deploy: set `image`, or `needs` a stage that publishes one (e.g. a `registry` stage)".into()
    } else {
        "the `image` artifact of the needed stages has no registry reference (only a layout path): `needs` a `registry` stage that pushes to a registry, or set `image`".into()
    }))
}

struct DockerDeploy;

impl Guest for DockerDeploy {
    fn describe() -> StageInfo {
        StageInfo {
            name: "docker-deploy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys an image to the local Docker engine in blue/green slots (<name>-blue on host-port, <name>-green on host-port + 1, 127.0.0.1 only): the new version starts in the idle slot and replaces the live one only once its health path answers 2xx. The live slot is kept by the host (`permissions.state: [docker-deploy/]`).".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                Capability { kind: CapabilityKind::Engine, target: None, reason: "pull the image, start the new slot, remove the old one".into() },
                Capability { kind: CapabilityKind::Secret, target: None, reason: "`app-insights-connection-string-secret`, when set".into() },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        if cfg.host_port == u16::MAX {
            return Err(StageError::InvalidConfig(
                "`host-port` must leave room for the green slot on host-port + 1".into(),
            ));
        }
        if !cfg.health_path.starts_with('/') {
            return Err(StageError::InvalidConfig(format!(
                "`health-path` must start with `/`, not `{}`",
                cfg.health_path
            )));
        }
        let image = image(&cfg, &ctx)?;
        let mut env: Vec<(String, String)> = cfg.env.clone().into_iter().collect();
        if let Some(secret) = &cfg.app_insights_connection_string_secret {
            let value = gantry_sdk::secrets::get(secret)?;
            env.retain(|(k, _)| k != "APPLICATIONINSIGHTS_CONNECTION_STRING");
            env.push(("APPLICATIONINSIGHTS_CONNECTION_STRING".into(), value));
        }
        let (previous, previous_bytes) = match read_state(&cfg.name)? {
            Some((state, bytes)) => (Some(state), Some(bytes)),
            None => (None, None),
        };
        let live = previous.as_ref().and_then(|s| Slot::parse(&s.live));
        let slot = live.map_or(Slot::Blue, Slot::other);
        let port = slot.port(cfg.host_port);
        let address = format!("http://127.0.0.1:{port}");
        let container = slot.container(&cfg.name);

        if cfg.pull {
            let id = engine::pull(&image).map_err(StageError::from)?;
            gantry_sdk::info(format!("pulled {image} ({id})"));
        }
        let serving = match (&previous, live) {
            (Some(p), Some(l)) => format!(
                "the previous version (slot {}) still serves at {}",
                l.as_str(),
                p.address
            ),
            _ => "no previous version was deployed".into(),
        };
        gantry_sdk::info(format!(
            "starting {image} in slot {} as `{container}` on 127.0.0.1:{port} (env: {})",
            slot.as_str(),
            if env.is_empty() {
                "none".to_string()
            } else {
                env.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        let health_url = format!("{address}{}", cfg.health_path);
        let id = engine::start(&ContainerRequest {
            image: image.clone(),
            name: container.clone(),
            env,
            ports: vec![(cfg.port, port)],
            health_url: Some(health_url.clone()),
            health_timeout_ms: cfg.health_timeout,
        })
        .map_err(|e| {
            // After the host's first line, before the container's log lines.
            let with = |m: String| match m.split_once('\n') {
                Some((first, rest)) => format!("{first}; {serving}\n{rest}"),
                None => format!("{m}; {serving}"),
            };
            match StageError::from(e) {
                StageError::Failed(m) => StageError::Failed(with(m)),
                StageError::Transient(m) => StageError::Transient(with(m)),
                StageError::Denied(m) => StageError::Denied(with(m)),
                StageError::InvalidConfig(m) => StageError::InvalidConfig(with(m)),
            }
        })?;

        write_state(
            &cfg.name,
            previous_bytes.as_deref(),
            &State {
                live: slot.as_str().into(),
                container: id.clone(),
                image: image.clone(),
                address: address.clone(),
            },
        )
        .map_err(|e| {
            failed(format!(
                "{image} serves at {address} (slot {}), but {e}",
                slot.as_str()
            ))
        })?;
        // The previous slot (live or left over) goes once the new one serves,
        // unless a health gate decides later.
        let old = slot.other().container(&cfg.name);
        let kept = previous
            .as_ref()
            .filter(|_| cfg.keep_previous && live.is_some());
        if kept.is_some() {
            gantry_sdk::info(format!(
                "keeping the previous slot `{old}` for the health gate"
            ));
        }
        if kept.is_none() {
            engine::remove(&old).map_err(|e| {
            failed(format!(
                "{image} serves at {address} (slot {}), but removing the previous slot's container `{old}` failed: {}",
                slot.as_str(),
                match e {
                    gantry_sdk::HostError::Denied(m)
                    | gantry_sdk::HostError::Failed(m)
                    | gantry_sdk::HostError::Invalid(m)
                    | gantry_sdk::HostError::Unavailable(m) => m,
                }
            ))
        })?;
        }

        gantry_sdk::telemetry::event(
            "deployment",
            &[
                ("name".into(), cfg.name.clone()),
                ("image".into(), image.clone()),
                ("slot".into(), slot.as_str().into()),
                ("address".into(), address.clone()),
            ],
        );
        Ok(Outcome {
            artifacts: vec![],
            outputs: {
                let mut outputs = vec![
                    gantry_sdk::output("name", cfg.name.clone()),
                    gantry_sdk::output("address", address.clone()),
                    gantry_sdk::output("container", id),
                    gantry_sdk::output("slot", slot.as_str()),
                    gantry_sdk::output("image", image.clone()),
                ];
                // What a health gate needs to switch back.
                if let Some(p) = kept {
                    outputs.extend([
                        gantry_sdk::output("previous-container", p.container.clone()),
                        gantry_sdk::output("previous-slot", p.live.clone()),
                        gantry_sdk::output("previous-address", p.address.clone()),
                        gantry_sdk::output("previous-image", p.image.clone()),
                    ]);
                }
                outputs
            },
            summary: format!(
                "{} serves {image} at {address} (slot {})",
                cfg.name,
                slot.as_str()
            ),
        })
    }
}

gantry_sdk::export_stage!(DockerDeploy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate_on_adjacent_ports() {
        assert_eq!(Slot::Blue.other(), Slot::Green);
        assert_eq!(Slot::Green.other(), Slot::Blue);
        assert_eq!(Slot::Blue.port(8080), 8080);
        assert_eq!(Slot::Green.port(8080), 8081);
        assert_eq!(Slot::Green.container("app"), "app-green");
        assert_eq!(Slot::parse("purple"), None);
    }
}
