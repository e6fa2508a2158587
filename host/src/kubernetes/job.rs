//! The host side of `executor: kubernetes`: one stage attempt as a Secret and
//! a batch/v1 Job, followed to its end.
//!
//! Order, so that a host killed at any point neither loses nor doubles a
//! stage: the Job's name is journaled (`stage-job`) before the Job is created;
//! `gantry resume` finds the name and re-attaches to the Job (running, or
//! finished within `ttlSecondsAfterFinished`) instead of creating another. A
//! cancelled run (Ctrl-C, SIGTERM, the service's cancel) deletes its Jobs with
//! background propagation, so their pods go too.

use super::config::KubeJobs;
use super::spec::{SPEC_DIR, SPEC_KEY, SPEC_VERSION, StageReport, StageSpec, WORKSPACE_MOUNT};
use crate::capabilities::Subject;
use crate::capabilities::log::StageLog;
use crate::journal::Record;
use crate::manifest::ClusterTarget;
use crate::pipeline::Pipeline;
use crate::plan::Unit;
use crate::runtime::bindings::types::{Outcome, StageContext, StageError};
use crate::runtime::{Failure, InstanceContext, Plugin};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The container's name in every stage pod.
pub const CONTAINER: &str = "stage";
/// Labels on every Job, pod and Secret gantry makes.
pub const LABEL_RUN: &str = "gantry.dev/run-id";
pub const LABEL_STAGE: &str = "gantry.dev/stage";
/// The label the Job controller puts on a Job's pods.
pub const LABEL_JOB: &str = "batch.kubernetes.io/job-name";
/// Waiting reasons after which a pod will not start without a change: the
/// stage fails at once with the reason instead of waiting out its deadline.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How an attempt run as a Job ended: the outcome and denials as the local
/// executor gives them, and what the Job said (its name and the reason it
/// failed), for the stage's detail.
pub struct JobOutcome {
    pub outcome: Result<Outcome, Failure>,
    pub denials: Vec<String>,
    pub note: Option<String>,
}

/// Jobs created and not yet followed to their end, per run: what a cancel
/// deletes. A host that dies leaves them running for `gantry resume`.
type Live = Vec<(String, kube::Client, String, String)>;
static LIVE: Mutex<Live> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delete the Jobs of run `run_id` still running (propagation: background, so
/// their pods go too); returns their names. Called when the run is cancelled.
pub async fn cancel_run(run_id: &str) -> Vec<String> {
    let jobs: Vec<_> = {
        let mut all = live();
        let (mine, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(run, ..)| run == run_id);
        *all = rest;
        mine
    };
    let mut deleted = vec![];
    for (_, client, ns, name) in jobs {
        let api: Api<Job> = Api::namespaced(client, &ns);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => eprintln!("warning: could not delete Job {ns}/{name}: {e}"),
        }
    }
    deleted
}

fn forget(name: &str) {
    live().retain(|(_, _, _, n)| n != name);
}

/// A client for the environment's cluster: its `cluster:` kubeconfig and
/// context, else the host's own (`KUBECONFIG`, `~/.kube/config`, or the
/// in-cluster service account of a `gantry serve` running in a pod).
pub async fn client(
    target: Option<&ClusterTarget>,
    environment: &str,
) -> anyhow::Result<kube::Client> {
    match target {
        Some(_) => crate::capabilities::cluster::kube::connect(target, environment)
            .await
            .map_err(anyhow::Error::msg),
        None => kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "environment `{environment}` runs stages as Kubernetes Jobs but names no \
                 cluster, and the host has no kubeconfig: {e}"
            )
        }),
    }
}

/// A Job name for an attempt: `gantry-<stage>-<hash>`, a DNS label unique per
/// run, stage, attempt and time of creation.
pub fn job_name(run_id: &str, stage: &str, attempt: u32) -> String {
    let mut stage: String = stage
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    stage = stage.trim_matches('-').to_string();
    let seed = format!(
        "{run_id}/{stage}/{attempt}/{}/{}",
        crate::capabilities::telemetry::now_ms(),
        std::process::id()
    );
    let hash = &super::spec::sha256(seed.as_bytes())["sha256:".len()..][..10];
    format!("gantry-{stage}-{hash}")
}

