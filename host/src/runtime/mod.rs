//! The WebAssembly runtime: one wasmtime engine per process, every capability
//! linked once, components compiled once (and cached on disk), instantiated from
//! an `InstancePre` into a fresh Store per stage run.

pub mod bindings;
pub mod cache;
mod compat;
pub mod limits;
pub mod loader;
pub mod state;

use crate::capabilities::telemetry::{Collector, EventBase};
use crate::capabilities::{Denials, Grants, Subject};
use crate::plugins::PluginBytes;
use crate::redact::Redactor;
use crate::report::Reporter;
use bindings::sink::TelemetrySinkPre;
use bindings::stage::StagePre;
use bindings::types::{Event, Outcome, StageContext, StageError, StageInfo};
use bindings::v0_1::sink::TelemetrySinkPre as TelemetrySinkPreV0_1;
use bindings::v0_1::stage::StagePre as StagePreV0_1;
use cache::{CacheOutcome, CompileCache};
use limits::{EpochTicker, Limits, MemoryLimiter, TICK};
use loader::{Contract, LoadError, WorldKind};
use state::StageState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

/// The most memory any stage may be granted (`limits.memory`); the pooling
/// allocator reserves address space for this much per slot.
pub const MAX_MEMORY: u64 = 4 << 30;

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (faster instantiation); falls back to on-demand
    /// allocation when the address space cannot be reserved.
    pub pooling: bool,
    /// Which compiler turns components into native code.
    pub compiler: Compiler,
}

/// Which compiler wasmtime uses. Cranelift makes fast code slowly; Winch, a
/// baseline compiler, makes slower code several times faster, which pays off
/// when a big component (a Python or JavaScript plugin, 12-20 MB) would
/// otherwise be compiled for longer than it runs. Compiled code is cached per
/// compiler (the engine's compatibility hash tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compiler {
    #[default]
    Cranelift,
    Winch,
}

impl Compiler {
    /// `GANTRY_COMPILER`, when set to a known name.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var("GANTRY_COMPILER") {
            Err(_) => Ok(None),
            Ok(v) => <Self as clap::ValueEnum>::from_str(&v, true)
                .map(Some)
                .map_err(|_| format!("GANTRY_COMPILER={v}: expected cranelift or winch")),
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            cache_dir: CompileCache::default_dir(),
            pooling: true,
            compiler: Compiler::default(),
        }
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<StageState>,
    cache: CompileCache,
    _ticker: EpochTicker,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Set when the cache could not be used; shown once with `--verbose`.
    pub cache_warning: Option<String>,
    /// The cache directory (compiled components, pulled plugins); `None`
    /// with `--no-cache`.
    pub cache_root: Option<PathBuf>,
}

/// A loaded, checked, linked plugin, ready to instantiate.
pub struct Plugin {
    pub label: String,
    pub digest: String,
    pub world: WorldKind,
    /// The contract version it was built against.
    pub contract: Contract,
    pub cache: CacheOutcome,
    pub component: wasmtime::component::Component,
    pre: Pre,
}

enum Pre {
    Stage(StagePre<StageState>),
    Sink(TelemetrySinkPre<StageState>),
    StageV0_1(StagePreV0_1<StageState>),
    SinkV0_1(TelemetrySinkPreV0_1<StageState>),
}

