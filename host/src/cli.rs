//! The `gantry` command line.

use crate::journal::{Journal, Record};
use crate::manifest::ManifestFile;
use crate::oci::fetch::LockMode;
use crate::pipeline::{Pipeline, Plugins, Resume, RunResult, load_plugins};
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
    /// Where compiled components and pulled OCI plugins are cached [default: $GANTRY_CACHE_DIR, else $XDG_CACHE_HOME/gantry, else ~/.cache/gantry].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every component in memory and pull OCI plugins every time; read and write no cache.
    #[arg(long, global = true)]
    no_cache: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline manifest.
    #[command(
        after_help = "Examples:\n  gantry run examples/hello/pipeline.yaml\n  gantry run pipeline.yaml --env production --output json\n\n\
        Stages run as soon as the stages they need have succeeded. The run is journaled in \
        <workspace>/.gantry/runs/<run-id>/ (journal, per-stage logs, summary); if gantry dies, \
        `gantry resume <run-id>` continues it. Ctrl-C stops running stages and records it.\n\n\
        OCI plugins (`uses: oci://...`) run at the digests gantry.lock pins; a reference not \
        pinned yet is resolved and pinned (said in one line), unless --locked.\n\n\
        Exit status: 0 when every stage succeeded (or was skipped by its condition), 1 when a \
        stage failed, 2 when the manifest or a plugin is invalid (nothing ran), 130 on Ctrl-C."
    )]
    Run {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        lock: LockArg,
    },
    /// Check a manifest and every plugin it uses, without running anything.
    #[command(
        after_help = "Example:\n  gantry validate examples/hello/pipeline.yaml --env default\n\n\
        Checks the YAML against the manifest format (unknown fields, types), stage names, \
        `needs` (unknown stages, cycles), environments and providers, expressions, grants and \
        limits; loads each plugin (a corrupt .wasm, a core module, or a plugin built against \
        another gantry:pipeline version is refused) and checks each stage's `with` against the \
        JSON Schema its plugin describes. Errors name the file, line, column and field."
    )]
    Validate {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        lock: LockArg,
    },
    /// Show what a run would do: stages in order, provider and digest, config
    /// (secrets masked), grants and needs.
    #[command(
        after_help = "Examples:\n  gantry plan examples/hello/pipeline.yaml\n  gantry plan pipeline.yaml --env production --output json"
    )]
    Plan {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        lock: LockArg,
    },
    /// Pin every OCI plugin of a manifest (all environments) in gantry.lock.
    #[command(after_help = "Example:\n  gantry lock pipeline.yaml\n\n\
        Resolves each `oci://` reference (and each `plugins:` alias with `oci:`) to the digest \
        of its manifest and of its component, pulls and checks the component (it is cached by \
        digest), and writes gantry.lock next to the manifest: sorted, one [[plugin]] per \
        reference, only references the manifest uses. Run it again to accept moved tags.")]
    Lock {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
    },
    /// Continue a run whose host died, without re-running finished stages.
    #[command(
        after_help = "Example:\n  gantry resume 1a2b3c4d5e6-0f1e -C examples/hello\n\n\
        Reads <workspace>/.gantry/runs/<run-id>/journal.jsonl. Stages whose completion was \
        recorded keep their result and outputs; the others run. The manifest must be unchanged."
    )]
    Resume {
        run_id: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the runs recorded in a workspace, oldest first.
    #[command(after_help = "Example:\n  gantry runs -C examples/hello")]
    Runs {
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
    /// Show the logs of a run, or of one of its stages.
    #[command(
        after_help = "Examples:\n  gantry logs 1a2b3c4d5e6-0f1e -C examples/hello\n  gantry logs 1a2b3c4d5e6-0f1e test -C examples/hello"
    )]
    Logs {
        run_id: String,
        stage: Option<String>,
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
    /// List or inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print the JSON Schema of the manifest format (for editors).
    #[command(
        after_help = "Example:\n  gantry schema > schema/gantry-manifest.schema.json\n\n\
        In VS Code with the YAML extension, add to the top of a manifest:\n  \
        # yaml-language-server: $schema=../../schema/gantry-manifest.schema.json"
    )]
    Schema,
}

