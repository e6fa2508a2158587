//! The cluster behind the `cluster` capability, on kube-rs: one client per run
//! (made on first use from the environment's kubeconfig and context), and the
//! operations the WIT offers. Namespaces are checked by the caller
//! ([`super::ClusterState`]) before anything here runs.

use crate::manifest::ClusterTarget;
use crate::runtime::bindings::cluster::Rollout;
use crate::runtime::bindings::types::HostError;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersion, GroupVersionKind};
use kube::discovery::Scope;
use std::collections::BTreeMap;
use std::time::Duration;

/// The field manager of every server-side apply gantry makes.
pub const MANAGER: &str = "gantry";

const REVISION: &str = "deployment.kubernetes.io/revision";

/// The environment's cluster, connected on first use.
pub struct Connection {
    target: Option<ClusterTarget>,
    environment: String,
    /// Inside a stage's pod: the pod's own service account (`gantry stage`).
    in_cluster: bool,
    client: tokio::sync::OnceCell<Result<kube::Client, String>>,
}

impl Connection {
    pub fn new(target: Option<ClusterTarget>, environment: &str) -> Self {
        Self {
            target,
            environment: environment.to_string(),
            in_cluster: false,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The cluster a pod runs in, through its mounted service-account token
    /// (a stage run as a Kubernetes Job and granted `cluster`).
    pub fn in_cluster(environment: &str) -> Self {
        Self {
            in_cluster: true,
            ..Self::new(None, environment)
        }
    }

    async fn client(&self) -> Result<kube::Client, HostError> {
        self.client
            .get_or_init(|| async {
                if self.in_cluster {
                    let config = kube::Config::incluster().map_err(|e| {
                        format!("the pod's service account (is `cluster` granted?): {e}")
                    })?;
                    return kube::Client::try_from(config)
                        .map_err(|e| format!("cluster client: {e}"));
                }
                connect(self.target.as_ref(), &self.environment).await
            })
            .await
            .clone()
            .map_err(HostError::Unavailable)
    }

    /// A dynamic API for `kind` in `ns`, found by discovery; only namespaced
    /// kinds: a stage is granted namespaces, not the cluster.
    async fn api(
        &self,
        ns: &str,
        api_version: &str,
        kind: &str,
    ) -> Result<Api<DynamicObject>, HostError> {
        let client = self.client().await?;
        let gv: GroupVersion = api_version
            .parse()
            .map_err(|e| HostError::Invalid(format!("apiVersion `{api_version}`: {e}")))?;
        let gvk = GroupVersionKind::gvk(&gv.group, &gv.version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk)
            .await
            .map_err(|e| failure(e, &format!("finding {api_version} {kind} on the cluster")))?;
        if caps.scope != Scope::Namespaced {
            return Err(HostError::Denied(format!(
                "{kind} is cluster-scoped; stages reach only objects in the namespaces granted to them"
            )));
        }
        Ok(Api::namespaced_with(client, ns, &resource))
    }

    /// Server-side apply of one object (JSON or YAML) into `ns`.
    pub async fn apply(&self, ns: &str, manifest: &str) -> Result<String, HostError> {
        let mut object = parse(manifest)?;
        let field = |k: &str| object[k].as_str().map(String::from);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(HostError::Invalid(
                "the object needs `apiVersion` and `kind`".into(),
            ));
        };
        let Some(name) = object["metadata"]["name"].as_str().map(String::from) else {
            return Err(HostError::Invalid(format!(
                "{kind} without `metadata.name`"
            )));
        };
        match object["metadata"]["namespace"].as_str() {
            Some(other) if other != ns => {
                return Err(HostError::Invalid(format!(
                    "{kind}/{name} names namespace `{other}` but is applied to `{ns}`"
                )));
            }
            _ => object["metadata"]["namespace"] = ns.into(),
        }
        let api = self.api(ns, &api_version, &kind).await?;
        // gantry owns what it applies, like `kubectl apply --server-side
        // --force-conflicts`: a rollback (an update by `gantry`) or a hand edit
        // must not block the next deploy.
        let params = PatchParams::apply(MANAGER).force();
        let applied = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| failure(e, &format!("applying {kind}/{name} in {ns}")))?;
        serde_json::to_string(&applied).map_err(|e| HostError::Failed(e.to_string()))
    }