/// A label value from any string (at most 63 characters of `[a-z0-9.-_]`).
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The Job of one attempt.
pub fn job_object(
    cfg: &KubeJobs,
    name: &str,
    spec: &StageSpec,
    cluster_granted: bool,
) -> serde_json::Value {
    let labels = json!({
        LABEL_RUN: label_value(&spec.run_id),
        LABEL_STAGE: label_value(&spec.stage),
        "app.kubernetes.io/managed-by": "gantry",
    });
    let mut pod = json!({
        "restartPolicy": "Never",
        // Kubernetes API credentials only for stages granted `cluster`.
        "automountServiceAccountToken": cluster_granted,
        "containers": [{
            "name": CONTAINER,
            "image": cfg.image,
            "args": ["stage", "--spec", format!("{SPEC_DIR}/{SPEC_KEY}"),
                     "--workspace", WORKSPACE_MOUNT],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [
                {"name": "workspace", "mountPath": WORKSPACE_MOUNT},
                {"name": "spec", "mountPath": SPEC_DIR, "readOnly": true},
            ],
        }],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": cfg.workspace_claim}},
            {"name": "spec", "secret": {"secretName": name, "defaultMode": 0o400}},
        ],
    });
    if !cfg.requests.is_empty() || !cfg.limits.is_empty() {
        pod["containers"][0]["resources"] = json!({"requests": cfg.requests, "limits": cfg.limits});
    }
    if let Some(sa) = &cfg.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    if !cfg.node_selector.is_empty() {
        pod["nodeSelector"] = json!(cfg.node_selector);
    }
    if !cfg.image_pull_secrets.is_empty() {
        pod["imagePullSecrets"] = cfg
            .image_pull_secrets
            .iter()
            .map(|s| json!({"name": s}))
            .collect();
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            // Retries are gantry's (`retries:`, on `transient` failures only).
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.timeout_ms.div_ceil(1000).max(1),
            "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    })
}

/// The stage's Secret: its spec, holding its config and only its granted
/// secrets, mounted only into its pod.
fn secret_object(
    cfg: &KubeJobs,
    name: &str,
    spec: &StageSpec,
) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": {
            LABEL_RUN: label_value(&spec.run_id),
            LABEL_STAGE: label_value(&spec.stage),
            "app.kubernetes.io/managed-by": "gantry",
        }},
        "type": "Opaque",
        "stringData": {SPEC_KEY: serde_json::to_string(spec)?},
    }))
}

/// The conditions a Job ends with: (`Complete`|`Failed`, reason, message).
fn finished(job: &Job) -> Option<(String, String, String)> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            (
                c.type_.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Everything the attempt needs from the pipeline.
struct Attempt<'a> {
    cfg: &'a KubeJobs,
    client: kube::Client,
    spec: StageSpec,
    log: Arc<StageLog>,
    workspace: &'a Path,
    reporter: Arc<dyn crate::report::Reporter>,
    /// The stage is granted `cluster`: its pod gets the service account's token.
    cluster: bool,
}

