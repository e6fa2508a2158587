//! Secrets: values come from the host (environment variables or files named in
//! the manifest's top-level `secrets:`), never from the manifest itself; a stage
//! reads only the names it is granted (`permissions.secrets`); every value is
//! redacted from everything gantry prints or writes.

use super::{Subject, configure_names};
use crate::manifest::{ManifestError, ManifestFile, Permissions, SecretSource, closest};
use crate::redact::Redactor;
use crate::runtime::bindings::secrets as wit;
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct SecretsGrant {
    pub names: Vec<String>,
}

impl SecretsGrant {
    /// `defined`: the secrets the manifest defines in the chosen environment.
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        defined: &BTreeSet<String>,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let check = |name: &str| {
            if defined.contains(name) {
                return Ok(());
            }
            let help = match closest(name, defined.iter().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "define it at the top level: `secrets: {{ {name}: {{ env: SOME_VARIABLE }} }}`"
                ),
            };
            Err((
                format!("secret `{name}` is granted but not defined under `secrets:`"),
                Some(help),
            ))
        };
        Self {
            names: configure_names(
                file,
                &format!("{field}.secrets"),
                &perms.secrets,
                check,
                errors,
            ),
        }
    }
}

/// The run's secret values, read from their sources once when the run starts.
#[derive(Default)]
pub struct SecretStore {
    values: BTreeMap<String, Result<String, String>>,
}

impl SecretStore {
    /// Read every secret of the plan's environment; paths are relative to
    /// `base` (the manifest's directory). A missing source is not an error
    /// until a stage asks for that secret.
    pub fn resolve(sources: &BTreeMap<String, SecretSource>, base: &Path) -> Self {
        let values = sources
            .iter()
            .map(|(name, source)| (name.clone(), source.read(base)))
            .collect();
        Self { values }
    }

    /// A store of known values (the scripted secrets of `gantry plugins test`).
    pub fn from_values(values: BTreeMap<String, String>) -> Self {
        Self {
            values: values.into_iter().map(|(k, v)| (k, Ok(v))).collect(),
        }
    }

    /// The value of a secret, whether granted or not (for expressions, which
    /// the plan has checked against the grants).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.as_ref().ok().map(String::as_str)
    }

    /// A redactor that masks every value this store holds.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(
            self.values
                .values()
                .filter_map(|v| v.as_ref().ok().cloned()),
        )
    }
}

pub struct SecretsState {
    pub grant: SecretsGrant,
    pub store: Arc<SecretStore>,
    pub subject: Subject,
}

impl SecretsState {
    pub fn get(&self, name: &str) -> Result<String, HostError> {
        if !self.grant.names.iter().any(|n| n == name) {
            let message = self.subject.deny(
                "to read",
                &format!("secret `{name}`"),
                &format!("secrets: [{name}]"),
            );
            return Err(HostError::Denied(message));
        }
        match self.store.values.get(name) {
            Some(Ok(value)) => Ok(value.clone()),
            Some(Err(why)) => Err(HostError::Failed(format!(
                "secret `{name}` has no value: {why}"
            ))),
            None => Err(HostError::Failed(format!("secret `{name}` is not defined"))),
        }
    }
}

impl wit::Host for StageState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.secrets.get(&name))
    }
}
