//! gantry: a CI/CD pipeline host whose every stage is a sandboxed WebAssembly
//! component speaking to the host only through the `gantry:pipeline` WIT package.
//!
//! Where to look:
//! - [`manifest`]: the YAML pipeline manifest, parsed with spans, and its checks.
//! - [`plan`]: a checked manifest resolved into what will run (plugins, grants, limits).
//! - [`pipeline`]: runs a plan's stages and telemetry sinks.
//! - [`runtime`]: the wasmtime engine, the compile cache, loading and running components.
//! - [`capabilities`]: one module per host capability (log, secrets, exec, http, ...),
//!   each with its grant (from the manifest) and its per-instance state.
//! - [`sandbox`]: kernel confinement (Landlock, PID namespaces, cgroups) of the
//!   programs a stage starts through `exec`.
//! - [`plugins`]: built-in plugins embedded in the binary and local `.wasm` files.
//! - [`journal`] and [`state_dir`]: run records and plugin state, kept outside
//!   every workspace; [`nofollow`]: how the host writes files without following
//!   links.
//! - [`oci`]: plugins pulled from OCI registries, `gantry.lock`, their cache.
//! - [`report`] and [`redact`]: what the user sees, with secrets masked.
//! - [`queue`]: the durable queue and history of continuous delivery (SQLite).
//! - [`certify`]: `gantry plugins test`, a plugin run against scripted host answers.
//! - [`templates`]: `gantry plugins new`, a plugin project per language.
//! - [`triggers`], [`webhook`] and [`git`]: which pushes start a run, webhook
//!   deliveries (GitHub, Azure DevOps), polling and checkouts with real git.
//! - [`web`]: the dashboard of `gantry serve` and `gantry report`'s HTML.
//! - [`kubernetes`]: stages as Kubernetes Jobs (`executor: kubernetes`), and the
//!   single-stage worker (`gantry stage`) their pods run.
//! - [`cli`]: the `gantry` command line.

pub mod capabilities;
pub mod certify;
pub mod cli;
pub mod executor;
pub mod expr;
#[cfg(test)]
mod fuzz;
pub mod git;
pub mod journal;
pub mod kubernetes;
pub mod manifest;
pub mod nofollow;
pub mod oci;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod queue;
pub mod redact;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod schema;
pub mod serve;
pub mod show;
pub mod state_dir;
pub mod templates;
pub mod triggers;
pub mod units;
pub mod vso;
pub mod web;
pub mod webhook;
pub mod yaml_path;

/// The WIT package this host implements; plugins must be built against a
/// semver-compatible version.
pub const WIT_PACKAGE: &str = "gantry:pipeline";
/// The version of [`WIT_PACKAGE`] this host implements.
pub const WIT_VERSION: &str = "0.2.0";
/// Older versions whose plugins this host still runs (wit/v0.1/), each
/// through its own bindings adapted onto the same implementation.
pub const WIT_OLDER: &[&str] = &["0.1.0"];

/// The WIT files of `gantry:pipeline` at `version` (the current one or a
/// frozen older one the host still loads), as compiled into this binary, by
/// path relative to the WIT directory. The current one comes with the WASI
/// packages its worlds import (`deps/`), so that a directory holding them is
/// a complete WIT package for any bindings generator.
pub fn wit_files(version: &str) -> Vec<(&'static str, &'static str)> {
    if version == "0.1.0" {
        vec![
            ("host.wit", include_str!("../../wit/v0.1/host.wit")),
            ("types.wit", include_str!("../../wit/v0.1/types.wit")),
            ("worlds.wit", include_str!("../../wit/v0.1/worlds.wit")),
        ]
    } else {
        vec![
            ("host.wit", include_str!("../../wit/host.wit")),
            ("types.wit", include_str!("../../wit/types.wit")),
            ("worlds.wit", include_str!("../../wit/worlds.wit")),
            ("deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
            ("deps/clocks.wit", include_str!("../../wit/deps/clocks.wit")),
            (
                "deps/filesystem.wit",
                include_str!("../../wit/deps/filesystem.wit"),
            ),
            ("deps/http.wit", include_str!("../../wit/deps/http.wit")),
            ("deps/io.wit", include_str!("../../wit/deps/io.wit")),
            ("deps/random.wit", include_str!("../../wit/deps/random.wit")),
            (
                "deps/sockets.wit",
                include_str!("../../wit/deps/sockets.wit"),
            ),
        ]
    }
}

/// Write [`wit_files`] of `version` into `dir` (made if missing); returns the
/// paths written.
pub fn write_wit(dir: &std::path::Path, version: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    let mut written = vec![];
    for (name, text) in wit_files(version) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