impl Pipeline<'_> {
    /// Run one attempt of `unit` as a Kubernetes Job, re-attaching to
    /// `reattach` (a Job a resumed run's journal names) when it still exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_job(
        &self,
        cfg: &KubeJobs,
        unit: &Unit,
        plugin: &Plugin,
        ctx: &InstanceContext,
        context: &StageContext,
        attempt: u32,
        journal: &Mutex<crate::journal::Journal>,
        reattach: Option<String>,
    ) -> JobOutcome {
        let fail = |f: Failure| JobOutcome {
            outcome: Err(f),
            denials: vec![],
            note: None,
        };
        let spec = match self.stage_spec(unit, plugin, ctx, context, attempt) {
            Ok(s) => s,
            Err(e) => return fail(Failure::Setup(format!("{e:#}"))),
        };
        let client = match client(self.plan.cluster.as_ref(), &self.plan.environment).await {
            Ok(c) => c,
            Err(e) => return fail(Failure::Setup(format!("{e:#}"))),
        };
        let log_file = match &ctx.logs {
            Some(dir) => dir.append(&format!("{}.log", unit.name)).ok(),
            None => None,
        };
        let log = Arc::new(StageLog::new(
            Subject::new(&unit.name, &unit.field),
            ctx.reporter.clone(),
            ctx.redactor.clone(),
            unit.limits.log,
            log_file,
        ));
        let a = Attempt {
            cfg,
            client,
            spec,
            log,
            workspace: &self.plan.workspace,
            reporter: self.reporter.clone(),
            cluster: !unit.grants.cluster.namespaces.is_empty(),
        };
        let record = |job: &str| {
            journal.lock().unwrap().append(&Record::StageJob {
                stage: unit.name.clone(),
                attempt,
                namespace: cfg.namespace.clone(),
                job: job.to_string(),
                ts_ms: crate::capabilities::telemetry::now_ms(),
            })
        };
        match a.run(reattach, record).await {
            Ok(o) => o,
            Err(e) => fail(Failure::Setup(format!("{e:#}"))),
        }
    }

    /// What the pod needs to run the attempt as the host would.
    fn stage_spec(
        &self,
        unit: &Unit,
        plugin: &Plugin,
        ctx: &InstanceContext,
        context: &StageContext,
        attempt: u32,
    ) -> anyhow::Result<StageSpec> {
        let workspace = self.plan.workspace.canonicalize()?;
        let manifest = self.plan.manifest.canonicalize()?;
        let Ok(relative) = manifest.strip_prefix(&workspace) else {
            anyhow::bail!(
                "{} is outside the workspace {}: with `executor: kubernetes` the pods read the \
                 manifest from the workspace volume, so it must be inside the workspace",
                manifest.display(),
                workspace.display()
            );
        };
        let mut secrets = BTreeMap::new();
        for name in &unit.grants.secrets.names {
            if let Some(v) = ctx.secrets.value(name) {
                secrets.insert(name.clone(), v.to_string());
            }
        }
        let env = unit.grants.env.prepare().into_iter().collect();
        Ok(StageSpec {
            version: SPEC_VERSION,
            run_id: self.run_id.clone(),
            pipeline: self.plan.pipeline.clone(),
            environment: self.plan.environment.clone(),
            stage: unit.name.clone(),
            attempt,
            manifest: relative.display().to_string(),
            manifest_sha256: crate::journal::file_sha256(&manifest)?,
            plugin_digest: plugin.digest.clone(),
            config: context.config.clone(),
            inputs: context
                .inputs
                .iter()
                .map(crate::pipeline::from_wit)
                .collect(),
            upstream: context
                .upstream
                .iter()
                .map(|u| (u.stage.clone(), u.outputs.clone()))
                .collect(),
            secrets,
            env,
            timeout_ms: unit.limits.timeout.as_millis() as u64,
        })
    }
}

