//! Host-side bindings of the `gantry:pipeline` WIT package (wit/ at the repo root).

/// The `stage` world.
pub mod stage {
    wasmtime::component::bindgen!({
        world: "stage",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The `telemetry-sink` world; shares its types with [`stage`].
pub mod sink {
    wasmtime::component::bindgen!({
        world: "telemetry-sink",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "gantry:pipeline/types": super::stage::gantry::pipeline::types,
            "gantry:pipeline/log": super::stage::gantry::pipeline::log,
            "gantry:pipeline/secrets": super::stage::gantry::pipeline::secrets,
        },
    });
}

pub use stage::gantry::pipeline::{cluster, engine, exec, log, secrets, telemetry, types};
