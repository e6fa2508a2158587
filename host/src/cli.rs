//! The `gantry` command line.

/// `println!` that ignores a closed stdout (`gantry plugins list | head -1`):
/// output nobody reads is not an error, and must never be a panic.
macro_rules! out {
    (@raw $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use crate::capabilities::state::StateStore;
use crate::executor::{self, bare_context, describe, find_run, plan_manifest, runs_dir};
use crate::manifest::ManifestFile;
use crate::oci::fetch::LockMode;
use crate::pipeline::{RunResult, load_plugins};
use crate::plan::Plan;
use crate::plugins::{BUILTINS, PluginSource};
use crate::report::{Console, Reporter, Silent};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::state_dir::WorkspaceState;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
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
    /// Run programs started through `exec` without Landlock, with your full
    /// access (same as GANTRY_UNCONFINED_EXEC=1). Meant for kernels without
    /// Landlock, where `exec` is refused otherwise; plan and summary say so.
    #[arg(long, global = true)]
    unconfined_exec: bool,
    /// Which compiler turns plugins into native code [default: $GANTRY_COMPILER, else cranelift].
    /// winch compiles several times faster and runs slower: worth it for a big Python or
    /// JavaScript plugin on a cold cache; code is cached per compiler.
    #[arg(long, global = true, value_enum, value_name = "COMPILER")]
    compiler: Option<crate::runtime::Compiler>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline manifest.
    #[command(
        after_help = "Examples:\n  gantry run examples/hello/pipeline.yaml\n  gantry run pipeline.yaml --env production --output json\n\n\
        Stages run as soon as the stages they need have succeeded. The run is journaled outside \
        the workspace, in the workspace's state directory ($GANTRY_STATE_DIR, else \
        $XDG_STATE_HOME/gantry, else ~/.local/state/gantry: workspaces/<name>-<hash>/runs/<run-id>/, \
        with the journal, per-stage logs and the summary); if gantry dies, \
        `gantry resume <run-id>` continues it. Ctrl-C stops running stages and records it.\n\n\
        OCI plugins (`uses: oci://...`) run at the digests gantry.lock pins; a reference not \
        pinned yet is resolved and pinned (said in one line), unless --locked.\n\n\
        Exit status: 0 when every stage succeeded (or was skipped by its condition), 1 when a \
        stage failed, 2 when the manifest or a plugin is invalid (nothing ran), 130 on Ctrl-C, \
        143 on SIGTERM, 129 on SIGHUP (each stops the run like Ctrl-C; a second signal exits at once)."
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
        /// Also write the run's report (one self-contained HTML file, as
        /// `gantry report` writes it) to FILE at the end.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
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
        reference, only references the manifest uses, then compiles each plugin for this \
        machine into the compile cache so that the first run does not wait for it. Run it \
        again to accept moved tags.")]
    Lock {
        /// The pipeline manifest (YAML).
        manifest: PathBuf,
        #[command(flatten)]
        compile: CompileArg,
    },
    /// Continue a run whose host died, without re-running finished stages.
    #[command(
        after_help = "Example:\n  gantry resume 1a2b3c4d5e6-0f1e -C examples/hello\n\n\
        Reads the run's journal in the workspace's state directory (never anything in the \
        workspace). Stages whose completion was recorded keep their result and outputs; the \
        others run. The manifest and every plugin must be unchanged (same sha256 as when the \
        run started); otherwise resume refuses and says what changed."
    )]
    Resume {
        run_id: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        output: OutputArg,
        /// Ask this `gantry serve` to queue its cancelled run RUN (the
        /// service's run number) again; it resumes from its journal.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Promote a run that succeeded into the next environment of the
    /// manifest's `promotion:` chain, reusing its built stages' results.
    #[command(
        after_help = "Example:\n  gantry promote 1a2b3c4d5e6-0f1e docker -C examples/hello\n\n\
        Starts a new run of the same pipeline in ENV, the environment after the run's in the \
        chain. Its journal first records the stages under `promotion.reuse` as finished with \
        the run's outputs and artifacts (nothing is rebuilt: the same image digest is deployed); \
        the other stages then run with ENV's parameters. The run must have succeeded, and the \
        manifest and the reused stages' plugins must be unchanged since. Promoting by hand into \
        an environment with `approval: required` is the approval: who (--by, else $USER) and \
        when go in the journal. A promotion that fails can be resumed like any run."
    )]
    Promote {
        /// The run to promote (it ran in the environment before ENV).
        run_id: String,
        /// The environment to promote into.
        #[arg(value_name = "ENV")]
        environment: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// Who approves, for an environment that requires approval [default: $USER].
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        #[command(flatten)]
        output: OutputArg,
        /// Ask this `gantry serve` to promote its run RUN (the service's run
        /// number) instead; the token's holder is the approver.
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the runs recorded in a workspace, oldest first.
    #[command(after_help = "Example:\n  gantry runs -C examples/hello")]
    Runs {
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        server: ServerArg,
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
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write a run's report: one self-contained HTML file (timeline, stages,
    /// outputs, denials, log tails, health verdicts; no script, nothing
    /// loaded from the network).
    #[command(
        after_help = "Examples:\n  gantry report 1a2b3c4d5e6-0f1e -C examples/hello -o run.html\n  gantry report 1a2b3c4d5e6-0f1e > run.html"
    )]
    Report {
        /// The run (`gantry runs -C DIR` lists them).
        run_id: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// Write it to FILE instead of standard output.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run the continuous-delivery service: watch repositories (webhooks,
    /// polling), run each push, promote runs environment by environment, and
    /// answer an HTTP API.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Approve a promotion waiting for an approval (on a `gantry serve`).
    #[command(
        after_help = "Example:\n  GANTRY_TOKEN=... gantry approve 42 production --server http://127.0.0.1:8700 --comment \"checked the canary\"\n\n\
        RUN is the service's run number (`gantry runs --server URL` lists them): the promotion run \
        that waits. The approval is recorded with the name of the token's holder and the time, \
        once: a decided approval cannot be changed."
    )]
    Approve(DecisionArgs),
    /// Reject a promotion waiting for an approval (on a `gantry serve`): it never runs.
    #[command(
        after_help = "Example:\n  GANTRY_TOKEN=... gantry reject 42 production --server http://127.0.0.1:8700 --comment \"error rate\""
    )]
    Reject(DecisionArgs),
    /// List or inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Show or prune the compile cache (native code of every plugin run so far).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show or delete the state the host keeps for a workspace's stages
    /// (e.g. docker-deploy's live slot).
    #[command(subcommand)]
    State(StateCommand),
    /// Print or write the WIT this gantry speaks (`gantry:pipeline`), to build
    /// plugins against.
    #[command(
        after_help = "Without a directory the files are printed, each after a `// file:` line.\n\n\
        Examples:\n  gantry wit\n  gantry wit wit/                  # host.wit, types.wit, worlds.wit\n  \
        gantry wit --version 0.1.0 old/  # the frozen 0.1 contract, which plugins may still target"
    )]
    Wit {
        /// Write the files into this directory (made if missing) instead of printing them.
        dir: Option<PathBuf>,
        /// The contract version: the current one, or an older one still loaded.
        #[arg(long, value_parser = ["0.2.0", "0.1.0"], default_value = crate::WIT_VERSION)]
        version: String,
    },
    /// Print the JSON Schema of the manifest format (for editors).
    #[command(
        after_help = "Example:\n  gantry schema > schema/gantry-manifest.schema.json\n\n\
        In VS Code with the YAML extension, add to the top of a manifest:\n  \
        # yaml-language-server: $schema=../../schema/gantry-manifest.schema.json"
    )]
    Schema,
    /// Run one stage of a run whose stages are Kubernetes Jobs: what the
    /// stage's pod runs (`executor: kubernetes`), not a command for people.
    #[command(
        hide = true,
        after_help = "Reads the stage spec the host wrote (the stage's Kubernetes Secret), plans the \
        manifest in the workspace volume, runs the stage with its grants and limits, logs to \
        stdout and writes its report to the termination-message path. Exit status: 0 when the \
        stage succeeded, 1 when it failed, 2 when it could not run."
    )]
    Stage {
        /// The stage spec (JSON).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// The workspace volume.
        #[arg(long, value_name = "DIR", default_value = crate::kubernetes::spec::WORKSPACE_MOUNT)]
        workspace: PathBuf,
        /// Where the report goes (Kubernetes reads it as the termination message).
        #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
        result: PathBuf,
    },
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
struct ServerArg {
    /// Ask this `gantry serve` (its URL, e.g. http://127.0.0.1:8700) instead of
    /// the local state directory; the API token is read from $GANTRY_TOKEN.
    #[arg(long, value_name = "URL", env = "GANTRY_SERVER")]
    server: Option<String>,
}

