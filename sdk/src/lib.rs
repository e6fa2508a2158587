//! Bindings for the `gantry:pipeline@0.2.0` WIT package, for plugins written in Rust.
//!
//! A stage plugin is one `impl Guest` plus one macro call:
//!
//! ```ignore
//! use gantry_sdk::{Guest, StageContext, StageInfo, Outcome, StageError};
//! struct Hello;
//! impl Guest for Hello {
//!     fn describe() -> StageInfo { /* ... */ }
//!     fn run(ctx: StageContext) -> Result<Outcome, StageError> { /* ... */ }
//! }
//! gantry_sdk::export_stage!(Hello);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component gantry loads.

/// `wit_bindgen::generate!` for one of the worlds, with its WASI imports
/// mapped to the `wasip2` crate: the WASI bindings are not generated twice,
/// and a plugin can pass WASI resources between this SDK and `wasip2`/`wstd`.
macro_rules! gantry_bindings {
    ({ $($option:tt)* } { $($with:tt)* }) => {
        wit_bindgen::generate!({
            path: "wit",
            pub_export_macro: true,
            $($option)*
            with: {
                "wasi:io/error@0.2.12": wasip2::io::error,
                "wasi:io/poll@0.2.12": wasip2::io::poll,
                "wasi:io/streams@0.2.12": wasip2::io::streams,
                "wasi:cli/environment@0.2.12": wasip2::cli::environment,
                "wasi:cli/exit@0.2.12": wasip2::cli::exit,
                "wasi:cli/stdin@0.2.12": wasip2::cli::stdin,
                "wasi:cli/stdout@0.2.12": wasip2::cli::stdout,
                "wasi:cli/stderr@0.2.12": wasip2::cli::stderr,
                "wasi:cli/terminal-input@0.2.12": wasip2::cli::terminal_input,
                "wasi:cli/terminal-output@0.2.12": wasip2::cli::terminal_output,
                "wasi:cli/terminal-stdin@0.2.12": wasip2::cli::terminal_stdin,
                "wasi:cli/terminal-stdout@0.2.12": wasip2::cli::terminal_stdout,
                "wasi:cli/terminal-stderr@0.2.12": wasip2::cli::terminal_stderr,
                "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
                "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
                "wasi:filesystem/types@0.2.12": wasip2::filesystem::types,
                "wasi:filesystem/preopens@0.2.12": wasip2::filesystem::preopens,
                "wasi:sockets/network@0.2.12": wasip2::sockets::network,
                "wasi:sockets/instance-network@0.2.12": wasip2::sockets::instance_network,
                "wasi:sockets/udp@0.2.12": wasip2::sockets::udp,
                "wasi:sockets/udp-create-socket@0.2.12": wasip2::sockets::udp_create_socket,
                "wasi:sockets/tcp@0.2.12": wasip2::sockets::tcp,
                "wasi:sockets/tcp-create-socket@0.2.12": wasip2::sockets::tcp_create_socket,
                "wasi:sockets/ip-name-lookup@0.2.12": wasip2::sockets::ip_name_lookup,
                "wasi:random/random@0.2.12": wasip2::random::random,
                "wasi:random/insecure@0.2.12": wasip2::random::insecure,
                "wasi:random/insecure-seed@0.2.12": wasip2::random::insecure_seed,
                "wasi:http/types@0.2.12": wasip2::http::types,
                "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
                $($with)*
            },
        });
    };
}

/// Bindings of the `stage` world.
pub mod stage {
    gantry_bindings!({
        world: "stage",
        export_macro_name: "export_stage",
        default_bindings_module: "gantry_sdk::stage",
        generate_all,
    } {});
}

/// Bindings of the `telemetry-sink` world, sharing the types of [`stage`].
pub mod sink {
    gantry_bindings!({
        world: "telemetry-sink",
        export_macro_name: "export_sink",
        default_bindings_module: "gantry_sdk::sink",
    } {
        "gantry:pipeline/types@0.2.0": crate::stage::gantry::pipeline::types,
        "gantry:pipeline/log@0.2.0": crate::stage::gantry::pipeline::log,
        "gantry:pipeline/secrets@0.2.0": crate::stage::gantry::pipeline::secrets,
    });
}

pub use sink::export_sink;
pub use sink::exports::gantry::pipeline::sink::Guest as SinkGuest;
pub use stage::export_stage;
pub use stage::exports::gantry::pipeline::plugin::Guest;
pub use stage::gantry::pipeline::types::{
    Artifact, Capability, CapabilityKind, Event, EventKind, HostError, Level, Outcome,
    StageContext, StageError, StageInfo, StageOutputs,
};
pub use stage::gantry::pipeline::{cluster, engine, exec, log, secrets, state, telemetry};

/// Host-kept state as JSON values: the `state` interface (granted by key
/// prefix with `permissions.state`) with serde on both ends.
pub mod json_state {
    use super::{StageError, state};

    /// The value of `key`, parsed; none when it is not set.
    pub fn get<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, StageError> {
        match state::get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StageError::Failed(format!(
                    "state `{key}` is not what this plugin wrote ({e}); `gantry state delete {key}` forgets it"
                ))
            }),
        }
    }

    /// Set `key` to `value` as JSON.
    pub fn set<T: serde::Serialize>(key: &str, value: &T) -> Result<(), StageError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StageError::Failed(format!("state `{key}`: {e}")))?;
        Ok(state::set(key, &bytes)?)
    }

    /// Set `key` to `value` only if it still holds `expected` exactly (the
    /// bytes read before); true when it was set.
    pub fn compare_and_set<T: serde::Serialize>(
        key: &str,
        expected: Option<&[u8]>,
        value: &T,
    ) -> Result<bool, StageError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StageError::Failed(format!("state `{key}`: {e}")))?;
        Ok(state::compare_and_set(key, expected, &bytes)?)
    }
}

