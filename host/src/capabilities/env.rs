//! Host environment variables, visible to a stage (through wasi:cli/environment
//! and to the programs it runs with `exec`) only when granted by name.

use super::configure_names;
use crate::manifest::{ManifestError, ManifestFile, Permissions};

#[derive(Debug, Clone, Default)]
pub struct EnvGrant {
    pub names: Vec<String>,
}

impl EnvGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let check = |name: &str| {
            let ok = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if ok {
                Ok(())
            } else {
                Err((
                    format!("`{name}` is not an environment variable name"),
                    None,
                ))
            }
        };
        Self {
            names: configure_names(file, &format!("{field}.env"), &perms.env, check, errors),
        }
    }

    /// Prepare: the granted variables that are set on the host, with their values.
    pub fn prepare(&self) -> Vec<(String, String)> {
        self.names
            .iter()
            .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v)))
            .collect()
    }
}
