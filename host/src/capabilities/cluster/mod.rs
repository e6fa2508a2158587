//! The Kubernetes capability (`permissions.cluster.namespaces`): server-side
//! apply, get, delete, rollout status and rollback, on the cluster the
//! environment names (`cluster: { kubeconfig, context }`). The kubeconfig's
//! credentials stay in the host; a call outside the granted namespaces is
//! `denied` before anything reaches the cluster.

pub mod kube;

use super::{Subject, configure_names};
use crate::capabilities::log::StageLog;
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use crate::report::Level;
use crate::runtime::bindings::cluster::{self as wit, Rollout};
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;
use std::sync::Arc;

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
    pub connection: Arc<kube::Connection>,
    pub log: Arc<StageLog>,
}

impl ClusterState {
    /// `denied` outside the granted namespaces.
    fn check(&self, namespace: &str, what: &str) -> Result<(), HostError> {
        if self.grant.namespaces.iter().any(|n| n == namespace) {
            return Ok(());
        }
        Err(HostError::Denied(self.subject.deny(
            "to use the cluster in namespace",
            &format!("`{namespace}` ({what})"),
            &format!("cluster: {{ namespaces: [{namespace}] }}"),
        )))
    }

    fn note(&self, text: &str) {
        self.log.write(Level::Info, &format!("cluster: {text}"));
    }
}

impl wit::Host for StageState {
    async fn apply(
        &mut self,
        ns: String,
        manifest: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let c = &self.cluster;
        if let Err(e) = c.check(&ns, "apply") {
            return Ok(Err(e));
        }
        let applied = c.connection.apply(&ns, &manifest).await;
        if let Ok(json) = &applied {
            let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            c.note(&format!(
                "applied {} {}/{} in {ns} (resourceVersion {})",
                v["apiVersion"].as_str().unwrap_or(""),
                v["kind"].as_str().unwrap_or(""),
                v["metadata"]["name"].as_str().unwrap_or(""),
                v["metadata"]["resourceVersion"].as_str().unwrap_or("")
            ));
        }
        Ok(applied)
    }
    async fn get(
        &mut self,
        ns: String,
        api_version: String,
        kind: String,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        let c = &self.cluster;
        if let Err(e) = c.check(&ns, "get") {
            return Ok(Err(e));
        }
        Ok(c.connection.get(&ns, &api_version, &kind, &name).await)
    }
    async fn delete(
        &mut self,
        ns: String,
        api_version: String,
        kind: String,
        name: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        let c = &self.cluster;
        if let Err(e) = c.check(&ns, "delete") {
            return Ok(Err(e));
        }
        let deleted = c.connection.delete(&ns, &api_version, &kind, &name).await;
        if deleted.is_ok() {
            c.note(&format!("deleted {kind}/{name} in {ns}"));
        }
        Ok(deleted)
    }
    async fn rollout_status(
        &mut self,
        ns: String,
        deployment: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<Rollout, HostError>> {
        let c = &self.cluster;
        if let Err(e) = c.check(&ns, "rollout-status") {
            return Ok(Err(e));
        }
        let timeout = std::time::Duration::from_millis(timeout_ms);
        Ok(c.connection.rollout_status(&ns, &deployment, timeout).await)
    }
    async fn rollback(
        &mut self,
        ns: String,
        deployment: String,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        let c = &self.cluster;
        if let Err(e) = c.check(&ns, "rollback") {
            return Ok(Err(e));
        }
        let revision = c.connection.rollback(&ns, &deployment).await;
        if let Ok(r) = &revision {
            c.note(&format!(
                "rolled back Deployment {deployment} in {ns} to revision {r}"
            ));
        }
        Ok(revision)
    }
}