#[derive(Args)]
struct DecisionArgs {
    /// The service's run number of the waiting promotion.
    run: i64,
    /// The environment (default: the run's).
    environment: Option<String>,
    /// Why, recorded with the decision.
    #[arg(long)]
    comment: Option<String>,
    /// The service (e.g. http://127.0.0.1:8700); the token is read from $GANTRY_TOKEN.
    #[arg(long, value_name = "URL", env = "GANTRY_SERVER", required = true)]
    server: String,
}

const SERVE_HELP: &str = "Examples:\n  gantry serve --config gantry-serve.yaml\n  \
    gantry serve --repo https://github.com/org/app.git --manifest ci/pipeline.yaml --poll 30s\n\n\
    A push (a GitHub webhook to /hooks/github/<name>, an Azure DevOps service hook to \
    /hooks/azure-devops/<name>, or one found by polling `git ls-remote`) queues a run; the run \
    gets a fresh checkout of that exact commit, and runs if the manifest's `on:` at that commit \
    wants it. A run that succeeds is promoted into the next environment of the manifest's \
    `promotion:` chain, reusing the stages it names (the same artifacts are deployed); an \
    environment with `approval: required` waits for `gantry approve`.\n\n\
    One run at a time per (repository, branch); a newer push supersedes a queued older one. \
    Everything is kept in an SQLite database in the data directory: kill the service at any \
    moment and start it again, and queued runs still run and running ones resume from their \
    journals.\n\n\
    The configuration file (YAML):\n  \
    listen: 127.0.0.1:8700\n  url: https://gantry.example.com   # run pages, ${{ run.url }}; default http://<listen>\n  data: .gantry-serve            # database and workspaces, relative to the file\n  \
    max-runs: 4\n  keep-workspaces: 20\n  \
    api-tokens:\n    - { name: alice, token: { env: GANTRY_TOKEN_ALICE } }\n  \
    repositories:\n    - name: hello\n      url: https://github.com/org/hello.git\n      \
    manifest: examples/hello/pipeline.yaml\n      environment: default   # where a push runs first\n      \
    poll: 60s                # or off\n      github: { secret: { env: GITHUB_WEBHOOK_SECRET } }\n      \
    azure-devops: { username: gantry, password: { env: ADO_HOOK_PASSWORD } }\n\n\
    The HTTP API is described in schema/gantry-serve.openapi.yaml.";

