//! batch/v1 Jobs and a kubelet that runs their pods for real on the Docker
//! engine, so that a Job really executes its image (the gantry worker and
//! its plugin).
//!
//! The Job controller (run with the other controllers): one pod per Job
//! (labels `batch.kubernetes.io/job-name`, `job-name`, `controller-uid`; owned
//! by the Job), `status.active/succeeded/failed`, `startTime`,
//! `completionTime`, conditions `Complete` (with `SuccessCriteriaMet`) or
//! `Failed` with reason `BackoffLimitExceeded` (failed pods > `backoffLimit`,
//! default 6, a new pod per retry) or `DeadlineExceeded`
//! (`activeDeadlineSeconds` since `startTime`: its pods are deleted, which
//! kills their containers), and `ttlSecondsAfterFinished` (the Job is deleted
//! with its pods and owned objects that long after it finished).
//!
//! The kubelet (only once a test calls [`KubeApi::run_pods_on_docker`], and
//! only for pods of Jobs): volumes — a `persistentVolumeClaim` is a host
//! directory (the one [`KubeApi::bind_claim`] gave, else a fresh one), a
//! `secret` is its keys as files (`defaultMode`), an `emptyDir` a fresh
//! directory; the service-account token (the server's bearer token, the
//! namespace and the server's certificate at
//! `/var/run/secrets/kubernetes.io/serviceaccount`) only unless
//! `automountServiceAccountToken: false`; the image pulled if absent
//! (`ErrImagePull`, then `ImagePullBackOff` while it fails); `docker run` on
//! the host network; `Running`, then `Succeeded`/`Failed` with
//! `state.terminated.{exitCode,reason,message}` (the termination-message file
//! bind-mounted at `terminationMessagePath`, read back and cut at 4096 bytes);
//! `pods/log` (`follow=true` streams `docker logs -f`). A deleted pod's
//! container is removed.
//!
//! Simplified: one container per pod (init containers and sidecars are not
//! run), `resources` and `nodeSelector` are not enforced, `env` takes literal
//! values only, pods are never rescheduled, `podFailurePolicy`, `completions`,
//! `parallelism` and `suspend` are ignored.

use super::resources::{CLAIMS, JOBS, PODS, SECRETS};
use super::store::{Key, Store};
use super::write::{self, ApiError, Change, Request};
use super::{Shared, lock};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the kubelet keeps: where it puts pod files and claims, and the
/// container of each pod it started.
#[derive(Default)]
pub(crate) struct Kubelet {
    pub root: Option<PathBuf>,
    pub claims: HashMap<(String, String), PathBuf>,
    started: HashSet<String>,
    /// Per pod uid: the Docker container running it.
    pub containers: HashMap<String, String>,
}

/// Per Job uid: when the controller saw it start and finish.
#[derive(Default)]
pub(crate) struct JobClock {
    started: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or_default()
}

fn controller_write(store: &mut Store, res: usize, obj: Value, status: bool, create: bool) {
    let key = (
        res,
        meta(&obj, "namespace").to_string(),
        meta(&obj, "name").to_string(),
    );
    let req = Request {
        key,
        status,
        manager: "kube-controller-manager",
        dry_run: false,
    };
    if let Err(e) = write::write(store, &req, Change::Object(obj), create) {
        eprintln!(
            "kube test server: job controller write failed: {}",
            e.message
        );
    }
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": write::now(), "lastTransitionTime": write::now()})
}

fn pods_of(store: &Store, job: &Value) -> Vec<Value> {
    let uid = &job["metadata"]["uid"];
    store
        .list(PODS, Some(meta(job, "namespace")))
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["uid"] == *uid))
        })
        .cloned()
        .collect()
}

fn new_pod(store: &mut Store, job: &Value) -> Value {
    let name = meta(job, "name");
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["job-name"] = json!(name);
    labels["controller-uid"] = job["metadata"]["uid"].clone();
    labels["batch.kubernetes.io/controller-uid"] = job["metadata"]["uid"].clone();
    let mut spec = job["spec"]["template"]["spec"].clone();
    spec["nodeName"] = json!("gantry-test-node");
    if let Some(cs) = spec["containers"].as_array_mut() {
        for c in cs {
            if c["terminationMessagePath"].is_null() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
            }
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{name}-{}", super::suffix(store)),
            "generateName": format!("{name}-"),
            "namespace": meta(job, "namespace"),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name,
                "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": write::now()}
        ]},
    })
}