impl Attempt<'_> {
    async fn run(
        self,
        reattach: Option<String>,
        record: impl FnOnce(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<JobOutcome> {
        use anyhow::Context;
        let ns = &self.cfg.namespace;
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let stage = &self.spec.stage;
        let existing = match &reattach {
            Some(name) => jobs
                .get_opt(name)
                .await
                .with_context(|| format!("reading Job {ns}/{name}"))?,
            None => None,
        };
        let name = match (existing, reattach) {
            (Some(job), Some(name)) => {
                let state = match finished(&job) {
                    Some((kind, ..)) => format!("finished ({kind}) while the host was down"),
                    None => "still running".into(),
                };
                self.reporter.note(&format!(
                    "  {stage}: re-attaching to Job {ns}/{name}, {state}"
                ));
                name
            }
            (None, gone) => {
                if let Some(gone) = gone {
                    self.reporter.note(&format!(
                        "  {stage}: Job {ns}/{gone} is gone (deleted, or cleaned up after \
                         ttlSecondsAfterFinished); running the stage again"
                    ));
                }
                let name = job_name(&self.spec.run_id, stage, self.spec.attempt);
                // Journaled first: a host killed after the create finds it on resume.
                record(&name).context("journaling the Job's name")?;
                // Registered before the create: a cancel while it is under way
                // deletes it too (or finds nothing to delete).
                self.register(&name);
                self.create(&name).await?;
                name
            }
            (Some(_), None) => unreachable!("a Job is read only when one was named"),
        };
        self.register(&name);
        self.reporter.debug(&format!("{stage}: Job {ns}/{name}"));
        // Stopped with the attempt, however it ends (a cancel drops it).
        let mut follow = AbortOnDrop(tokio::spawn(follow_log(
            self.client.clone(),
            ns.clone(),
            name.clone(),
            self.log.clone(),
            self.reporter.clone(),
        )));
        let end = tokio::select! {
            end = wait_for_job(jobs.clone(), &name) => end,
            problem = pod_problem(self.client.clone(), ns, &name) => {
                // The pod cannot start: delete the Job rather than wait out its deadline.
                let _ = jobs.delete(&name, &DeleteParams::background()).await;
                Ok(("Failed".into(), problem.0, problem.1))
            }
        };
        // The log ends with the container; a pod that never ran has none.
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut follow.0).await;
        drop(follow);
        forget(&name);
        // The spec (with the stage's secrets) is not needed once the pod ended.
        let _ = secrets.delete(&name, &DeleteParams::background()).await;
        self.outcome(&name, end?).await
    }

    /// What a cancel of the run deletes (once per name).
    fn register(&self, name: &str) {
        let mut all = live();
        if !all.iter().any(|(_, _, _, n)| n == name) {
            all.push((
                self.spec.run_id.clone(),
                self.client.clone(),
                self.cfg.namespace.clone(),
                name.to_string(),
            ));
        }
    }

    async fn create(&self, name: &str) -> anyhow::Result<()> {
        use anyhow::Context;
        let ns = &self.cfg.namespace;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        // A missing claim would leave the pod pending until its deadline.
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), ns);
        let claim = &self.cfg.workspace_claim;
        if claims
            .get_opt(claim)
            .await
            .with_context(|| {
                format!(
                    "reading PersistentVolumeClaim {ns}/{claim} (RBAC: get persistentvolumeclaims)"
                )
            })?
            .is_none()
        {
            anyhow::bail!(
                "the workspace claim {ns}/{claim} (`executor.kubernetes.workspace-claim`) does \
                 not exist: create a ReadWriteMany PersistentVolumeClaim holding the workspace"
            );
        }
        let secret: Secret = serde_json::from_value(secret_object(self.cfg, name, &self.spec)?)?;
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating Secret {ns}/{name} (RBAC: create secrets)"))?;
        let job: Job =
            serde_json::from_value(job_object(self.cfg, name, &self.spec, self.cluster))?;
        let job = jobs
            .create(&PostParams::default(), &job)
            .await
            .with_context(|| format!("creating Job {ns}/{name} (RBAC: create jobs)"))?;
        // The Secret goes with its Job (cleanup after ttlSecondsAfterFinished).
        let owner = json!({"metadata": {"ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": name,
            "uid": job.metadata.uid, "blockOwnerDeletion": false,
        }]}});
        secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(&owner))
            .await
            .with_context(|| format!("making Job {ns}/{name} own its Secret"))?;
        Ok(())
    }

    /// Read the pod's report and turn the Job's end into the stage's outcome.
    async fn outcome(
        &self,
        name: &str,
        (kind, reason, message): (String, String, String),
    ) -> anyhow::Result<JobOutcome> {
        let ns = &self.cfg.namespace;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = pods
            .list(&ListParams::default().labels(&format!("{LABEL_JOB}={name}")))
            .await?
            .items
            .into_iter()
            .next();
        let terminated = pod
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone());
        let report = terminated
            .as_ref()
            .and_then(|t| t.message.as_deref())
            .filter(|m| !m.trim().is_empty())
            .map(|m| {
                super::spec::read_message(m, |rel| {
                    let path = self.workspace.join(rel);
                    let bytes = std::fs::read(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    let _ = std::fs::remove_file(&path);
                    Ok(bytes)
                })
            })
            .transpose()?;
        let exit = terminated.as_ref().map(|t| t.exit_code);
        // What the sandbox refused in the pod, for the host to report.
        let denials = report.as_ref().map_or_else(Vec::new, |r| r.denials.clone());
        let job_said = match (&kind[..], reason.as_str()) {
            ("Complete", _) => None,
            (_, "DeadlineExceeded") => Some(format!(
                "Kubernetes Job {ns}/{name}: DeadlineExceeded, active longer than its \
                 activeDeadlineSeconds of {}s",
                self.spec.timeout_ms.div_ceil(1000).max(1)
            )),
            (_, reason) => Some(format!(
                "Kubernetes Job {ns}/{name}: {reason}{}{}",
                exit.map_or(String::new(), |c| format!(", exit code {c}")),
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            )),
        };
        let outcome = match (report, kind.as_str(), reason.as_str()) {
            (_, "Failed", "DeadlineExceeded") => Err(Failure::Timeout(Duration::from_millis(
                self.spec.timeout_ms,
            ))),
            (Some(r), ..) => to_outcome(&r),
            (None, "Complete", _) => Err(Failure::Setup(format!(
                "Job {ns}/{name} completed without a report in its termination message"
            ))),
            (None, ..) => {
                let why = terminated
                    .as_ref()
                    .and_then(|t| t.reason.clone())
                    .unwrap_or_else(|| reason.clone());
                if FATAL_WAITING.contains(&why.as_str()) || FATAL_WAITING.contains(&reason.as_str())
                {
                    // An image that cannot be pulled may be a registry hiccup.
                    Err(Failure::Stage(StageError::Transient(format!(
                        "its pod could not start: {reason}: {message}"
                    ))))
                } else {
                    Err(Failure::Stopped(format!(
                        "ran as Job {ns}/{name}, whose pod ended without a report ({why}{})",
                        exit.map_or(String::new(), |c| format!(", exit code {c}"))
                    )))
                }
            }
        };
        Ok(JobOutcome {
            outcome,
            denials,
            note: job_said,
        })
    }
}