/// A host error becomes the matching stage error, so `?` works inside `run`.
impl From<HostError> for StageError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Denied(m) => StageError::Denied(m),
            HostError::Invalid(m) => StageError::Failed(m),
            HostError::Unavailable(m) => StageError::Transient(m),
            HostError::Failed(m) => StageError::Failed(m),
        }
    }
}

/// Parse the stage's `with:` configuration into `T`. An empty config parses as `{}`.
pub fn config<T: serde::de::DeserializeOwned>(ctx: &StageContext) -> Result<T, StageError> {
    let text = if ctx.config.trim().is_empty() {
        "{}"
    } else {
        &ctx.config
    };
    serde_json::from_str(text)
        .map_err(|e| StageError::InvalidConfig(format!("stage `{}`: {e}", ctx.stage)))
}

#[cfg(feature = "http")]
pub mod http;

/// Say which step failed, keeping the error's kind: `what: message`.
pub fn prefix(e: StageError, what: &str) -> StageError {
    match e {
        StageError::Failed(m) => StageError::Failed(format!("{what}: {m}")),
        StageError::Transient(m) => StageError::Transient(format!("{what}: {m}")),
        StageError::Denied(m) => StageError::Denied(format!("{what}: {m}")),
        StageError::InvalidConfig(m) => StageError::InvalidConfig(format!("{what}: {m}")),
    }
}

/// The message of an error, whatever its kind.
pub fn message(e: &StageError) -> &str {
    match e {
        StageError::Failed(m)
        | StageError::Transient(m)
        | StageError::Denied(m)
        | StageError::InvalidConfig(m) => m,
    }
}

/// Log at info level.
pub fn info(message: impl AsRef<str>) {
    log::log(Level::Info, message.as_ref());
}

/// Log at warn level.
pub fn warn(message: impl AsRef<str>) {
    log::log(Level::Warn, message.as_ref());
}

/// An output pair for [`Outcome::outputs`].
pub fn output(key: impl Into<String>, value: impl Into<String>) -> (String, String) {
    (key.into(), value.into())
}

/// Running configured commands through the `exec` capability: the `steps`
/// shape shared by the built-in `command` and `build` stages.
pub mod steps {
    use super::StageError;
    use super::exec::{self, Command, ExitStatus};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    /// One command to run.
    #[derive(Deserialize, Clone, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct Step {
        /// Shown in the log and used as the output key prefix; defaults to the program.
        #[serde(default)]
        pub name: Option<String>,
        /// Program and arguments; the program must be granted in `permissions.exec`.
        pub run: Vec<String>,
        /// Working directory relative to the workspace.
        #[serde(default)]
        pub cwd: Option<String>,
        /// Extra environment variables for the program.
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        /// Kill the program after this many seconds.
        #[serde(default, rename = "timeout-seconds")]
        pub timeout_seconds: Option<u64>,
    }

    /// JSON Schema of one [`Step`], for plugins' config schemas.
    pub const STEP_SCHEMA: &str = r#"{
        "type": "object",
        "required": ["run"],
        "additionalProperties": false,
        "properties": {
          "name": {"type": "string", "description": "Label for logs and outputs"},
          "run": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                  "description": "Program (granted in permissions.exec) and its arguments"},
          "cwd": {"type": "string", "description": "Working directory relative to the workspace"},
          "env": {"type": "object", "additionalProperties": {"type": "string"}},
          "timeout-seconds": {"type": "integer", "minimum": 1}
        }
      }"#;

    impl Step {
        pub fn label(&self) -> String {
            self.name
                .clone()
                .unwrap_or_else(|| self.run.first().cloned().unwrap_or_default())
        }

        /// Run the step; a non-zero exit, a kill or a timeout is a `failed`
        /// stage error quoting the last lines of the program's output.
        pub fn run(&self) -> Result<ExitStatus, StageError> {
            let Some((program, args)) = self.run.split_first() else {
                return Err(StageError::InvalidConfig(format!(
                    "step `{}`: `run` is empty",
                    self.label()
                )));
            };
            let status = exec::run(&Command {
                program: program.clone(),
                args: args.to_vec(),
                cwd: self.cwd.clone(),
                env: self.env.clone().into_iter().collect(),
                timeout_ms: self.timeout_seconds.map(|s| s * 1000),
            })?;
            super::telemetry::metric(
                "step.duration-ms",
                status.duration_ms as f64,
                &[("step".into(), self.label())],
            );
            if status.code == Some(0) {
                return Ok(status);
            }
            let why = if status.timed_out {
                format!("timed out after {} s", self.timeout_seconds.unwrap_or(0))
            } else {
                status
                    .code
                    .map_or("was killed".into(), |c| format!("exited with {c}"))
            };
            let out = if status.stderr.trim().is_empty() {
                &status.stdout
            } else {
                &status.stderr
            };
            Err(StageError::Failed(format!(
                "step `{}` ({}) {why}; last lines:\n{}",
                self.label(),
                self.run.join(" "),
                tail(out, 20)
            )))
        }
    }

    /// The last `n` lines of `text`.
    pub fn tail(text: &str, n: usize) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