/// One pass of the Job controller (and the PVC binder).
pub(crate) fn reconcile(store: &mut Store, clock: &mut JobClock) {
    let now = Instant::now();
    let claims: Vec<Value> = store
        .list(CLAIMS, None)
        .into_iter()
        .map(|(_, o)| o.clone())
        .collect();
    for mut claim in claims {
        if claim["status"]["phase"] != "Bound" {
            claim["status"] =
                json!({"phase": "Bound", "accessModes": claim["spec"]["accessModes"]});
            controller_write(store, CLAIMS, claim, true, false);
        }
    }
    let jobs: Vec<Value> = store
        .list(JOBS, None)
        .into_iter()
        .map(|(_, o)| o.clone())
        .collect();
    for job in jobs {
        let uid = meta(&job, "uid").to_string();
        let key: Key = (
            JOBS,
            meta(&job, "namespace").into(),
            meta(&job, "name").into(),
        );
        let done = job["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            })
        });
        if done {
            let since = *clock.finished.entry(uid).or_insert(now);
            if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64()
                && now >= since + Duration::from_secs(ttl)
            {
                store.delete(&key);
            }
            continue;
        }
        let started = *clock.started.entry(uid.clone()).or_insert(now);
        let pods = pods_of(store, &job);
        let failed = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .count() as u64;
        let succeeded = pods.iter().any(|p| p["status"]["phase"] == "Succeeded");
        let active = pods
            .iter()
            .filter(|p| p["status"]["phase"] != "Failed" && p["status"]["phase"] != "Succeeded")
            .count() as u64;
        let backoff = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        if status["startTime"].is_null() {
            status["startTime"] = json!(write::now());
        }
        let deadline = job["spec"]["activeDeadlineSeconds"].as_u64();
        if let Some(secs) = deadline
            && now >= started + Duration::from_secs(secs)
        {
            for p in pods
                .iter()
                .filter(|p| p["status"]["phase"] != "Succeeded" && p["status"]["phase"] != "Failed")
            {
                store.delete(&(PODS, meta(p, "namespace").into(), meta(p, "name").into()));
            }
            let message = "Job was active longer than specified deadline";
            status["active"] = json!(0);
            status["failed"] = json!(failed + active);
            status["conditions"] = json!([
                condition("FailureTarget", "DeadlineExceeded", message),
                condition("Failed", "DeadlineExceeded", message),
            ]);
        } else if succeeded {
            status["active"] = json!(0);
            status["succeeded"] = json!(1);
            status["completionTime"] = json!(write::now());
            status["conditions"] = json!([
                condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
        } else if failed > backoff {
            let message = "Job has reached the specified backoff limit";
            status["active"] = json!(0);
            status["failed"] = json!(failed);
            status["conditions"] = json!([
                condition("FailureTarget", "BackoffLimitExceeded", message),
                condition("Failed", "BackoffLimitExceeded", message),
            ]);
        } else {
            if active == 0 {
                let pod = new_pod(store, &job);
                controller_write(store, PODS, pod, false, true);
            }
            status["active"] = json!(1);
            if failed > 0 {
                status["failed"] = json!(failed);
            }
        }
        if status != job["status"] {
            let mut job = job.clone();
            job["status"] = status;
            controller_write(store, JOBS, job, true, false);
        }
    }
}

/// `docker ARGS`: (success, stdout, stderr).
fn docker(args: &[&str]) -> (bool, String, String) {
    match Command::new("docker").args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ),
        Err(e) => (false, String::new(), format!("cannot run docker: {e}")),
    }
}

/// Update the pod's status (as the kubelet, through the status subresource);
/// false when the pod is gone.
fn set_status(shared: &Shared, key: &Key, change: impl FnOnce(&mut Value)) -> bool {
    let mut store = lock(&shared.store);
    let Some(mut pod) = store.get(key).cloned() else {
        return false;
    };
    change(&mut pod["status"]);
    let req = Request {
        key: key.clone(),
        status: true,
        manager: "kubelet",
        dry_run: false,
    };
    if let Err(e) = write::write(&mut store, &req, Change::Object(pod), false) {
        eprintln!("kube test server: kubelet write failed: {}", e.message);
    }
    true
}

fn container_status(c: &Value, state: Value, ready: bool, id: Option<&str>) -> Value {
    let mut s = json!({
        "name": c["name"], "image": c["image"], "imageID": "", "ready": ready,
        "started": ready, "restartCount": 0, "state": state,
    });
    if let Some(id) = id {
        s["containerID"] = json!(format!("docker://{id}"));
    }
    s
}

