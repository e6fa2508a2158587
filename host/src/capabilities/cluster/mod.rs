//! The Kubernetes capability (`permissions.cluster.namespaces`): server-side
//! apply, get, delete, rollout status and rollback, on the cluster the
//! environment names (`cluster: { kubeconfig, context }`). The kubeconfig's
//! credentials stay in the host; a call outside the granted namespaces is
//! `denied` before anything reaches the cluster.

pub mod kube;

use super::effects::Effects;
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
    /// Set by `gantry plugins test`: answers allowed calls instead of the cluster.
    pub effects: Option<Arc<dyn Effects>>,
}

/// A scripted object: written as YAML in the case, handed over as JSON text.
fn json_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A scripted [`Rollout`], as a case file writes it (kebab-case keys).
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct ScriptedRollout {
    generation: u64,
    observed_generation: u64,
    replicas: u32,
    updated_replicas: u32,
    available_replicas: u32,
    revision: u64,
    complete: bool,
    failure: Option<String>,
}

impl Default for ScriptedRollout {
    fn default() -> Self {
        Self {
            generation: 1,
            observed_generation: 1,
            replicas: 1,
            updated_replicas: 1,
            available_replicas: 1,
            revision: 1,
            complete: true,
            failure: None,
        }
    }
}

impl From<ScriptedRollout> for Rollout {
    fn from(r: ScriptedRollout) -> Self {
        Rollout {
            generation: r.generation,
            observed_generation: r.observed_generation,
            replicas: r.replicas,
            updated_replicas: r.updated_replicas,
            available_replicas: r.available_replicas,
            revision: r.revision,
            complete: r.complete,
            failure: r.failure,
        }
    }
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

    /// The scripted answer to an allowed call, when a harness scripts them.
    fn scripted<T: serde::de::DeserializeOwned>(&self, line: &str) -> Option<Result<T, HostError>> {
        super::effects::scripted(self.effects.as_ref(), "cluster", line)
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
        if c.effects.is_some() {
            let v: serde_json::Value = serde_saphyr::from_str(&manifest).unwrap_or_default();
            let line = format!(
                "apply {ns} {}/{}",
                v["kind"].as_str().unwrap_or("?"),
                v["metadata"]["name"].as_str().unwrap_or("?")
            );
            if let Some(answer) = c.scripted(&line) {
                return Ok(answer.map(json_text));
            }
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
        if let Some(answer) = c.scripted(&format!("get {ns} {api_version} {kind}/{name}")) {
            return Ok(answer.map(|v: serde_json::Value| (!v.is_null()).then(|| json_text(v))));
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
        if let Some(answer) = c.scripted(&format!("delete {ns} {api_version} {kind}/{name}")) {
            return Ok(answer);
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
        if let Some(answer) =
            c.scripted::<ScriptedRollout>(&format!("rollout-status {ns} {deployment}"))
        {
            return Ok(answer.map(Rollout::from));
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
        if let Some(answer) = c.scripted(&format!("rollback {ns} {deployment}")) {
            return Ok(answer);
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
