//! Running host programs for a stage: only programs granted by name
//! (`permissions.exec`), inside the workspace, with a cleared environment (PATH,
//! a private TMPDIR, the granted variables, and what the plugin passes), output
//! streamed into the stage log. The program runs as a host process, outside the
//! WebAssembly sandbox, so the kernel confines it instead ([`crate::sandbox`]):
//! it reaches the workspace (writable only with `workspace: write`), its temp
//! dir, the system, its own installation and the paths granted with
//! `exec-read` / `exec-write`; TCP only with `exec-network`; and nothing it
//! starts outlives it.

use super::log::StageLog;
use super::{Subject, configure_names};
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use crate::report::Level;
use crate::runtime::bindings::exec::{Command, ExitStatus};
use crate::runtime::bindings::types::HostError;
use crate::sandbox::{self, Support, cgroup::StageCgroup, landlock, loader, spawn};
use anyhow::Context;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of each output stream is returned to the plugin.
const TAIL_BYTES: usize = 64 * 1024;
/// A line longer than this is cut into pieces for the log.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct ExecGrant {
    pub programs: Vec<String>,
    /// Extra paths the programs may read (and execute), as written and expanded.
    pub read: Vec<(String, PathBuf)>,
    /// Extra paths the programs may write; made as directories when missing.
    pub write: Vec<(String, PathBuf)>,
    /// TCP connect and bind are allowed.
    pub network: bool,
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
        let mut paths = |list: &[serde_saphyr::Spanned<String>], name: &str| {
            let mut out: Vec<(String, PathBuf)> = vec![];
            for (i, item) in list.iter().enumerate() {
                match expand_path(&item.value, &file.dir()) {
                    Ok(p) if out.iter().any(|(_, q)| *q == p) => {}
                    Ok(p) => out.push((item.value.clone(), p)),
                    Err((message, help)) => errors.push(file.error(
                        &item.referenced,
                        &format!("{field}.{name}[{i}]"),
                        message,
                        help,
                    )),
                }
            }
            out
        };
        let read = paths(&perms.exec_read, "exec-read");
        let write = paths(&perms.exec_write, "exec-write");
        let network = perms.exec_network.as_ref().is_some_and(|n| n.value);
        let programs = configure_names(file, &format!("{field}.exec"), &perms.exec, check, errors);
        if programs.is_empty() {
            let stray = [
                perms.exec_read.first().map(|s| (s.referenced, "exec-read")),
                perms
                    .exec_write
                    .first()
                    .map(|s| (s.referenced, "exec-write")),
                perms
                    .exec_network
                    .as_ref()
                    .map(|s| (s.referenced, "exec-network")),
            ];
            for (at, name) in stray.into_iter().flatten() {
                errors.push(file.error(
                    &at,
                    &format!("{field}.{name}"),
                    format!("`{name}` is for programs started through `exec`, but the stage is granted none"),
                    Some("grant the programs with `exec: [name]`, or remove this".into()),
                ));
            }
        }
        Self {
            programs,
            read,
            write,
            network,
        }
    }

    /// Lines for `plan` and `validate`.
    pub fn describe(&self) -> Vec<String> {
        if self.programs.is_empty() {
            return vec![];
        }
        let shown = |list: &[(String, PathBuf)]| -> String {
            list.iter()
                .map(|(written, p)| {
                    if Path::new(written) == p {
                        written.clone()
                    } else {
                        format!("{} ({written})", p.display())
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = vec![format!("exec: {}", self.programs.join(", "))];
        if !self.read.is_empty() {
            lines.push(format!("exec-read: {}", shown(&self.read)));
        }
        if !self.write.is_empty() {
            lines.push(format!("exec-write: {}", shown(&self.write)));
        }
        lines.push(format!(
            "exec-network: {}",
            if self.network { "TCP allowed" } else { "none" }
        ));
        lines.push(format!("exec confinement: {}", Support::get().describe()));
        lines
    }
}

/// Expand a path of `exec-read` / `exec-write`: `~` is the home directory,
/// `$NAME` and `${NAME}` are host environment variables, `${NAME:-default}`
/// falls back to `default` (which may start with `~`) when NAME is unset or
/// empty. A relative result is relative to the manifest's directory.
pub fn expand_path(text: &str, base: &Path) -> Result<PathBuf, (String, Option<String>)> {
    let home = || {
        std::env::var("HOME")
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                (
                    format!("`{text}` starts with `~`, but HOME is not set"),
                    None,
                )
            })
    };
    let tilde = |s: &str| -> Result<String, (String, Option<String>)> {
        if s == "~" {
            home()
        } else if let Some(rest) = s.strip_prefix("~/") {
            Ok(format!("{}/{rest}", home()?))
        } else {
            Ok(s.to_string())
        }
    };
    let mut out = String::new();
    let mut rest = tilde(text)?;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, default, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| (format!("`{text}`: `${{` without its `}}`"), None))?;
            let body = &inner[..end];
            match body.split_once(":-") {
                Some((n, d)) => (n.to_string(), Some(d.to_string()), end + 2),
                None => (body.to_string(), None, end + 2),
            }
        } else {
            let n: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let len = n.len();
            (n, None, len)
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((
                format!("`{text}`: `$` must be followed by a variable name"),
                None,
            ));
        }
        let value = match (std::env::var(&name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => tilde(&d)?,
            (None, None) => {
                return Err((
                    format!("`{text}` reads ${name}, which is not set"),
                    Some(format!(
                        "set {name}, or give a default: `${{{name}:-~/...}}`"
                    )),
                ));
            }
        };
        out.push_str(&value);
        rest = after[len..].to_string();
    }
    out.push_str(&rest);
    if out.is_empty() || out.contains('\0') {
        return Err((format!("`{text}` is not a path"), None));
    }
    let path = PathBuf::from(&out);
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err((
            format!("`{text}` contains `..`"),
            Some("write the directory itself".into()),
        ));
    }
    Ok(if path.is_absolute() {
        path
    } else {
        base.join(path)
    })
}