#[derive(Args)]
struct EnvArg {
    /// The environment (an overlay in the manifest); default: the one marked
    /// `default: true`, else `default`.
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
}

#[derive(Args)]
struct LockArg {
    /// Refuse to run unless gantry.lock pins every OCI plugin and each tag
    /// still resolves to its pinned digest (for CI).
    #[arg(long)]
    locked: bool,
}

impl LockArg {
    fn mode(&self, otherwise: LockMode) -> LockMode {
        if self.locked {
            LockMode::Locked
        } else {
            otherwise
        }
    }
}

/// How `plugins push` and `plugins pull` reach a registry.
#[derive(Args)]
struct RegistryArgs {
    /// The environment variable holding the registry user name (with --password-env).
    #[arg(long, value_name = "VAR", requires = "password_env")]
    username_env: Option<String>,
    /// The environment variable holding the registry password or token.
    #[arg(long, value_name = "VAR", requires = "username_env")]
    password_env: Option<String>,
    /// Plain HTTP instead of HTTPS; only for a registry on this machine.
    #[arg(long)]
    insecure: bool,
}

impl RegistryArgs {
    /// A client for `reference`'s registry.
    fn client(
        &self,
        reference: &crate::oci::Reference,
    ) -> anyhow::Result<crate::oci::client::Client> {
        if self.insecure && !reference.is_loopback() {
            anyhow::bail!(
                "--insecure (plain HTTP) is only allowed for a registry on this machine, not `{}`",
                reference.registry
            );
        }
        let credentials = match (&self.username_env, &self.password_env) {
            (Some(u), Some(p)) => {
                let var = |v: &str| {
                    std::env::var(v)
                        .map_err(|_| anyhow::anyhow!("environment variable `{v}` is not set"))
                };
                Some(crate::oci::client::Credentials {
                    username: var(u)?,
                    password: var(p)?,
                    origin: format!("${u}/${p}"),
                })
            }
            _ => None,
        };
        let note: crate::oci::client::RetryNote = Arc::new(|l: &str| eprintln!("warn: {l}"));
        Ok(crate::oci::client::Client::new(
            &reference.registry,
            self.insecure,
            credentials,
            note,
        )?)
    }
}

