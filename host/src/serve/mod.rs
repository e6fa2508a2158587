//! `gantry serve`: the continuous part. One long-running process that turns
//! pushes (webhooks, or polling as the safety net) into runs, runs them with
//! the same executor as `gantry run`, promotes a run's artifacts environment
//! by environment, and answers an HTTP API.
//!
//! - [`config`]: the service's configuration file.
//! - `intake`: webhook deliveries and polled refs become queued runs.
//! - `dispatch`: queued runs are claimed and executed; promotions follow.
//! - `http`: the router (webhooks, API, `/healthz`, `/metrics`).
//! - `metrics`: Prometheus exposition.
//! - `pages`: the dashboard (HTML pages, signed in by cookie).
//!
//! Everything durable is in the SQLite store ([`crate::queue`]) under the data
//! directory, next to the runs' workspaces; the runs' journals, logs and
//! summaries are where `gantry run` keeps them (the state directory). A
//! killed service loses nothing: at start it resumes the runs it left
//! running from their journals and runs what is still queued.

pub mod client;
pub mod config;
mod dispatch;
mod http;
mod intake;
mod metrics;
mod pages;

use crate::queue::{self, AsyncStore, Store};
use crate::runtime::{Runtime, RuntimeOptions};
use config::Loaded;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A watched repository with its secrets read.
struct Repo {
    config: config::Repository,
    github_secret: Option<Vec<u8>>,
    azure_devops: Option<crate::webhook::azure_devops::Auth>,
    poll: Option<std::time::Duration>,
}

/// An API token and whose it is (approvals record the name).
struct Token {
    name: String,
    value: String,
}

/// The running service, shared by its tasks.
pub struct Service {
    repos: Vec<Repo>,
    tokens: Vec<Token>,
    store: AsyncStore,
    workspaces: PathBuf,
    max_runs: usize,
    keep_workspaces: usize,
    runtime: Arc<Runtime>,
    /// The runs executing in this process, by queue id.
    active: Mutex<HashMap<i64, CancellationToken>>,
    /// Something was queued, approved or finished: the dispatcher looks again.
    wake: Notify,
    /// Stopping: no new runs are started.
    shutdown: CancellationToken,
    metrics: metrics::Metrics,
    verbose: bool,
    /// Where people reach the service (no trailing `/`): run pages are
    /// `<public_url>/runs/<n>`.
    public_url: String,
}

impl Service {
    /// Run `f` on the store's connection (its own thread: SQLite calls
    /// block). Store work only, never network or a run's stages.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> queue::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.store.call(f).await?)
    }

    fn repo_by_url(&self, url: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.config.url == url)
    }

    fn say(&self, text: &str) {
        println!("{text}");
    }

    fn debug(&self, text: &str) {
        if self.verbose {
            println!("debug: {text}");
        }
    }
}

/// Start the service and run until SIGINT or SIGTERM. Runs in flight are
/// stopped and stay `running` in the store: the next start resumes them.
pub async fn serve(loaded: Loaded, options: RuntimeOptions, verbose: bool) -> anyhow::Result<()> {
    private_dir(&loaded.data)?;
    let db = loaded.data.join("gantry.db");
    let workspaces = loaded.data.join("workspaces");
    private_dir(&workspaces)?;
    // Opening migrates, and refuses a database of a newer gantry, before
    // anything listens.
    let store = AsyncStore::open(&db).await?;

    let mut repos = vec![];
    for (i, r) in loaded.config.repositories.iter().enumerate() {
        let at = |field: &str| format!("repositories[{i}].{field}");
        let github_secret = match &r.github {
            Some(g) => Some(
                g.secret
                    .read(&loaded.base)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at("github.secret")))?
                    .into_bytes(),
            ),
            None => None,
        };
        let azure_devops = match &r.azure_devops {
            Some(a) => Some(crate::webhook::azure_devops::Auth {
                basic: match (&a.username, &a.password) {
                    (Some(user), Some(p)) => Some((
                        user.clone(),
                        p.read(&loaded.base)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", at("azure-devops.password")))?,
                    )),
                    _ => None,
                },
                header: match &a.header {
                    Some(h) => Some((
                        h.name.clone(),
                        h.value.read(&loaded.base).map_err(|e| {
                            anyhow::anyhow!("{}: {e}", at("azure-devops.header.value"))
                        })?,
                    )),
                    None => None,
                },
            }),
            None => None,
        };
        repos.push(Repo {
            config: r.clone(),
            github_secret,
            azure_devops,
            poll: loaded.poll[i],
        });
    }
    let mut tokens = vec![];
    for (i, t) in loaded.config.api_tokens.iter().enumerate() {
        let value = t
            .token
            .read(&loaded.base)
            .map_err(|e| anyhow::anyhow!("api-tokens[{i}].token: {e}"))?;
        anyhow::ensure!(
            value.len() >= 16,
            "api-tokens[{i}].token: shorter than 16 characters; use a long random value"
        );
        tokens.push(Token {
            name: t.name.clone(),
            value,
        });
    }

    let runtime = Arc::new(Runtime::new(options)?);
    let listener = tokio::net::TcpListener::bind(&loaded.config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", loaded.config.listen))?;
    let addr = listener.local_addr()?;
    let service = Arc::new(Service {
        repos,
        tokens,
        store,
        workspaces,
        max_runs: loaded.config.max_runs,
        keep_workspaces: loaded.config.keep_workspaces,
        runtime,
        active: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        shutdown: CancellationToken::new(),
        metrics: metrics::Metrics::new(),
        verbose,
        public_url: loaded
            .config
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_string(),
    });
    service.say(&format!(
        "gantry serve: listening on http://{addr} ({} repositor{}, data in {})",
        service.repos.len(),
        if service.repos.len() == 1 { "y" } else { "ies" },
        loaded.data.display()
    ));

    dispatch::recover(&service).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..service.repos.len() {
        if service.repos[i].poll.is_some() {
            tasks.spawn(intake::poll_loop(service.clone(), i));
        }
    }
    tasks.spawn(dispatch::dispatch_loop(service.clone()));

    let stop = service.shutdown.clone();
    tokio::spawn(async move {
        let _ = crate::pipeline::cancel_signal().await;
        stop.cancel();
    });
    let app = http::router(service.clone());
    let stop = service.shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    // Stop the runs in flight; their journals record it and the next start
    // resumes them (their store rows stay `running`).
    for token in service.active.lock().unwrap().values() {
        token.cancel();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !service.active.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tasks.abort_all();
    service.say("gantry serve: stopped");
    Ok(())
}

/// Create `path` (and its parents), readable by this user only: it holds
/// the runs' workspaces and the delivery history.
fn private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| anyhow::anyhow!("cannot restrict {}: {e}", path.display()))
}