    pub async fn get(
        &self,
        ns: &str,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<String>, HostError> {
        let api = self.api(ns, api_version, kind).await?;
        let object = api
            .get_opt(name)
            .await
            .map_err(|e| failure(e, &format!("reading {kind}/{name} in {ns}")))?;
        object
            .map(|o| serde_json::to_string(&o).map_err(|e| HostError::Failed(e.to_string())))
            .transpose()
    }

    /// Delete one object; one that is already gone is not an error.
    pub async fn delete(
        &self,
        ns: &str,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), HostError> {
        let api = self.api(ns, api_version, kind).await?;
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(failure(e, &format!("deleting {kind}/{name} in {ns}"))),
        }
    }

    /// Watch the Deployment until its rollout completes or fails by kubectl's
    /// rules, or `timeout` passes. A failure (or the timeout) also names what
    /// the new pods are waiting on, e.g. ImagePullBackOff.
    pub async fn rollout_status(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Rollout, HostError> {
        let api: Api<Deployment> = Api::namespaced(self.client().await?, ns);
        let what = format!("Deployment {name} in {ns}");
        if api
            .get_opt(name)
            .await
            .map_err(|e| failure(e, &format!("reading {what}")))?
            .is_none()
        {
            return Err(HostError::Failed(format!("there is no {what}")));
        }
        let settled = |d: Option<&Deployment>| {
            d.map(evaluate)
                .is_some_and(|r| r.complete || r.failure.is_some())
        };
        let waited = tokio::time::timeout(
            timeout,
            kube::runtime::wait::await_condition(api.clone(), name, settled),
        )
        .await;
        let timed_out = waited.is_err();
        let deployment = match waited {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return Err(HostError::Failed(format!("{what} was deleted"))),
            Ok(Err(e)) => {
                return Err(HostError::Unavailable(format!("watching {what}: {e}")));
            }
            Err(_) => api
                .get(name)
                .await
                .map_err(|e| failure(e, &format!("reading {what}")))?,
        };
        let mut rollout = evaluate(&deployment);
        if timed_out && !rollout.complete && rollout.failure.is_none() {
            rollout.failure = Some(format!(
                "not complete after {}s ({} of {} replicas updated, {} available)",
                timeout.as_secs(),
                rollout.updated_replicas,
                rollout.replicas,
                rollout.available_replicas
            ));
        }
        if let Some(failure) = &mut rollout.failure
            && let Some(pods) = self.pod_trouble(ns, &deployment).await
        {
            failure.push_str(&format!("; pods: {pods}"));
        }
        Ok(rollout)
    }

    /// Why the newest ReplicaSet's pods are not ready, e.g.
    /// `hello-6d4f-x2x (ImagePullBackOff: ...)`; none when nothing is known.
    async fn pod_trouble(&self, ns: &str, deployment: &Deployment) -> Option<String> {
        let client = self.client().await.ok()?;
        let newest = owned_replica_sets(&client, ns, deployment)
            .await
            .ok()?
            .pop()?;
        let hash = newest
            .metadata
            .labels
            .as_ref()?
            .get("pod-template-hash")?
            .clone();
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let list = pods
            .list(&ListParams::default().labels(&format!("pod-template-hash={hash}")))
            .await
            .ok()?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter_map(|pod| {
                let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
                let why = statuses.iter().find_map(|c| {
                    let state = c.state.as_ref()?;
                    if let Some(w) = &state.waiting {
                        return Some((w.reason.clone()?, w.message.clone()));
                    }
                    let t = state.terminated.as_ref()?;
                    Some((t.reason.clone()?, t.message.clone()))
                })?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                Some(match why {
                    (reason, Some(m)) if !m.is_empty() => format!("{name} ({reason}: {m})"),
                    (reason, _) => format!("{name} ({reason})"),
                })
            })
            .collect();
        (!reasons.is_empty()).then(|| reasons.join(", "))
    }

    /// `kubectl rollout undo`: put the template of the previous revision's
    /// ReplicaSet back into the Deployment; returns the revision the
    /// controller gives it.
    pub async fn rollback(&self, ns: &str, name: &str) -> Result<u64, HostError> {
        let client = self.client().await?;
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let what = format!("Deployment {name} in {ns}");
        let deployment = api
            .get(name)
            .await
            .map_err(|e| failure(e, &format!("reading {what}")))?;
        let history = owned_replica_sets(&client, ns, &deployment)
            .await
            .map_err(|e| failure(e, &format!("listing the ReplicaSets of {what}")))?;
        let [.., previous, _current] = history.as_slice() else {
            return Err(HostError::Failed(format!(
                "{what} has no previous revision to roll back to"
            )));
        };
        let mut template = previous
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .ok_or_else(|| HostError::Failed("the previous ReplicaSet has no template".into()))?;
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove("pod-template-hash");
        }
        let current = deployment.spec.as_ref().map(|s| &s.template);
        if current == Some(&template) {
            return Ok(revision(&deployment.metadata.annotations));
        }
        // The ReplicaSet's annotations, but the Deployment's own bookkeeping
        // ones kept, as kubectl does.
        const OWN: [&str; 5] = [
            "kubectl.kubernetes.io/last-applied-configuration",
            REVISION,
            "deployment.kubernetes.io/revision-history",
            "deployment.kubernetes.io/desired-replicas",
            "deployment.kubernetes.io/max-replicas",
        ];
        let mut annotations: BTreeMap<String, String> = previous
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
            .collect();
        for (k, v) in deployment.metadata.annotations.iter().flatten() {
            if OWN.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        let before = history
            .iter()
            .map(|rs| revision(&rs.metadata.annotations))
            .max()
            .unwrap_or(0);
        let patch = serde_json::json!([
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations},
        ]);
        let patch: Patch<()> = Patch::Json(
            serde_json::from_value(patch).map_err(|e| HostError::Failed(e.to_string()))?,
        );
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &params, &patch)
            .await
            .map_err(|e| failure(e, &format!("rolling back {what}")))?;
        // The controller gives the restored template the next revision.
        for _ in 0..50 {
            let d = api
                .get(name)
                .await
                .map_err(|e| failure(e, &format!("reading {what}")))?;
            let now = revision(&d.metadata.annotations);
            if now > before {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HostError::Unavailable(format!(
            "{what} was rolled back, but its controller has not given it a new revision within 5s"
        )))
    }
}

