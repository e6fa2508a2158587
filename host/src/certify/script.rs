//! The two [`Effects`] of the harness: a [`Script`] answers every allowed call
//! from the case and reaches nothing; a [`Recorder`] lets the calls happen and
//! keeps what came back. Both log the calls in order.

use super::case::{CallResult, CallScript, ExecResult, ExecScript, HttpResponse, HttpScript};
use crate::capabilities::effects::{Effects, HttpCall, HttpReply};
use crate::runtime::bindings::exec::{Command, ExitStatus};
use crate::runtime::bindings::types::HostError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A call as listed in `expect.calls`.
pub fn http_line(call: &HttpCall) -> String {
    format!("{} {}", call.method, call.url)
}

pub fn exec_line(cmd: &Command) -> String {
    let mut argv = vec![cmd.program.as_str()];
    argv.extend(cmd.args.iter().map(String::as_str));
    format!("exec {}", argv.join(" "))
}

fn argv(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.program.clone())
        .chain(cmd.args.iter().cloned())
        .collect()
}

/// Answers from the case: each entry serves its answers in turn, the last
/// one repeating. A call no entry matches fails, and fails the case.
pub struct Script {
    http: Vec<HttpScript>,
    exec: Vec<ExecScript>,
    /// (capability, entry): cluster and engine calls.
    calls: Vec<(&'static str, CallScript)>,
    /// The case's workspace, and whether the stage may write it (and so
    /// its programs' scripted writes happen).
    workspace: PathBuf,
    writable: bool,
    state: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// How many times each http / exec entry has answered.
    http_used: Vec<usize>,
    exec_used: Vec<usize>,
    calls_used: Vec<usize>,
    calls: Vec<String>,
    /// Calls no entry answers, said in words.
    unmatched: Vec<String>,
}

impl Script {
    pub fn new(case: &super::case::Case, workspace: &Path, writable: bool) -> Self {
        let calls: Vec<(&'static str, CallScript)> = (case.cluster.iter().map(|c| ("cluster", c)))
            .chain(case.engine.iter().map(|c| ("engine", c)))
            .map(|(k, c)| (k, c.clone()))
            .collect();
        let seen = Seen {
            http_used: vec![0; case.http.len()],
            exec_used: vec![0; case.exec.len()],
            calls_used: vec![0; calls.len()],
            ..Seen::default()
        };
        Self {
            http: case.http.clone(),
            exec: case.exec.clone(),
            calls,
            workspace: workspace.to_path_buf(),
            writable,
            state: Mutex::new(seen),
        }
    }

    /// The calls made, and the ones nothing answered.
    pub fn finish(&self) -> (Vec<String>, Vec<String>) {
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut seen.calls),
            std::mem::take(&mut seen.unmatched),
        )
    }
}

/// The next answer of an entry used `used` times: in turn, the last repeating.
fn next<T>(answers: &[T], used: &mut usize) -> Option<usize> {
    let i = (*used).min(answers.len().checked_sub(1)?);
    *used += 1;
    Some(i)
}

impl Effects for Script {
    fn http(&self, call: &HttpCall) -> Option<Result<HttpReply, String>> {
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let line = http_line(call);
        seen.calls.push(line.clone());
        let entry = self.http.iter().position(|s| {
            s.request.method.eq_ignore_ascii_case(&call.method) && s.request.url == call.url
        });
        let answer = entry.and_then(|e| {
            let i = next(&self.http[e].responses, &mut seen.http_used[e])?;
            Some(&self.http[e].responses[i])
        });
        Some(match answer {
            Some(HttpResponse {
                error: Some(why), ..
            }) => Err(why.clone()),
            Some(r) => Ok(reply(r)),
            None => {
                let why = format!("no scripted response for `{line}`");
                seen.unmatched.push(why.clone());
                Err(why)
            }
        })
    }

    fn exec(&self, cmd: &Command) -> Option<Result<ExitStatus, HostError>> {
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let line = exec_line(cmd);
        seen.calls.push(line.clone());
        let argv = argv(cmd);
        let entry = self.exec.iter().position(|s| s.run == argv);
        let answer = entry.and_then(|e| {
            let i = next(&self.exec[e].results, &mut seen.exec_used[e])?;
            Some(&self.exec[e].results[i])
        });
        if let Some(r) = answer
            && self.writable
        {
            for (path, content) in &r.writes {
                if let Err(e) = write_beneath(&self.workspace, path, content.as_bytes()) {
                    return Some(Err(HostError::Failed(format!(
                        "scripted write of `{path}` by `{line}`: {e:#}"
                    ))));
                }
            }
        }
        Some(match answer {
            Some(r) => Ok(ExitStatus {
                code: r.code,
                timed_out: r.timed_out,
                stdout: r.stdout.clone(),
                stderr: r.stderr.clone(),
                duration_ms: r.duration_ms,
            }),
            None => {
                let why = format!("no scripted result for `{line}`");
                seen.unmatched.push(why.clone());
                Err(HostError::Failed(why))
            }
        })
    }

    fn call(&self, capability: &str, line: &str) -> Option<Result<serde_json::Value, HostError>> {
        Some(self.answer_call(capability, line))
    }
}

