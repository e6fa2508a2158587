//! Host-side bindings of the `gantry:pipeline` WIT package: the current
//! version (wit/ at the repo root, `0.2.0`) and, side by side, the frozen
//! `0.1.0` (wit/v0.1/), so that plugins built against 0.1 keep loading.
//!
//! Both versions share one host implementation. The `types` interface is the
//! same in both (0.2 only added the `state` interface), so the 0.1 bindings
//! reuse the 0.2 Rust types (`with:` below): a 0.1 plugin is handed and
//! returns exactly the values a 0.2 plugin is, and only the records declared
//! inside the 0.1 host interfaces need converting ([`super::compat`]).

/// The `stage` world, 0.2.
pub mod stage {
    wasmtime::component::bindgen!({
        world: "stage",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The `telemetry-sink` world, 0.2; shares its types with [`stage`].
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

/// `gantry:pipeline@0.1.0`, frozen: what plugins built before the `state`
/// interface import and export.
pub mod v0_1 {
    /// The `stage` world, 0.1.
    pub mod stage {
        wasmtime::component::bindgen!({
            world: "stage",
            path: "../wit/v0.1",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "gantry:pipeline/types": crate::runtime::bindings::stage::gantry::pipeline::types,
            },
        });
    }

    /// The `telemetry-sink` world, 0.1.
    pub mod sink {
        wasmtime::component::bindgen!({
            world: "telemetry-sink",
            path: "../wit/v0.1",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "gantry:pipeline/types": crate::runtime::bindings::stage::gantry::pipeline::types,
                "gantry:pipeline/log": super::stage::gantry::pipeline::log,
                "gantry:pipeline/secrets": super::stage::gantry::pipeline::secrets,
            },
        });
    }

    pub use stage::gantry::pipeline::{cluster, engine, exec, log, secrets, telemetry};
}

pub use stage::gantry::pipeline::{cluster, engine, exec, log, secrets, state, telemetry, types};