pub(crate) async fn connect(
    target: Option<&ClusterTarget>,
    environment: &str,
) -> Result<kube::Client, String> {
    let target = target.ok_or_else(|| {
        format!(
            "environment `{environment}` names no cluster: add `cluster: {{ kubeconfig: <path>, context: <name> }}` to it or to the manifest"
        )
    })?;
    let kubeconfig = Kubeconfig::read_from(&target.kubeconfig)
        .map_err(|e| format!("kubeconfig {}: {e}", target.kubeconfig))?;
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", target.kubeconfig))?;
    kube::Client::try_from(config).map_err(|e| format!("cluster client: {e}"))
}

/// JSON, else YAML.
fn parse(manifest: &str) -> Result<serde_json::Value, HostError> {
    serde_json::from_str(manifest).or_else(|_| {
        serde_saphyr::from_str(manifest)
            .map_err(|e| HostError::Invalid(format!("the object is neither JSON nor YAML: {e}")))
    })
}

/// A kube error as a host error: the API server's answer verbatim (status,
/// reason, message), connection trouble as `unavailable`.
fn failure(e: kube::Error, doing: &str) -> HostError {
    match e {
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
            HostError::Unavailable(format!("{doing}: {} ({}, {})", s.message, s.reason, s.code))
        }
        kube::Error::Api(s) => {
            HostError::Failed(format!("{doing}: {} ({}, {})", s.message, s.reason, s.code))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::Auth(_) => {
            HostError::Unavailable(format!("{doing}: {e}"))
        }
        other => HostError::Failed(format!("{doing}: {other}")),
    }
}

fn revision(annotations: &Option<BTreeMap<String, String>>) -> u64 {
    annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The Deployment's ReplicaSets, oldest revision first.
async fn owned_replica_sets(
    client: &kube::Client,
    ns: &str,
    deployment: &Deployment,
) -> Result<Vec<ReplicaSet>, kube::Error> {
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let uid = deployment.metadata.uid.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let mut owned: Vec<ReplicaSet> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .collect();
    owned.sort_by_key(|rs| revision(&rs.metadata.annotations));
    Ok(owned)
}

/// Where a rollout stands, by `kubectl rollout status`'s rules.
pub fn evaluate(d: &Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0).max(0) as u64;
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0).max(0) as u64;
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
    let count = |v: Option<i32>| v.unwrap_or(0).max(0) as u32;
    let (total, updated, available) = (
        count(status.replicas),
        count(status.updated_replicas),
        count(status.available_replicas),
    );
    let caught_up = generation <= observed;
    let failure = status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .filter(|_| caught_up)
        .map(|c| {
            format!(
                "ProgressDeadlineExceeded: {}",
                c.message.clone().unwrap_or_default()
            )
        });
    let complete = failure.is_none()
        && caught_up
        && updated >= wanted
        && total <= updated
        && available >= updated;
    Rollout {
        generation,
        observed_generation: observed,
        replicas: wanted,
        updated_replicas: updated,
        available_replicas: available,
        revision: revision(&d.metadata.annotations),
        complete,
        failure,
    }
}
