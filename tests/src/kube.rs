//! A test Kubernetes API server, faithful in what a deploy path uses, for driving
//! gantry's `cluster` capability (kube-rs) and the real `kubectl` against.
//!
//! Faithful:
//! - Bearer-token auth (401 Status otherwise); errors are `kind: Status` objects
//!   with the real reasons, codes and messages (NotFound, AlreadyExists, Conflict,
//!   Invalid, BadRequest, Unauthorized, Expired).
//! - `/version`, legacy discovery (`/api`, `/api/v1`, `/apis`, `/apis/{g}/{v}`;
//!   aggregated discovery is not offered, so clients fall back to these), and an
//!   OpenAPI v3 index whose PATCH operations declare `fieldValidation`, which is what
//!   makes `kubectl apply` skip client-side schema validation.
//! - Types: v1 namespaces, pods, services, configmaps, secrets,
//!   persistentvolumeclaims; batch/v1 jobs; apps/v1 deployments,
//!   replicasets; autoscaling/v2 horizontalpodautoscalers; networking.k8s.io/v1
//!   ingresses; `/status` subresources (main writes keep status, status writes keep
//!   spec).
//! - Metadata: uid, creationTimestamp, one global resourceVersion counter,
//!   generation (apps, autoscaling, networking types; Deployments also bump it on
//!   annotation changes, as the real strategy does), managedFields in the real
//!   FieldsV1 format. A write that changes nothing (including an identical apply)
//!   is not a write: no resourceVersion bump, no watch event.
//! - GET, LIST (label selectors with `=`, `==`, `!=`, `in`, `notin`, `!k`, `k`;
//!   field selectors on any dotted path; `limit`/`continue`), POST, PUT, PATCH
//!   (server-side apply; merge, strategic merge and JSON patch), DELETE (Status
//!   Success; owned objects are garbage-collected at once), deletecollection,
//!   `dryRun=All`.
//! - Server-side apply: required `fieldManager`, per-manager field sets, removal of
//!   fields a manager stops applying, 409 conflicts with `FieldManagerConflict`
//!   causes and the real message (`Apply failed with 1 conflict: conflict with
//!   "a": .spec.replicas`), `force=true` moving ownership. Non-apply writes take
//!   ownership of what they change (as `Update` entries), like the real server.
//! - Watches (`watch=true|1`): resume after a resourceVersion from the kept
//!   history (410 Expired ERROR event if too old), or start with ADDED events of the
//!   current objects; selectors; `timeoutSeconds`; bookmarks (`allowWatchBookmarks`,
//!   `sendInitialEvents` end marker).
//! - Deployments: a ReplicaSet per pod template (named `<deploy>-<pod-template-hash>`,
//!   reused on rollback with the next revision), revision annotations, pods per
//!   replica, old ReplicaSets scaled to zero once the new one is available, and the
//!   status (replica counts, Available and Progressing conditions, including
//!   ProgressDeadlineExceeded) a real controller reports, so `kubectl rollout
//!   status`/`undo` behave as on a cluster.
//! - batch/v1 Jobs (conditions `Complete`/`Failed` with `BackoffLimitExceeded`
//!   and `DeadlineExceeded`, `ttlSecondsAfterFinished`), v1
//!   persistentvolumeclaims (bound at once), `pods/log` (with `follow=true`),
//!   DELETE with `propagationPolicy` (`Orphan` keeps the dependents), and a
//!   kubelet that runs the pods of Jobs for real on the Docker engine once a
//!   test asks ([`KubeApi::run_pods_on_docker`]; see `jobs.rs` for what it
//!   does and simplifies).
//! - Namespaces: `default`, `kube-system`, `kube-public`, `kube-node-lease` exist;
//!   writing into any other namespace needs it created first (404 otherwise), as on
//!   a real server. Deleting a namespace deletes its contents at once.
//!
//! Simplified (honestly):
//! - No schemas: unknown fields are kept, `fieldValidation` is accepted and ignored,
//!   and list/map merge semantics come from field names: `containers`,
//!   `initContainers`, `ephemeralContainers`, `env`, `volumes`, `imagePullSecrets`
//!   merge by `name`, `volumeMounts` by `mountPath`, `ports` by `containerPort` (pod)
//!   or `port` (service; protocol is not part of the key); `selector` maps are
//!   atomic; every other list is atomic and every other object granular.
//! - Strategic merge patch is that same merge (null deletes, keyed lists by key,
//!   `$patch: delete|replace` honoured, other directives ignored).
//! - Defaulting and validation cover a subset (Deployment/ReplicaSet/Pod spec
//!   defaults, Service cluster IP and ports, Secret `stringData`; selectors,
//!   containers, immutable Deployment selectors).
//! - Rollouts are instantaneous scale-ups: the new ReplicaSet gets all replicas at
//!   once (no surge steps) and becomes available after the rollout delay; old ones
//!   keep theirs until then. The progress deadline counts from the rollout's start,
//!   not from the last progress. `spec.paused`, `minReadySeconds` and
//!   `revisionHistoryLimit` cleanup are not simulated.
//! - Deletion is immediate (no graceful deletion, finalizers or Terminating
//!   namespaces); the response is always a Success Status.
//! - A watch whose label selector stops matching an object does not get a DELETED
//!   event for it; `continue` tokens are offsets, not snapshots; tables
//!   (`as=Table`) are not offered, so kubectl prints its generic columns.
//! - No protobuf, CBOR, TLS, RBAC, admission or aggregated discovery.

