//! Running host programs for a stage: only programs granted by name
//! (`permissions.exec`), inside the workspace, with a cleared environment (PATH,
//! the granted variables, and what the plugin passes), output streamed into the
//! stage log. The program runs as a host process, outside the WebAssembly
//! sandbox: granting it is a deliberate act, and `plan` shows it.

use super::log::StageLog;
use super::{Subject, configure_names};
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use crate::report::Level;
use crate::runtime::bindings::exec::{Command, ExitStatus};
use crate::runtime::bindings::types::HostError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of each output stream is returned to the plugin.
const TAIL_BYTES: usize = 64 * 1024;
/// A line longer than this is cut into pieces for the log.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct ExecGrant {
    pub programs: Vec<String>,
}

impl ExecGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let check = |name: &str| {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
                Err((format!("`{name}` is not a program name"), None))
            } else if name.contains('/') {
                Err((
                    format!("`{name}` is a path; programs are granted by name"),
                    Some("write the program's name; gantry looks it up on the host's PATH".into()),
                ))
            } else {
                Ok(())
            }
        };
        Self {
            programs: configure_names(file, &format!("{field}.exec"), &perms.exec, check, errors),
        }
    }
}

/// Per-instance state of the exec capability.
pub struct ExecState {
    pub grant: ExecGrant,
    pub subject: Subject,
    /// Canonical workspace path.
    pub workspace: PathBuf,
    /// Granted host variables with their values.
    pub env: Vec<(String, String)>,
    pub log: Arc<StageLog>,
}

impl ExecState {
    pub async fn run(&self, cmd: Command) -> Result<ExitStatus, HostError> {
        if !self.grant.programs.contains(&cmd.program) {
            let message = self.subject.deny(
                "to run",
                &format!("`{}`", cmd.program),
                &format!("exec: [{}]", cmd.program),
            );
            return Err(HostError::Denied(message));
        }
        let exe = find_on_path(&cmd.program).ok_or_else(|| {
            HostError::Failed(format!(
                "`{}` is granted but not found on the host's PATH",
                cmd.program
            ))
        })?;
        let cwd = self.resolve_cwd(cmd.cwd.as_deref())?;
        let mut child = tokio::process::Command::new(&exe);
        child
            .args(&cmd.args)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .envs(cmd.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            // Own process group, so that a timeout kills the whole tree.
            .process_group(0);
        let started = Instant::now();
        let mut child = child
            .spawn()
            .map_err(|e| HostError::Failed(format!("cannot start `{}`: {e}", cmd.program)))?;
        let group = GroupKiller(child.id());
        self.log.write(
            Level::Debug,
            &format!("$ {} {}", cmd.program, cmd.args.join(" ")),
        );

        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let pump_out = pump(stdout, Level::Info, &self.log);
        let pump_err = pump(stderr, Level::Info, &self.log);
        let limit = cmd
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::MAX);
        let work = async {
            let (out, err, status) = tokio::join!(pump_out, pump_err, child.wait());
            (out, err, status)
        };
        let (out, err, status, timed_out) = match tokio::time::timeout(limit, work).await {
            Ok((out, err, status)) => (out, err, Some(status), false),
            Err(_) => {
                group.kill();
                (String::new(), String::new(), None, true)
            }
        };
        group.kill();
        if self.log.flooded() {
            return Err(HostError::Failed(format!(
                "`{}` wrote more output than the stage's log cap allows; it was stopped",
                cmd.program
            )));
        }
        let code = match status {
            Some(Ok(s)) => s.code(),
            Some(Err(e)) => {
                return Err(HostError::Failed(format!(
                    "waiting for `{}`: {e}",
                    cmd.program
                )));
            }
            None => None,
        };
        Ok(ExitStatus {
            code,
            timed_out,
            stdout: out,
            stderr: err,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The working directory: the workspace, or a directory inside it.
    fn resolve_cwd(&self, cwd: Option<&str>) -> Result<PathBuf, HostError> {
        super::workspace::resolve_inside(&self.workspace, cwd.unwrap_or("."))
            .map_err(|e| HostError::Invalid(format!("cwd {e}")))
    }
}

/// The first executable file named `program` on the host's PATH.
fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Stream a child's output into the stage log line by line; returns its tail.
async fn pump(mut reader: impl AsyncRead + Unpin, level: Level, log: &StageLog) -> String {
    let mut tail = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let emit = |bytes: &[u8], tail: &mut String| {
        let text = String::from_utf8_lossy(bytes);
        let line = log.write(level, text.trim_end_matches('\r'));
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > 2 * TAIL_BYTES {
            let mut cut = tail.len() - TAIL_BYTES;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    };
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            emit(&pending[..i], &mut tail);
            pending.drain(..=i);
        }
        if pending.len() > MAX_LINE {
            emit(&pending, &mut tail);
            pending.clear();
        }
        if log.flooded() {
            break;
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut tail);
    }
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
    tail
}

/// Kills a child's whole process group, also when the stage is cancelled.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // SAFETY: killpg only sends a signal; ESRCH (already gone) is fine.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

impl crate::runtime::bindings::exec::Host for crate::runtime::state::StageState {
    async fn run(&mut self, cmd: Command) -> wasmtime::Result<Result<ExitStatus, HostError>> {
        Ok(self.exec.run(cmd).await)
    }
}
