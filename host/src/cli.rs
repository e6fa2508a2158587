//! The `gantry` command line.

use crate::manifest::ManifestFile;
use crate::pipeline::{Pipeline, load_plugins};
use crate::plan::Plan;
use crate::plugins::{BUILTINS, PluginSource};
use crate::report::{Console, Reporter, Silent};
use crate::runtime::{InstanceContext, Runtime, RuntimeOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "Run CI/CD pipelines whose every stage is a sandboxed WebAssembly component",
    long_about = "Run CI/CD pipelines whose every stage is a sandboxed WebAssembly component.\n\n\
        A pipeline is a YAML manifest of stages. Each stage `uses` a plugin (built in, or a \
        .wasm component you wrote against wit/) and gets only the capabilities its \
        `permissions` grant: workspace write, env vars, programs to exec, secrets, HTTP origins.",
    after_help = "Examples:\n  gantry run examples/hello/pipeline.yaml\n  gantry validate pipeline.yaml\n  gantry plugins list\n  gantry plugins inspect ./target/wasm32-wasip2/release/my_stage.wasm"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Show debug output: plugin digests, compile-cache hits, debug log lines.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Where compiled components are cached [default: $GANTRY_CACHE_DIR, else $XDG_CACHE_HOME/gantry, else ~/.cache/gantry].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every component in memory; read and write no cache.
    #[arg(long, global = true)]
    no_cache: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline manifest.
    #[command(after_help = "Example:\n  gantry run examples/hello/pipeline.yaml\n\n\
        Exit status: 0 when every stage succeeded, 1 when a stage failed, 2 when the manifest \
        or a plugin is invalid (nothing ran).")]
    Run {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
        /// The environment name handed to stages and telemetry.
        #[arg(long = "env", default_value = "default", value_name = "NAME")]
        environment: String,
        /// Print the run result as JSON on stdout at the end; progress goes to stderr.
        #[arg(long)]
        json: bool,
    },
    /// Check a manifest and every plugin it uses, without running anything.
    #[command(
        after_help = "Example:\n  gantry validate examples/hello/pipeline.yaml\n\n\
        Checks the YAML against the manifest format (unknown fields, types), stage names, \
        `needs`, plugin references, grants and limits, then loads each plugin: a corrupt \
        .wasm, a core module, or a plugin built against another gantry:pipeline version is \
        refused. Errors name the file, line, column and field."
    )]
    Validate {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
    },
    /// List or inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the built-in plugins.
    #[command(after_help = "Example:\n  gantry plugins list")]
    List,
    /// Show what a plugin says about itself (describe()), its WIT imports and
    /// exports, and the capabilities it needs.
    #[command(
        after_help = "Examples:\n  gantry plugins inspect command\n  gantry plugins inspect ./my_stage.wasm --json"
    )]
    Inspect {
        /// A built-in name or a path to a .wasm component.
        plugin: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = RuntimeOptions {
        cache_dir: if cli.global.no_cache {
            None
        } else {
            cli.global
                .cache_dir
                .clone()
                .or_else(crate::runtime::cache::CompileCache::default_dir)
        },
        ..RuntimeOptions::default()
    };
    let json_out = matches!(
        cli.command,
        Command::Run { json: true, .. }
            | Command::Plugins(PluginsCommand::Inspect { json: true, .. })
    );
    let console: Arc<dyn Reporter> = Arc::new(if json_out {
        Console::on_stderr(cli.global.verbose)
    } else {
        Console::new(cli.global.verbose)
    });
    match cli.command {
        Command::Run {
            manifest,
            environment,
            json,
        } => {
            let Some((file, plan)) = load_manifest(&manifest) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            let pipeline = Pipeline {
                runtime: &runtime,
                plan: &plan,
                reporter: console.clone(),
                environment,
            };
            let result = match pipeline.run(&file).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let failed: Vec<&str> = result
                .stages
                .iter()
                .filter(|s| !s.succeeded())
                .map(|s| s.name.as_str())
                .collect();
            let ok = result.stages.len() - failed.len();
            if failed.is_empty() {
                console.note(&format!("run {} succeeded: {ok} stage(s)", result.run_id));
            } else {
                console.note(&format!(
                    "run {} failed: {ok} succeeded, {} did not ({})",
                    result.run_id,
                    failed.len(),
                    failed.join(", ")
                ));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Validate { manifest } => {
            let Some((_file, plan)) = load_manifest(&manifest) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            if let Err(errors) = load_plugins(&runtime, &plan) {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return Ok(ExitCode::from(2));
            }
            println!(
                "{}: pipeline `{}` is valid",
                manifest.display(),
                plan.pipeline
            );
            for unit in plan.stages.iter().chain(&plan.sinks) {
                println!(
                    "  {} ({}): {}",
                    unit.name,
                    unit.source.label(),
                    unit.grants.describe().join("; ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::List) => {
            let runtime = new_runtime(options, &console)?;
            let ctx = bare_context();
            for b in BUILTINS {
                let source = PluginSource::Builtin(b.name);
                let plugin = runtime.load(&source.read()?)?;
                let info = runtime.describe(&plugin, &ctx).await?;
                println!(
                    "{:<12} {:<8} {:<15} {}",
                    b.name,
                    info.version,
                    plugin.world.as_str(),
                    info.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Inspect { plugin, json }) => {
            let source =
                PluginSource::parse(&plugin, std::path::Path::new(".")).ok_or_else(|| {
                    anyhow::anyhow!("`{plugin}` is neither a built-in plugin nor a .wasm path")
                })?;
            let runtime = new_runtime(options, &console)?;
            let loaded = runtime.load(&source.read()?)?;
            let info = runtime.describe(&loaded, &bare_context()).await?;
            let ty = loaded.component.component_type();
            let imports: Vec<String> = ty
                .imports(runtime.engine())
                .map(|(n, _)| n.to_string())
                .collect();
            let exports: Vec<String> = ty
                .exports(runtime.engine())
                .map(|(n, _)| n.to_string())
                .collect();
            let caps: Vec<serde_json::Value> = info
                .capabilities
                .iter()
                .map(|c| serde_json::json!({"kind": kind_name(c.kind), "target": c.target, "reason": c.reason}))
                .collect();
            let schema: serde_json::Value =
                serde_json::from_str(&info.config_schema).unwrap_or(serde_json::Value::Null);
            if json {
                let out = serde_json::json!({
                    "name": info.name, "version": info.version, "description": info.description,
                    "world": loaded.world.as_str(), "digest": loaded.digest, "source": loaded.label,
                    "config_schema": schema, "capabilities": caps, "imports": imports, "exports": exports,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{} {} ({})\n  {}",
                    info.name,
                    info.version,
                    loaded.world.as_str(),
                    info.description
                );
                println!("source: {}\ndigest: {}", loaded.label, loaded.digest);
                println!("capabilities it needs:");
                if info.capabilities.is_empty() {
                    println!("  none");
                }
                for c in &info.capabilities {
                    let target = c.target.as_deref().unwrap_or("from config");
                    println!("  {} ({target}): {}", kind_name(c.kind), c.reason);
                }
                println!("imports:\n  {}", imports.join("\n  "));
                println!("exports:\n  {}", exports.join("\n  "));
                if !schema.is_null() {
                    println!("config schema:\n{}", serde_json::to_string_pretty(&schema)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The WIT name of a capability kind.
fn kind_name(kind: crate::runtime::bindings::types::CapabilityKind) -> &'static str {
    use crate::runtime::bindings::types::CapabilityKind as K;
    match kind {
        K::WorkspaceWrite => "workspace-write",
        K::Exec => "exec",
        K::Secret => "secret",
        K::Env => "env",
        K::Http => "http",
        K::Engine => "engine",
        K::Cluster => "cluster",
    }
}

/// Parse and plan a manifest, printing every problem; `None` when there were any.
fn load_manifest(path: &std::path::Path) -> Option<(ManifestFile, Plan)> {
    let file = match ManifestFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            eprintln!("{errors}");
            return None;
        }
    };
    match Plan::new(&file) {
        Ok(plan) => Some((file, plan)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} error(s) in {}; nothing was run",
                errors.0.len(),
                path.display()
            );
            None
        }
    }
}

fn new_runtime(options: RuntimeOptions, console: &Arc<dyn Reporter>) -> anyhow::Result<Runtime> {
    let runtime = Runtime::new(options)?;
    if let Some(w) = &runtime.cache_warning {
        console.debug(w);
    }
    Ok(runtime)
}

/// For describe(): no workspace, no secrets, no output.
fn bare_context() -> InstanceContext {
    InstanceContext {
        workspace: PathBuf::new(),
        reporter: Arc::new(Silent),
        redactor: Default::default(),
        secrets: Default::default(),
        collector: Default::default(),
        base: crate::capabilities::telemetry::EventBase {
            run_id: String::new(),
            pipeline: String::new(),
            environment: String::new(),
        },
    }
}