/// The confinement of one stage's programs, made on the stage's first exec and
/// shared by all of them; dropping it kills whatever is left of them.
struct Confinement {
    /// The Landlock ruleset; `None` when the user opted out.
    ruleset: Option<OwnedFd>,
    cgroup: Option<StageCgroup>,
    /// The stage's private TMPDIR, removed at the end.
    tmp: PathBuf,
    pid_namespace: sandbox::spawn::PidNamespace,
    net_namespace: bool,
    /// No unix sockets, where Landlock cannot filter their paths.
    seccomp: Option<sandbox::seccomp::Filter>,
}

impl Drop for Confinement {
    fn drop(&mut self) {
        // The cgroup's own drop kills what is left before the temp dir goes.
        self.cgroup.take();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Per-instance state of the exec capability.
pub struct ExecState {
    pub grant: ExecGrant,
    pub subject: Subject,
    /// Canonical workspace path.
    pub workspace: PathBuf,
    /// Whether the stage may write the workspace (its programs too).
    pub workspace_writable: bool,
    /// Granted host variables with their values.
    pub env: Vec<(String, String)>,
    pub log: Arc<StageLog>,
    /// The run, which names the stage's cgroup.
    pub run_id: String,
    /// `limits.processes`.
    pub processes: u64,
    /// Set by `gantry plugins test`: answers (or records) allowed runs.
    pub effects: Option<Arc<dyn super::effects::Effects>>,
    confinement: Mutex<Option<Arc<Confinement>>>,
}

impl ExecState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        grant: ExecGrant,
        subject: Subject,
        workspace: PathBuf,
        workspace_writable: bool,
        env: Vec<(String, String)>,
        log: Arc<StageLog>,
        run_id: String,
        processes: u64,
    ) -> Self {
        Self {
            grant,
            subject,
            workspace,
            workspace_writable,
            env,
            log,
            run_id,
            processes,
            effects: None,
            confinement: Mutex::new(None),
        }
    }