/// The kubelet: start every new pod of a Job; remove the containers of
/// deleted pods.
pub(crate) async fn run_kubelet(shared: Arc<Shared>) {
    loop {
        let (new, gone) = {
            let store = lock(&shared.store);
            let mut kubelet = lock(&shared.kubelet);
            let pods: Vec<Value> = store
                .list(PODS, None)
                .into_iter()
                .map(|(_, o)| o)
                .filter(|o| !o["metadata"]["labels"]["batch.kubernetes.io/job-name"].is_null())
                .cloned()
                .collect();
            let uids: HashSet<String> = pods.iter().map(|p| meta(p, "uid").to_string()).collect();
            let new: Vec<Value> = pods
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Pending")
                .filter(|p| kubelet.started.insert(meta(p, "uid").to_string()))
                .collect();
            let gone: Vec<String> = kubelet
                .containers
                .iter()
                .filter(|(uid, _)| !uids.contains(*uid))
                .map(|(_, c)| c.clone())
                .collect();
            kubelet.containers.retain(|uid, _| uids.contains(uid));
            (new, gone)
        };
        for container in gone {
            tokio::task::spawn_blocking(move || docker(&["rm", "-f", &container]));
        }
        for pod in new {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || run_pod(&shared, pod));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exists(shared: &Shared, key: &Key) -> bool {
    lock(&shared.store).get(key).is_some()
}

/// Run one pod to its end.
fn run_pod(shared: &Shared, pod: Value) {
    let ns = meta(&pod, "namespace").to_string();
    let name = meta(&pod, "name").to_string();
    let uid = meta(&pod, "uid").to_string();
    let key: Key = (PODS, ns.clone(), name.clone());
    let root = lock(&shared.kubelet)
        .root
        .clone()
        .expect("the kubelet runs with a root");
    let dir = root.join("pods").join(&uid);
    std::fs::create_dir_all(&dir).expect("create the pod directory");
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    let waiting = |reason: &str, message: &str| {
        let status = container_status(
            c,
            json!({"waiting": {"reason": reason, "message": message}}),
            false,
            None,
        );
        set_status(shared, &key, |s| s["containerStatuses"] = json!([status]))
    };
    waiting("ContainerCreating", "");
    // Volumes: wait for Secrets and claims as a kubelet does (FailedMount).
    let mut mounts: Vec<String> = vec![];
    for vm in c["volumeMounts"].as_array().into_iter().flatten() {
        let vname = vm["name"].as_str().unwrap_or_default();
        let Some(vol) = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == vname)
        else {
            waiting(
                "CreateContainerConfigError",
                &format!("volume {vname:?} not found"),
            );
            return;
        };
        let host = if let Some(claim) = vol["persistentVolumeClaim"]["claimName"].as_str() {
            loop {
                if lock(&shared.store)
                    .get(&(CLAIMS, ns.clone(), claim.into()))
                    .is_some()
                {
                    break;
                }
                if !exists(shared, &key) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let bound = lock(&shared.kubelet)
                .claims
                .get(&(ns.clone(), claim.to_string()))
                .cloned();
            bound.unwrap_or_else(|| {
                let d = root.join("claims").join(&ns).join(claim);
                std::fs::create_dir_all(&d).expect("create the claim directory");
                d
            })
        } else if let Some(secret) = vol["secret"]["secretName"].as_str() {
            let obj = loop {
                if let Some(o) = lock(&shared.store)
                    .get(&(SECRETS, ns.clone(), secret.into()))
                    .cloned()
                {
                    break o;
                }
                if !exists(shared, &key) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let d = dir.join("volumes").join(vname);
            std::fs::create_dir_all(&d).unwrap();
            let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                use base64::Engine;
                use std::os::unix::fs::PermissionsExt;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                let f = d.join(k);
                std::fs::write(&f, bytes).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            d
        } else {
            let d = dir.join("volumes").join(vname);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let ro = if vm["readOnly"] == true { ":ro" } else { "" };
        mounts.push(format!(
            "{}:{}{ro}",
            host.display(),
            vm["mountPath"].as_str().unwrap_or_default()
        ));
    }
    if spec["automountServiceAccountToken"] != false {
        let d = dir.join("serviceaccount");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("token"), super::TOKEN).unwrap();
        std::fs::write(d.join("namespace"), &ns).unwrap();
        std::fs::write(d.join("ca.crt"), &shared.ca_pem).unwrap();
        mounts.push(format!(
            "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            d.display()
        ));
    }
    let termination = dir.join("termination-log");
    std::fs::write(&termination, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let message_path = c["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    mounts.push(format!("{}:{message_path}", termination.display()));

    let image = c["image"].as_str().unwrap_or_default().to_string();
    let mut backoff = false;
    while !docker(&["image", "inspect", &image]).0 {
        let (ok, _, err) = docker(&["pull", &image]);
        if ok {
            break;
        }
        let reason = if backoff {
            "ImagePullBackOff"
        } else {
            "ErrImagePull"
        };
        if !waiting(reason, &format!("Failed to pull image {image:?}: {err}")) {
            return;
        }
        backoff = true;
        std::thread::sleep(Duration::from_secs(1));
    }
    let port = shared
        .addr
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let container = format!("kube-{name}-{}", &uid[..8]);
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        container.clone(),
        "--network".into(),
        "host".into(),
        "--label".into(),
        "gantry-test-kubelet=1".into(),
        "-e".into(),
        "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
        "-e".into(),
        format!("KUBERNETES_SERVICE_PORT={port}"),
    ];
    for e in c["env"].as_array().into_iter().flatten() {
        args.push("-e".into());
        args.push(format!(
            "{}={}",
            e["name"].as_str().unwrap_or_default(),
            e["value"].as_str().unwrap_or_default()
        ));
    }
    for m in &mounts {
        args.push("-v".into());
        args.push(m.clone());
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if let Some(first) = command.first() {
        args.push("--entrypoint".into());
        args.push(first.clone());
    }
    args.push(image.clone());
    args.extend(command.iter().skip(1).cloned());
    args.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from)),
    );
    if !exists(shared, &key) {
        return;
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, id, err) = docker(&refs);
    if !ok {
        waiting("CreateContainerError", &err);
        return;
    }
    lock(&shared.kubelet)
        .containers
        .insert(uid.clone(), container.clone());
    let started = write::now();
    let running = container_status(
        c,
        json!({"running": {"startedAt": started}}),
        true,
        Some(&id),
    );
    if !set_status(shared, &key, |s| {
        s["phase"] = json!("Running");
        s["startTime"] = json!(started);
        s["containerStatuses"] = json!([running]);
    }) {
        docker(&["rm", "-f", &container]);
        return;
    }
    let (_, code, _) = docker(&["wait", &container]);
    let code: i64 = code.parse().unwrap_or(-1);
    let mut message = std::fs::read(&termination).unwrap_or_default();
    message.truncate(4096);
    let oom = docker(&["inspect", "-f", "{{.State.OOMKilled}}", &container]).1 == "true";
    let reason = match (code, oom) {
        (_, true) => "OOMKilled",
        (0, _) => "Completed",
        _ => "Error",
    };
    let terminated = container_status(
        c,
        json!({"terminated": {
            "exitCode": code, "reason": reason,
            "message": String::from_utf8_lossy(&message),
            "startedAt": started, "finishedAt": write::now(),
            "containerID": format!("docker://{id}"),
        }}),
        false,
        Some(&id),
    );
    set_status(shared, &key, |s| {
        s["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
        s["containerStatuses"] = json!([terminated]);
    });
}

/// `GET pods/{name}/log`: the container's output; with `follow=true`, a
/// stream that ends when the container does.
pub(crate) fn pod_log(
    shared: &Shared,
    key: &Key,
    follow: bool,
) -> Result<axum::response::Response, ApiError> {
    use axum::body::Body;
    let pod = lock(&shared.store)
        .get(key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&super::resources::RESOURCES[PODS], &key.2))?;
    let uid = meta(&pod, "uid");
    let Some(container) = lock(&shared.kubelet).containers.get(uid).cloned() else {
        let c = pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default();
        return Err(ApiError::bad_request(format!(
            "container \"{c}\" in pod \"{}\" is waiting to start: ContainerCreating",
            key.2
        )));
    };
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec docker logs {} {container} 2>&1",
            if follow { "-f" } else { "" }
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let response = |body: Body| {
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(body)
            .expect("a valid response")
    };
    if !follow {
        let out = cmd
            .output()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok(response(Body::from(out.stdout)));
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stream = tokio_util_stream(stdout, child);
    Ok(response(Body::from_stream(stream)))
}

/// The child's stdout as a body stream; the child lives as long as the stream.
fn tokio_util_stream(
    stdout: tokio::process::ChildStdout,
    child: tokio::process::Child,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold((stdout, child), |(mut out, child)| async move {
        let mut buf = vec![0u8; 8192];
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), (out, child)))
            }
        }
    })
}