#[derive(Args)]
struct ServeArgs {
    /// The configuration file (YAML; see below).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "repo")]
    config: Option<PathBuf>,
    /// Without a file: watch this one repository (its clone URL).
    #[arg(long, value_name = "URL", required_unless_present = "config")]
    repo: Option<String>,
    /// With --repo: the manifest's path inside the repository.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "pipeline.yaml",
        requires = "repo"
    )]
    manifest: String,
    /// With --repo: the name in webhook URLs.
    #[arg(long, value_name = "NAME", requires = "repo")]
    name: Option<String>,
    /// With --repo: the environment a push runs in first.
    #[arg(long, value_name = "ENV", default_value = "default", requires = "repo")]
    environment: String,
    /// With --repo: how often to poll (`30s`, `5m`, `off`).
    #[arg(
        long,
        value_name = "INTERVAL",
        default_value = "60s",
        requires = "repo"
    )]
    poll: String,
    /// With --repo: accept GitHub webhooks signed with the secret in this
    /// environment variable.
    #[arg(long, value_name = "VAR", requires = "repo")]
    github_secret_env: Option<String>,
    /// With --repo: accept API calls with the token in this environment variable.
    #[arg(long, value_name = "VAR", requires = "repo")]
    token_env: Option<String>,
    /// With --repo: the address people reach the service at (links to run
    /// pages, `${{ run.url }}`); default http:// + the listening address.
    #[arg(long, value_name = "URL", requires = "repo")]
    url: Option<String>,
    /// With --repo: the address to listen on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8700",
        requires = "repo"
    )]
    listen: String,
    /// With --repo: the data directory (database, workspaces).
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".gantry-serve",
        requires = "repo"
    )]
    data: PathBuf,
}

impl ServeArgs {
    fn load(self) -> Result<crate::serve::config::Loaded, crate::manifest::ManifestErrors> {
        use crate::serve::config::*;
        if let Some(path) = &self.config {
            return Loaded::load(path);
        }
        let url = self.repo.expect("clap requires --repo without --config");
        let name = self.name.unwrap_or_else(|| {
            let last = url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("repo");
            last.strip_suffix(".git").unwrap_or(last).to_string()
        });
        let config = ServeConfig {
            listen: self.listen,
            url: self.url,
            data: Some(self.data),
            max_runs: 4,
            keep_workspaces: 20,
            api_tokens: self
                .token_env
                .map(|v| ApiToken {
                    name: v.clone(),
                    token: crate::manifest::SecretSource::Env(v),
                })
                .into_iter()
                .collect(),
            repositories: vec![Repository {
                name,
                url,
                manifest: self.manifest,
                environment: self.environment,
                poll: self.poll,
                cancel_in_progress: false,
                github: self.github_secret_env.map(|v| GithubHook {
                    secret: crate::manifest::SecretSource::Env(v),
                }),
                azure_devops: None,
            }],
        };
        Loaded::check(config, PathBuf::from("."), "the command line")
    }
}

