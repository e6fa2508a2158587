//! Host-side bindings of the `gantry:pipeline` WIT package: the current
//! version (wit/ at the repo root, `0.2.0`) and, side by side, the frozen
//! `0.1.0` (wit/v0.1/), so that plugins built against 0.1 keep loading.
//!
//! Both versions share one host implementation. The `types` interface is the
//! same in both (0.2 only added the `state` interface), so the 0.1 bindings
//! reuse the 0.2 Rust types (`with:` below): a 0.1 plugin is handed and
//! returns exactly the values a 0.2 plugin is, and only the records declared
//! inside the 0.1 host interfaces need converting ([`super::compat`]).
//!
//! The 0.2 worlds import the WASI interfaces a stage may use (wit/deps/, the
//! WASI release wasmtime-wasi implements): their bindings are wasmtime-wasi's
//! and wasmtime-wasi-http's own (`with:`), and they are linked by those crates
//! (with gantry's denials), so only the gantry interfaces are linked from here
//! ([`add_to_linker`]).

/// `bindgen!` for a 0.2 world, its WASI imports bound to wasmtime-wasi's and
/// wasmtime-wasi-http's types; `$with` adds mappings.
macro_rules! bindgen_0_2 {
    ($world:literal { $($with:tt)* }) => {
        wasmtime::component::bindgen!({
            world: $world,
            path: "../wit",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "wasi:io": wasmtime_wasi::p2::bindings::io,
                "wasi:cli": wasmtime_wasi::p2::bindings::cli,
                "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
                "wasi:filesystem": wasmtime_wasi::p2::bindings::filesystem,
                "wasi:random": wasmtime_wasi::p2::bindings::random,
                "wasi:sockets": wasmtime_wasi::p2::bindings::sockets,
                "wasi:http": wasmtime_wasi_http::p2::bindings::http,
                $($with)*
            },
        });
    };
}

/// The `stage` world, 0.2.
pub mod stage {
    bindgen_0_2!("stage" {});
}

/// The `telemetry-sink` world, 0.2; shares its types with [`stage`].
pub mod sink {
    bindgen_0_2!("telemetry-sink" {
        "gantry:pipeline/types": super::stage::gantry::pipeline::types,
        "gantry:pipeline/log": super::stage::gantry::pipeline::log,
        "gantry:pipeline/secrets": super::stage::gantry::pipeline::secrets,
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

/// Link the `gantry:pipeline@0.2.0` host interfaces, one by one: the worlds'
/// own `add_to_linker` would also link the WASI interfaces they import, which
/// wasmtime-wasi links with its own host state.
pub fn add_to_linker<T>(
    linker: &mut wasmtime::component::Linker<T>,
    host: fn(&mut T) -> &mut T,
) -> wasmtime::Result<()>
where
    T: Send
        + 'static
        + log::Host
        + secrets::Host
        + exec::Host
        + telemetry::Host
        + engine::Host
        + cluster::Host
        + state::Host,
{
    use wasmtime::component::HasSelf;
    log::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    secrets::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    exec::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    telemetry::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    engine::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    cluster::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    state::add_to_linker::<T, HasSelf<T>>(linker, host)?;
    Ok(())
}
