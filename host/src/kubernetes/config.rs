//! `executor:` in the manifest: where an environment's stages run. `local`
//! (the default) runs them in this process; `{ kubernetes: {...} }` runs each
//! as a batch/v1 Job in the cluster of the environment (`cluster:`, else the
//! kubeconfig of the host or its in-cluster service account).

use crate::manifest::{ManifestError, ManifestFile};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// `local` or `{ kubernetes: {...} }`.
#[derive(Debug, Clone)]
pub enum Executor {
    Local,
    Kubernetes(Box<KubernetesExecutor>),
}

/// The long form: `{ kubernetes: {...} }` (`local` is the only short one).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExecutorFull {
    /// Run each stage as a Kubernetes Job.
    kubernetes: KubernetesExecutor,
}

/// The schema of [`Executor`]: `local`, or the long form.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum ExecutorSchema {
    Local(LocalWord),
    Full(ExecutorFull),
}

#[derive(schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
enum LocalWord {
    /// Stages run in the gantry process that runs the pipeline (the default).
    Local,
}

impl schemars::JsonSchema for Executor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Executor".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        ExecutorSchema::json_schema(generator)
    }
}

// A word or a map, by hand: an untagged enum would turn a typo inside the map
// into "did not match any variant" instead of naming the field.
impl<'de> Deserialize<'de> for Executor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Executor;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "`local`, or `{ kubernetes: { namespace, image, workspace-claim, ... } }`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "local" => Ok(Executor::Local),
                    other => Err(E::custom(format!(
                        "unknown executor `{other}`: expected `local` or `{{ kubernetes: {{...}} }}`"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let full =
                    ExecutorFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Executor::Kubernetes(Box::new(full.kubernetes)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Each stage as a batch/v1 Job: a pod running the gantry image in its
/// single-stage worker mode (`gantry stage`), with the workspace mounted from
/// a PersistentVolumeClaim the host shares.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesExecutor {
    /// The namespace the Jobs, their pods and Secrets are created in.
    #[schemars(with = "String")]
    pub namespace: Spanned<String>,
    /// The gantry image the pods run (the same gantry as the host; pin it by
    /// digest: `registry/gantry@sha256:...`).
    #[schemars(with = "String")]
    pub image: Spanned<String>,
    /// The PersistentVolumeClaim (ReadWriteMany) holding the workspace,
    /// mounted at `/workspace` in every stage's pod; the host sees the same
    /// volume as its workspace, so stages share files as they do locally.
    #[schemars(with = "String")]
    pub workspace_claim: Spanned<String>,
    /// The pods' service account; its token is mounted only into the pods of
    /// stages granted `permissions.cluster`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub service_account: Option<Spanned<String>>,
    /// The stage container's `resources` (`requests`, `limits`: `cpu`,
    /// `memory`, ...): the pod's limits on top of the stage's own.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Node labels the pods must match.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Secrets (in the namespace) to pull the image with.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// How long a finished Job stays before Kubernetes deletes it (default
    /// 3600): `gantry resume` reads a finished Job's result only meanwhile.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub ttl_seconds_after_finished: Option<Spanned<u32>>,
}

/// A container's resource requests and limits, as Kubernetes quantities.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// A checked `kubernetes` executor, as the plan holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KubeJobs {
    pub namespace: String,
    pub image: String,
    pub workspace_claim: String,
    pub service_account: Option<String>,
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub image_pull_secrets: Vec<String>,
    pub ttl_seconds_after_finished: u32,
}

/// Default `ttl-seconds-after-finished`: an hour to resume and read results.
pub const DEFAULT_TTL: u32 = 3600;

/// A DNS-1123 label (namespaces, service accounts): lowercase alphanumerics
/// and `-`, starting and ending alphanumeric, at most 63 characters.
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (object names): labels joined by dots, at most 253.
pub fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// A Kubernetes quantity (`500m`, `1.5`, `256Mi`, `1G`, `2e3`).
fn quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .parse::<u32>()
            .is_ok());
    number_ok && suffix_ok
}