#[derive(Args)]
struct OutputArg {
    /// `text` for people, `json` for programs (progress then goes to stderr).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
struct WorkspaceArg {
    /// The workspace the runs are recorded in (where `.gantry/runs` is).
    #[arg(
        short = 'C',
        long = "workspace",
        value_name = "DIR",
        default_value = "."
    )]
    dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
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
    /// Push a component to a registry as a Wasm OCI artifact (the layout
    /// `wkg oci push` writes) and print its digest.
    #[command(
        after_help = "Examples:\n  gantry plugins push target/wasm32-wasip2/release/my_stage.wasm oci://ghcr.io/me/my-stage:1 --username-env REG_USER --password-env REG_PASS\n  gantry plugins push echo.wasm oci://127.0.0.1:5000/plugins/echo:1 --insecure"
    )]
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// Where to: `oci://registry/repo:tag`.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull a plugin, check its digests and that it is a component, keep it in
    /// the plugin cache, and print its digests.
    #[command(
        after_help = "Example:\n  gantry plugins pull oci://127.0.0.1:5000/plugins/echo:1 --insecure"
    )]
    Pull {
        /// `oci://registry/repo:tag` or `oci://registry/repo@sha256:...`.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
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
    let json = match &cli.command {
        Command::Run { output, .. }
        | Command::Plan { output, .. }
        | Command::Resume { output, .. } => output.output == Output::Json,
        Command::Plugins(PluginsCommand::Inspect { json, .. }) => *json,
        _ => false,
    };
    let console: Arc<dyn Reporter> = if json {
        Arc::new(Console::on_stderr(cli.global.verbose))
    } else if crate::report::Live::wanted() {
        Arc::new(crate::report::Live::new(cli.global.verbose))
    } else {
        Arc::new(Console::new(cli.global.verbose))
    };
    match cli.command {
        Command::Run {
            manifest,
            env,
            output,
            lock,
        } => {
            let Some((file, plan)) = load_manifest(&manifest, env.environment.as_deref()) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            let mode = lock.mode(LockMode::Update);
            let Some(plugins) =
                check_configs_with(&runtime, &file, &plan, console.as_ref(), mode).await
            else {
                return Ok(ExitCode::from(2));
            };
            let run_id = crate::pipeline::new_run_id();
            let commit = crate::pipeline::detect_commit(&plan.workspace);
            let mut journal = Journal::create(&plan.workspace, &run_id)?;
            journal.append(&Record::RunStarted {
                run_id: run_id.clone(),
                pipeline: plan.pipeline.clone(),
                environment: plan.environment.clone(),
                manifest: std::path::absolute(&file.path)?,
                manifest_sha256: crate::journal::file_sha256(&file.path)?,
                commit: commit.clone(),
                ts_ms: crate::capabilities::telemetry::now_ms(),
            })?;
            let pipeline = Pipeline {
                runtime: &runtime,
                plan: &plan,
                reporter: console.clone(),
                run_id,
                commit,
            };
            finish_run(
                pipeline.run(&plugins, journal, Resume::default()).await,
                &console,
                output.output,
            )
        }
        Command::Resume {
            run_id,
            workspace,
            output,
        } => {
            let dir = crate::journal::run_dir(&workspace.dir, &run_id).ok_or_else(|| {
                anyhow::anyhow!(
                    "no run `{run_id}` in {}",
                    workspace.dir.join(crate::journal::RUNS_DIR).display()
                )
            })?;
            let records = Journal::read(&dir)?;
            let Some(Record::RunStarted {
                manifest,
                manifest_sha256,
                environment,
                commit,
                ..
            }) = records.first()
            else {
                anyhow::bail!(
                    "{}: the journal does not start with run-started",
                    dir.display()
                );
            };
            if records
                .iter()
                .any(|r| matches!(r, Record::RunFinished { .. }))
            {
                anyhow::bail!("run `{run_id}` already finished; start a new one with `gantry run`");
            }
            if crate::journal::file_sha256(manifest).ok().as_ref() != Some(manifest_sha256) {
                anyhow::bail!(
                    "{} changed (or is gone) since run `{run_id}` started; resuming would mix two \
                     pipelines: start a new run with `gantry run`",
                    manifest.display()
                );
            }
            let Some((file, plan)) = load_manifest(manifest, Some(environment)) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            let Some(plugins) = check_configs(&runtime, &file, &plan, console.as_ref()).await
            else {
                return Ok(ExitCode::from(2));
            };
            let mut journal = Journal::open(&dir)?;
            journal.append(&Record::RunResumed {
                ts_ms: crate::capabilities::telemetry::now_ms(),
            })?;
            let resume = Resume::from_records(&records);
            let pipeline = Pipeline {
                runtime: &runtime,
                plan: &plan,
                reporter: console.clone(),
                run_id,
                commit: commit.clone(),
            };
            finish_run(
                pipeline.run(&plugins, journal, resume).await,
                &console,
                output.output,
            )
        }
        Command::Validate {
            manifest,
            env,
            lock,
        } => {
            let Some((file, plan)) = load_manifest(&manifest, env.environment.as_deref()) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            let mode = lock.mode(LockMode::ReadOnly);
            if check_configs_with(&runtime, &file, &plan, console.as_ref(), mode)
                .await
                .is_none()
            {
                return Ok(ExitCode::from(2));
            }
            println!(
                "{}: pipeline `{}` is valid for environment `{}`",
                manifest.display(),
                plan.pipeline,
                plan.environment
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
        Command::Plan {
            manifest,
            env,
            output,
            lock,
        } => {
            let Some((_file, plan)) = load_manifest(&manifest, env.environment.as_deref()) else {
                return Ok(ExitCode::from(2));
            };
            let runtime = new_runtime(options, &console)?;
            let mode = lock.mode(LockMode::ReadOnly);
            if let Err(errors) = crate::oci::fetch::fetch_plan(
                &plan,
                runtime.cache_root.as_deref(),
                mode,
                console.as_ref(),
            )
            .await
            {
                print_errors(&errors);
                return Ok(ExitCode::from(2));
            }
            let plugins = match load_plugins(&runtime, &plan, console.as_ref()) {
                Ok(p) => p,
                Err(errors) => {
                    print_errors(&errors);
                    return Ok(ExitCode::from(2));
                }
            };
            let shown = crate::show::plan(&plan, &plugins);
            if output.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", crate::show::plan_text(&shown));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { workspace } => {
            let runs = crate::journal::list_runs(&workspace.dir);
            if runs.is_empty() {
                println!(
                    "no runs in {}",
                    workspace.dir.join(crate::journal::RUNS_DIR).display()
                );
            }
            for (id, records) in runs {
                println!("{}", crate::show::run_line(&id, &records));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run_id,
            stage,
            workspace,
        } => {
            let dir = crate::journal::run_dir(&workspace.dir, &run_id).ok_or_else(|| {
                anyhow::anyhow!(
                    "no run `{run_id}` in {}",
                    workspace.dir.join(crate::journal::RUNS_DIR).display()
                )
            })?;
            print!("{}", crate::show::logs(&dir, stage.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock { manifest } => lock(&manifest, options.cache_dir.as_deref(), &console).await,
        Command::Plugins(PluginsCommand::Push {
            file,
            reference,
            registry,
        }) => push(&file, &reference, &registry).await,
        Command::Plugins(PluginsCommand::Pull {
            reference,
            registry,
        }) => pull(&reference, &registry, options.cache_dir.as_deref()).await,
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::manifest::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::List) => {
            let runtime = new_runtime(options, &console)?;
            let ctx = bare_context();
            let mut rows = vec![["NAME", "VERSION", "WORLD", "DESCRIPTION"].map(String::from)];
            for b in BUILTINS {
                let source = PluginSource::Builtin(b.name);
                let plugin = runtime.load_reporting(&source.read()?, console.as_ref())?;
                let info = describe(&runtime, &plugin, &ctx, console.as_ref()).await?;
                rows.push([
                    b.name.to_string(),
                    info.version,
                    plugin.world.as_str().to_string(),
                    info.description,
                ]);
            }
            print!("{}", crate::show::table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Inspect { plugin, json }) => {
            let source = PluginSource::parse(&plugin, std::path::Path::new("."))
                .filter(|s| !matches!(s, Ok(PluginSource::Oci(_))))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`{plugin}` is neither a built-in plugin nor a .wasm path (pull an OCI plugin with `gantry plugins pull`)"
                    )
                })?
                .map_err(anyhow::Error::msg)?;
            let runtime = new_runtime(options, &console)?;
            let loaded = runtime.load_reporting(&source.read()?, console.as_ref())?;
            let info = describe(&runtime, &loaded, &bare_context(), console.as_ref()).await?;
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

/// Print the summary of a run and choose the exit status.
fn finish_run(
    result: anyhow::Result<RunResult>,
    console: &Arc<dyn Reporter>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    for line in crate::show::summary_table(&result).lines() {
        console.note(line);
    }
    let failed: Vec<&str> = result
        .stages
        .iter()
        .filter(|s| !s.ok())
        .map(|s| s.name.as_str())
        .collect();
    let verdict = if result.cancelled {
        format!(
            "run {} cancelled; `gantry resume {}` continues it",
            result.run_id, result.run_id
        )
    } else if failed.is_empty() {
        format!("run {} succeeded", result.run_id)
    } else {
        format!("run {} failed: {}", result.run_id, failed.join(", "))
    };
    console.note(&verdict);
    if crate::vso::enabled() {
        for line in crate::vso::commands(&result) {
            println!("{line}");
        }
    }
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(if result.cancelled {
        ExitCode::from(130)
    } else if result.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_errors(errors: &[String]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

/// `gantry lock`: pin the OCI plugins of every environment.
async fn lock(
    manifest: &std::path::Path,
    cache_dir: Option<&std::path::Path>,
    console: &Arc<dyn Reporter>,
) -> anyhow::Result<ExitCode> {
    let file = match ManifestFile::load(manifest) {
        Ok(f) => f,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // Every environment may swap in other plugins: lock them all.
    let mut envs: Vec<Option<&str>> = file
        .manifest
        .environments
        .keys()
        .map(|e| Some(e.as_str()))
        .collect();
    if envs.is_empty() {
        envs.push(None);
    }
    let mut plans = vec![];
    for env in envs {
        match crate::plan::Plan::new(&file, env) {
            Ok(p) => plans.push(p),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    match crate::oci::fetch::lock_manifest(&file, &plans, cache_dir, console.as_ref()).await {
        Ok((path, false)) if !path.exists() => {
            println!(
                "{}: uses no OCI plugins; nothing to lock",
                manifest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok((path, changed)) => {
            println!(
                "{}: {}",
                path.display(),
                if changed { "written" } else { "up to date" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            print_errors(&errors);
            Ok(ExitCode::from(2))
        }
    }
}

/// `gantry plugins push`.
async fn push(
    file: &std::path::Path,
    reference: &str,
    registry: &RegistryArgs,
) -> anyhow::Result<ExitCode> {
    let r = crate::oci::Reference::parse(reference).map_err(anyhow::Error::msg)?;
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    crate::runtime::loader::check_header(&file.display().to_string(), &bytes)?;
    let title = file
        .file_name()
        .map_or("plugin.wasm".into(), |n| n.to_string_lossy().into_owned());
    let pushed = crate::oci::push::push(
        &registry.client(&r)?,
        &r,
        &bytes,
        &title,
        &created_time(file),
    )
    .await?;
    println!("{}@{}", r.named(), pushed.manifest_digest);
    println!("component: {}", pushed.layer_digest);
    Ok(ExitCode::SUCCESS)
}

/// `gantry plugins pull`: fetch, check and cache one plugin.
async fn pull(
    reference: &str,
    registry: &RegistryArgs,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let plugin = crate::oci::OciPlugin::new(reference, None, registry.insecure)
        .map_err(anyhow::Error::msg)?;
    let client = registry.client(&plugin.reference)?;
    let (pin, bytes) = crate::oci::fetch::resolve(&client, &plugin).await?;
    crate::runtime::loader::check_header(&plugin.written, &bytes)?;
    crate::oci::store::Store::open(cache_dir).put(&pin.layer_digest, &bytes);
    println!("{}@{}", plugin.reference.named(), pin.manifest_digest);
    println!("component: {}", pin.layer_digest);
    Ok(ExitCode::SUCCESS)
}

/// When a pushed component was made: SOURCE_DATE_EPOCH when set (reproducible
/// pushes), else the file's modification time.
fn created_time(file: &std::path::Path) -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
    let at = epoch
        .or_else(|| std::fs::metadata(file).and_then(|m| m.modified()).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// [`check_configs_with`], using and extending gantry.lock as `run` does.
async fn check_configs(
    runtime: &Runtime,
    file: &ManifestFile,
    plan: &Plan,
    reporter: &dyn Reporter,
) -> Option<Plugins> {
    check_configs_with(runtime, file, plan, reporter, LockMode::Update).await
}

/// Fetch the OCI plugins (as `mode` says), load every plugin and check each
/// stage's `with` against the JSON Schema its plugin's describe() returns.
/// Problems are printed; on success the loaded plugins, which the run then uses.
async fn check_configs_with(
    runtime: &Runtime,
    file: &ManifestFile,
    plan: &Plan,
    reporter: &dyn Reporter,
    mode: LockMode,
) -> Option<Plugins> {
    if let Err(errors) =
        crate::oci::fetch::fetch_plan(plan, runtime.cache_root.as_deref(), mode, reporter).await
    {
        print_errors(&errors);
        return None;
    }
    let plugins = match load_plugins(runtime, plan, reporter) {
        Ok(p) => p,
        Err(errors) => {
            print_errors(&errors);
            return None;
        }
    };
    let ctx = bare_context();
    let mut errors = vec![];
    let mut plugin_errors = vec![];
    let mut schemas: std::collections::HashMap<String, Option<serde_json::Value>> =
        Default::default();
    for unit in plan.stages.iter().chain(&plan.sinks) {
        let plugin = &plugins[&unit.field];
        if !schemas.contains_key(&plugin.digest) {
            let schema = match describe(runtime, plugin, &ctx, reporter).await {
                Ok(info) if info.config_schema.trim().is_empty() => None,
                Ok(info) => serde_json::from_str(&info.config_schema)
                    .map_err(|e| {
                        plugin_errors.push(format!(
                            "{}: its config schema is not JSON: {e}",
                            plugin.label
                        ))
                    })
                    .ok(),
                Err(e) => {
                    plugin_errors.push(format!("{}: {e:#}", unit.field));
                    None
                }
            };
            schemas.insert(plugin.digest.clone(), schema);
        }
        if let Some(schema) = &schemas[&plugin.digest] {
            let at = unit.with_at().unwrap_or(file.manifest.pipeline.referenced);
            for e in crate::schema::check_config(schema, &unit.config) {
                errors.push(file.error(
                    &at,
                    &format!("{}.with{}", unit.field, e.path),
                    e.message,
                    Some(format!(
                        "`gantry plugins inspect {}` shows its config schema",
                        unit.uses
                    )),
                ));
            }
        }
    }
    let ok = plugin_errors.is_empty() && errors.is_empty();
    print_errors(&plugin_errors);
    if !errors.is_empty() {
        eprintln!("{}", crate::manifest::ManifestErrors(errors));
    }
    ok.then_some(plugins)
}

/// Parse and plan a manifest, printing every problem; `None` when there were any.
fn load_manifest(path: &std::path::Path, env: Option<&str>) -> Option<(ManifestFile, Plan)> {
    let file = match ManifestFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            eprintln!("{errors}");
            return None;
        }
    };
    match Plan::new(&file, env) {
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

/// `describe()`, with the trap behind a failure shown at debug level
/// (`--verbose`); the error itself says which budget or trap ended it.
async fn describe(
    runtime: &Runtime,
    plugin: &crate::runtime::Plugin,
    ctx: &InstanceContext,
    reporter: &dyn Reporter,
) -> anyhow::Result<crate::runtime::bindings::types::StageInfo> {
    runtime.describe(plugin, ctx).await.inspect_err(|e| {
        if let Some(f) = e.downcast_ref::<crate::runtime::DescribeFailed>() {
            reporter.debug(&f.detail);
        }
    })
}

/// For describe(): no workspace, no secrets, no output.
fn bare_context() -> InstanceContext {
    InstanceContext {
        workspace: PathBuf::new(),
        reporter: Arc::new(Silent),
        redactor: Default::default(),
        secrets: Default::default(),
        collector: Default::default(),
        run_dir: None,
        cluster: std::sync::Arc::new(crate::capabilities::cluster::kube::Connection::new(
            None, "",
        )),
        base: crate::capabilities::telemetry::EventBase {
            run_id: String::new(),
            pipeline: String::new(),
            environment: String::new(),
        },
    }
}
