//! The simulated Deployment and ReplicaSet controllers (and a kubelet that
//! "runs" pods): the status a rollout goes through on a real cluster.

use super::resources::{DEPLOYMENTS, PODS, REPLICASETS};
use super::store::{Key, Store};
use super::write::{self, Change, Request};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the test configured: failing images and how long healthy rollouts take.
#[derive(Clone)]
pub(crate) struct Config {
    /// (image substring, waiting reason)
    pub fail: Vec<(String, String)>,
    pub delay: Duration,
}

const MANAGER: &str = "kube-controller-manager";
const KUBELET: &str = "kubelet";
const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const HASH_LABEL: &str = "pod-template-hash";

/// The controllers' memory (a real controller keeps this in object status and
/// timestamps; wall-clock instants make the simulation simple and deterministic).
#[derive(Default)]
pub(crate) struct Controller {
    /// Per Deployment uid: the uid of the ReplicaSet being rolled out and since when.
    rollouts: HashMap<String, (String, Instant)>,
    /// Per ReplicaSet uid: since when it has had replicas (when its pods started).
    up_since: HashMap<String, Instant>,
}

impl Controller {
    /// Bring every Deployment, ReplicaSet and Pod one step closer to its desired
    /// state. Writes nothing when everything is settled.
    pub fn reconcile(&mut self, store: &mut Store, cfg: &Config) {
        let now = Instant::now();
        let deployments = keys(store, DEPLOYMENTS);
        for k in &deployments {
            self.sync_replica_sets(store, cfg, k, now);
        }
        for k in keys(store, REPLICASETS) {
            self.sync_pods(store, cfg, &k, now);
        }
        for k in &deployments {
            self.sync_deployment_status(store, k, now);
        }
    }

    /// Whether the ReplicaSet's pods are all running and ready.
    fn available(&self, cfg: &Config, rs: &Value, now: Instant) -> bool {
        replicas(rs) > 0
            && fail_reason(cfg, &rs["spec"]["template"]).is_none()
            && self
                .up_since
                .get(uid(rs))
                .is_some_and(|t| now.duration_since(*t) >= cfg.delay)
    }

    /// Find or create the ReplicaSet of the current template, give it the next
    /// revision, and scale the old ones down once it is available.
    fn sync_replica_sets(&mut self, store: &mut Store, cfg: &Config, key: &Key, now: Instant) {
        let Some(d) = store.get(key).cloned() else {
            return;
        };
        let template = &d["spec"]["template"];
        let rss = owned(store, REPLICASETS, &key.1, uid(&d));
        let current = rss
            .iter()
            .find(|rs| without_hash(&rs["spec"]["template"]) == without_hash(template));
        let max_old = rss
            .iter()
            .filter(|rs| current.is_none_or(|c| uid(c) != uid(rs)))
            .map(revision)
            .max()
            .unwrap_or(0);
        let new_rs = match current {
            None => create_replica_set(store, &d, max_old + 1),
            Some(rs) => update_replica_set(store, rs, replicas(&d), max_old),
        };
        let Some(new_rs) = new_rs else { return };
        let rollout = self.rollouts.get(uid(&d)).map(|(u, _)| u.as_str());
        if rollout != Some(uid(&new_rs)) {
            self.rollouts
                .insert(uid(&d).to_string(), (uid(&new_rs).to_string(), now));
        }
        if self.available(cfg, &new_rs, now) {
            for old in rss.iter().filter(|rs| uid(rs) != uid(&new_rs)) {
                if replicas(old) > 0 {
                    let mut scaled = old.clone();
                    scaled["spec"]["replicas"] = json!(0);
                    controller_write(store, REPLICASETS, MANAGER, scaled, false, false);
                }
            }
        }
        let rev = revision(&new_rs).to_string();
        if d["metadata"]["annotations"][REVISION] != rev.as_str() {
            let mut annotated = d.clone();
            annotated["metadata"]["annotations"][REVISION] = json!(rev);
            controller_write(store, DEPLOYMENTS, MANAGER, annotated, true, false);
        }
    }