    /// The stage's confinement, made on first use.
    fn confinement(&self, confine: bool) -> anyhow::Result<Arc<Confinement>> {
        let mut slot = self.confinement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let support = Support::get();
        let tmp = make_private_tmp(&self.run_id, &self.subject.name)?;
        let mut policy = landlock::Policy {
            read: landlock::system_read(),
            write: vec![tmp.clone()],
            devices: landlock::system_devices(),
            network: self.grant.network,
        };
        if self.workspace_writable {
            policy.write.push(self.workspace.clone());
        } else {
            policy.read.push(self.workspace.clone());
        }
        let path = host_path();
        for program in &self.grant.programs {
            if let Some(exe) = loader::find_on_path(program, &path) {
                policy.read.extend(loader::installation(&exe));
            }
        }
        policy
            .read
            .extend(self.grant.read.iter().map(|(_, p)| p.clone()));
        for (_, p) in &self.grant.write {
            std::fs::create_dir_all(p)
                .with_context(|| format!("creating exec-write directory {}", p.display()))?;
            policy.write.push(p.clone());
        }
        let ruleset = if confine {
            Some(landlock::ruleset(&policy)?)
        } else {
            None
        };
        let cgroup = match &support.cgroup {
            Some(root) => Some(StageCgroup::create(
                root,
                &self.run_id,
                &self.subject.name,
                self.processes,
            )?),
            None => None,
        };
        let c = Arc::new(Confinement {
            ruleset,
            cgroup,
            tmp,
            pid_namespace: support.pid_namespace,
            // Without Landlock's TCP rules (ABI 4), an empty network namespace.
            net_namespace: confine
                && !self.grant.network
                && support.landlock_abi < 4
                && support.pid_namespace != sandbox::spawn::PidNamespace::No,
            seccomp: (confine && !self.grant.network && support.landlock_abi < 9)
                .then(sandbox::seccomp::Filter::new),
        });
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Refuse a call that no grant can allow: recorded for the user, returned
    /// to the plugin.
    fn refuse(&self, why: String) -> HostError {
        let message = format!("stage `{}` is not allowed {why}", self.subject.name);
        self.subject.denials.record(message.clone());
        HostError::Denied(message)
    }

    pub async fn run(&self, cmd: Command) -> Result<ExitStatus, HostError> {
        self.check(&cmd)?;
        let Some(effects) = &self.effects else {
            return self.run_checked(cmd).await;
        };
        if let Some(answer) = effects.exec(&cmd) {
            return answer;
        }
        let result = self.run_checked(cmd.clone()).await;
        effects.saw_exec(&cmd, &result);
        result
    }

    /// Refuse a program that is not granted, variables never passed, or a
    /// working directory outside the workspace.
    fn check(&self, cmd: &Command) -> Result<(), HostError> {
        if !self.grant.programs.contains(&cmd.program) {
            // Grants are names, so a path is suggested as its file name.
            let name = cmd.program.rsplit('/').next().unwrap_or(&cmd.program);
            let grant = if name.is_empty() || name.chars().any(char::is_whitespace) {
                "exec: [<program name>]".to_string()
            } else {
                format!("exec: [{name}]")
            };
            let message = self
                .subject
                .deny("to run", &format!("`{}`", cmd.program), &grant);
            return Err(HostError::Denied(message));
        }
        if let Some((name, _)) = cmd.env.iter().find(|(k, _)| loader::refused(k)) {
            return Err(self.refuse(format!(
                "to pass `{name}` to `{}`: variables that change how programs are loaded \
                 ({}) are never passed",
                cmd.program,
                loader::refused_in_words()
            )));
        }
        self.resolve_cwd(cmd.cwd.as_deref())?;
        Ok(())
    }

    /// Run a program that passed [`ExecState::check`] on the host.
    async fn run_checked(&self, cmd: Command) -> Result<ExitStatus, HostError> {
        let confine = Support::get()
            .confine()
            .map_err(|why| self.refuse(format!("to run `{}`: {why}", cmd.program)))?;
        let path = host_path();
        let exe = loader::find_on_path(&cmd.program, &path).ok_or_else(|| {
            HostError::Failed(format!(
                "`{}` is granted but not found on the host's PATH (relative entries are skipped)",
                cmd.program
            ))
        })?;
        let cwd = self.resolve_cwd(cmd.cwd.as_deref())?;
        let confinement = self
            .confinement(confine)
            .map_err(|e| HostError::Failed(format!("cannot confine `{}`: {e:#}", cmd.program)))?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path.to_string_lossy().into_owned()),
            ("TMPDIR".into(), confinement.tmp.display().to_string()),
        ];
        let mut set = |k: &str, v: &str| {
            env.retain(|(e, _)| e != k);
            env.push((k.to_string(), v.to_string()));
        };
        for (k, v) in self.env.iter().filter(|(k, _)| k != "TMPDIR") {
            set(k, v);
        }
        for (k, v) in &cmd.env {
            set(k, v);
        }
        let mut argv = vec![cmd.program.clone()];
        argv.extend(cmd.args.iter().cloned());
        let request = spawn::Request {
            exe: &exe,
            argv: &argv,
            env: &env,
            cwd: &cwd,
            landlock: confinement.ruleset.as_ref().map(|f| f.as_fd()),
            cgroup: confinement.cgroup.as_ref().map(|c| c.procs_fd().as_fd()),
            pid_namespace: confinement.pid_namespace,
            net_namespace: confinement.net_namespace,
            nproc: confinement.cgroup.is_none().then_some(self.processes),
            seccomp: confinement.seccomp.as_ref(),
        };
        let started = Instant::now();
        let spawned = spawn::spawn(&request)
            .map_err(|e| HostError::Failed(format!("cannot start `{}`: {e}", cmd.program)))?;
        let mut child = spawned.child;
        self.log.write(
            Level::Debug,
            &format!("$ {} {}", cmd.program, cmd.args.join(" ")),
        );

