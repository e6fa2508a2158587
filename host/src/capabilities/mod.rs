//! Host capabilities, one module each. A capability has three moments:
//!
//! 1. **link**: its WIT bindings are added to the linker once per engine
//!    ([`crate::runtime::Runtime::new`] links them all);
//! 2. **configure**: its grant is read from a stage's `permissions:` and checked
//!    (`*Grant::configure`; errors are manifest errors with spans);
//! 3. **prepare**: the per-instance state that every call is checked against is
//!    built from the grant and the run (`*State` / `prepare`).
//!
//! Nothing is ambient: a capability whose grant is empty denies every call, and
//! each denial is both returned to the plugin and recorded in [`Denials`] so the
//! user is told which manifest field would grant it.

pub mod cluster;
pub mod declared;
pub mod effects;
pub mod engine;
pub mod env;
pub mod exec;
pub mod http;
pub mod log;
pub mod registries;
pub mod secrets;
pub mod state;
pub mod telemetry;
pub mod workspace;

use crate::manifest::{ManifestError, ManifestFile, Permissions};
use std::sync::{Arc, Mutex};

/// Everything one stage (or sink) is granted, after the manifest was checked.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub workspace: workspace::WorkspaceGrant,
    pub env: env::EnvGrant,
    pub exec: exec::ExecGrant,
    pub secrets: secrets::SecretsGrant,
    pub http: http::HttpGrant,
    pub engine: engine::EngineGrant,
    pub registries: registries::RegistriesGrant,
    pub cluster: cluster::ClusterGrant,
    pub state: state::StateGrant,
}

impl Grants {
    /// Check `perms` (found at manifest field `field`, e.g. `stages[2]`) and build
    /// the grants. Problems are appended to `errors`.
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        defined_secrets: &std::collections::BTreeSet<String>,
        errors: &mut Vec<ManifestError>,
    ) -> Grants {
        let field = format!("{field}.permissions");
        Grants {
            workspace: workspace::WorkspaceGrant::configure(file, &field, perms, errors),
            env: env::EnvGrant::configure(file, &field, perms, errors),
            exec: exec::ExecGrant::configure(file, &field, perms, errors),
            secrets: secrets::SecretsGrant::configure(file, &field, perms, defined_secrets, errors),
            http: http::HttpGrant::configure(file, &field, perms, errors),
            engine: engine::EngineGrant::configure(perms),
            registries: registries::RegistriesGrant::configure(file, &field, perms, errors),
            cluster: cluster::ClusterGrant::configure(file, &field, perms, errors),
            state: state::StateGrant::configure(file, &field, perms, errors),
        }
    }

    /// One line per granted capability, for `gantry validate` and `plugins inspect`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![self.workspace.describe()];
        let list = |lines: &mut Vec<String>, what: &str, names: &[String]| {
            if !names.is_empty() {
                lines.push(format!("{what}: {}", names.join(", ")));
            }
        };
        list(&mut lines, "env", &self.env.names);
        lines.extend(self.exec.describe());
        list(&mut lines, "secrets", &self.secrets.names);
        list(
            &mut lines,
            "http",
            &self
                .http
                .origins
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>(),
        );
        list(&mut lines, "engine registries", &self.registries.registries);
        list(&mut lines, "cluster namespaces", &self.cluster.namespaces);
        list(&mut lines, "state", &self.state.prefixes);
        if self.engine.granted {
            lines.push("engine: granted".into());
        }
        lines
    }
}

/// Who is asking: the stage's name and where its grants live in the manifest, so
/// that denials can say which field would grant the call; and where they are
/// recorded.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The stage name, or `telemetry[0]` for a sink.
    pub name: String,
    /// The manifest field of the stage or sink, e.g. `stages[2]`.
    pub field: String,
    pub denials: Denials,
}

impl Subject {
    pub fn new(name: &str, field: &str) -> Self {
        Self {
            name: name.into(),
            field: field.into(),
            denials: Denials::default(),
        }
    }

    /// Refuse a call: record the denial for the user and return the message for
    /// the plugin, both saying what was refused and how to grant it.
    pub fn deny(&self, capability: &str, what: &str, grant: &str) -> String {
        let message = format!(
            "stage `{}` is not allowed {capability} {what}: grant it with `{}.permissions.{grant}`",
            self.name, self.field
        );
        self.denials.record(message.clone());
        message
    }
}

/// Denials recorded during one stage instance, reported after it ends.
#[derive(Debug, Clone, Default)]
pub struct Denials(Arc<Mutex<Vec<String>>>);

impl Denials {
    pub fn record(&self, message: String) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A plugin retrying in a loop must not grow this without bound.
        if list.len() < 100 && !list.contains(&message) {
            list.push(message);
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Configure a list of names (programs, variables, secrets): each is checked with
/// `check`, and duplicates are dropped.
pub(crate) fn configure_names(
    file: &ManifestFile,
    field: &str,
    list: &[serde_saphyr::Spanned<String>],
    check: impl Fn(&str) -> Result<(), (String, Option<String>)>,
    errors: &mut Vec<ManifestError>,
) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for (i, item) in list.iter().enumerate() {
        match check(&item.value) {
            Ok(()) if !names.contains(&item.value) => names.push(item.value.clone()),
            Ok(()) => {}
            Err((message, help)) => {
                errors.push(file.error(&item.referenced, &format!("{field}[{i}]"), message, help))
            }
        }
    }
    names
}
