//! Webhook intake: a delivery's headers and raw body, authenticated and turned
//! into push events. No HTTP server here (that is `gantry serve`'s job): these
//! functions take what the server received and say what it was.

pub mod azure_devops;
pub mod github;

use std::collections::BTreeSet;

/// A push, whichever service sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The repository's clone URL.
    pub repository: String,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub reference: String,
    /// The commit the ref pointed at before (all zeros for a new ref).
    pub before: String,
    /// The commit the ref points at now (all zeros for a deleted ref).
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    /// The pushed commits, as the sender lists them.
    pub commits: Vec<Commit>,
    /// The sender capped `commits`, so it is not the whole push.
    pub commits_truncated: bool,
    /// The commit `after` names, when the sender described it.
    pub head_commit: Option<Commit>,
    /// Who pushed, as the sender names them.
    pub pusher: String,
}

/// One pushed commit. The file lists are `None` when the sender gives none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub message: String,
    pub added: Option<Vec<String>>,
    pub removed: Option<Vec<String>>,
    pub modified: Option<Vec<String>>,
}

impl PushEvent {
    /// Every file the push changed, or `None` when the event cannot tell: a
    /// commit without file lists, a capped commit list, a forced push or a new
    /// ref (their lists leave out commits the old ref did not have), or no
    /// commits listed at all.
    pub fn changed_files(&self) -> Option<BTreeSet<String>> {
        if self.commits_truncated || self.forced || self.created || self.commits.is_empty() {
            return None;
        }
        let mut files = BTreeSet::new();
        for c in &self.commits {
            for list in [&c.added, &c.removed, &c.modified] {
                files.extend(list.as_ref()?.iter().cloned());
            }
        }
        Some(files)
    }

    /// The commit messages, newest last, for `run.commit-messages`.
    pub fn messages(&self) -> Vec<&str> {
        self.commits.iter().map(|c| c.message.as_str()).collect()
    }
}

/// What a delivery was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GitHub's hello when a hook is created: answer 200, do nothing.
    Ping,
    /// Pushes to consider (deleted refs already left out).
    Push(Vec<PushEvent>),
    /// Nothing to do, and why (another event type, a deleted ref).
    Ignored(String),
}

/// One authenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The dedupe key: a redelivery of the same event has the same one.
    pub id: String,
    pub outcome: Outcome,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// The sender did not prove it holds the secret: answer 401, queue nothing.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The delivery is authentic but not what the sender documents: answer 400.
    #[error("malformed delivery: {0}")]
    Malformed(String),
}

impl WebhookError {
    /// The HTTP status to answer with (never 410: Azure DevOps would disable
    /// the subscription).
    pub fn status(&self) -> u16 {
        match self {
            WebhookError::Unauthorized(_) => 401,
            WebhookError::Malformed(_) => 400,
        }
    }
}

/// Parse JSON into `T`, naming the field path of what was wrong.
fn parse_json<'a, T: serde::Deserialize<'a>>(
    what: &str,
    body: &'a [u8],
) -> Result<T, WebhookError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        WebhookError::Malformed(if path == "." {
            format!("{what}: {inner}")
        } else {
            format!("{what}: at `{path}`: {inner}")
        })
    })
}

/// A header's value as text; `None` when absent or not text.
fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An object id must be hex (SHA-1 or SHA-256) before it reaches git.
fn check_object_id(field: &str, id: &str) -> Result<(), WebhookError> {
    if matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(WebhookError::Malformed(format!(
            "`{field}` is `{}`, not a 40 or 64 digit hex object id",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// A ref must be a full ref name.
fn check_ref(field: &str, name: &str) -> Result<(), WebhookError> {
    if name.starts_with("refs/") && !name.contains("..") && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(WebhookError::Malformed(format!(
            "`{field}` is `{}`, not a ref such as `refs/heads/main`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}
