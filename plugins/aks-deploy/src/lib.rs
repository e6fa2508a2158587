//! Built-in stage `aks-deploy`: deploy an image to Kubernetes (AKS in
//! production) through the host's `cluster` capability, which holds the
//! cluster's credentials; this plugin sees only its granted namespaces.
//!
//! A deploy renders its objects (or reads the user's manifests), applies them
//! with server-side apply, waits for the Deployment's rollout, and when the
//! rollout fails rolls back to the previous revision and fails the stage with
//! the reason (ProgressDeadlineExceeded, and what the pods are waiting on, such
//! as ImagePullBackOff or CrashLoopBackOff). A deploy whose rendered objects
//! are exactly those already applied writes nothing.

mod render;

use gantry_sdk::cluster;
use gantry_sdk::{CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Name of the Deployment, Service and the rest.
    name: String,
    namespace: String,
    /// The image; default: the digest-pinned reference of a needed stage's
    /// `image` artifact (the registry stage's).
    #[serde(default)]
    image: Option<String>,
    #[serde(default = "one")]
    replicas: u32,
    /// The container port.
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default)]
    service: Service,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// `resources` of the container, as Kubernetes writes them.
    #[serde(default)]
    resources: Option<Value>,
    #[serde(default)]
    probes: Probes,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Annotations of the Deployment.
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// Annotations of the pods (a change rolls them).
    #[serde(default)]
    pod_annotations: BTreeMap<String, String>,
    /// Data of a ConfigMap `<name>-config`, given to the container as env.
    #[serde(default)]
    config_map: Option<BTreeMap<String, String>>,
    /// A granted secret holding the Application Insights connection string:
    /// stored in the Secret `<name>-appinsights` and given to the container as
    /// APPLICATIONINSIGHTS_CONNECTION_STRING by reference.
    #[serde(default)]
    app_insights_connection_string_secret: Option<String>,
    #[serde(default)]
    image_pull_secret: Option<String>,
    #[serde(default)]
    hpa: Option<Hpa>,
    #[serde(default)]
    ingress: Option<Ingress>,
    /// The user's own manifests (workspace paths) instead of the rendered ones.
    #[serde(default)]
    manifests: Vec<String>,
    /// In `manifests`, container images equal to this are replaced by the image.
    #[serde(default = "default_placeholder")]
    image_placeholder: String,
    /// `spec.progressDeadlineSeconds` of the Deployment.
    #[serde(default = "default_deadline")]
    progress_deadline: u32,
    /// How long to wait for the rollout, in seconds.
    #[serde(default = "default_timeout")]
    timeout: u64,
    /// Roll back to the previous revision when the rollout fails.
    #[serde(default = "yes")]
    rollback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Service {
    #[serde(default = "cluster_ip", rename = "type")]
    kind: String,
    #[serde(default = "default_service_port")]
    port: u16,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            kind: cluster_ip(),
            port: default_service_port(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Probes {
    #[serde(default)]
    readiness: Option<String>,
    #[serde(default)]
    liveness: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Hpa {
    min: u32,
    max: u32,
    #[serde(default = "default_cpu")]
    cpu_percent: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ingress {
    host: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    class: Option<String>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_port() -> u16 {
    8080
}
fn default_service_port() -> u16 {
    80
}
fn cluster_ip() -> String {
    "ClusterIP".into()
}
fn default_placeholder() -> String {
    "IMAGE".into()
}
fn default_deadline() -> u32 {
    600
}
fn default_timeout() -> u64 {
    300
}
fn default_cpu() -> u32 {
    80
}
fn root() -> String {
    "/".into()
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["name", "namespace"],
  "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", "description": "name of the Deployment, Service, ..."},
    "namespace": {"type": "string", "description": "must be granted in permissions.cluster.namespaces"},
    "image": {"type": "string", "description": "default: the image artifact of a needed stage (the registry stage's digest-pinned reference)"},
    "replicas": {"type": "integer", "minimum": 0},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "container port (default 8080)"},
    "service": {"type": "object", "additionalProperties": false, "properties": {
      "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
      "port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "resources": {"type": "object", "description": "the container's resources, as in Kubernetes"},
    "probes": {"type": "object", "additionalProperties": false, "properties": {
      "readiness": {"type": "string", "description": "HTTP path"}, "liveness": {"type": "string", "description": "HTTP path"}}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "pod-annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "config-map": {"type": "object", "additionalProperties": {"type": "string"}},
    "app-insights-connection-string-secret": {"type": "string", "description": "granted secret with the Application Insights connection string"},
    "image-pull-secret": {"type": "string"},
    "hpa": {"type": "object", "additionalProperties": false, "required": ["min", "max"], "properties": {
      "min": {"type": "integer", "minimum": 1}, "max": {"type": "integer", "minimum": 1}, "cpu-percent": {"type": "integer", "minimum": 1, "maximum": 100}}},
    "ingress": {"type": "object", "additionalProperties": false, "required": ["host"], "properties": {
      "host": {"type": "string"}, "path": {"type": "string"}, "class": {"type": "string"}}},
    "manifests": {"type": "array", "items": {"type": "string"}, "description": "your own manifests (workspace paths) instead of the rendered objects"},
    "image-placeholder": {"type": "string", "description": "in manifests, container images equal to this become the image (default IMAGE)"},
    "progress-deadline": {"type": "integer", "minimum": 1, "description": "spec.progressDeadlineSeconds (default 600)"},
    "timeout": {"type": "integer", "minimum": 1, "description": "seconds to wait for the rollout (default 300)"},
    "rollback": {"type": "boolean", "description": "roll back when the rollout fails (default true)"}
  }
}"#;

/// Annotation with the hash of what gantry applied: an unchanged deploy is
/// recognised without writing.
const CONFIG_HASH: &str = "gantry.dev/config-hash";

fn failed(m: impl std::fmt::Display) -> StageError {
    StageError::Failed(m.to_string())
}

/// Everything a deploy applies, in order (what the Deployment refers to first).
fn objects(cfg: &Config, image: &str) -> Result<Vec<Value>, StageError> {
    if !cfg.manifests.is_empty() {
        let mut files = vec![];
        for path in &cfg.manifests {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StageError::InvalidConfig(format!("manifests: {path}: {e}")))?;
            files.push((path.clone(), text));
        }
        return render::user_manifests(&files, &cfg.image_placeholder, image)
            .map_err(StageError::InvalidConfig);
    }
    let mut objects = vec![];
    if let Some(name) = &cfg.app_insights_connection_string_secret {
        let value = gantry_sdk::secrets::get(name).map_err(StageError::from)?;
        objects.push(render::appinsights_secret(cfg, &value));
    }
    objects.extend(render::config_map(cfg));
    objects.push(render::deployment(
        cfg,
        image,
        cfg.app_insights_connection_string_secret.is_some(),
    ));
    objects.push(render::service(cfg));
    objects.extend(render::hpa(cfg));
    objects.extend(render::ingress(cfg));
    Ok(objects)
}

fn describe_object(v: &Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The `deployment` telemetry event (an App Insights custom event).
fn announce(ns: &str, deployment: &str, image: &str, revision: Option<u64>, result: &str) {
    let mut properties = vec![
        ("target".to_string(), "kubernetes".to_string()),
        ("namespace".into(), ns.into()),
        ("deployment".into(), deployment.into()),
        ("image".into(), image.into()),
        ("result".into(), result.into()),
    ];
    if let Some(r) = revision {
        properties.push(("revision".into(), r.to_string()));
    }
    gantry_sdk::telemetry::event("deployment", &properties);
}

struct Deploy;

impl Guest for Deploy {
    fn describe() -> StageInfo {
        StageInfo {
            name: "aks-deploy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys an image to Kubernetes (AKS): renders a Deployment and Service (ConfigMap, App Insights Secret, HPA, Ingress) or applies your manifests with server-side apply, waits for the rollout and rolls back when it fails.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                gantry_sdk::Capability { kind: CapabilityKind::Cluster, target: None, reason: "the namespace it deploys to".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Secret, target: None, reason: "`app-insights-connection-string-secret`, when set".into() },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        let image = match (
            &cfg.image,
            ctx.inputs.iter().find_map(|a| a.reference.clone()),
        ) {
            (Some(i), _) => i.clone(),
            (None, Some(r)) => r,
            (None, None) => {
                return Err(StageError::InvalidConfig(
                    "no image to deploy: set `image`, or `needs` a stage that pushes one".into(),
                ));
            }
        };
        let ns = cfg.namespace.as_str();
        let mut objects = objects(&cfg, &image)?;
        let hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&objects).map_err(failed)?,
        ));
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .map(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .ok_or_else(|| StageError::InvalidConfig("the manifests hold no Deployment".into()))?;

        let live = cluster::get(ns, "apps/v1", "Deployment", &deployment)
            .map_err(StageError::from)?
            .and_then(|j| serde_json::from_str::<Value>(&j).ok());
        let unchanged = live
            .as_ref()
            .is_some_and(|d| d["metadata"]["annotations"][CONFIG_HASH] == hash.as_str());
        if unchanged {
            gantry_sdk::info(format!(
                "{deployment} in {ns} already runs this configuration; nothing applied"
            ));
        } else {
            for o in objects.iter_mut().filter(|o| o["kind"] == "Deployment") {
                let annotations = &mut o["metadata"]["annotations"];
                if !annotations.is_object() {
                    *annotations = serde_json::json!({});
                }
                annotations[CONFIG_HASH] = hash.clone().into();
                annotations["gantry.dev/run-id"] = ctx.run_id.clone().into();
                annotations["gantry.dev/pipeline"] = ctx.pipeline.clone().into();
            }
            for o in &objects {
                let text = serde_json::to_string(o).map_err(failed)?;
                cluster::apply(ns, &text).map_err(|e| {
                    gantry_sdk::prefix(e.into(), &format!("applying {}", describe_object(o)))
                })?;
                gantry_sdk::info(format!("applied {} in {ns}", describe_object(o)));
            }
        }

        let timeout_ms = cfg.timeout.saturating_mul(1000);
        let rollout =
            cluster::rollout_status(ns, &deployment, timeout_ms).map_err(StageError::from)?;
        if let Some(why) = rollout.failure.filter(|_| !rollout.complete) {
            let mut message = format!(
                "the rollout of Deployment {deployment} in {ns} (revision {}) failed: {why}",
                rollout.revision
            );
            if cfg.rollback {
                match cluster::rollback(ns, &deployment) {
                    Ok(revision) => {
                        let back = cluster::rollout_status(ns, &deployment, timeout_ms);
                        message.push_str(&format!(
                            "; rolled back to the previous version as revision {revision}"
                        ));
                        if let Ok(b) = back
                            && !b.complete
                        {
                            message.push_str(" (which is not available either)");
                        }
                    }
                    Err(e) => message.push_str(&format!(
                        "; no rollback: {}",
                        gantry_sdk::message(&e.into())
                    )),
                }
            }
            announce(ns, &deployment, &image, None, "rolled-back");
            return Err(StageError::Failed(message));
        }
        let service = objects
            .iter()
            .find(|o| o["kind"] == "Service")
            .map(|s| {
                format!(
                    "{}.{ns}.svc.cluster.local:{}",
                    s["metadata"]["name"].as_str().unwrap_or_default(),
                    s["spec"]["ports"][0]["port"].as_u64().unwrap_or(80)
                )
            })
            .unwrap_or_default();
        let result = if unchanged { "unchanged" } else { "deployed" };
        announce(ns, &deployment, &image, Some(rollout.revision), result);
        Ok(Outcome {
            artifacts: vec![],
            outputs: vec![
                gantry_sdk::output("namespace", ns),
                gantry_sdk::output("deployment", deployment.clone()),
                gantry_sdk::output("revision", rollout.revision.to_string()),
                gantry_sdk::output("service", service),
                gantry_sdk::output("image", image.clone()),
                gantry_sdk::output("changed", (!unchanged).to_string()),
            ],
            summary: format!(
                "{deployment} in {ns} at revision {} runs {image} ({} of {} replicas available)",
                rollout.revision, rollout.available_replicas, rollout.replicas
            ),
        })
    }
}

gantry_sdk::export_stage!(Deploy);