/// A report as the local executor's result.
fn to_outcome(r: &StageReport) -> Result<Outcome, Failure> {
    match super::worker::failure_of(r) {
        Some(f) => Err(f),
        None => Ok(Outcome {
            summary: r.message.clone(),
            outputs: r.outputs.clone(),
            artifacts: r.artifacts.iter().map(crate::pipeline::to_wit).collect(),
        }),
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watch the Job until it is `Complete` or `Failed`. A Job deleted (or
/// never there) before it ended is an error naming it: the host would
/// otherwise wait for a condition that cannot come.
async fn wait_for_job(jobs: Api<Job>, name: &str) -> anyhow::Result<(String, String, String)> {
    use watcher::Event;
    let ns = jobs.namespace().unwrap_or_default().to_string();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(jobs, config).default_backoff().boxed();
    let mut seen = false;
    let gone = || {
        anyhow::anyhow!(
            "Job {ns}/{name} was deleted before it finished (by someone else: gantry deletes \
             a Job only when the run is cancelled)"
        )
    };
    loop {
        match events.try_next().await {
            Ok(Some(Event::Apply(job) | Event::InitApply(job))) => {
                seen = true;
                if let Some(end) = finished(&job) {
                    return Ok(end);
                }
            }
            Ok(Some(Event::Delete(_))) => return Err(gone()),
            // A (re)list found nothing: the Job is gone.
            Ok(Some(Event::InitDone)) if !seen => return Err(gone()),
            Ok(Some(Event::Init | Event::InitDone)) => seen = false,
            Ok(None) => anyhow::bail!("the watch on Job {ns}/{name} ended"),
            Err(e) => anyhow::bail!("watching Job {ns}/{name}: {e}"),
        }
    }
}

/// Resolves only when the Job's pod waits for something that will not come
/// (an image that cannot be pulled, a missing Secret or claim): its reason and
/// message.
async fn pod_problem(client: kube::Client, ns: &str, job: &str) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let selector = ListParams::default().labels(&format!("{LABEL_JOB}={job}"));
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(list) = pods.list(&selector).await else {
            continue;
        };
        for pod in list.items {
            let waiting = pod
                .status
                .and_then(|s| s.container_statuses)
                .into_iter()
                .flatten()
                .filter_map(|c| c.state.and_then(|s| s.waiting))
                .find(|w| FATAL_WAITING.contains(&w.reason.as_deref().unwrap_or_default()));
            if let Some(w) = waiting {
                return (w.reason.unwrap_or_default(), w.message.unwrap_or_default());
            }
        }
    }
}

/// Stream the pod's log (`follow=true`) into the stage log, from the moment
/// its container runs until it ends.
async fn follow_log(
    client: kube::Client,
    ns: String,
    job: String,
    log: Arc<StageLog>,
    reporter: Arc<dyn crate::report::Reporter>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let selector = ListParams::default().labels(&format!("{LABEL_JOB}={job}"));
    let pod = loop {
        if let Ok(list) = pods.list(&selector).await
            && let Some(pod) = list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c.state
                            .as_ref()
                            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    })
            })
        {
            break pod.metadata.name.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let params = LogParams {
        follow: true,
        container: Some(CONTAINER.into()),
        ..LogParams::default()
    };
    let Ok(stream) = pods.log_stream(&pod, &params).await else {
        return;
    };
    let mut lines = stream.lines();
    while let Some(Ok(line)) = lines.next().await {
        // The worker's own notes (compile cache, ...) are the host's debug
        // output, as they are locally; the rest is the stage's log.
        if let Some(note) = line.strip_prefix("gantry: ") {
            reporter.debug(&format!("{job}: {note}"));
            continue;
        }
        let (level, text) = super::worker::parse_line(&line);
        log.write(level, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KubeJobs {
        KubeJobs {
            namespace: "ci".into(),
            image: "reg/gantry@sha256:ab".into(),
            workspace_claim: "ws".into(),
            service_account: Some("stages".into()),
            requests: [("cpu".to_string(), "250m".to_string())].into(),
            limits: Default::default(),
            node_selector: [("pool".to_string(), "ci".to_string())].into(),
            image_pull_secrets: vec!["pull".into()],
            ttl_seconds_after_finished: 600,
        }
    }

    fn spec() -> StageSpec {
        StageSpec {
            version: SPEC_VERSION,
            run_id: "19a-00ff".into(),
            pipeline: "p".into(),
            environment: "default".into(),
            stage: "build".into(),
            attempt: 1,
            manifest: "pipeline.yaml".into(),
            manifest_sha256: "sha256:00".into(),
            plugin_digest: "sha256:11".into(),
            config: "{}".into(),
            inputs: vec![],
            upstream: vec![],
            secrets: [("token".to_string(), "v".to_string())].into(),
            env: Default::default(),
            timeout_ms: 90_500,
        }
    }

    #[test]
    fn the_job_maps_the_stage_and_the_executor() {
        let job = job_object(&cfg(), "gantry-build-1", &spec(), false);
        let spec_ = &job["spec"];
        assert_eq!(spec_["backoffLimit"], 0);
        assert_eq!(
            spec_["activeDeadlineSeconds"], 91,
            "the timeout, rounded up"
        );
        assert_eq!(spec_["ttlSecondsAfterFinished"], 600);
        let pod = &spec_["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["serviceAccountName"], "stages");
        assert_eq!(pod["nodeSelector"]["pool"], "ci");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "pull");
        assert_eq!(pod["containers"][0]["resources"]["requests"]["cpu"], "250m");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "ws"
        );
        assert_eq!(pod["volumes"][1]["secret"]["secretName"], "gantry-build-1");
        assert_eq!(
            spec_["template"]["metadata"]["labels"][LABEL_STAGE],
            "build"
        );
        let granted = job_object(&cfg(), "gantry-build-1", &spec(), true);
        assert_eq!(
            granted["spec"]["template"]["spec"]["automountServiceAccountToken"],
            true
        );
        // The typed API accepts it.
        let _: Job = serde_json::from_value(job).unwrap();
        let secret = secret_object(&cfg(), "gantry-build-1", &spec()).unwrap();
        let inner: StageSpec =
            serde_json::from_str(secret["stringData"][SPEC_KEY].as_str().unwrap()).unwrap();
        assert_eq!(inner, spec());
    }

    #[test]
    fn a_resume_knows_the_last_job_of_each_unfinished_stage() {
        let job = |stage: &str, job: &str| Record::StageJob {
            stage: stage.into(),
            attempt: 1,
            namespace: "ci".into(),
            job: job.into(),
            ts_ms: 1,
        };
        let records = vec![
            job("a", "gantry-a-1"),
            Record::StageFinished {
                stage: "a".into(),
                status: "succeeded".into(),
                detail: String::new(),
                duration_ms: 1,
                outputs: vec![],
                artifacts: vec![],
                denials: vec![],
                ts_ms: 2,
                reused_from: None,
            },
            job("b", "gantry-b-1"),
            job("b", "gantry-b-2"),
        ];
        let resume = crate::pipeline::Resume::from_records(&records);
        assert_eq!(
            resume.jobs.into_iter().collect::<Vec<_>>(),
            [("b".to_string(), "gantry-b-2".to_string())]
        );
    }

    #[test]
    fn job_names_are_dns_labels() {
        let n = job_name("19a0b1c2d3e-00ff", "Build_Image.For-Prod ", 2);
        assert!(super::super::config::dns_label(&n), "{n}");
        assert!(n.starts_with("gantry-build-image-for-prod-"), "{n}");
        let long = job_name("r", &"x".repeat(200), 1);
        assert!(super::super::config::dns_label(&long), "{long}");
    }
}
