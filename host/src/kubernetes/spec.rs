//! What passes between the host and a stage's pod: the [`StageSpec`] (in the
//! stage's Kubernetes Secret, mounted only into its pod) and the
//! [`StageReport`] (in the container's termination message, or spilled into
//! the workspace volume when it does not fit).

use crate::journal::ArtifactRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The one format version both sides speak; a pod running another gantry
/// refuses the spec rather than misread it.
pub const SPEC_VERSION: u32 = 1;

/// Where the spec is mounted in the pod (a Secret volume, key `spec.json`).
pub const SPEC_DIR: &str = "/var/run/gantry";
pub const SPEC_KEY: &str = "spec.json";
/// Where the workspace claim is mounted in the pod.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Kubernetes reads at most this much of a termination message.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// One stage attempt, as the host decided it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StageSpec {
    pub version: u32,
    pub run_id: String,
    pub pipeline: String,
    pub environment: String,
    pub stage: String,
    pub attempt: u32,
    /// The manifest, relative to the workspace; the worker plans the same
    /// manifest (so the same grants and limits apply) and refuses it unless its
    /// sha256 is `manifest-sha256`.
    pub manifest: String,
    pub manifest_sha256: String,
    /// The plugin the host checked; the worker refuses any other bytes.
    pub plugin_digest: String,
    /// The stage's config, its expressions resolved by the host.
    pub config: String,
    /// The artifacts and outputs of the stages it needs.
    pub inputs: Vec<ArtifactRecord>,
    pub upstream: Vec<(String, Vec<(String, String)>)>,
    /// The values of the secrets the stage is granted, and only those.
    pub secrets: BTreeMap<String, String>,
    /// The host environment variables the stage is granted (`permissions.env`),
    /// with the host's values.
    pub env: BTreeMap<String, String>,
    /// The stage's wall-clock limit (ms); the Job's `activeDeadlineSeconds`
    /// enforces it, the worker's own timer is only a backstop behind it.
    pub timeout_ms: u64,
}

/// How the stage ended, as the worker saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StageReport {
    /// `succeeded`, or the failure's kind (`failed`, `transient`, `denied`,
    /// `invalid-config`, `stopped`, `timeout`, `setup`).
    pub status: String,
    /// The summary on success; the failure's own message otherwise (not yet
    /// prefixed with the stage, as [`crate::runtime::Failure::message`] does).
    pub message: String,
    #[serde(default)]
    pub outputs: Vec<(String, String)>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRecord>,
    #[serde(default)]
    pub denials: Vec<String>,
}

/// What the termination message holds when the report is too big for it: a
/// file in the workspace volume and the sha256 the host checks it against
/// (a stage that can write the workspace cannot forge the message).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Spilled {
    pub spilled: String,
    pub sha256: String,
}

/// The termination message: the report itself, or where it was spilled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Message {
    Spilled(Spilled),
    Report(StageReport),
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Where, relative to the workspace, a report too big for the termination
/// message goes.
pub fn spill_path(run_id: &str, stage: &str, attempt: u32) -> String {
    format!(".gantry/kube-results/{run_id}/{stage}-{attempt}.json")
}

impl StageReport {
    /// The termination message for this report: itself when it fits,
    /// otherwise a pointer to `spill` (written by `write_spill`).
    pub fn message(
        &self,
        spill: &str,
        write_spill: impl FnOnce(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        let json = serde_json::to_string(self)?;
        if json.len() <= TERMINATION_MESSAGE_MAX {
            return Ok(json);
        }
        write_spill(json.as_bytes())?;
        Ok(serde_json::to_string(&Message::Spilled(Spilled {
            spilled: spill.to_string(),
            sha256: sha256(json.as_bytes()),
        }))?)
    }
}

/// Read a termination message back: the report, reading a spilled one with
/// `read` (workspace-relative path) and checking its digest.
pub fn read_message(
    message: &str,
    read: impl FnOnce(&str) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<StageReport> {
    use anyhow::Context;
    let parsed: Message = serde_json::from_str(message.trim()).with_context(|| {
        format!(
            "the termination message is not a gantry stage report: {:?}",
            message.chars().take(200).collect::<String>()
        )
    })?;
    match parsed {
        Message::Report(r) => Ok(r),
        Message::Spilled(s) => {
            if s.spilled.split('/').any(|c| c == ".." || c.is_empty()) {
                anyhow::bail!(
                    "the spilled report path `{}` leaves the workspace",
                    s.spilled
                );
            }
            let bytes = read(&s.spilled)
                .with_context(|| format!("reading the spilled report {}", s.spilled))?;
            let digest = sha256(&bytes);
            if digest != s.sha256 {
                anyhow::bail!(
                    "the spilled report {} has digest {digest}, but the pod reported {}: it \
                     was changed after the stage ended",
                    s.spilled,
                    s.sha256
                );
            }
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the spilled report {} is not a report", s.spilled))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outputs: usize) -> StageReport {
        StageReport {
            status: "succeeded".into(),
            message: "ok".into(),
            outputs: (0..outputs)
                .map(|i| (format!("k{i}"), "v".repeat(100)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn small_reports_travel_in_the_message() {
        let r = report(3);
        let m = r.message("x.json", |_| panic!("nothing to spill")).unwrap();
        assert!(m.len() <= TERMINATION_MESSAGE_MAX);
        assert_eq!(read_message(&m, |_| panic!("nothing spilled")).unwrap(), r);
    }

    #[test]
    fn big_reports_spill_and_are_checked() {
        let r = report(100);
        let mut file = vec![];
        let m = r
            .message("a/b.json", |b| {
                file = b.to_vec();
                Ok(())
            })
            .unwrap();
        assert!(m.len() < 200, "{m}");
        let back = read_message(&m, |p| {
            assert_eq!(p, "a/b.json");
            Ok(file.clone())
        })
        .unwrap();
        assert_eq!(back, r);
        let mut forged = file.clone();
        forged[20] ^= 1;
        let err = read_message(&m, |_| Ok(forged)).unwrap_err().to_string();
        assert!(err.contains("changed after the stage ended"), "{err}");
        let escape = r#"{"spilled":"../x","sha256":"sha256:00"}"#;
        assert!(read_message(escape, |_| panic!()).is_err());
    }
}