    /// One pod per replica, each pod's status as its image dictates, and the
    /// ReplicaSet's status.
    fn sync_pods(&mut self, store: &mut Store, cfg: &Config, key: &Key, now: Instant) {
        let Some(rs) = store.get(key).cloned() else {
            return;
        };
        let want = replicas(&rs);
        if want > 0 {
            self.up_since.entry(uid(&rs).to_string()).or_insert(now);
        } else {
            self.up_since.remove(uid(&rs));
        }
        let pods = owned(store, PODS, &key.1, uid(&rs));
        for _ in pods.len()..want as usize {
            let pod = new_pod(store, &rs);
            controller_write(store, PODS, MANAGER, pod, false, true);
        }
        for extra in pods.iter().skip(want as usize) {
            store.delete(&(PODS, key.1.clone(), name(extra).to_string()));
        }
        let available = self.available(cfg, &rs, now);
        let failing = fail_reason(cfg, &rs["spec"]["template"]);
        for pod in owned(store, PODS, &key.1, uid(&rs)) {
            let status = pod_status(&pod, available, failing.as_deref());
            if pod["status"] != status {
                let mut updated = pod.clone();
                updated["status"] = status;
                controller_write(store, PODS, KUBELET, updated, true, false);
            }
        }
        let ready = if available { want } else { 0 };
        let mut status = Map::new();
        status.insert("replicas".into(), json!(want));
        nonzero(&mut status, "fullyLabeledReplicas", want);
        nonzero(&mut status, "readyReplicas", ready);
        nonzero(&mut status, "availableReplicas", ready);
        status.insert(
            "observedGeneration".into(),
            rs["metadata"]["generation"].clone(),
        );
        if rs["status"] != Value::Object(status.clone()) {
            let mut updated = rs;
            updated["status"] = Value::Object(status);
            controller_write(store, REPLICASETS, MANAGER, updated, true, false);
        }
    }

    /// The Deployment's replica counts and its Available and Progressing conditions.
    fn sync_deployment_status(&self, store: &mut Store, key: &Key, now: Instant) {
        let Some(d) = store.get(key).cloned() else {
            return;
        };
        let Some((new_uid, since)) = self.rollouts.get(uid(&d)) else {
            return;
        };
        let rss = owned(store, REPLICASETS, &key.1, uid(&d));
        let Some(new_rs) = rss.iter().find(|rs| uid(rs) == new_uid) else {
            return;
        };
        let want = replicas(&d);
        let total: i64 = rss.iter().map(replicas).sum();
        let available: i64 = rss
            .iter()
            .map(|rs| rs["status"]["availableReplicas"].as_i64().unwrap_or(0))
            .sum();
        let new_available = new_rs["status"]["availableReplicas"].as_i64().unwrap_or(0);
        let deadline = d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600);
        let rs_name = name(new_rs);
        let progressing = if new_available == want && total == want {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else if now.duration_since(*since) > Duration::from_secs(deadline) {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        };
        let availability = if available >= want - max_unavailable(&d, want) {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string(),
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_string(),
            )
        };
        let old = &d["status"]["conditions"];
        let conditions = vec![
            condition(old, "Available", availability),
            condition(old, "Progressing", progressing),
        ];
        let mut status = Map::new();
        status.insert(
            "observedGeneration".into(),
            d["metadata"]["generation"].clone(),
        );
        nonzero(&mut status, "replicas", total);
        nonzero(&mut status, "updatedReplicas", replicas(new_rs));
        nonzero(&mut status, "readyReplicas", available);
        nonzero(&mut status, "availableReplicas", available);
        nonzero(
            &mut status,
            "unavailableReplicas",
            (total - available).max(0),
        );
        status.insert("conditions".into(), Value::Array(conditions));
        if d["status"] != Value::Object(status.clone()) {
            let mut updated = d;
            updated["status"] = Value::Object(status);
            controller_write(store, DEPLOYMENTS, MANAGER, updated, true, false);
        }
    }
}

fn keys(store: &Store, res: usize) -> Vec<Key> {
    store
        .list(res, None)
        .into_iter()
        .map(|(k, _)| k.clone())
        .collect()
}

fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn revision(obj: &Value) -> u64 {
    obj["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn nonzero(status: &mut Map<String, Value>, field: &str, n: i64) {
    if n != 0 {
        status.insert(field.into(), json!(n));
    }
}

/// Objects of type `res` in `namespace` whose controller is `owner`.
fn owned(store: &Store, res: usize, namespace: &str, owner: &str) -> Vec<Value> {
    store
        .list(res, Some(namespace))
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r["uid"] == owner && r["controller"] == true)
                })
        })
        .cloned()
        .collect()
}

fn owner_reference(owner: &Value) -> Value {
    json!([{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true
    }])
}

/// The pod template without the `pod-template-hash` label, for comparing a
/// Deployment's template with its ReplicaSets'.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    t
}

/// JSON with object keys sorted, so equal templates hash equally.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        v => v.to_string(),
    }
}

/// The `pod-template-hash`: FNV-32a of the template, its decimal digits mapped to
/// the alphabet the real controller uses (`rand.SafeEncodeString`).
fn template_hash(template: &Value) -> String {
    let sum = super::fnv(canonical(&without_hash(template)).as_bytes());
    sum.to_string()
        .bytes()
        .map(|b| super::ALPHABET[b as usize % super::ALPHABET.len()] as char)
        .collect()
}

/// The image-based failure the test configured for this template, if any.
fn fail_reason(cfg: &Config, template: &Value) -> Option<String> {
    let containers = template["spec"]["containers"].as_array()?;
    containers.iter().find_map(|c| {
        let image = c["image"].as_str().unwrap_or_default();
        cfg.fail
            .iter()
            .find(|(needle, _)| image.contains(needle.as_str()))
            .map(|(_, reason)| reason.clone())
    })
}

/// Write as a controller would; a controller's failed write is logged and retried
/// on the next pass, never answered to a client.
fn controller_write(
    store: &mut Store,
    res: usize,
    manager: &str,
    obj: Value,
    status: bool,
    create: bool,
) {
    let key = (
        res,
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        name(&obj).to_string(),
    );
    let req = Request {
        key,
        status,
        manager,
        dry_run: false,
    };
    if let Err(e) = write::write(store, &req, Change::Object(obj), create) {
        eprintln!("kube test server: controller write failed: {}", e.message);
    }
}

fn create_replica_set(store: &mut Store, d: &Value, revision: u64) -> Option<Value> {
    let template = without_hash(&d["spec"]["template"]);
    let hash = template_hash(&template);
    let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
    let rs_name = format!("{}-{hash}", name(d));
    let mut template = template;
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name,
            "namespace": ns,
            "labels": template["metadata"]["labels"],
            "annotations": {
                REVISION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": replicas(d).to_string(),
                "deployment.kubernetes.io/max-replicas": (replicas(d) + max_surge(d, replicas(d))).to_string(),
            },
            "ownerReferences": owner_reference(d),
        },
        "spec": {
            "replicas": replicas(d),
            "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
            "selector": selector,
            "template": template,
        }
    });
    controller_write(store, REPLICASETS, MANAGER, rs, false, true);
    store
        .get(&(REPLICASETS, ns.to_string(), rs_name.clone()))
        .cloned()
}