#[derive(Args)]
struct WorkspaceArg {
    /// The workspace whose runs (kept in its state directory) to use.
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
enum CacheCommand {
    /// Where the cache is, how many components it holds and their size.
    #[command(after_help = "Example:\n  gantry cache info")]
    Info,
    /// Remove the least recently used components until the cache fits a size.
    #[command(
        after_help = "The cache is pruned to GANTRY_CACHE_MAX_SIZE (default 1 GiB) \
        after each new component anyway; this does it now, or to another size.\n\n\
        Examples:\n  gantry cache prune\n  gantry cache prune --max-size 200MiB\n  \
        gantry cache prune --all"
    )]
    Prune {
        /// The size to prune to, e.g. `200MiB` (default: the cache's bound).
        #[arg(long, value_parser = crate::units::parse_size, conflicts_with = "all")]
        max_size: Option<u64>,
        /// Remove every component.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// List the keys set, with their sizes.
    #[command(after_help = "Example:\n  gantry state list -C examples/hello")]
    List {
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
    /// Print the value of a key.
    #[command(after_help = "Example:\n  gantry state get docker-deploy/hello -C examples/hello")]
    Get {
        key: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
    /// Delete a key (e.g. to forget a deployment gantry no longer manages).
    #[command(after_help = "Example:\n  gantry state delete docker-deploy/hello -C examples/hello")]
    Delete {
        key: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the built-in plugins.
    #[command(after_help = "Example:\n  gantry plugins list")]
    List,
    /// Show what a plugin says about itself (describe()), its WIT imports and
    /// exports, and the capabilities it needs.
    #[command(
        after_help = "Examples:\n  gantry plugins inspect command\n  gantry plugins inspect ./my_stage.wasm --json\n  gantry plugins inspect oci://127.0.0.1:5000/plugins/echo:1 --insecure"
    )]
    Inspect {
        /// A built-in name, a path to a .wasm component, or an OCI reference
        /// (`oci://registry/repo:tag`, fetched and verified like `plugins pull`).
        plugin: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Certify a stage plugin: run it against the cases of a case file with
    /// the host's answers scripted (HTTP, exec, secrets; nothing outside is
    /// reached) and check outcome, outputs, artifacts, calls and denials.
    #[command(
        after_help = "Examples:\n  gantry plugins test health-gate --case plugins/health-gate/cases.yaml\n  gantry plugins test ./my_stage.wasm --case cases.yaml\n  gantry plugins test ./my_stage.wasm --case cases.yaml --record recorded.yaml"
    )]
    Test {
        /// A built-in name, a path to a .wasm component, or an OCI reference;
        /// default: the case file's `plugin:`.
        plugin: Option<String>,
        /// The case file (YAML).
        #[arg(long)]
        case: PathBuf,
        /// Run each case for real once instead (its HTTP requests and programs
        /// reach the world) and write it to this file with the answers seen and
        /// the outcome as expectations; secret values are masked.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
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
    /// Write a small working plugin project (config schema, a host call, a
    /// workspace file read, outputs, an artifact, a test) with the WIT of
    /// this gantry, buildable with one command.
    #[command(
        after_help = "Examples:\n  gantry plugins new word-count --lang rust --sdk-path ../gantry/sdk\n  \
        gantry plugins new word-count --lang python   # ./build.sh\n  \
        gantry plugins new word-count --lang js --dir plugins/wc   # npm install && npm run build"
    )]
    New {
        /// The plugin's name (lower-case letters, digits, `-`).
        name: String,
        #[arg(long, value_enum)]
        lang: crate::templates::Lang,
        /// Where to write the project (made if missing; must be empty); default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust: depend on the gantry-sdk in this directory (gantry's `sdk/`) by path;
        /// without it, Cargo.toml names the crates.io version and a `[patch]` to fill in.
        #[arg(long, value_name = "DIR")]
        sdk_path: Option<PathBuf>,
    },
    /// Pull a plugin, check its digests and that it is a component, keep it in
    /// the plugin cache, and print its digests.
    #[command(
        after_help = "Example:\n  gantry plugins pull oci://127.0.0.1:5000/plugins/echo:1 --insecure"
    )]
    Pull {
        /// `oci://registry/repo:tag` or `oci://registry/repo@sha256:...`.
        reference: String,
        /// Refuse the plugin unless a cosign signature by this public key
        /// (PEM, ECDSA P-256, as `cosign generate-key-pair` writes) verifies.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        compile: CompileArg,
    },
    /// Check that a plugin's manifest digest carries a cosign signature by a
    /// key (the cosign tag `sha256-<hex>.sig` or an OCI referrer), without
    /// pulling the component. Exits 1 when none verifies.
    #[command(
        after_help = "Example:\n  gantry plugins verify oci://127.0.0.1:5000/plugins/echo:1 --key cosign.pub --insecure"
    )]
    Verify {
        /// `oci://registry/repo:tag` or `oci://registry/repo@sha256:...`.
        reference: String,
        /// The public key (PEM, ECDSA P-256, as `cosign generate-key-pair` writes).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Args)]
struct CompileArg {
    /// Only fetch and check; do not compile for this machine (the first run will).
    #[arg(long)]
    no_compile: bool,
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
    if cli.global.unconfined_exec {
        crate::sandbox::opt_into_unconfined();
    }
    let options = RuntimeOptions {
        cache_dir: if cli.global.no_cache {
            None
        } else {
            cli.global
                .cache_dir
                .clone()
                .or_else(crate::runtime::cache::CompileCache::default_dir)
        },
        compiler: match cli.global.compiler {
            Some(c) => c,
            None => crate::runtime::Compiler::from_env()
                .map_err(anyhow::Error::msg)?
                .unwrap_or_default(),
        },
        ..RuntimeOptions::default()
    };
    let json = match &cli.command {
        Command::Run { output, .. }
        | Command::Plan { output, .. }
        | Command::Resume { output, .. }
        | Command::Promote { output, .. } => output.output == Output::Json,
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
            report,
        } => {
            let runtime = new_runtime(options, &console)?;
            let request = executor::RunRequest {
                manifest,
                environment: env.environment,
                run_id: None,
                trigger: None,
                lock: lock.mode(LockMode::Update),
                cancel: None,
            };
            let result = executor::start(&runtime, console.clone(), request).await;
            let mut report_failed = None;
            if let (Some(file), Ok(r)) = (&report, &result) {
                let written =
                    crate::state_dir::PrivateDir::open_private(std::path::Path::new(&r.dir))
                        .and_then(|dir| crate::web::write_report(&dir, file));
                match written {
                    Ok(()) => console.note(&format!("report: {}", file.display())),
                    Err(e) => report_failed = Some(e),
                }
            }
            let code = finish_run(result, &console, output.output)?;
            // The run's own outcome is told first; a report asked for and
            // not written still fails the command (CI would miss it).
            if let Some(e) = report_failed {
                eprintln!("error: the report was not written: {e:#}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(code)
        }
        Command::Report {
            run_id,
            workspace,
            output,
        } => {
            let (_, dir) = find_run(&workspace.dir, &run_id)?;
            match output {
                Some(file) => {
                    crate::web::write_report(&dir, &file)?;
                    eprintln!("run {run_id}: report written to {}", file.display());
                }
                None => out!(@raw "{}", crate::web::report_html(&dir)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume {
            run_id,
            server: ServerArg {
                server: Some(server),
            },
            ..
        } => {
            let client = crate::serve::client::ApiClient::new(&server)?;
            let id = service_run(&run_id)?;
            client
                .post(&format!("/api/v1/runs/{id}/resume"), serde_json::json!({}))
                .await?;
            out!("run {id}: queued again; it resumes from its journal");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume {
            run_id,
            workspace,
            output,
            ..
        } => {
            let runtime = new_runtime(options, &console)?;
            let request = executor::ResumeRequest {
                workspace: workspace.dir,
                run_id,
                cancel: None,
            };
            finish_run(
                executor::resume(&runtime, console.clone(), request).await,
                &console,
                output.output,
            )
        }
        Command::Promote {
            run_id,
            environment,
            server: ServerArg {
                server: Some(server),
            },
            ..
        } => {
            let client = crate::serve::client::ApiClient::new(&server)?;
            let id = service_run(&run_id)?;
            let v = client
                .post(
                    &format!("/api/v1/runs/{id}/promote"),
                    serde_json::json!({ "environment": environment }),
                )
                .await?;
            out!(
                "run {}: promotion of run {id} into `{environment}` queued",
                v["run"]
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote {
            run_id,
            environment,
            workspace,
            by,
            output,
            ..
        } => {
            let runtime = new_runtime(options, &console)?;
            let by = by
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()));
            let request = executor::PromoteRequest {
                workspace: workspace.dir,
                from_run: run_id,
                environment,
                run_id: None,
                // Promoting by hand is the approval, when one is needed.
                approver: by.map(|by| executor::Approver {
                    by,
                    via: "gantry promote".into(),
                }),
                previous_commit: None,
                url: None,
                cancel: None,
            };
            finish_run(
                executor::promote(&runtime, console.clone(), request).await,
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
            match executor::check_plugins(&runtime, &file, &plan, console.as_ref(), mode, true)
                .await
            {
                Ok((_, notes)) => {
                    for n in notes {
                        eprintln!("note: {n}");
                    }
                }
                Err(invalid) => {
                    eprintln!("{invalid}");
                    return Ok(ExitCode::from(2));
                }
            }
            out!(
                "{}: pipeline `{}` is valid for environment `{}`",
                manifest.display(),
                plan.pipeline,
                plan.environment
            );
            for unit in plan.stages.iter().chain(&plan.sinks) {
                out!(
                    "  {} ({}): {}",
                    unit.name,
                    unit.source.label(),
                    unit.grants.describe().join("; ")
                );
            }
            if let Some(chain) = &plan.promotion {
                out!(
                    "  promotion: {}; reused: {}",
                    chain.describe(),
                    if chain.reuse.is_empty() {
                        "nothing".to_string()
                    } else {
                        chain.reuse.join(", ")
                    }
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
                out!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                out!(@raw "{}", crate::show::plan_text(&shown));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs {
            server: ServerArg {
                server: Some(server),
            },
            ..
        } => server_runs(&server).await,
        Command::Logs {
            run_id,
            stage,
            server: ServerArg {
                server: Some(server),
            },
            ..
        } => server_logs(&server, &run_id, stage.as_deref()).await,
        Command::Serve(args) => {
            let loaded = match args.load() {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(2));
                }
            };
            crate::serve::serve(loaded, options, cli.global.verbose).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve(args) => decide(args, "approve").await,
        Command::Reject(args) => decide(args, "reject").await,
        Command::Runs { workspace, .. } => {
            let runs = match runs_dir(&workspace.dir)? {
                Some((_, runs)) => crate::journal::list_runs(&runs)?,
                None => vec![],
            };
            if runs.is_empty() {
                out!("no runs for workspace {}", workspace.dir.display());
            }
            for (id, records) in runs {
                out!("{}", crate::show::run_line(&id, &records));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State(command) => state_command(command),
        Command::Logs {
            run_id,
            stage,
            workspace,
            ..
        } => {
            let (_, dir) = find_run(&workspace.dir, &run_id)?;
            out!(@raw "{}", crate::show::logs(&dir, stage.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock { manifest, compile } => {
            let cache = options.cache_dir.clone();
            let code = lock(&manifest, cache.as_deref(), &console).await?;
            if code != ExitCode::SUCCESS || compile.no_compile {
                return Ok(code);
            }
            let store = crate::oci::store::Store::open(cache.as_deref());
            let lock = crate::oci::lockfile::Lockfile::read(
                &crate::oci::lockfile::Lockfile::path_for(&manifest),
            )?;
            let runtime = new_runtime(options, &console)?;
            for pin in lock.pins.values() {
                if let Some(bytes) = store.get(&pin.layer_digest) {
                    precompile(&runtime, &pin.reference, bytes, &console)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Push {
            file,
            reference,
            registry,
        }) => push(&file, &reference, &registry).await,
        Command::Plugins(PluginsCommand::Test {
            plugin,
            case,
            record,
            registry,
        }) => {
            let runtime = new_runtime(options, &console)?;
            plugins_test(
                &runtime,
                plugin.as_deref(),
                &case,
                record.as_deref(),
                &registry,
                &console,
                cli.global.verbose,
            )
            .await
        }
        Command::Plugins(PluginsCommand::Pull {
            reference,
            key,
            registry,
            compile,
        }) => {
            let cache = options.cache_dir.clone();
            let bytes = pull(
                &reference,
                key.as_deref(),
                &registry,
                cache.as_deref(),
                console.as_ref(),
            )
            .await?;
            if !compile.no_compile {
                let runtime = new_runtime(options, &console)?;
                precompile(&runtime, &reference, bytes, &console)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Verify {
            reference,
            key,
            registry,
        }) => verify(&reference, &key, &registry, console.as_ref()).await,
        Command::Wit { dir, version } => {
            match dir {
                None => {
                    for (name, text) in crate::wit_files(&version) {
                        out!("// file: {name}\n{text}");
                    }
                }
                Some(dir) => {
                    for path in crate::write_wit(&dir, &version)? {
                        out!("wrote {}", path.display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::New {
            name,
            lang,
            dir,
            sdk_path,
        }) => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            crate::templates::new_project(&crate::templates::NewOptions {
                name: &name,
                lang,
                dir: &dir,
                sdk_path: sdk_path.as_deref(),
            })?;
            out!(
                "wrote {} ({} plugin `{name}`); build it with: cd {} && {}",
                dir.display(),
                lang.name(),
                dir.display(),
                lang.build_command()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stage {
            spec,
            workspace,
            result,
        } => {
            let runtime = new_runtime(options, &console)?;
            let code = crate::kubernetes::worker::run(&runtime, &spec, &workspace, &result).await;
            Ok(ExitCode::from(code))
        }
        Command::Schema => {
            out!(
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
            out!(@raw "{}", crate::show::table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(command) => {
            use crate::units::format_size;
            let runtime = new_runtime(options, &console)?;
            let cache = runtime.cache();
            let Some(dir) = cache.dir() else {
                anyhow::bail!("no compile cache is in use (--no-cache, or it is unusable)");
            };
            match command {
                CacheCommand::Info => {
                    let entries = cache.entries();
                    out!("{}", dir.display());
                    out!(
                        "{} component(s), {} (bound: {})",
                        entries.len(),
                        format_size(entries.iter().map(|e| e.size).sum()),
                        format_size(cache.max_size())
                    );
                }
                CacheCommand::Prune { max_size, all } => {
                    let max = if all {
                        0
                    } else {
                        max_size.unwrap_or(cache.max_size())
                    };
                    let pruned = cache.prune(max, None);
                    out!(
                        "removed {} component(s), {}; {} left, {}",
                        pruned.removed,
                        format_size(pruned.freed),
                        pruned.entries,
                        format_size(pruned.size)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Inspect {
            plugin,
            json,
            registry,
        }) => {
            let bytes = plugin_bytes(&plugin, Path::new("."), &registry, console.as_ref()).await?;
            let runtime = new_runtime(options, &console)?;
            let loaded = runtime.load_reporting(&bytes, console.as_ref())?;
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
                    "world": loaded.world.as_str(), "contract": loaded.contract.name(),
                    "digest": loaded.digest, "source": loaded.label,
                    "config_schema": schema, "capabilities": caps, "imports": imports, "exports": exports,
                });
                out!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                out!(
                    "{} {} ({})\n  {}",
                    info.name,
                    info.version,
                    loaded.world.as_str(),
                    info.description
                );
                out!(
                    "source: {}\ndigest: {}\ncontract: {}",
                    loaded.label,
                    loaded.digest,
                    loaded.contract.name()
                );
                out!("capabilities it needs:");
                if info.capabilities.is_empty() {
                    out!("  none");
                }
                for c in &info.capabilities {
                    let target = c.target.as_deref().unwrap_or("from config");
                    out!("  {} ({target}): {}", kind_name(c.kind), c.reason);
                }
                out!("imports:\n  {}", imports.join("\n  "));
                out!("exports:\n  {}", exports.join("\n  "));
                if !schema.is_null() {
                    out!("config schema:\n{}", serde_json::to_string_pretty(&schema)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The bytes of the plugin `written` on the command line (or in a case file
/// at `base`): a built-in name, a .wasm path, or an OCI reference, fetched.
async fn plugin_bytes(
    written: &str,
    base: &Path,
    registry: &RegistryArgs,
    reporter: &dyn Reporter,
) -> anyhow::Result<crate::plugins::PluginBytes> {
    let source = PluginSource::parse(written, base)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{written}` is neither a built-in plugin, a .wasm path nor an oci:// reference"
            )
        })?
        .map_err(anyhow::Error::msg)?;
    Ok(match &source {
        PluginSource::Oci(oci) => {
            let client = registry.client(&oci.reference)?;
            let store = crate::oci::store::Store::open(None);
            let (_, bytes) = crate::oci::fetch::resolve(&client, oci, &store, reporter).await?;
            crate::plugins::PluginBytes::new(oci.written.clone(), std::borrow::Cow::Owned(bytes))
        }
        _ => source.read()?,
    })
}

/// `gantry plugins test`: run the cases (or record them) and print one line each.
async fn plugins_test(
    runtime: &Runtime,
    plugin: Option<&str>,
    case: &Path,
    record: Option<&Path>,
    registry: &RegistryArgs,
    console: &Arc<dyn Reporter>,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = match crate::certify::case::Loaded::load(case) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // Bad input is refused before the plugin is loaded.
    if let Err(errors) = crate::certify::check(&loaded, record.is_some()) {
        eprintln!("{errors}");
        return Ok(ExitCode::from(2));
    }
    let (written, base) = match (plugin, &loaded.file.plugin) {
        (Some(p), _) => (p.to_string(), PathBuf::from(".")),
        (None, Some(p)) => (p.clone(), crate::pipeline::manifest_dir(case)),
        (None, None) => anyhow::bail!(
            "no plugin to test: name it on the command line or as `plugin:` in {}",
            case.display()
        ),
    };
    let bytes = plugin_bytes(&written, &base, registry, console.as_ref()).await?;
    let loaded_plugin = runtime.load_reporting(&bytes, console.as_ref())?;
    // The plugin's log is shown with --verbose only; the case lines are the output.
    let reporter: Arc<dyn Reporter> = if verbose {
        console.clone()
    } else {
        Arc::new(Silent)
    };
    let outcome = match record {
        Some(out) => {
            let as_written = plugin.filter(|p| crate::plugins::builtin(p).is_some());
            crate::certify::record(
                runtime,
                &loaded_plugin,
                as_written.map(String::from),
                &loaded,
                out,
                reporter,
            )
            .await
            .map(|lines| {
                for line in lines {
                    out!("{line}");
                }
                out!("wrote {}", out.display());
                true
            })
        }
        None => crate::certify::test(runtime, &loaded_plugin, &loaded, reporter, |v| {
            out!("{}", v.line())
        })
        .await
        .map(|verdicts| {
            let failed = verdicts
                .iter()
                .filter(|v| !v.differences.is_empty())
                .count();
            out!("{} case(s), {failed} failed", verdicts.len());
            failed == 0
        }),
    };
    match outcome {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(1)),
        Err(e) => match e.downcast::<crate::manifest::ManifestErrors>() {
            Ok(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::from(2))
            }
            Err(e) => Err(e),
        },
    }
}

fn state_command(command: StateCommand) -> anyhow::Result<ExitCode> {
    let (workspace, key) = match &command {
        StateCommand::List { workspace } => (workspace.dir.clone(), None),
        StateCommand::Get { key, workspace } | StateCommand::Delete { key, workspace } => {
            (workspace.dir.clone(), Some(key.clone()))
        }
    };
    let workspace = workspace.as_path();
    if let Some(why) = key
        .as_deref()
        .and_then(crate::capabilities::state::check_key)
    {
        anyhow::bail!("{why}");
    }
    let store = match WorkspaceState::open(workspace, false)? {
        Some(ws) => ws.dir.subdir("state", false)?.map(StateStore::new),
        None => None,
    };
    match (command, store) {
        (StateCommand::List { .. }, None) => {
            out!("no state for workspace {}", workspace.display())
        }
        (StateCommand::List { .. }, Some(store)) => {
            let keys = store.keys()?;
            if keys.is_empty() {
                out!("no state for workspace {}", workspace.display());
            }
            for key in keys {
                let size = store.get(&key)?.map_or(0, |v| v.len());
                out!("{key}\t{size} bytes");
            }
        }
        (StateCommand::Get { key, .. }, store) => {
            match store.map(|s| s.get(&key)).transpose()?.flatten() {
                Some(value) => {
                    use std::io::Write;
                    std::io::stdout().write_all(&value)?;
                    if !value.ends_with(b"\n") {
                        out!();
                    }
                }
                None => anyhow::bail!("no state key `{key}` for workspace {}", workspace.display()),
            }
        }
        (StateCommand::Delete { key, .. }, store) => {
            if store.map(|s| s.delete(&key)).transpose()? == Some(true) {
                out!("deleted `{key}`");
            } else {
                anyhow::bail!("no state key `{key}` for workspace {}", workspace.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
        // The diagnostics are ready to print; nothing ran.
        Err(e) if e.is::<executor::Invalid>() => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
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
    if result.exec_unconfined {
        console.note(
            "warning: programs started through exec ran UNCONFINED, with your full access \
             (GANTRY_UNCONFINED_EXEC=1 or --unconfined-exec)",
        );
    }
    console.note(&verdict);
    if crate::vso::enabled() {
        for line in crate::vso::commands(&result) {
            out!("{line}");
        }
    }
    if output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(if result.cancelled {
        ExitCode::from(128 + result.signal.unwrap_or(libc::SIGINT) as u8)
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

/// The plugin `reference` names, requiring a signature by `key` if given.
fn plugin_arg(
    reference: &str,
    key: Option<&std::path::Path>,
    registry: &RegistryArgs,
) -> anyhow::Result<crate::oci::OciPlugin> {
    let plugin = crate::oci::OciPlugin::new(reference, None, registry.insecure)
        .map_err(anyhow::Error::msg)?;
    Ok(match key {
        Some(k) => plugin.with_key(
            crate::oci::signature::TrustedKey::read(k, &k.display().to_string())
                .map_err(anyhow::Error::msg)?,
        ),
        None => plugin,
    })
}

/// `gantry plugins pull`: fetch, check and cache one plugin; its bytes.
async fn pull(
    reference: &str,
    key: Option<&std::path::Path>,
    registry: &RegistryArgs,
    cache_dir: Option<&std::path::Path>,
    reporter: &dyn Reporter,
) -> anyhow::Result<Vec<u8>> {
    let plugin = plugin_arg(reference, key, registry)?;
    let client = registry.client(&plugin.reference)?;
    let store = crate::oci::store::Store::open(cache_dir);
    let (pin, bytes) = crate::oci::fetch::resolve(&client, &plugin, &store, reporter).await?;
    crate::runtime::loader::check_header(&plugin.written, &bytes)?;
    store.put(&pin.layer_digest, &bytes);
    println!("{}@{}", plugin.reference.named(), pin.manifest_digest);
    println!("component: {}", pin.layer_digest);
    Ok(bytes)
}

/// Compile a fetched plugin into the compile cache now (`pull`, `lock`), so
/// that the first run does not pay for it: seconds to minutes for a big
/// Python or JavaScript component. A spinner with the elapsed time shows on a
/// terminal; wasmtime reports no finer progress.
fn precompile(
    runtime: &Runtime,
    label: &str,
    bytes: Vec<u8>,
    console: &Arc<dyn Reporter>,
) -> anyhow::Result<()> {
    if runtime.cache().dir().is_none() {
        return Ok(()); // nothing would keep the result
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "compiling {label} ({:.1} MB)",
        bytes.len() as f64 / 1e6
    ));
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let source = crate::plugins::PluginBytes::new(label.to_string(), bytes.into());
    let loaded = runtime.load_reporting(&source, &crate::report::Silent);
    spinner.finish_and_clear();
    let plugin = loaded?;
    match plugin.cache {
        crate::runtime::cache::CacheOutcome::Hit => {
            console.note(&format!("{label}: already compiled for this machine"))
        }
        _ => console.note(&format!(
            "{label}: compiled for this machine in {:.1}s",
            started.elapsed().as_secs_f64()
        )),
    }
    Ok(())
}

/// `gantry plugins verify`: the signature check alone, always against the
/// registry (no cache: signatures kept from earlier checks are not consulted).
async fn verify(
    reference: &str,
    key: &std::path::Path,
    registry: &RegistryArgs,
    reporter: &dyn Reporter,
) -> anyhow::Result<ExitCode> {
    let plugin = plugin_arg(reference, Some(key), registry)?;
    let client = registry.client(&plugin.reference)?;
    let store = crate::oci::store::Store::open(None);
    match crate::oci::fetch::resolve_manifest(&client, &plugin, &store, reporter).await {
        Ok(pin) => {
            println!(
                "verified: {}@{} is signed by {}",
                plugin.reference.named(),
                pin.manifest_digest,
                plugin
                    .verify
                    .as_ref()
                    .map(|k| k.describe())
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ crate::oci::OciError::Unsigned { .. }) => {
            eprintln!("error: {}: {e}", plugin.written);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
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

/// Parse and plan a manifest, printing every problem; `None` when there were any.
fn load_manifest(path: &Path, env: Option<&str>) -> Option<(ManifestFile, Plan)> {
    plan_manifest(path, env)
        .inspect_err(|invalid| eprintln!("{invalid}"))
        .ok()
}

fn new_runtime(options: RuntimeOptions, console: &Arc<dyn Reporter>) -> anyhow::Result<Runtime> {
    let runtime = Runtime::new(options)?;
    if let Some(w) = &runtime.cache_warning {
        console.debug(w);
    }
    Ok(runtime)
}

/// `gantry runs --server URL`: the service's runs, newest first.
async fn server_runs(server: &str) -> anyhow::Result<ExitCode> {
    let client = crate::serve::client::ApiClient::new(server)?;
    let v = client.get("/api/v1/runs?limit=50").await?;
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        out!("no runs on {server}");
    }
    for r in runs {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let commit = s("commit");
        out!(
            "{:>5}  {:<10} {:<12} {:<24} {:<10} {:<10} {}",
            r["id"],
            s("status"),
            s("pipeline"),
            s("branch").trim_start_matches("refs/heads/"),
            &commit[..commit.len().min(10)],
            s("environment"),
            s("trigger")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A run named on the command line with `--server`: the service's number.
fn service_run(run: &str) -> anyhow::Result<i64> {
    run.parse()
        .map_err(|_| anyhow::anyhow!("`{run}`: with --server, a run is the service's run number"))
}

/// `gantry logs RUN [STAGE] --server URL`: a stage's log, followed live
/// until the run ends; without a stage, the run's stages.
async fn server_logs(server: &str, run: &str, stage: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = crate::serve::client::ApiClient::new(server)?;
    let id = service_run(run)?;
    let Some(stage) = stage else {
        let v = client.get(&format!("/api/v1/runs/{id}")).await?;
        for s in v["stages"].as_array().cloned().unwrap_or_default() {
            out!(
                "{:<20} {:<10} {}",
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
                s["detail"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut end = None;
    client
        .events(&format!("/api/v1/runs/{id}/logs/{stage}"), |event, data| {
            if event == "end" {
                end = Some(data.to_string());
            } else {
                out!("{data}");
            }
        })
        .await?;
    if let Some(status) = end {
        eprintln!("run {id}: {status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry approve|reject RUN [ENV] --server URL`.
async fn decide(args: DecisionArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let client = crate::serve::client::ApiClient::new(&args.server)?;
    let v = client
        .post(
            &format!("/api/v1/runs/{}/{verb}", args.run),
            serde_json::json!({ "environment": args.environment, "comment": args.comment }),
        )
        .await?;
    let a = &v["approval"];
    out!(
        "run {}: `{}` {} by {}",
        args.run,
        a["environment"].as_str().unwrap_or("?"),
        a["state"].as_str().unwrap_or("?"),
        a["decided_by"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
