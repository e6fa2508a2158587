//! The seam between a capability's checks and its effect on the outside world.
//!
//! Grant checks (and the denials they record) always run as written; only what
//! happens after them, the request sent or the program started, may be answered
//! by [`Effects`] instead. A normal run has none. `gantry plugins test` installs
//! a script (answers every call, touches nothing) or a recorder (lets the real
//! call happen and keeps what came back), see [`crate::certify`].

use crate::runtime::bindings::exec::{Command, ExitStatus};
use crate::runtime::bindings::types::HostError;
use std::sync::Arc;

/// An outgoing HTTP request, as the harness matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Upper-case, e.g. `GET`.
    pub method: String,
    /// The full URL the plugin asked for.
    pub url: String,
}

/// A whole HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Answers a stage's calls instead of the real world, or watches real ones.
pub trait Effects: Send + Sync {
    /// The answer to an allowed HTTP request, or `None` to send it for real.
    /// `Err` reaches the plugin as a failed request.
    fn http(&self, call: &HttpCall) -> Option<Result<HttpReply, String>>;

    /// The result of an allowed program run, or `None` to run it for real.
    fn exec(&self, cmd: &Command) -> Option<Result<ExitStatus, HostError>>;

    /// A real HTTP request was answered (only called after `http` gave `None`).
    fn saw_http(&self, _call: &HttpCall, _reply: &Result<HttpReply, String>) {}

    /// A real program ran (only called after `exec` gave `None`).
    fn saw_exec(&self, _cmd: &Command, _result: &Result<ExitStatus, HostError>) {}

    /// The answer to an allowed cluster or engine call (`capability`), said
    /// as `line` (e.g. `rollback team-a web`), as JSON; `None` to make it for real.
    fn call(&self, _capability: &str, _line: &str) -> Option<Result<serde_json::Value, HostError>> {
        None
    }
}

/// The scripted answer of `effects`, if any, to a `capability` call said as
/// `line`, read as the call's result type.
pub fn scripted<T: serde::de::DeserializeOwned>(
    effects: Option<&Arc<dyn Effects>>,
    capability: &str,
    line: &str,
) -> Option<Result<T, HostError>> {
    let answer = effects?.call(capability, line)?;
    Some(answer.and_then(|v| {
        serde_json::from_value(v).map_err(|e| {
            HostError::Invalid(format!(
                "the scripted answer to `{capability} {line}` does not fit: {e}"
            ))
        })
    }))
}
