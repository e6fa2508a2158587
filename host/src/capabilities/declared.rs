//! The capabilities a plugin declares in `describe()`, compared with what the
//! stage is granted, so that a missing grant is found before the run instead
//! of as a denial halfway through it.
//!
//! A declared capability with a target (`exec` of `cargo`, the secret `token`)
//! that is not granted is an error: the plugin says it will ask for exactly
//! that. One without a target depends on the stage's configuration (which
//! program, which origin), so only a stage with no grant of that kind at all
//! gets a warning: it may well not need it in this configuration.

use super::Grants;
use crate::runtime::bindings::types::{Capability, CapabilityKind as K};

/// What is missing: errors (declared with a target, not granted) and warnings
/// (declared without one, and nothing of that kind granted).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Compare `declared` with `grants` of the stage or sink at manifest `field`
/// (e.g. `stages[2]`) named `name`; `inspect` is what `gantry plugins inspect`
/// takes for its plugin. The warnings are one line per stage.
pub fn missing(
    grants: &Grants,
    field: &str,
    name: &str,
    inspect: &str,
    declared: &[Capability],
) -> Missing {
    let mut out = Missing::default();
    let mut maybe: Vec<String> = vec![];
    for cap in declared {
        let kind_granted = match cap.kind {
            K::WorkspaceWrite => grants.workspace.write,
            K::Exec => !grants.exec.programs.is_empty(),
            K::Secret => !grants.secrets.names.is_empty(),
            K::Env => !grants.env.names.is_empty(),
            K::Http => !grants.http.origins.is_empty(),
            K::Engine => grants.engine.granted,
            K::Cluster => !grants.cluster.namespaces.is_empty(),
        };
        let Some(target) = cap.target.as_deref().filter(|t| !t.is_empty()) else {
            let grant = grant_field(cap.kind, None);
            if !kind_granted && !maybe.contains(&grant) {
                maybe.push(grant);
            }
            continue;
        };
        let granted = match cap.kind {
            K::WorkspaceWrite | K::Engine => kind_granted,
            K::Exec => grants.exec.programs.iter().any(|p| p == target),
            K::Secret => grants.secrets.names.iter().any(|s| s == target),
            K::Env => grants.env.names.iter().any(|s| s == target),
            K::Cluster => grants.cluster.namespaces.iter().any(|n| n == target),
            K::Http => match http::Uri::try_from(target) {
                Ok(uri) => {
                    let scheme = uri.scheme_str().unwrap_or("https");
                    let port = uri
                        .port_u16()
                        .unwrap_or(if scheme == "http" { 80 } else { 443 });
                    let host = uri.host().unwrap_or_default();
                    grants
                        .http
                        .origins
                        .iter()
                        .any(|o| o.allows(scheme, host, port))
                }
                Err(_) => kind_granted,
            },
        };
        if !granted {
            out.errors.push(format!(
                "{field} (`{name}`): its plugin needs {} ({}), which is not granted: grant it with `{field}.permissions.{}`",
                what(cap.kind, target),
                cap.reason,
                grant_field(cap.kind, Some(target))
            ));
        }
    }
    if !maybe.is_empty() {
        out.warnings.push(format!(
            "{field} (`{name}`): depending on its configuration, its plugin may also ask for what `{}` grants (`gantry plugins inspect {inspect}` says when)",
            maybe
                .iter()
                .map(|g| format!("{field}.permissions.{g}"))
                .collect::<Vec<_>>()
                .join("`, `")
        ));
    }
    out
}

/// A declared capability with its target, in words.
fn what(kind: K, target: &str) -> String {
    match kind {
        K::WorkspaceWrite => "to write the workspace".into(),
        K::Exec => format!("to run a program `{target}`"),
        K::Secret => format!("a secret `{target}`"),
        K::Env => format!("a host variable `{target}`"),
        K::Http => format!("HTTP to an origin `{target}`"),
        K::Engine => "the container engine".into(),
        K::Cluster => format!("a cluster namespace `{target}`"),
    }
}

/// The grant to write, as `validate` accepts it.
fn grant_field(kind: K, target: Option<&str>) -> String {
    let list = |field: &str| match target {
        Some(t) => format!("{field}: [{t}]"),
        None => format!("{field}: [...]"),
    };
    match kind {
        K::WorkspaceWrite => "workspace: write".into(),
        K::Exec => list("exec"),
        K::Secret => list("secrets"),
        K::Env => list("env"),
        K::Http => match target {
            Some(t) => format!("http: [\"{}\"]", origin_of(t)),
            None => "http: [\"https://host\"]".into(),
        },
        K::Engine => "engine: true".into(),
        K::Cluster => match target {
            Some(t) => format!("cluster: {{ namespaces: [{t}] }}"),
            None => "cluster: { namespaces: [...] }".into(),
        },
    }
}

/// `https://host:port/path` → `https://host:port`.
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.split(['/', '?', '#']).next().unwrap_or(rest)
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::http::Origin;

    fn cap(kind: K, target: Option<&str>) -> Capability {
        Capability {
            kind,
            target: target.map(str::to_string),
            reason: "why".into(),
        }
    }

    #[test]
    fn targets_must_be_granted_and_kinds_without_one_only_warn() {
        let mut grants = Grants::default();
        grants.exec.programs = vec!["cargo".into()];
        grants.http.origins = vec![Origin::parse("https://*.azurecr.io").unwrap()];
        let m = missing(
            &grants,
            "stages[1]",
            "build",
            "build",
            &[
                cap(K::Exec, Some("cargo")),
                cap(K::Exec, Some("docker")),
                cap(K::Http, Some("https://team.azurecr.io/v2/")),
                cap(K::Http, Some("https://management.azure.com")),
                cap(K::Engine, None),
                cap(K::Secret, None),
                cap(K::Exec, None),
            ],
        );
        assert_eq!(
            m.errors,
            vec![
                "stages[1] (`build`): its plugin needs to run a program `docker` (why), which is not granted: grant it with `stages[1].permissions.exec: [docker]`".to_string(),
                "stages[1] (`build`): its plugin needs HTTP to an origin `https://management.azure.com` (why), which is not granted: grant it with `stages[1].permissions.http: [\"https://management.azure.com\"]`".into(),
            ]
        );
        // Only kinds with nothing granted; exec is granted (cargo).
        assert_eq!(
            m.warnings,
            vec!["stages[1] (`build`): depending on its configuration, its plugin may also ask for what `stages[1].permissions.engine: true`, `stages[1].permissions.secrets: [...]` grants (`gantry plugins inspect build` says when)".to_string()]
        );
    }
}
