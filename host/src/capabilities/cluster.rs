//! The Kubernetes capability (`permissions.cluster.namespaces`). The interface is
//! part of gantry:pipeline@0.1.0; the kube-rs implementation arrives with the
//! deploy stage. Until then a call in a granted namespace answers `unavailable`,
//! any other `denied`.

use super::{Subject, configure_names};
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use crate::runtime::bindings::cluster::{self as wit, Rollout};
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;

#[derive(Debug, Clone, Default)]
pub struct ClusterGrant {
    pub namespaces: Vec<String>,
}

impl ClusterGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let Some(cluster) = &perms.cluster else {
            return Self::default();
        };
        // RFC 1123 label, as Kubernetes requires for namespace names.
        let check = |ns: &str| {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if ok {
                Ok(())
            } else {
                Err((format!("`{ns}` is not a valid namespace name"), None))
            }
        };
        Self {
            namespaces: configure_names(
                file,
                &format!("{field}.cluster.namespaces"),
                &cluster.namespaces,
                check,
                errors,
            ),
        }
    }
}

pub struct ClusterState {
    pub grant: ClusterGrant,
    pub subject: Subject,
}

impl ClusterState {
    /// Every call is refused for now: `denied` outside the granted namespaces,
    /// else `unavailable`.
    fn refuse(&self, namespace: &str, what: &str) -> HostError {
        if !self.grant.namespaces.iter().any(|n| n == namespace) {
            let message = self.subject.deny(
                "to use the cluster in namespace",
                &format!("`{namespace}` ({what})"),
                &format!("cluster: {{ namespaces: [{namespace}] }}"),
            );
            return HostError::Denied(message);
        }
        HostError::Unavailable(format!(
            "the cluster capability ({what}) is not implemented in gantry {}",
            env!("CARGO_PKG_VERSION")
        ))
    }
}

impl wit::Host for StageState {
    async fn apply(
        &mut self,
        ns: String,
        _manifest: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(Err(self.cluster.refuse(&ns, "apply")))
    }
    async fn get(
        &mut self,
        ns: String,
        _v: String,
        _k: String,
        _n: String,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        Ok(Err(self.cluster.refuse(&ns, "get")))
    }
    async fn delete(
        &mut self,
        ns: String,
        _v: String,
        _k: String,
        _n: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok(Err(self.cluster.refuse(&ns, "delete")))
    }
    async fn rollout_status(
        &mut self,
        ns: String,
        _d: String,
        _t: u64,
    ) -> wasmtime::Result<Result<Rollout, HostError>> {
        Ok(Err(self.cluster.refuse(&ns, "rollout-status")))
    }
    async fn rollback(
        &mut self,
        ns: String,
        _d: String,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        Ok(Err(self.cluster.refuse(&ns, "rollback")))
    }
}
