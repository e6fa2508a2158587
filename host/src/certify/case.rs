//! The case file of `gantry plugins test`: for each case, the stage's config
//! and grants, the workspace it starts with, the answers the host gives in
//! place of the outside world, and what must come out. Parsed with spans, so
//! that mistakes name the file and line.

use crate::manifest::{ManifestErrors, ManifestFile, Permissions, parse_yaml};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The plugin under test, relative to the case file; the command line's
    /// plugin wins.
    #[serde(default)]
    pub plugin: Option<String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Spanned<String>,
    /// The stage's name as the plugin sees it (`ctx.stage`, denial messages).
    #[serde(default = "default_stage")]
    pub stage: String,
    /// The stage's config, as under a manifest stage's `with:`.
    #[serde(default)]
    pub with: Option<Spanned<serde_json::Value>>,
    /// Grants, as under a manifest stage's `permissions:`.
    #[serde(default)]
    pub permissions: Permissions,
    /// Wall-clock limit, e.g. `30s` (default 60s).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub workspace: WorkspaceFiles,
    /// Secret values by name: a value, or `{ env: VARIABLE }`.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretValue>>,
    /// Host-kept state (`state` interface) before the run: key: text value.
    #[serde(default)]
    pub state: BTreeMap<String, String>,
    /// Outputs of earlier stages, by stage name (`ctx.upstream`).
    #[serde(default)]
    pub upstream: BTreeMap<String, BTreeMap<String, String>>,
    /// Answers to HTTP requests.
    #[serde(default)]
    pub http: Vec<HttpScript>,
    /// Results of programs run through `exec`.
    #[serde(default)]
    pub exec: Vec<ExecScript>,
    /// Answers to Kubernetes calls (`cluster` interface).
    #[serde(default)]
    pub cluster: Vec<CallScript>,
    /// Answers to container engine calls (`engine` interface).
    #[serde(default)]
    pub engine: Vec<CallScript>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_stage() -> String {
    "stage".into()
}

/// The files the workspace holds when the stage starts (path: content).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceFiles {
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SecretValue {
    /// From the host environment, so that the value is in no file.
    Env {
        env: String,
    },
    Value(String),
}

/// One request and its answers, one per matching request in turn; the last
/// answer repeats.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpScript {
    pub request: HttpRequest,
    pub responses: Vec<HttpResponse>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    #[serde(default = "get")]
    pub method: String,
    /// The full URL, compared as written after the plugin's.
    pub url: String,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpResponse {
    #[serde(default = "ok", skip_serializing_if = "is_zero")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// No response at all: the request fails with this, as when the server
    /// cannot be reached (`connection refused`, `connection timeout`, `DNS
    /// lookup timed out`, `connection terminated`, or any text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn ok() -> u16 {
    200
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// One command line and its results, one per matching run in turn; the last
/// result repeats.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecScript {
    /// Program and arguments, exactly as the plugin passes them.
    pub run: Vec<String>,
    pub results: Vec<ExecResult>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecResult {
    /// The exit code; absent when killed by a signal.
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub timed_out: bool,
    /// How long it ran, as the plugin is told (a recording keeps the real one).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub duration_ms: u64,
    /// Workspace files the program writes (path: content), written when the
    /// stage may write the workspace, as the real program could.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub writes: BTreeMap<String, String>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !b
}

/// One cluster or engine call and its answers, in turn, the last repeating.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallScript {
    /// The call as `expect.calls` lists it, without the capability: e.g.
    /// `rollback team-a web`, `get team-a v1 ConfigMap/settings`, `remove app-blue`.
    pub call: String,
    pub results: Vec<CallResult>,
}

/// A call's answer: its value (as JSON/YAML), or a host error of some kind.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum CallResult {
    Ok(serde_json::Value),
    Failed(String),
    Unavailable(String),
    Invalid(String),
}

/// How the stage must end: `success`, `failure` (any), or one kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    Failure,
    InvalidConfig,
    Denied,
    Transient,
    Failed,
    Stopped,
    Timeout,
    Setup,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::InvalidConfig => "invalid-config",
            Outcome::Denied => "denied",
            Outcome::Transient => "transient",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
            Outcome::Timeout => "timeout",
            Outcome::Setup => "setup",
        }
    }

    /// Whether a stage that ended as `kind` (`success` or a failure kind)
    /// meets this expectation.
    pub fn accepts(self, kind: &str) -> bool {
        match self {
            Outcome::Failure => kind != "success",
            other => other.as_str() == kind,
        }
    }
}

/// What must come out; what is left out is not checked.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// A substring of the summary (success) or of the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// These outputs with these values (others may be there too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, String>>,
    /// Artifacts returned, by name or path; one with a path must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<String>>,
    /// Every call to the outside world, in order: `GET https://...`,
    /// `exec cargo test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
    /// Every denial, each given by a part of its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denials: Option<Vec<String>>,
    /// Workspace files and their content after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// Host-kept state after the run: key: text value, or `null` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BTreeMap<String, Option<String>>>,
}

/// A parsed case file with its source, for errors that point into it.
pub struct Loaded {
    pub path: PathBuf,
    pub file: CaseFile,
    /// The same text as plain values, for `--record` to copy each case's
    /// config, grants and workspace as written.
    pub raw: serde_json::Value,
    /// To configure grants with the manifest's own checks and errors.
    pub as_manifest: ManifestFile,
}

impl Loaded {
    pub fn load(path: &Path) -> Result<Self, ManifestErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ManifestErrors(vec![crate::manifest::ManifestError::plain(format!(
                "cannot read case file {}: {e}",
                path.display()
            ))])
        })?;
        let source = Arc::new(text);
        let file: CaseFile = parse_yaml(path, &source)?;
        let raw: serde_json::Value = parse_yaml(path, &source)?;
        // Grants are checked by the manifest's code, whose errors point into a
        // ManifestFile: this one holds the case file's text and an empty pipeline.
        let mut as_manifest = ManifestFile::parse(path, "pipeline: certify\nstages: []\n".into())?;
        as_manifest.source = source;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            raw,
            as_manifest,
        })
    }
}
