//! The Kubernetes objects a deploy applies, rendered from the stage's config:
//! a Deployment and a Service, and when configured a ConfigMap, a Secret with
//! the Application Insights connection string, a HorizontalPodAutoscaler and
//! an Ingress. Or the user's own manifests with the image substituted.

use crate::Config;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Labels on every object, and the Deployment's selector.
fn labels(cfg: &Config) -> BTreeMap<String, String> {
    let mut labels = cfg.labels.clone();
    labels.insert("app.kubernetes.io/name".into(), cfg.name.clone());
    labels.insert("app.kubernetes.io/managed-by".into(), "gantry".into());
    labels
}

/// The selector must never change for a Deployment (it is immutable), so it is
/// the name only, not the user's labels.
fn selector(cfg: &Config) -> Value {
    json!({"app.kubernetes.io/name": cfg.name})
}

pub const APPINSIGHTS_KEY: &str = "connection-string";

pub fn appinsights_secret_name(cfg: &Config) -> String {
    format!("{}-appinsights", cfg.name)
}

/// The Secret holding the connection string, from a granted gantry secret.
pub fn appinsights_secret(cfg: &Config, connection_string: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": appinsights_secret_name(cfg), "labels": labels(cfg)},
        "type": "Opaque",
        "stringData": {APPINSIGHTS_KEY: connection_string},
    })
}

pub fn config_map(cfg: &Config) -> Option<Value> {
    let data = cfg.config_map.as_ref()?;
    Some(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("{}-config", cfg.name), "labels": labels(cfg)},
        "data": data,
    }))
}

fn probe(cfg: &Config, path: &str) -> Value {
    json!({
        "httpGet": {"path": path, "port": cfg.port},
        "periodSeconds": 5,
        "failureThreshold": 3,
    })
}

pub fn deployment(cfg: &Config, image: &str, appinsights: bool) -> Value {
    let mut env: Vec<Value> = cfg
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    if appinsights {
        env.push(json!({
            "name": "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "valueFrom": {"secretKeyRef": {"name": appinsights_secret_name(cfg), "key": APPINSIGHTS_KEY}},
        }));
    }
    let mut container = json!({
        "name": cfg.name,
        "image": image,
        "ports": [{"containerPort": cfg.port, "name": "http"}],
    });
    if !env.is_empty() {
        container["env"] = env.into();
    }
    if cfg.config_map.is_some() {
        container["envFrom"] = json!([{"configMapRef": {"name": format!("{}-config", cfg.name)}}]);
    }
    if let Some(r) = &cfg.resources {
        container["resources"] = r.clone();
    }
    if let Some(path) = &cfg.probes.readiness {
        container["readinessProbe"] = probe(cfg, path);
    }
    if let Some(path) = &cfg.probes.liveness {
        container["livenessProbe"] = probe(cfg, path);
    }
    let mut pod_metadata = json!({"labels": labels(cfg)});
    if !cfg.pod_annotations.is_empty() {
        pod_metadata["annotations"] = json!(cfg.pod_annotations);
    }
    let mut spec = json!({
        "replicas": cfg.replicas,
        "progressDeadlineSeconds": cfg.progress_deadline,
        "selector": {"matchLabels": selector(cfg)},
        "template": {
            "metadata": pod_metadata,
            "spec": {"containers": [container]},
        },
    });
    if let Some(secret) = &cfg.image_pull_secret {
        spec["template"]["spec"]["imagePullSecrets"] = json!([{"name": secret}]);
    }
    if cfg.hpa.is_some() {
        // The autoscaler owns the replica count then.
        spec.as_object_mut().unwrap().remove("replicas");
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": cfg.name, "labels": labels(cfg), "annotations": cfg.annotations},
        "spec": spec,
    })
}

pub fn service(cfg: &Config) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": cfg.name, "labels": labels(cfg)},
        "spec": {
            "type": cfg.service.kind,
            "selector": selector(cfg),
            "ports": [{"name": "http", "port": cfg.service.port, "targetPort": cfg.port, "protocol": "TCP"}],
        },
    })
}

pub fn hpa(cfg: &Config) -> Option<Value> {
    let h = cfg.hpa.as_ref()?;
    Some(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": cfg.name, "labels": labels(cfg)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": cfg.name},
            "minReplicas": h.min,
            "maxReplicas": h.max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": h.cpu_percent}}}],
        },
    }))
}

pub fn ingress(cfg: &Config) -> Option<Value> {
    let i = cfg.ingress.as_ref()?;
    let mut spec = json!({
        "rules": [{
            "host": i.host,
            "http": {"paths": [{
                "path": i.path,
                "pathType": "Prefix",
                "backend": {"service": {"name": cfg.name, "port": {"number": cfg.service.port}}},
            }]},
        }],
    });
    if let Some(class) = &i.class {
        spec["ingressClassName"] = class.clone().into();
    }
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": cfg.name, "labels": labels(cfg)},
        "spec": spec,
    }))
}

/// The user's manifests (YAML, several documents per file allowed) with every
/// container image equal to `placeholder` replaced by `image`.
pub fn user_manifests(
    files: &[(String, String)],
    placeholder: &str,
    image: &str,
) -> Result<Vec<Value>, String> {
    let mut objects = vec![];
    for (path, text) in files {
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            let mut v: Value = serde_saphyr::from_str(doc)
                .map_err(|e| format!("{path}: document {}: {e}", i + 1))?;
            if v.is_null() {
                continue;
            }
            substitute(&mut v, placeholder, image);
            objects.push(v);
        }
    }
    Ok(objects)
}

fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = vec![];
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Replace `image: <placeholder>` in every container list of the object.
fn substitute(v: &mut Value, placeholder: &str, image: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "containers" || k == "initContainers") && child.is_array() {
                    for c in child.as_array_mut().unwrap() {
                        if c["image"] == placeholder {
                            c["image"] = image.into();
                        }
                    }
                } else {
                    substitute(child, placeholder, image);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| substitute(i, placeholder, image)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_in_every_document() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers:\n        - {name: a, image: APP}\n        - {name: b, image: other}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
        let objects =
            user_manifests(&[("k.yaml".into(), text.into())], "APP", "r.io/a@sha256:1").unwrap();
        assert_eq!(objects.len(), 2);
        let containers = &objects[0]["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "r.io/a@sha256:1");
        assert_eq!(containers[1]["image"], "other");
        assert_eq!(objects[1]["kind"], "Service");
    }
}