/// Check `executor` (written at field path `field`) and resolve it; every
/// problem goes to `errors`, naming the file, line and field.
pub fn resolve(
    file: &ManifestFile,
    field: &str,
    executor: &Spanned<Executor>,
    errors: &mut Vec<ManifestError>,
) -> Option<KubeJobs> {
    let Executor::Kubernetes(k) = &executor.value else {
        return None;
    };
    let field = format!("{field}.kubernetes");
    let before = errors.len();
    if !dns_label(&k.namespace.value) {
        errors.push(file.error(
            &k.namespace.referenced,
            &format!("{field}.namespace"),
            format!("`{}` is not a namespace name", k.namespace.value),
            Some("lowercase letters, digits and `-`, at most 63 characters".into()),
        ));
    }
    let image = &k.image.value;
    if image.is_empty() || image.contains(char::is_whitespace) {
        errors.push(file.error(
            &k.image.referenced,
            &format!("{field}.image"),
            format!("`{image}` is not an image reference"),
            Some("e.g. `registry.example.com/gantry@sha256:...`".into()),
        ));
    }
    if !dns_subdomain(&k.workspace_claim.value) {
        errors.push(file.error(
            &k.workspace_claim.referenced,
            &format!("{field}.workspace-claim"),
            format!(
                "`{}` is not a PersistentVolumeClaim name",
                k.workspace_claim.value
            ),
            Some("lowercase letters, digits, `-` and `.`".into()),
        ));
    }
    if let Some(sa) = &k.service_account
        && !dns_subdomain(&sa.value)
    {
        errors.push(file.error(
            &sa.referenced,
            &format!("{field}.service-account"),
            format!("`{}` is not a service account name", sa.value),
            None,
        ));
    }
    let resources = k.resources.clone().unwrap_or_default();
    for (which, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, value) in map {
            if !quantity(value) {
                errors.push(file.error(
                    &executor.referenced,
                    &format!("{field}.resources.{which}.{name}"),
                    format!("`{value}` is not a Kubernetes quantity"),
                    Some("e.g. `500m` CPU, `256Mi` memory".into()),
                ));
            }
        }
    }
    let ttl = k.ttl_seconds_after_finished.as_ref();
    if errors.len() > before {
        return None;
    }
    Some(KubeJobs {
        namespace: k.namespace.value.clone(),
        image: image.clone(),
        workspace_claim: k.workspace_claim.value.clone(),
        service_account: k.service_account.as_ref().map(|s| s.value.clone()),
        requests: resources.requests,
        limits: resources.limits,
        node_selector: k.node_selector.clone(),
        image_pull_secrets: k.image_pull_secrets.clone(),
        ttl_seconds_after_finished: ttl.map_or(DEFAULT_TTL, |t| t.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn plan(yaml: &str, env: Option<&str>) -> Result<Plan, String> {
        let file = ManifestFile::parse(std::path::Path::new("pipeline.yaml"), yaml.into())
            .map_err(|e| e.to_string())?;
        Plan::new(&file, env).map_err(|e| e.to_string())
    }

    const STAGES: &str = "stages:\n  - { name: a, uses: command }\n";

    #[test]
    fn local_by_default_and_kubernetes_per_environment() {
        let yaml = format!(
            "pipeline: p\n{STAGES}environments:\n  cluster:\n    executor:\n      kubernetes:\n        namespace: ci\n        image: reg.example/gantry@sha256:ab\n        workspace-claim: ws\n        resources: {{ limits: {{ memory: 512Mi, cpu: 500m }} }}\n        node-selector: {{ pool: ci }}\n  laptop:\n    executor: local\n"
        );
        assert_eq!(plan(&yaml, None).unwrap().executor, None);
        assert_eq!(plan(&yaml, Some("laptop")).unwrap().executor, None);
        let k = plan(&yaml, Some("cluster")).unwrap().executor.unwrap();
        assert_eq!(k.namespace, "ci");
        assert_eq!(k.workspace_claim, "ws");
        assert_eq!(k.limits["memory"], "512Mi");
        assert_eq!(k.node_selector["pool"], "ci");
        assert_eq!(k.ttl_seconds_after_finished, DEFAULT_TTL);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let yaml = format!(
            "pipeline: p\n{STAGES}executor:\n  kubernetes:\n    namespace: CI_Jobs\n    image: gantry\n    workspace-claim: ws\n    resources: {{ requests: {{ memory: lots }} }}\n"
        );
        let err = plan(&yaml, None).unwrap_err();
        assert!(
            err.contains("pipeline.yaml:6:16: executor.kubernetes.namespace: `CI_Jobs` is not a namespace name"),
            "{err}"
        );
        assert!(
            err.contains(
                "executor.kubernetes.resources.requests.memory: `lots` is not a Kubernetes quantity"
            ),
            "{err}"
        );
        let typo = format!(
            "pipeline: p\n{STAGES}executor:\n  kubernetes: {{ namespace: ci, image: g, workspace-claim: w, node-selectr: {{}} }}\n"
        );
        let err = plan(&typo, None).unwrap_err();
        assert!(err.contains("pipeline.yaml:5:"), "{err}");
        assert!(err.contains("unknown field `node-selectr`"), "{err}");
        assert!(err.contains("did you mean `node-selector`?"), "{err}");
        let word = format!("pipeline: p\n{STAGES}executor: kubernets\n");
        let err = plan(&word, None).unwrap_err();
        assert!(err.contains("pipeline.yaml:4:"), "{err}");
        assert!(err.contains("unknown executor `kubernets`"), "{err}");
    }

    #[test]
    fn names_and_quantities() {
        assert!(dns_label("ci-jobs"));
        assert!(!dns_label("CI"));
        assert!(!dns_label("-a"));
        assert!(dns_subdomain("work.space-1"));
        for q in ["500m", "1", "1.5", "256Mi", "2Gi", "1e3"] {
            assert!(quantity(q), "{q}");
        }
        for q in ["", "lots", "1.2.3", "5 Mi", "12MB"] {
            assert!(!quantity(q), "{q}");
        }
    }
}