mod controller;
mod fields;
mod http;
mod jobs;
mod resources;
mod store;
mod write;

use controller::{Config, Controller};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;

/// State shared by the HTTP handlers, watches and the controller.
struct Shared {
    store: Mutex<Store>,
    config: Mutex<Config>,
    requests: Mutex<Vec<(String, String, String)>>,
    /// `127.0.0.1:PORT`
    addr: String,
    /// The kubelet that runs pods of Jobs on Docker (idle until enabled).
    kubelet: Mutex<jobs::Kubelet>,
    /// The server's certificate, as pods find it next to their token.
    ca_pem: String,
}

/// Lock, ignoring poisoning: a panicked handler must not take the server down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FNV-1a, 32 bits: the hash the real Deployment controller uses for templates.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The alphabet of generated name suffixes (no vowels, no confusable digits).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A 5-character generated-name suffix, unique per store.
fn suffix(store: &mut Store) -> String {
    let mut h = fnv(store.uid().as_bytes());
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u32) as usize] as char;
            h /= ALPHABET.len() as u32;
            c
        })
        .collect()
}

/// The server; dropping it stops it.
pub struct KubeApi {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeApi {
    /// The bearer token every request must carry.
    pub const TOKEN: &'static str = TOKEN;

    /// Start on a free 127.0.0.1 port (plain http), with its own tokio runtime.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-api")
            .enable_all()
            .build()
            .expect("build the kube test server's runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let addr = listener.local_addr().expect("listener address").to_string();
        let (changes, _) = tokio::sync::watch::channel(0);
        let (tls, ca_pem) = tls_acceptor();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(changes)),
            config: Mutex::new(Config {
                fail: Vec::new(),
                delay: Duration::from_millis(200),
            }),
            requests: Mutex::new(Vec::new()),
            addr,
            kubelet: Mutex::new(jobs::Kubelet::default()),
            ca_pem,
        });
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the listener");
            serve(listener, app, tls).await;
        });
        runtime.spawn(run_controller(shared.clone()));
        KubeApi {
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `https://127.0.0.1:PORT`: the same port also speaks TLS (self-signed).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    /// Write a kubeconfig (cluster, user and context `test`, current-context `test`,
    /// the token as credentials) into `dir`; return its path. The server is the
    /// `https://` form with `insecure-skip-tls-verify`, because client-go (kubectl)
    /// only reads credentials for TLS transports and would send no token over
    /// plain http.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let cluster = format!(
            "    server: {}\n    insecure-skip-tls-verify: true\n",
            self.https_url()
        );
        write_kubeconfig(&dir.join("kubeconfig"), &cluster)
    }

    /// Like [`KubeApi::kubeconfig`] with the plain `http://` server, for clients that
    /// send tokens over http (kube-rs does; kubectl does not). Written as
    /// `kubeconfig-http`.
    pub fn kubeconfig_http(&self, dir: &Path) -> PathBuf {
        let cluster = format!("    server: {}\n", self.url());
        write_kubeconfig(&dir.join("kubeconfig-http"), &cluster)
    }

    /// Rollouts of Deployments whose pod template has a container image containing
    /// `needle` never become available; their pods wait with `reason` (e.g.
    /// "ImagePullBackOff", "CrashLoopBackOff") and, after the Deployment's
    /// `progressDeadlineSeconds`, Progressing turns False (ProgressDeadlineExceeded).
    pub fn fail_images(&self, needle: &str, reason: &str) {
        lock(&self.shared.config)
            .fail
            .push((needle.to_string(), reason.to_string()));
    }

    /// Run the pods of Jobs for real on the Docker engine from now on, keeping
    /// their files (volumes, termination messages, unbound claims) under
    /// `root`. Containers are labelled `gantry-test-kubelet=1`; the server
    /// removes them when it drops.
    pub fn run_pods_on_docker(&self, root: &Path) {
        lock(&self.shared.kubelet).root = Some(root.to_path_buf());
        if let Some(rt) = &self.runtime {
            rt.spawn(jobs::run_kubelet(self.shared.clone()));
        }
    }

    /// The PersistentVolumeClaim `namespace/name` is the host directory `dir`
    /// (the claim object itself must still be created, as on a cluster).
    pub fn bind_claim(&self, namespace: &str, name: &str, dir: &Path) {
        lock(&self.shared.kubelet)
            .claims
            .insert((namespace.into(), name.into()), dir.to_path_buf());
    }

    /// Create an object as a client would (`POST`), e.g. a namespace or a
    /// claim a test needs; panics on an error.
    pub fn create(&self, object: Value) {
        let gv = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default();
        let res = resources::RESOURCES
            .iter()
            .position(|r| r.kind == kind && r.api_version() == gv)
            .unwrap_or_else(|| panic!("the server does not serve {gv} {kind}"));
        let namespace = if resources::RESOURCES[res].namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
        } else {
            ""
        };
        let key = (
            res,
            namespace.to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let req = write::Request {
            key,
            status: false,
            manager: "test",
            dry_run: false,
        };
        let mut store = lock(&self.shared.store);
        if let Err(e) = write::write(&mut store, &req, write::Change::Object(object), true) {
            panic!("creating the object failed: {}", e.message);
        }
    }

    /// Delete an object as a client would (background propagation: what it
    /// owns goes too); false when there was none.
    pub fn delete(&self, group_version: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let Some(res) = resources::find_gv(group_version, plural) else {
            return false;
        };
        lock(&self.shared.store)
            .delete(&(res, namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Every stored object of a type (`"batch/v1"`, `"jobs"`) in `namespace`.
    pub fn objects(&self, group_version: &str, plural: &str, namespace: &str) -> Vec<Value> {
        let Some(res) = resources::find_gv(group_version, plural) else {
            return vec![];
        };
        lock(&self.shared.store)
            .list(res, Some(namespace))
            .into_iter()
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Delay before a healthy rollout's new pods are ready (default 200 ms).
    pub fn set_rollout_delay(&self, d: Duration) {
        lock(&self.shared.config).delay = d;
    }

    /// The stored object, None if absent. `group_version` as in apiVersion ("v1",
    /// "apps/v1"), `plural` e.g. "deployments"; `namespace` is ignored for
    /// cluster-scoped types.
    pub fn object(
        &self,
        group_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let res = resources::find_gv(group_version, plural)?;
        let namespace = if resources::RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        lock(&self.shared.store)
            .get(&(res, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request seen: (method, path and query, content type).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        lock(&self.shared.requests).clone()
    }

    /// How many writes changed an object (resourceVersion bumps), by clients and
    /// the simulated controllers alike.
    pub fn writes(&self) -> usize {
        lock(&self.shared.store).writes
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Wait until `done` holds for the stored object (polling), or panic after `timeout`.
    pub fn wait_for(
        &self,
        group_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let obj = self.object(group_version, plural, namespace, name);
            if let Some(obj) = obj.filter(|o| done(o)) {
                return obj;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{plural} {namespace}/{name} did not reach the expected state in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const TOKEN: &str = "gantry-test-token";

fn write_kubeconfig(path: &Path, cluster: &str) -> PathBuf {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n{cluster}\
         users:\n- name: test\n  user:\n    token: {TOKEN}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
         current-context: test\n"
    );
    std::fs::write(path, config).expect("write the kubeconfig");
    path.to_path_buf()
}

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1, and
/// that certificate in PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use tokio_rustls::rustls;
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("generate the server certificate");
    let cert = key.cert.der().clone();
    let pem = key.cert.pem();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .expect("the generated certificate is valid");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), pem)
}

/// Accept connections, each either TLS or plain HTTP/1.1 (told apart by the first
/// byte: a TLS handshake record starts with 0x16, an HTTP request with a letter).
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: tokio_rustls::TlsAcceptor,
) {
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
                return;
            }
            let service = hyper_util::service::TowerToHyperService::new(app);
            let http = hyper::server::conn::http1::Builder::new();
            // Connection errors (clients hanging up mid-watch) are not server errors.
            if first[0] == 0x16 {
                if let Ok(stream) = tls.accept(tcp).await {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            } else {
                let _ = http.serve_connection(TokioIo::new(tcp), service).await;
            }
        });
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let containers: Vec<String> = lock(&self.shared.kubelet)
            .containers
            .values()
            .cloned()
            .collect();
        for c in containers {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &c])
                .output();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// How often the controller looks again when nothing changed (rollout delays and
/// progress deadlines are time-driven).
const RESYNC: Duration = Duration::from_millis(50);

async fn run_controller(shared: Arc<Shared>) {
    let mut changes = lock(&shared.store).subscribe();
    let mut controller = Controller::default();
    let mut clock = jobs::JobClock::default();
    loop {
        {
            let config = lock(&shared.config).clone();
            let mut store = lock(&shared.store);
            changes.borrow_and_update();
            controller.reconcile(&mut store, &config);
            jobs::reconcile(&mut store, &mut clock);
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}
