//! Bindings for the `gantry:pipeline@0.1.0` WIT package, for plugins written in Rust.
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

/// Bindings of the `stage` world.
pub mod stage {
    wit_bindgen::generate!({
        world: "stage",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_stage",
        default_bindings_module: "gantry_sdk::stage",
        generate_all,
    });
}

/// Bindings of the `telemetry-sink` world, sharing the types of [`stage`].
pub mod sink {
    wit_bindgen::generate!({
        world: "telemetry-sink",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_sink",
        default_bindings_module: "gantry_sdk::sink",
        with: {
            "gantry:pipeline/types@0.1.0": crate::stage::gantry::pipeline::types,
            "gantry:pipeline/log@0.1.0": crate::stage::gantry::pipeline::log,
            "gantry:pipeline/secrets@0.1.0": crate::stage::gantry::pipeline::secrets,
        },
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
pub use stage::gantry::pipeline::{cluster, engine, exec, log, secrets, telemetry};

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
