//! `cargo bench -p gantry --bench compile_cost`
//!
//! What a plugin costs the first time a machine sees it: compiling the
//! component to native code, with
//!
//! 1. Cranelift, parallel compilation on (gantry's default);
//! 2. Cranelift, one thread (what (1) saves on this machine's cores);
//! 3. Winch, wasmtime's baseline compiler (`--compiler winch`);
//!
//! then the first `describe()` call (instantiate + call) of each result, to
//! show what the faster compile costs at run time. The components are the
//! largest built-in plugin plus any given in `GANTRY_BENCH_COMPONENTS`
//! (comma-separated .wasm paths, e.g. the Python and JavaScript templates
//! built by `gantry plugins new`). Same machine, same run, each measurement
//! the median of a few. Prints numbers; asserts nothing about them.

use gantry::capabilities::cluster::kube::Connection;
use gantry::capabilities::telemetry::{Collector, EventBase};
use gantry::plugins::{BUILTINS, PluginBytes};
use gantry::report::Silent;
use gantry::runtime::{Compiler, InstanceContext, Runtime, RuntimeOptions, engine_config};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

const ROUNDS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Median time of `Component::new` on a fresh engine with these settings.
fn compile(bytes: &[u8], compiler: Compiler, parallel: bool) -> Duration {
    let mut config = engine_config(false, compiler);
    config.parallel_compilation(parallel);
    let engine = Engine::new(&config).expect("engine");
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                Component::new(&engine, bytes).expect("compiles");
                start.elapsed()
            })
            .collect(),
    )
}

/// Median time of instantiate + `describe()` with gantry's runtime.
async fn describe(bytes: &PluginBytes, compiler: Compiler) -> Duration {
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: None,
        compiler,
        ..RuntimeOptions::default()
    })
    .expect("runtime");
    let plugin = runtime.load(bytes).expect("loads");
    let workspace = tempfile::tempdir().unwrap();
    let ctx = InstanceContext {
        workspace: workspace.path().canonicalize().unwrap(),
        reporter: Arc::new(Silent),
        redactor: Default::default(),
        secrets: Default::default(),
        collector: Collector::default(),
        base: EventBase {
            run_id: "bench".into(),
            pipeline: "bench".into(),
            environment: "bench".into(),
        },
        logs: None,
        state: None,
        cluster: Arc::new(Connection::new(None, "bench")),
    };
    let mut samples = vec![];
    for _ in 0..ROUNDS * 3 {
        let start = Instant::now();
        runtime.describe(&plugin, &ctx).await.expect("describe");
        samples.push(start.elapsed());
    }
    median(samples)
}

#[tokio::main]
async fn main() {
    let mut components: Vec<PluginBytes> = vec![];
    let largest = BUILTINS
        .iter()
        .max_by_key(|b| b.wasm.len())
        .expect("built-in plugins");
    components.push(PluginBytes::new(
        format!("builtin {}", largest.name),
        largest.wasm.into(),
    ));
    for path in std::env::var("GANTRY_BENCH_COMPONENTS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.into());
        components.push(PluginBytes::new(name, bytes.into()));
    }
    if components.len() == 1 {
        println!(
            "(only the built-ins: set GANTRY_BENCH_COMPONENTS=a.wasm,b.wasm for the Python and \
             JavaScript templates)"
        );
    }
    println!(
        "{} cores; median of {ROUNDS} compiles each\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<24} {:>8} {:>12} {:>12} {:>12} {:>9} {:>14} {:>14}",
        "component",
        "size",
        "cranelift",
        "1 thread",
        "winch",
        "winch/cl",
        "describe (cl)",
        "describe (w)"
    );
    for c in &components {
        let parallel = compile(&c.bytes, Compiler::Cranelift, true);
        let serial = compile(&c.bytes, Compiler::Cranelift, false);
        let winch = compile(&c.bytes, Compiler::Winch, true);
        let d_cl = describe(c, Compiler::Cranelift).await;
        let d_w = describe(c, Compiler::Winch).await;
        println!(
            "{:<24} {:>6.1}MB {:>12} {:>12} {:>12} {:>8.2}x {:>11.2} ms {:>11.2} ms",
            c.label,
            c.bytes.len() as f64 / 1e6,
            secs(parallel),
            secs(serial),
            secs(winch),
            winch.as_secs_f64() / parallel.as_secs_f64(),
            d_cl.as_secs_f64() * 1e3,
            d_w.as_secs_f64() * 1e3,
        );
    }
}