/// The engine settings gantry runs with (public for the compile-cost bench).
pub fn engine_config(pooling: bool, compiler: Compiler) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.strategy(match compiler {
        Compiler::Cranelift => wasmtime::Strategy::Cranelift,
        Compiler::Winch => wasmtime::Strategy::Winch,
    });
    config.epoch_interruption(true);
    // Deep enough for real programs; unbounded recursion still traps quickly.
    // The fiber that runs the guest must be larger than the wasm stack plus what
    // host calls need, or an overflow aborts the whole process instead of trapping.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(4 << 20);
    // Deep enough to tell runaway recursion from an ordinary crash.
    config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(DEEP_STACK + 24));
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        // One fiber stack per live instance is enough: the default (1000
        // stacks of 4 MiB, each with guard pages set up front) made creating
        // the pool the largest part of a short `gantry run`.
        pool.total_component_instances(64)
            .total_stacks(64)
            .total_core_instances(256)
            .total_memories(64)
            .total_tables(256)
            .max_memory_size(MAX_MEMORY as usize);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let engine = match Engine::new(&engine_config(options.pooling, options.compiler)) {
            Ok(engine) => engine,
            Err(_) if options.pooling => Engine::new(&engine_config(false, options.compiler))?,
            Err(e) => {
                return Err(anyhow::Error::from(e).context("cannot create the wasmtime engine"));
            }
        };
        let mut linker = Linker::<StageState>::new(&engine);
        // wasi:cli, clocks, random, filesystem, sockets (all denied), io; then
        // wasi:http on top without re-adding the shared interfaces.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::capabilities::workspace::link_write_denials(&mut linker)?;
        bindings::add_to_linker(&mut linker, |s| s)?;
        // The 0.1 interfaces under their own names, beside the 0.2 ones; the
        // sink worlds import a subset of the stage worlds.
        bindings::v0_1::stage::Stage::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let cache_root = options.cache_dir.clone();
        let (cache, cache_warning) = CompileCache::open(&engine, options.cache_dir);
        let ticker = EpochTicker::start(&engine);
        Ok(Self {
            engine,
            linker,
            cache,
            _ticker: ticker,
            loaded: Mutex::default(),
            cache_warning,
            cache_root,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Check, compile (or fetch from the cache) and link a plugin. Loading the
    /// same bytes twice in one process returns the same plugin.
    pub fn load(&self, source: &PluginBytes) -> Result<Arc<Plugin>, LoadError> {
        self.load_reporting(source, &crate::report::Silent)
    }

    /// [`Runtime::load`], saying on `reporter` when a plugin has to be compiled
    /// (a cold cache: seconds per plugin, which would otherwise pass in silence).
    pub fn load_reporting(
        &self,
        source: &PluginBytes,
        reporter: &dyn crate::report::Reporter,
    ) -> Result<Arc<Plugin>, LoadError> {
        if let Some(p) = self.loaded.lock().unwrap().get(&source.digest) {
            return Ok(p.clone());
        }
        let label = source.label.clone();
        loader::check_header(&label, &source.bytes)?;
        let started = std::time::Instant::now();
        let announce = || {
            reporter.note(&format!(
                "compiling {label} ({:.1} MB) for this machine{}",
                source.bytes.len() as f64 / 1e6,
                if self.cache.dir().is_some() {
                    "; later runs reuse it"
                } else {
                    ""
                }
            ))
        };
        let (component, cache) = self
            .cache
            .load(&self.engine, &source.bytes, &source.digest, &announce)
            .map_err(|e| LoadError::Invalid {
                label: label.clone(),
                reason: format!("{e:#}"),
            })?;
        if cache != CacheOutcome::Hit {
            reporter.debug(&format!(
                "compiled {label} in {:.2}s",
                started.elapsed().as_secs_f64()
            ));
        }
        let (world, contract) = loader::contract(&self.engine, &label, &component)?;
        let link_err = |e: wasmtime::Error| LoadError::Link {
            label: label.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(link_err)?;
        let pre = match (world, contract) {
            (WorldKind::Stage, Contract::V0_2) => {
                Pre::Stage(StagePre::new(instance_pre).map_err(link_err)?)
            }
            (WorldKind::Sink, Contract::V0_2) => {
                Pre::Sink(TelemetrySinkPre::new(instance_pre).map_err(link_err)?)
            }
            (WorldKind::Stage, Contract::V0_1) => {
                Pre::StageV0_1(StagePreV0_1::new(instance_pre).map_err(link_err)?)
            }
            (WorldKind::Sink, Contract::V0_1) => {
                Pre::SinkV0_1(TelemetrySinkPreV0_1::new(instance_pre).map_err(link_err)?)
            }
        };
        let plugin = Arc::new(Plugin {
            label,
            digest: source.digest.clone(),
            world,
            contract,
            cache,
            component,
            pre,
        });
        self.loaded
            .lock()
            .unwrap()
            .insert(source.digest.clone(), plugin.clone());
        Ok(plugin)
    }

    /// A Store for one instance, with its limits armed.
    fn store(
        &self,
        state: StageState,
        limits: &Limits,
        cpu_exceeded: Arc<AtomicBool>,
    ) -> Store<StageState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let budget = (limits.cpu.as_millis() / TICK.as_millis()).max(1) as u64;
        let mut used = 0u64;
        store.set_epoch_deadline(1);
        // Each tick spent in WebAssembly counts against the CPU budget, and yields
        // to tokio so that the wall-clock timeout and Ctrl-C can fire.
        store.epoch_deadline_callback(move |_| {
            used += 1;
            if used > budget {
                cpu_exceeded.store(true, Ordering::Relaxed);
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Call `describe()` with no grants.
    pub async fn describe(
        &self,
        plugin: &Plugin,
        ctx: &InstanceContext,
    ) -> anyhow::Result<StageInfo> {
        let subject = Subject::new(&plugin.label, "(describe)");
        let limits = Limits {
            timeout: Duration::from_secs(10),
            cpu: Duration::from_secs(5),
            ..Limits::default()
        };
        let state = StageState::prepare(ctx, subject, &Grants::default(), &limits)?;
        let cpu = Arc::new(AtomicBool::new(false));
        let mut store = self.store(state, &limits, cpu.clone());
        let call = async {
            match &plugin.pre {
                Pre::Stage(pre) => {
                    let i = pre.instantiate_async(&mut store).await?;
                    i.gantry_pipeline_plugin().call_describe(&mut store).await
                }
                Pre::Sink(pre) => {
                    let i = pre.instantiate_async(&mut store).await?;
                    i.gantry_pipeline_sink().call_describe(&mut store).await
                }
                Pre::StageV0_1(pre) => {
                    let i = pre.instantiate_async(&mut store).await?;
                    i.gantry_pipeline_plugin().call_describe(&mut store).await
                }
                Pre::SinkV0_1(pre) => {
                    let i = pre.instantiate_async(&mut store).await?;
                    i.gantry_pipeline_sink().call_describe(&mut store).await
                }
            }
        };
        match tokio::time::timeout(limits.timeout, call).await {
            Ok(Ok(info)) => Ok(info),
            // `{e}` is the budget or trap in words; `{e:#}` adds the trap and
            // its wasm backtrace, for --verbose.
            Ok(Err(trap)) => {
                let state = store.data();
                let why = if state.limiter.exceeded.load(Ordering::Relaxed) {
                    format!(
                        "exceeded the memory limit of {} that describe() runs under",
                        crate::units::format_size(limits.memory)
                    )
                } else if cpu.load(Ordering::Relaxed) {
                    format!(
                        "used up the CPU budget of {}s that describe() runs under (it must return at once, without side effects)",
                        limits.cpu.as_secs()
                    )
                } else {
                    match trap.downcast_ref::<wasmtime::Trap>() {
                        Some(code) => format!("trapped: {code}"),
                        None => format!("failed: {}", trap.root_cause()),
                    }
                };
                Err(DescribeFailed {
                    message: format!("{}: describe() {why}", plugin.label),
                    detail: format!("{trap:?}"),
                }
                .into())
            }
            Err(_) => Err(anyhow::anyhow!(
                "{}: describe() did not return within {}s",
                plugin.label,
                limits.timeout.as_secs()
            )),
        }
    }

    /// Run a stage to its end, within its limits. Never panics or hangs on a
    /// misbehaving guest: every way a guest can fail becomes a [`Failure`].
    pub async fn run_stage(
        &self,
        plugin: &Plugin,
        state: StageState,
        context: &StageContext,
        limits: &Limits,
    ) -> Result<Outcome, Failure> {
        if !matches!(plugin.pre, Pre::Stage(_) | Pre::StageV0_1(_)) {
            return Err(Failure::Setup(format!(
                "{} is a telemetry sink, not a stage",
                plugin.label
            )));
        }
        let cpu = Arc::new(AtomicBool::new(false));
        let mut store = self.store(state, limits, cpu.clone());
        let call = async {
            match &plugin.pre {
                Pre::StageV0_1(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .gantry_pipeline_plugin()
                        .call_run(&mut store, context)
                        .await
                }
                Pre::Stage(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .gantry_pipeline_plugin()
                        .call_run(&mut store, context)
                        .await
                }
                Pre::Sink(_) | Pre::SinkV0_1(_) => unreachable!("checked above"),
            }
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        let state = store.data();
        match result {
            Err(_) => Err(Failure::Timeout(limits.timeout)),
            // Past the cap stdout writes fail; a guest that ignored that and
            // went on is stopped all the same.
            Ok(Ok(_)) if state.log.flooded() => Err(Failure::Stopped(log_cap_message(limits))),
            Ok(Ok(Ok(outcome))) => match limits.check_outcome(&outcome) {
                Ok(()) => Ok(outcome),
                Err(why) => Err(Failure::Stopped(why)),
            },
            Ok(Ok(Err(e))) => Err(Failure::Stage(e)),
            Ok(Err(trap)) => Err(Failure::classify(
                trap,
                state,
                limits,
                cpu.load(Ordering::Relaxed),
            )),
        }
    }

    /// Configure a telemetry sink and publish `events` to it.
    pub async fn publish(
        &self,
        plugin: &Plugin,
        state: StageState,
        config: &str,
        events: &[Event],
        limits: &Limits,
    ) -> Result<(), Failure> {
        if !matches!(plugin.pre, Pre::Sink(_) | Pre::SinkV0_1(_)) {
            return Err(Failure::Setup(format!(
                "{} is a stage, not a telemetry sink",
                plugin.label
            )));
        }
        let cpu = Arc::new(AtomicBool::new(false));
        let mut store = self.store(state, limits, cpu.clone());
        let call = async {
            match &plugin.pre {
                Pre::SinkV0_1(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let sink = instance.gantry_pipeline_sink();
                    match sink.call_configure(&mut store, config).await? {
                        Ok(()) => sink.call_publish(&mut store, events).await,
                        Err(e) => Ok(Err(e)),
                    }
                }
                Pre::Sink(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let sink = instance.gantry_pipeline_sink();
                    match sink.call_configure(&mut store, config).await? {
                        Ok(()) => sink.call_publish(&mut store, events).await,
                        Err(e) => Ok(Err(e)),
                    }
                }
                Pre::Stage(_) | Pre::StageV0_1(_) => unreachable!("checked above"),
            }
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        match result {
            Err(_) => Err(Failure::Timeout(limits.timeout)),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Failure::Stage(e)),
            Ok(Err(trap)) => Err(Failure::classify(
                trap,
                store.data(),
                limits,
                cpu.load(Ordering::Relaxed),
            )),
        }
    }
}

/// describe() failed: `message` names the budget or trap in words; `detail`
/// is the trap with its wasm backtrace, shown with `--verbose`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DescribeFailed {
    pub message: String,
    pub detail: String,
}

/// What every instance of a run shares.
#[derive(Clone)]
pub struct InstanceContext {
    /// Canonical path of the workspace; empty for none.
    pub workspace: PathBuf,
    pub reporter: Arc<dyn Reporter>,
    pub redactor: Redactor,
    pub secrets: Arc<crate::capabilities::secrets::SecretStore>,
    pub collector: Collector,
    pub base: EventBase,
    /// The run's `logs/` directory (in the state directory, outside the
    /// workspace); each stage logs to `<stage>.log` in it.
    pub logs: Option<Arc<crate::state_dir::PrivateDir>>,
    /// The workspace's host-kept state, for the `state` capability.
    pub state: Option<Arc<crate::capabilities::state::StateStore>>,
    /// The environment's Kubernetes cluster, connected on first use.
    pub cluster: Arc<crate::capabilities::cluster::kube::Connection>,
}

fn log_cap_message(limits: &Limits) -> String {
    format!(
        "wrote more than its log cap of {} (raise `limits.log`)",
        crate::units::format_size(limits.log)
    )
}

/// A trap this many frames deep is reported as probable runaway recursion.
const DEEP_STACK: usize = 1000;

/// How a stage failed.
#[derive(Debug)]
pub enum Failure {
    /// The plugin returned an error.
    Stage(StageError),
    /// The guest was stopped: a trap, a limit, a flood.
    Stopped(String),
    /// It did not finish within its wall-clock timeout.
    Timeout(Duration),
    /// The host could not set it up.
    Setup(String),
}

impl Failure {
    /// Explain a trap using what the limiters saw.
    fn classify(
        trap: wasmtime::Error,
        state: &StageState,
        limits: &Limits,
        cpu_exceeded: bool,
    ) -> Self {
        use crate::units::format_size;
        let message = if state.limiter.exceeded.load(Ordering::Relaxed) {
            format!(
                "exceeded its memory limit of {} (raise `limits.memory`)",
                format_size(limits.memory)
            )
        } else if cpu_exceeded {
            format!(
                "exceeded its CPU budget of {:?} in WebAssembly (raise `limits.cpu`)",
                limits.cpu
            )
        } else if state.log.flooded() {
            log_cap_message(limits)
        } else if state.telemetry.exceeded.load(Ordering::Relaxed) {
            format!(
                "sent more telemetry than its limit of {} or {} metrics and events (raise `limits.telemetry` or `limits.events`)",
                format_size(limits.telemetry),
                limits.events
            )
        } else {
            // The trap code and the depth of the call stack say more to a user than
            // the native backtrace that `{:#}` would print.
            let depth = trap
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map_or(0, |b| b.frames().len());
            match trap.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::StackOverflow) => {
                    "overflowed its call stack (unbounded recursion?)".to_string()
                }
                Some(code) if depth >= DEEP_STACK => {
                    format!(
                        "trapped: {code}, {depth} calls deep (unbounded recursion overflowing the guest's stack?)"
                    )
                }
                Some(code) => format!("trapped: {code}"),
                None => format!("trapped: {}", trap.root_cause()),
            }
        };
        Failure::Stopped(message)
    }

    /// Short kind, as shown in summaries: the stage-error variant or the way it stopped.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Stage(StageError::InvalidConfig(_)) => "invalid-config",
            Failure::Stage(StageError::Denied(_)) => "denied",
            Failure::Stage(StageError::Transient(_)) => "transient",
            Failure::Stage(StageError::Failed(_)) => "failed",
            Failure::Stopped(_) => "stopped",
            Failure::Timeout(_) => "timeout",
            Failure::Setup(_) => "setup",
        }
    }

    /// The failure in words; `stage` names the stage where the host speaks
    /// about it (a plugin's own error is shown as it wrote it).
    pub fn message(&self, stage: &str) -> String {
        match self {
            Failure::Stage(
                StageError::InvalidConfig(m)
                | StageError::Denied(m)
                | StageError::Transient(m)
                | StageError::Failed(m),
            ) => m.clone(),
            Failure::Stopped(m) => format!("stage `{stage}` {m}"),
            Failure::Setup(m) => format!("stage `{stage}`: {m}"),
            Failure::Timeout(d) => {
                format!(
                    "stage `{stage}` did not finish within its timeout of {d:?} (raise `timeout`)"
                )
            }
        }
    }
}

impl StageState {
    /// Prepare: build the per-instance state of every capability from the grants.
    pub fn prepare(
        ctx: &InstanceContext,
        subject: Subject,
        grants: &Grants,
        limits: &Limits,
    ) -> anyhow::Result<Self> {
        use crate::capabilities::{
            cluster, engine, exec, http, log, secrets, telemetry, workspace,
        };
        use crate::report::Level;
        let denials = subject.denials.clone();
        let log_file = match &ctx.logs {
            Some(dir) => Some(dir.append(&format!("{}.log", subject.name))?),
            None => None,
        };
        let log = Arc::new(log::StageLog::new(
            subject.clone(),
            ctx.reporter.clone(),
            ctx.redactor.clone(),
            limits.log,
            log_file,
        ));
        let env = grants.env.prepare();
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.args(&[subject.name.as_str()])
            .envs(&env)
            .stdout(log::LogPipe {
                log: log.clone(),
                level: Level::Info,
            })
            .stderr(log::LogPipe {
                log: log.clone(),
                level: Level::Warn,
            })
            // Sockets are never granted. TCP and UDP are "allowed" only so that
            // every connect, bind and send reaches this check, which refuses it
            // and tells the user (a socket that is never connected or bound
            // reaches nothing).
            .allow_tcp(true)
            .allow_udp(true)
            .socket_addr_check({
                let subject = subject.clone();
                move |addr, what| {
                    use wasmtime_wasi::sockets::SocketAddrUse as U;
                    // A connect first asks for an implicit bind to the wildcard
                    // address, which is where it is refused.
                    let attempt = match what {
                        U::TcpBind | U::UdpBind
                            if addr.ip().is_unspecified() && addr.port() == 0 =>
                        {
                            "to open a network socket".to_string()
                        }
                        U::TcpBind | U::UdpBind => format!("to bind a socket to {addr}"),
                        U::TcpListen => format!("to listen on {addr}"),
                        _ => format!("to connect to {addr}"),
                    };
                    subject.denials.record(format!(
                        "stage `{}` is not allowed {attempt}: sockets are never granted; \
                         for outgoing HTTP, grant the origin with `{}.permissions.http`",
                        subject.name, subject.field
                    ));
                    Box::pin(std::future::ready(false))
                }
            })
            .allow_ip_name_lookup(false);
        // An empty path means no workspace at all (describe() at validate time).
        if !ctx.workspace.as_os_str().is_empty() {
            grants.workspace.prepare(&mut wasi, &ctx.workspace)?;
        }
        Ok(StageState {
            wasi: wasi.build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_policy: http::HttpPolicy {
                grant: Arc::new(grants.http.clone()),
                subject: subject.clone(),
                effects: None,
            },
            table: wasmtime::component::ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory),
            secrets: secrets::SecretsState {
                grant: grants.secrets.clone(),
                store: ctx.secrets.clone(),
                subject: subject.clone(),
            },
            exec: exec::ExecState::new(
                grants.exec.clone(),
                subject.clone(),
                ctx.workspace.clone(),
                grants.workspace.write,
                env,
                log.clone(),
                ctx.base.run_id.clone(),
                limits.processes,
            ),
            telemetry: telemetry::TelemetryState {
                collector: ctx.collector.clone(),
                base: ctx.base.clone(),
                stage: subject.name.clone(),
                redactor: ctx.redactor.clone(),
                max_bytes: limits.telemetry,
                max_events: limits.events,
                sent_bytes: 0,
                sent_events: 0,
                exceeded: Arc::default(),
            },
            engine: engine::EngineState {
                grant: grants.engine,
                registries: grants.registries.clone(),
                subject: subject.clone(),
                workspace: ctx.workspace.clone(),
                workspace_writable: grants.workspace.write,
                log: log.clone(),
                run_id: ctx.base.run_id.clone(),
                effects: None,
            },
            workspace: workspace::WorkspaceAccess {
                write: grants.workspace.write,
                subject: subject.clone(),
            },
            state: crate::capabilities::state::StateState {
                grant: grants.state.clone(),
                store: ctx.state.clone(),
                subject: subject.clone(),
            },
            cluster: cluster::ClusterState {
                grant: grants.cluster.clone(),
                subject,
                connection: ctx.cluster.clone(),
                log: log.clone(),
                effects: None,
            },
            log,
            denials,
        })
    }

    /// The denials recorded during this instance.
    pub fn denials(&self) -> &Denials {
        &self.denials
    }
}
