//! The resource types the server knows, and the documents that describe them to
//! clients: `/version`, legacy discovery and a minimal OpenAPI v3.

use serde_json::{Value, json};

/// How writes to the main resource move `metadata.generation`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// The type has no generation (core v1 objects in this server).
    None,
    /// +1 when `spec` changes.
    Spec,
    /// +1 when `spec` or `metadata.annotations` change: the real Deployment
    /// strategy does this because annotations are copied to ReplicaSets.
    SpecOrAnnotations,
}

pub(crate) struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// `all` puts the type in `kubectl get all`.
    pub in_all: bool,
    /// Whether the type has a `/status` subresource (main writes keep the old status).
    pub has_status: bool,
    pub generation: Generation,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `configmaps`: how the real server names the type in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether objects carry `metadata.generation`.
    pub fn has_generation(&self) -> bool {
        self.generation != Generation::None
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced: true,
        short_names,
        in_all: false,
        has_status: false,
        generation: Generation::None,
    }
}

/// Every served type. Index into this slice identifies a type in the store.
pub(crate) static RESOURCES: &[Resource] = &[
    Resource {
        namespaced: false,
        has_status: true,
        ..res("", "v1", "namespaces", "namespace", "Namespace", &["ns"])
    },
    Resource {
        in_all: true,
        has_status: true,
        ..res("", "v1", "pods", "pod", "Pod", &["po"])
    },
    Resource {
        in_all: true,
        has_status: true,
        ..res("", "v1", "services", "service", "Service", &["svc"])
    },
    res("", "v1", "configmaps", "configmap", "ConfigMap", &["cm"]),
    res("", "v1", "secrets", "secret", "Secret", &[]),
    Resource {
        in_all: true,
        has_status: true,
        generation: Generation::SpecOrAnnotations,
        ..res(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            &["deploy"],
        )
    },
    Resource {
        in_all: true,
        has_status: true,
        generation: Generation::Spec,
        ..res(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            &["rs"],
        )
    },
    Resource {
        in_all: true,
        has_status: true,
        generation: Generation::Spec,
        ..res(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            "HorizontalPodAutoscaler",
            &["hpa"],
        )
    },
    Resource {
        has_status: true,
        generation: Generation::Spec,
        ..res(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "ingress",
            "Ingress",
            &["ing"],
        )
    },
    Resource {
        has_status: true,
        generation: Generation::Spec,
        ..res("batch", "v1", "jobs", "job", "Job", &[])
    },
    Resource {
        has_status: true,
        ..res(
            "",
            "v1",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            "PersistentVolumeClaim",
            &["pvc"],
        )
    },
];

pub(crate) const NAMESPACES: usize = 0;
pub(crate) const PODS: usize = 1;
pub(crate) const DEPLOYMENTS: usize = 5;
pub(crate) const REPLICASETS: usize = 6;
pub(crate) const SECRETS: usize = 4;
pub(crate) const JOBS: usize = 9;
pub(crate) const CLAIMS: usize = 10;

/// The type served at `group/version` under `plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Like [`find`], with `group_version` as in `apiVersion` ("v1", "apps/v1").
pub(crate) fn find_gv(group_version: &str, plural: &str) -> Option<usize> {
    let (group, version) = group_version
        .rsplit_once('/')
        .unwrap_or(("", group_version));
    find(group, version, plural)
}

/// The served groups other than core, in discovery order.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`: the core group's versions.
pub(crate) fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]
    })
}

/// `/apis`: every named group with its one version.
pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1`, `/apis/{group}/{version}`: the types of one group version, with
/// their `/status` subresources; None for an unknown group version.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut verbs = vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        if r.namespaced {
            verbs.push("deletecollection");
        }
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if r.in_all {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The OpenAPI v3 path of a group version: `api/v1`, `apis/apps/v1`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of per-group-version documents. kubectl reads it
/// to learn whether the server validates fields itself (`fieldValidation`); without
/// any OpenAPI it refuses to `apply` unless given `--validate=false`.
pub(crate) fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = openapi_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1|apis/g/v}`: a document with just the PATCH operation of
/// each type and its query parameters (no schemas; the server does not validate
/// fields against schemas either).
pub(crate) fn openapi_doc(path: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| openapi_path(r.group, r.version) == path)
    {
        let prefix = format!("/{path}");
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        paths.insert(
            item,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}