/// Scale the current ReplicaSet and, if it is an old one being rolled back to,
/// move it to the next revision (recording its old one, as the real controller does).
fn update_replica_set(store: &mut Store, rs: &Value, want: i64, max_old: u64) -> Option<Value> {
    let mut updated = rs.clone();
    updated["spec"]["replicas"] = json!(want);
    let old_rev = revision(rs);
    if old_rev <= max_old {
        let history = match rs["metadata"]["annotations"][REVISION_HISTORY].as_str() {
            Some(h) if !h.is_empty() => format!("{h},{old_rev}"),
            _ => old_rev.to_string(),
        };
        updated["metadata"]["annotations"][REVISION] = json!((max_old + 1).to_string());
        updated["metadata"]["annotations"][REVISION_HISTORY] = json!(history);
    }
    if updated != *rs {
        controller_write(store, REPLICASETS, MANAGER, updated, false, false);
    }
    let key = (
        REPLICASETS,
        rs["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        name(rs).to_string(),
    );
    store.get(&key).cloned()
}

/// `maxUnavailable`/`maxSurge` of a rolling update, resolved against `replicas`
/// (percentages round down for unavailable and up for surge, as in Kubernetes).
fn rolling_param(d: &Value, field: &str, replicas: i64, round_up: bool) -> i64 {
    let v = &d["spec"]["strategy"]["rollingUpdate"][field];
    if let Some(n) = v.as_i64() {
        return n;
    }
    let pct = v
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(25);
    if round_up {
        (replicas * pct + 99) / 100
    } else {
        replicas * pct / 100
    }
}

fn max_unavailable(d: &Value, replicas: i64) -> i64 {
    if d["spec"]["strategy"]["type"] == "Recreate" {
        return 0;
    }
    rolling_param(d, "maxUnavailable", replicas, false)
}

fn max_surge(d: &Value, replicas: i64) -> i64 {
    if d["spec"]["strategy"]["type"] == "Recreate" {
        return 0;
    }
    rolling_param(d, "maxSurge", replicas, true)
}

/// A condition with its times kept while nothing about it changes.
fn condition(old: &Value, kind: &str, (status, reason, message): (&str, &str, String)) -> Value {
    let now = write::now();
    let prev = old
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind));
    let same_status = prev.is_some_and(|p| p["status"] == status);
    let unchanged = same_status
        && prev.is_some_and(|p| p["reason"] == reason && p["message"] == message.as_str());
    let keep = |field: &str, keep: bool| match prev {
        Some(p) if keep => p[field].clone(),
        _ => json!(now),
    };
    json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": keep("lastUpdateTime", unchanged),
        "lastTransitionTime": keep("lastTransitionTime", same_status),
        "reason": reason,
        "message": message,
    })
}

fn new_pod(store: &mut Store, rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let pod_name = format!("{}-{}", name(rs), super::suffix(store));
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!("gantry-test-node");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": rs["metadata"]["namespace"],
            "generateName": format!("{}-", name(rs)),
            "labels": template["metadata"]["labels"],
            "ownerReferences": owner_reference(rs),
        },
        "spec": spec,
    })
}

/// What the kubelet would report: Running and ready once available, the
/// configured waiting reason for failing images, ContainerCreating before.
fn pod_status(pod: &Value, available: bool, failing: Option<&str>) -> Value {
    let start = pod["status"]["startTime"]
        .as_str()
        .map_or_else(write::now, String::from);
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let image = c["image"].clone();
            let (state, restarts) = match (failing, available) {
                (Some(reason @ "CrashLoopBackOff"), _) => (
                    json!({"waiting": {"reason": reason, "message": format!("back-off 40s restarting failed container={} pod={}", c["name"].as_str().unwrap_or_default(), name(pod))}}),
                    3,
                ),
                (Some(reason), _) => (
                    json!({"waiting": {"reason": reason, "message": format!("Back-off pulling image {image}")}}),
                    0,
                ),
                (None, true) => (json!({"running": {"startedAt": start}}), 0),
                (None, false) => (json!({"waiting": {"reason": "ContainerCreating"}}), 0),
            };
            json!({
                "name": c["name"], "image": image, "imageID": "", "ready": available,
                "started": available, "restartCount": restarts, "state": state
            })
        })
        .collect();
    let phase = match failing {
        Some("CrashLoopBackOff") => "Running",
        Some(_) => "Pending",
        None if available => "Running",
        None => "Pending",
    };
    let ready = if available { "True" } else { "False" };
    let conditions: Vec<Value> = [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("ContainersReady", ready),
        ("Ready", ready),
    ]
    .iter()
    .map(|(t, s)| json!({"type": t, "status": s, "lastTransitionTime": start}))
    .collect();
    let ip = format!("10.244.0.{}", super::fnv(name(pod).as_bytes()) % 250 + 2);
    json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": "192.168.49.2",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start,
        "containerStatuses": containers,
        "qosClass": "BestEffort",
    })
}