impl Script {
    /// The answer of the cluster and engine entries to `capability line`.
    fn answer_call(&self, capability: &str, line: &str) -> Result<serde_json::Value, HostError> {
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let shown = format!("{capability} {line}");
        seen.calls.push(shown.clone());
        let entry = self
            .calls
            .iter()
            .position(|(k, c)| *k == capability && c.call == line);
        let answer = entry.and_then(|e| {
            let i = next(&self.calls[e].1.results, &mut seen.calls_used[e])?;
            Some(&self.calls[e].1.results[i])
        });
        match answer {
            Some(CallResult::Ok(v)) => Ok(v.clone()),
            Some(CallResult::Failed(m)) => Err(HostError::Failed(m.clone())),
            Some(CallResult::Unavailable(m)) => Err(HostError::Unavailable(m.clone())),
            Some(CallResult::Invalid(m)) => Err(HostError::Invalid(m.clone())),
            None => {
                let why = format!("no scripted answer for `{shown}`");
                seen.unmatched.push(why.clone());
                Err(HostError::Failed(why))
            }
        }
    }
}

/// Write `content` to `rel` in `workspace`, never through a link the plugin
/// may have planted there.
fn write_beneath(workspace: &Path, rel: &str, content: &[u8]) -> anyhow::Result<()> {
    use crate::nofollow::{Modes, NoFollowDir};
    let rel = Path::new(rel);
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("not a file path"))?;
    let modes = Modes {
        dir: 0o755,
        file: 0o644,
    };
    let dir = NoFollowDir::open_beneath(
        workspace,
        rel.parent().unwrap_or(Path::new("")),
        true,
        modes,
    )?;
    dir.write_atomic(name, content)
}

/// Text files of the workspace (path: content), to see what a real program
/// wrote; links, large and binary files are left out.
fn text_files(workspace: &Path) -> BTreeMap<String, String> {
    const MAX: u64 = 1 << 20;
    let mut out = BTreeMap::new();
    let mut stack = vec![workspace.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file()
                && meta.len() <= MAX
                && out.len() < 1000
                && let (Ok(text), Ok(rel)) = (
                    std::fs::read_to_string(e.path()),
                    e.path().strip_prefix(workspace),
                )
            {
                out.insert(rel.to_string_lossy().into_owned(), text);
            }
        }
    }
    out
}

fn reply(r: &HttpResponse) -> HttpReply {
    HttpReply {
        status: r.status,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: r.body.clone().into_bytes(),
    }
}

/// Lets every call happen and keeps it, to be written as a case.
pub struct Recorder {
    workspace: PathBuf,
    /// The workspace's text files before the program now running started.
    before: Mutex<BTreeMap<String, String>>,
    state: Mutex<Recorded>,
}

#[derive(Default)]
pub struct Recorded {
    pub calls: Vec<String>,
    pub http: Vec<HttpScript>,
    pub exec: Vec<ExecScript>,
}

/// Headers that describe one connection, not the answer: left out of a case.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "date",
    "keep-alive",
    "transfer-encoding",
    "content-length",
];

impl Recorder {
    pub fn new(workspace: &Path) -> Self {
        Self {
            workspace: workspace.to_path_buf(),
            before: Mutex::default(),
            state: Mutex::default(),
        }
    }

    pub fn finish(&self) -> Recorded {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Effects for Recorder {
    fn http(&self, _: &HttpCall) -> Option<Result<HttpReply, String>> {
        None
    }

    fn exec(&self, _: &Command) -> Option<Result<ExitStatus, HostError>> {
        *self.before.lock().unwrap_or_else(|e| e.into_inner()) = text_files(&self.workspace);
        None
    }

    fn saw_http(&self, call: &HttpCall, reply: &Result<HttpReply, String>) {
        let mut rec = self.state.lock().unwrap_or_else(|e| e.into_inner());
        rec.calls.push(http_line(call));
        let response = match reply {
            Ok(reply) => HttpResponse {
                status: reply.status,
                headers: reply
                    .headers
                    .iter()
                    .filter(|(k, _)| !HOP_HEADERS.contains(&k.as_str()))
                    .cloned()
                    .collect(),
                body: String::from_utf8_lossy(&reply.body).into_owned(),
                error: None,
            },
            // No answer (connection refused, timeout): replayed as the same failure.
            Err(why) => HttpResponse {
                status: 0,
                headers: Default::default(),
                body: String::new(),
                error: Some(why.clone()),
            },
        };
        match rec
            .http
            .iter_mut()
            .find(|s| s.request.method == call.method && s.request.url == call.url)
        {
            Some(s) => s.responses.push(response),
            None => rec.http.push(HttpScript {
                request: super::case::HttpRequest {
                    method: call.method.clone(),
                    url: call.url.clone(),
                },
                responses: vec![response],
            }),
        }
    }

    fn saw_exec(&self, cmd: &Command, result: &Result<ExitStatus, HostError>) {
        let mut rec = self.state.lock().unwrap_or_else(|e| e.into_inner());
        rec.calls.push(exec_line(cmd));
        let Ok(status) = result else { return };
        let result = ExecResult {
            code: status.code,
            stdout: status.stdout.clone(),
            stderr: status.stderr.clone(),
            timed_out: status.timed_out,
            duration_ms: status.duration_ms,
            writes: {
                let before =
                    std::mem::take(&mut *self.before.lock().unwrap_or_else(|e| e.into_inner()));
                text_files(&self.workspace)
                    .into_iter()
                    .filter(|(path, text)| before.get(path) != Some(text))
                    .collect()
            },
        };
        let argv = argv(cmd);
        match rec.exec.iter_mut().find(|s| s.run == argv) {
            Some(s) => s.results.push(result),
            None => rec.exec.push(ExecScript {
                run: argv,
                results: vec![result],
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_in_turn_and_the_last_repeats() {
        let answers = ["429", "200"];
        let mut used = 0;
        let served: Vec<&str> = (0..4)
            .map(|_| answers[next(&answers, &mut used).unwrap()])
            .collect();
        assert_eq!(served, ["429", "200", "200", "200"]);
        assert_eq!(next::<&str>(&[], &mut 0), None);
    }
}