        let pump_out = pump(spawned.stdout, Level::Info, &self.log);
        let pump_err = pump(spawned.stderr, Level::Info, &self.log);
        let limit = cmd
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::MAX);
        let work = async {
            let (out, err, status) = tokio::join!(pump_out, pump_err, child.wait());
            (out, err, status)
        };
        let outcome = tokio::time::timeout(limit, work).await;
        // Whatever the program left running dies with it (its PID namespace).
        child.kill();
        let (out, err, status, timed_out) = match outcome {
            Ok((out, err, status)) => (out, err, Some(status), false),
            Err(_) => (String::new(), String::new(), None, true),
        };
        if self.log.flooded() {
            return Err(HostError::Failed(format!(
                "`{}` wrote more output than the stage's log cap allows; it was stopped",
                cmd.program
            )));
        }
        let code = match status {
            Some(Ok(code)) => code,
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

/// The host's PATH without relative or empty entries, which would resolve
/// against the program's working directory (the workspace).
fn host_path() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::env::split_paths(&path).filter(|p| p.is_absolute()))
        .unwrap_or_default()
}

/// A fresh directory only this stage's programs use as TMPDIR (mode 0700).
fn make_private_tmp(run_id: &str, stage: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let dir = base.join(format!(
            "gantry-{run_id}-{stage}-{}-{n}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating temp dir {}", dir.display()));
            }
        }
    }
    anyhow::bail!("cannot create a temp dir in {}", base.display())
}

/// Remove the temp dirs an earlier gantry made for `stage` of `run_id` and
/// could not remove because it was killed; `gantry resume` calls this.
pub fn remove_stale_tmp(run_id: &str, stage: &str) {
    let prefix = format!("gantry-{run_id}-{stage}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // `<pid>-<n>` exactly, so that stage `a` never takes stage `a-b`'s.
        let ours = rest.split_once('-').is_some_and(|(pid, n)| {
            !pid.is_empty()
                && !n.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && n.bytes().all(|b| b.is_ascii_digit())
        });
        if ours {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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

impl crate::runtime::bindings::exec::Host for crate::runtime::state::StageState {
    async fn run(&mut self, cmd: Command) -> wasmtime::Result<Result<ExitStatus, HostError>> {
        Ok(self.exec.run(cmd).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn exec_paths_expand_home_variables_and_defaults() {
        let base = Path::new("/manifest/dir");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            expand_path("~/.rustup", base).unwrap(),
            Path::new(&home).join(".rustup")
        );
        assert_eq!(
            expand_path("$HOME/x", base).unwrap(),
            Path::new(&home).join("x")
        );
        assert_eq!(
            expand_path("${HOME}/x", base).unwrap(),
            Path::new(&home).join("x")
        );
        assert_eq!(
            expand_path("${GANTRY_TEST_SURELY_UNSET:-~/.cargo}/registry", base).unwrap(),
            Path::new(&home).join(".cargo/registry")
        );
        assert_eq!(
            expand_path("cache", base).unwrap(),
            Path::new("/manifest/dir/cache")
        );
        let (err, help) = expand_path("$GANTRY_TEST_SURELY_UNSET/x", base).unwrap_err();
        assert!(
            err.contains("reads $GANTRY_TEST_SURELY_UNSET, which is not set"),
            "{err}"
        );
        assert!(help.unwrap().contains("${GANTRY_TEST_SURELY_UNSET:-~/...}"));
        assert!(
            expand_path("/a/../etc", base)
                .unwrap_err()
                .0
                .contains("`..`")
        );
        assert!(expand_path("${HOME", base).is_err());
    }

    fn plan_errors(permissions: &str) -> String {
        let text = format!(
            "pipeline: p\nstages:\n  - name: a\n    uses: command\n    with: {{ steps: [{{ run: [cargo] }}] }}\n    permissions: {permissions}\n"
        );
        let file = crate::manifest::ManifestFile::parse(Path::new("pipeline.yaml"), text).unwrap();
        match crate::plan::Plan::new(&file, None) {
            Ok(plan) => format!("ok: {:?}", plan.stages[0].grants.describe()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn exec_grants_are_checked_with_file_line_and_field() {
        let err = plan_errors("{ exec: [cargo], exec-read: [\"$GANTRY_TEST_SURELY_UNSET/x\"] }");
        assert!(
            err.contains("pipeline.yaml:6:47: stages[0].permissions.exec-read[0]: `$GANTRY_TEST_SURELY_UNSET/x` reads"),
            "{err}"
        );
        let err = plan_errors("{ exec-write: [/tmp/x] }");
        assert!(
            err.contains("stages[0].permissions.exec-write: `exec-write` is for programs started through `exec`, but the stage is granted none"),
            "{err}"
        );
        let ok = plan_errors("{ exec: [cargo], exec-read: [/opt/tool], exec-network: true }");
        assert!(ok.contains("exec-read: /opt/tool"), "{ok}");
        assert!(ok.contains("exec-network: TCP allowed"), "{ok}");
        assert!(ok.contains("exec confinement: "), "{ok}");
    }
}
