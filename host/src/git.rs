//! Real git, through the `git` command line: what a remote's branches and tags
//! point at (polling), a fresh workspace at exactly one commit (each run), the
//! commits a push brought (`[skip ci]`, path filters, `run.commit-messages`),
//! and workspace retention.
//!
//! Everything that reaches git is checked first: URLs have a known shape and
//! never start with `-`, object ids are hex, and `--` / `--end-of-options`
//! separate options from operands. git runs with a cleared environment (no
//! inherited `GIT_*`, no system or global config), hooks disabled, no
//! credential prompts, and a timeout that kills its whole process group.

use crate::webhook::{Commit, PushEvent};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The id git uses for "no commit" (a created or deleted ref).
pub const ZERO_OID: &str = "0000000000000000000000000000000000000000";

/// How long a git command that works only on local files may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// At most this many commits of one push are listed, newest kept.
pub const MAX_COMMITS: usize = 1000;

/// The transports git may use (`GIT_ALLOW_PROTOCOL`): never `ext::`, which
/// runs commands.
const ALLOWED_PROTOCOLS: &str = "http:https:git:ssh:file";

/// What went wrong running git.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL was refused before git ran.
    #[error("`{url}` is not a repository URL gantry passes to git: {reason}")]
    BadUrl { url: String, reason: &'static str },
    /// An object id was refused before git ran.
    #[error("`{field}` is `{id}`, not a commit id (40 or 64 hex digits)")]
    BadObjectId { field: &'static str, id: String },
    /// The remote does not have the commit (or does not serve it).
    #[error("commit {commit} is not in {url}: {detail}")]
    CommitNotFound {
        url: String,
        commit: String,
        detail: String,
    },
    /// git did not finish in time; it and its children were killed.
    #[error("`git {command}` did not finish within {after:?}; it was killed")]
    Timeout { command: String, after: Duration },
    /// git ran and failed.
    #[error("`git {command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// A file system or process error around git.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GitError {
    let context = context.into();
    move |source| GitError::Io { context, source }
}

/// One branch or tag of a remote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteRef {
    /// The full ref, e.g. `refs/heads/main`, `refs/tags/v1`.
    pub name: String,
    /// The commit it names (annotated tags are peeled to their commit).
    pub oid: String,
}

/// A workspace checked out at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOut {
    /// The work tree (with its `.git`).
    pub dir: PathBuf,
    /// The commit `HEAD` is detached at, as git reports it.
    pub commit: String,
}

/// One commit of a push, oldest first in lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: String,
    /// The full message (subject, body, trailers), without the final newline.
    pub message: String,
    /// Files the commit added, deleted and modified, compared with its first
    /// parent (a rename is a deletion plus an addition; merges list none).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

impl From<CommitInfo> for Commit {
    fn from(c: CommitInfo) -> Self {
        Commit {
            id: c.id,
            message: c.message,
            added: Some(c.added),
            removed: Some(c.removed),
            modified: Some(c.modified),
        }
    }
}

/// Refuse a URL git would read as an option, a command-running transport
/// (`ext::`), or anything but `https://`, `http://`, `git://`, `ssh://`,
/// `file://`, scp-like `user@host:path`, or an absolute path.
pub fn check_url(url: &str) -> Result<(), GitError> {
    let bad = |reason| {
        Err(GitError::BadUrl {
            url: redact_url(url),
            reason,
        })
    };
    if url.is_empty() {
        return bad("it is empty");
    }
    if url.len() > 2048 {
        return bad("it is longer than 2048 characters");
    }
    if url.starts_with('-') {
        return bad("it starts with `-`, so git would read it as an option");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it contains whitespace or control characters");
    }
    if url.contains("::") {
        return bad("`transport::address` URLs run helper programs");
    }
    // The part naming user and host, which ssh would read as its own options.
    let authority = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "https" | "http" | "git" | "ssh" | "file") {
            return bad("the scheme is not https, http, git, ssh or file");
        }
        if rest.is_empty() {
            return bad("nothing follows the scheme");
        }
        rest.split('/').next().unwrap_or("")
    } else if url.starts_with('/') {
        ""
    } else if let Some((host, path)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        host
    } else {
        return bad("expected a URL such as https://host/repo.git, user@host:repo.git or /path");
    };
    if authority
        .split('@')
        .any(|part| part.starts_with('-') || part.starts_with("%2d") || part.starts_with("%2D"))
    {
        return bad("a user or host name starts with `-`");
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// An object id must be 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn check_oid(field: &'static str, id: &str) -> Result<(), GitError> {
    if matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(GitError::BadObjectId {
            field,
            id: id.chars().take(80).collect(),
        })
    }
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

/// Run `git args...` (in `dir` when given) and return its stdout.
async fn run(dir: Option<&Path>, args: &[&str], timeout: Duration) -> Result<Vec<u8>, GitError> {
    let command = args.join(" ");
    let mut cmd = tokio::process::Command::new("git");
    // Nothing of the service's environment reaches git but what it needs:
    // PATH to find its helpers and ssh, HOME and an ssh agent for ssh keys.
    cmd.env_clear();
    for key in ["PATH", "HOME", "SSH_AUTH_SOCK", "TMPDIR"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        // ssh must fail rather than ask for a password or a host key.
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "protocol.version=2",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "init.defaultBranch=main",
        ]);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the transport helpers
        // (git-remote-https, ssh) with it.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(io_error(format!("cannot run `git {command}`")))?;
    let pid = child.id();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let output = tokio::select! {
        out = &mut output => out.map_err(io_error(format!("waiting for `git {command}`")))?,
        _ = tokio::time::sleep(timeout) => {
            // The child is not reaped yet (its future is alive), so its pid
            // still names its group.
            if let Some(pgid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            return Err(GitError::Timeout { command, after: timeout });
        }
    };
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(GitError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// The branches and tags of the repository at `url` (`git ls-remote`), sorted
/// by name, annotated tags peeled to the commit they name.
pub async fn ls_remote(url: &str, timeout: Duration) -> Result<Vec<RemoteRef>, GitError> {
    check_url(url)?;
    let out = run(
        None,
        &["ls-remote", "--heads", "--tags", "--", url],
        timeout,
    )
    .await
    .map_err(|e| redact_error(e, url))?;
    let text = String::from_utf8_lossy(&out);
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut peeled: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some((oid, name)) = line.split_once('\t') else {
            continue;
        };
        if check_oid("oid", oid).is_err() {
            continue;
        }
        match name.strip_suffix("^{}") {
            Some(tag) => peeled.insert(tag.to_string(), oid.to_string()),
            None => refs.insert(name.to_string(), oid.to_string()),
        };
    }
    Ok(refs
        .into_iter()
        .map(|(name, oid)| RemoteRef {
            oid: peeled.remove(&name).unwrap_or(oid),
            name,
        })
        .collect())
}

/// A git error with the URL's password hidden.
fn redact_error(e: GitError, url: &str) -> GitError {
    let redacted = redact_url(url);
    if redacted == url {
        return e;
    }
    match e {
        GitError::Timeout { command, after } => GitError::Timeout {
            command: command.replace(url, &redacted),
            after,
        },
        GitError::Failed {
            command,
            status,
            stderr,
        } => GitError::Failed {
            command: command.replace(url, &redacted),
            status,
            stderr: stderr.replace(url, &redacted),
        },
        other => other,
    }
}

/// Check out `commit` of the repository at `url` into `dest`, a new (or empty)
/// directory: `git init`, fetch of that one commit, detached checkout.
///
/// The fetch is blobless (`--filter=blob:none`, where the server allows it):
/// the commit's history of commits and trees comes along, so
/// [`commit_messages`] can list what a push brought, but file contents only
/// for the checked-out tree. On failure `dest` is removed again, so a retry
/// starts clean. `timeout` bounds each git command.
pub async fn checkout(
    url: &str,
    commit: &str,
    dest: &Path,
    timeout: Duration,
) -> Result<CheckedOut, GitError> {
    check_url(url)?;
    check_oid("commit", commit)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_error(format!("cannot create {}", parent.display())))?;
    }
    match std::fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(dest)
                .map_err(io_error(format!("cannot read {}", dest.display())))?
                .next()
                .is_none();
            if !empty {
                return Err(GitError::Io {
                    context: format!("cannot check out into {}", dest.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the directory is not empty",
                    ),
                });
            }
        }
        Err(e) => return Err(io_error(format!("cannot create {}", dest.display()))(e)),
    }
    let result = checkout_into(url, commit, dest, timeout).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result.map_err(|e| redact_error(e, url))
}

async fn checkout_into(
    url: &str,
    commit: &str,
    dest: &Path,
    timeout: Duration,
) -> Result<CheckedOut, GitError> {
    let dir = Some(dest);
    run(dir, &["init", "--quiet"], LOCAL_TIMEOUT).await?;
    run(dir, &["remote", "add", "--", "origin", url], LOCAL_TIMEOUT).await?;
    let fetched = run(
        dir,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-recurse-submodules",
            "--filter=blob:none",
            "--",
            "origin",
            commit,
        ],
        timeout,
    )
    .await;
    if let Err(GitError::Failed { stderr, .. }) = &fetched
        && [
            "not our ref",
            "couldn't find remote ref",
            "no such remote ref",
            "unadvertised object",
        ]
        .iter()
        .any(|m| stderr.contains(m))
    {
        return Err(GitError::CommitNotFound {
            url: redact_url(url),
            commit: commit.to_string(),
            detail: stderr.clone(),
        });
    }
    fetched?;
    // The checkout fetches the tree's blobs, in one batch, from `origin`.
    run(
        dir,
        &["checkout", "--quiet", "--detach", commit, "--"],
        timeout,
    )
    .await?;
    let head = run(
        dir,
        &["rev-parse", "--verify", "HEAD^{commit}"],
        LOCAL_TIMEOUT,
    )
    .await?;
    let head = String::from_utf8_lossy(&head).trim().to_string();
    if !head.eq_ignore_ascii_case(commit) {
        return Err(GitError::Io {
            context: format!("checking out {commit} in {}", dest.display()),
            source: std::io::Error::other(format!("HEAD is {head}")),
        });
    }
    Ok(CheckedOut {
        dir: dest.to_path_buf(),
        commit: head,
    })
}

/// Whether `oid` is a commit in the repository at `dir`. In a blobless
/// checkout git may fetch it from `origin` first, which is what a force push's
/// old commit needs.
async fn has_commit(dir: &Path, oid: &str) -> bool {
    let spec = format!("{oid}^{{commit}}");
    run(Some(dir), &["cat-file", "-e", &spec], LOCAL_TIMEOUT)
        .await
        .is_ok()
}

/// The commits `after` has and `before` has not, oldest first, with their
/// messages and changed files (at most [`MAX_COMMITS`], the newest). When
/// `before` is all zeros (a new ref) or unknown to the repository, only
/// `after` itself is listed.
pub async fn commit_messages(
    dir: &Path,
    before: &str,
    after: &str,
) -> Result<Vec<CommitInfo>, GitError> {
    check_oid("before", before)?;
    check_oid("after", after)?;
    let max = format!("--max-count={MAX_COMMITS}");
    let range = format!("{before}..{after}");
    let range: Vec<&str> = if !is_zero(before) && has_commit(dir, before).await {
        vec![&max, "--end-of-options", &range, "--"]
    } else {
        vec!["--max-count=1", "--end-of-options", after, "--"]
    };
    let dir = Some(dir);

    // Messages cannot contain NUL, so `id NUL message NUL` pairs are exact.
    let mut args = vec!["log", "--reverse", "-z", "--format=%H%x00%B"];
    args.extend(&range);
    let out = run(dir, &args, LOCAL_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&out);
    let mut fields = text.split('\0');
    let mut commits = vec![];
    while let (Some(id), Some(message)) = (fields.next(), fields.next()) {
        let id = id.trim_start_matches('\n');
        if id.is_empty() {
            break;
        }
        commits.push(CommitInfo {
            id: id.to_string(),
            message: message.trim_end_matches('\n').to_string(),
            added: vec![],
            removed: vec![],
            modified: vec![],
        });
    }

    // `id NUL (status NUL path NUL)*`: a status is a letter, so an id can only
    // be read where a status is expected.
    let mut args = vec![
        "log",
        "--reverse",
        "-z",
        "--format=%H",
        "--name-status",
        "--no-renames",
    ];
    args.extend(&range);
    let out = run(dir, &args, LOCAL_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&out);
    let by_id: BTreeMap<String, usize> = commits
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let mut current = None;
    let mut fields = text.split('\0');
    while let Some(field) = fields.next() {
        let field = field.trim_start_matches('\n');
        if field.is_empty() {
            continue;
        }
        if let Some(&i) = by_id.get(field) {
            current = Some(i);
            continue;
        }
        let (Some(i), Some(path)) = (current, fields.next()) else {
            continue;
        };
        let c = &mut commits[i];
        let list = match field {
            "A" => &mut c.added,
            "D" => &mut c.removed,
            _ => &mut c.modified,
        };
        list.push(path.to_string());
    }
    Ok(commits)
}

/// Fill a push event that polling saw ([`diff_refs`]) from the repository at
/// `dir`, a [`checkout`] of `event.after`: its commits with messages and
/// files, its head commit, and whether it was forced (the old commit is not
/// an ancestor of the new one). A deleted ref's event is left as it is.
pub async fn fill_push_event(event: &mut PushEvent, dir: &Path) -> Result<(), GitError> {
    if event.deleted {
        // Nothing was pushed, and a deleted ref never runs.
        return Ok(());
    }
    let commits = commit_messages(dir, &event.before, &event.after).await?;
    if !event.created {
        event.forced = !has_commit(dir, &event.before).await
            || run(
                Some(dir),
                &[
                    "merge-base",
                    "--is-ancestor",
                    "--end-of-options",
                    &event.before,
                    &event.after,
                ],
                LOCAL_TIMEOUT,
            )
            .await
            .is_err();
    }
    event.commits_truncated = commits.len() >= MAX_COMMITS;
    event.commits = commits.into_iter().map(Commit::from).collect();
    event.head_commit = event.commits.iter().find(|c| c.id == event.after).cloned();
    Ok(())
}

/// What changed between two listings of a remote, as push events: a created
/// ref (`before` all zeros), a deleted one (`after` all zeros, `deleted`), or
/// a moved one. The events carry no commits yet; [`fill_push_event`] adds
/// them after a checkout, so polling and webhooks reach the same trigger
/// decision.
pub fn diff_refs(old: &[RemoteRef], new: &[RemoteRef], repository: &str) -> Vec<PushEvent> {
    let old: BTreeMap<&str, &str> = old
        .iter()
        .map(|r| (r.name.as_str(), r.oid.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = new
        .iter()
        .map(|r| (r.name.as_str(), r.oid.as_str()))
        .collect();
    let names: std::collections::BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    let mut events = vec![];
    for name in names {
        let (before, after) = match (old.get(name), new.get(name)) {
            (Some(b), Some(a)) if b == a => continue,
            (b, a) => (
                b.copied().unwrap_or(ZERO_OID),
                a.copied().unwrap_or(ZERO_OID),
            ),
        };
        events.push(PushEvent {
            repository: repository.to_string(),
            reference: name.to_string(),
            before: before.to_string(),
            after: after.to_string(),
            created: is_zero(before),
            deleted: is_zero(after),
            forced: false,
            commits: vec![],
            commits_truncated: false,
            head_commit: None,
            pusher: String::new(),
        });
    }
    events
}

/// Workspace retention: in `root`, keep every directory in `protected` (runs
/// in progress) and the `keep` newest of the others (by the directory's
/// modification time); remove the rest. Files and symbolic
/// links in `root` are left alone. Returns what was removed.
pub fn prune_workspaces(
    root: &Path,
    keep: usize,
    protected: &[PathBuf],
) -> Result<Vec<PathBuf>, GitError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let protected: Vec<PathBuf> = protected.iter().map(|p| canonical(p)).collect();
    let mut dirs = vec![];
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_error(format!("cannot read {}", root.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot read {}", root.display())))?;
        // file_type does not follow links: a link is never a workspace.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            continue;
        }
        let path = entry.path();
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(io_error(format!("cannot stat {}", path.display())))?;
        dirs.push((modified, path));
    }
    // Newest first; the name breaks ties so the order is stable.
    dirs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut removed = vec![];
    // Workspaces in use are never removed and do not count towards `keep`.
    dirs.retain(|(_, path)| !protected.contains(&canonical(path)));
    for (_, path) in dirs.into_iter().skip(keep) {
        std::fs::remove_dir_all(&path).map_err(io_error(format!(
            "cannot remove workspace {}",
            path.display()
        )))?;
        removed.push(path);
    }
    Ok(removed)
}

/// The test git server, shared with the end-to-end tests (tests/src/git.rs).
#[cfg(test)]
#[path = "../../tests/src/git.rs"]
#[allow(dead_code)] // Not every helper is used here.
mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server::{GitDaemon, WorkClone, git};
    use super::*;
    use std::collections::BTreeMap;

    const T: Duration = Duration::from_secs(60);

    /// Every file under `dir` but `.git`, with its contents.
    fn tree(dir: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let path = e.path();
                if e.file_name() == ".git" {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn ls_remote_sees_a_push_with_tags_peeled() {
        let server = GitDaemon::start();
        let url = server.create_repo("hello");
        assert_eq!(ls_remote(&url, T).await.unwrap(), vec![]);

        let work = WorkClone::new(&url);
        let first = work.commit(&[("README.md", "hello\n")], "first");
        work.git(&["tag", "-a", "v1", "-m", "release 1"]);
        let second = work.commit(&[("README.md", "hello again\n")], "second");
        work.push(&[
            "HEAD:refs/heads/main",
            "refs/tags/v1",
            &format!("{first}:refs/heads/old"),
        ]);

        let refs = ls_remote(&url, T).await.unwrap();
        let expected = vec![
            RemoteRef {
                name: "refs/heads/main".into(),
                oid: second.clone(),
            },
            RemoteRef {
                name: "refs/heads/old".into(),
                oid: first.clone(),
            },
            // The annotated tag is listed as the commit it names, not the tag object.
            RemoteRef {
                name: "refs/tags/v1".into(),
                oid: first.clone(),
            },
        ];
        assert_eq!(refs, expected);
        let tag_object = work.git(&["rev-parse", "v1"]);
        assert_ne!(tag_object, first, "v1 is an annotated tag");
    }

    #[tokio::test]
    async fn checkout_gives_exactly_the_pushed_tree_at_that_commit() {
        let server = GitDaemon::start();
        let url = server.create_repo("app");
        let work = WorkClone::new(&url);
        let one = work.commit(
            &[
                ("src/main.rs", "fn main() {}\n"),
                ("docs/a.md", "a\n"),
                ("Cargo.toml", "[package]\n"),
            ],
            "one",
        );
        work.remove(&["docs/a.md"], "drop the docs");
        let three = work.commit(
            &[
                ("src/main.rs", "fn main() { run() }\n"),
                ("src/run.rs", "pub fn run() {}\n"),
            ],
            "three",
        );
        work.push(&["HEAD:refs/heads/main"]);

        let root = tempfile::tempdir().unwrap();
        let at_three = checkout(&url, &three, &root.path().join("run-3"), T)
            .await
            .unwrap();
        assert_eq!(at_three.commit, three);
        assert_eq!(
            tree(&at_three.dir),
            files(&[
                ("Cargo.toml", "[package]\n"),
                ("src/main.rs", "fn main() { run() }\n"),
                ("src/run.rs", "pub fn run() {}\n"),
            ])
        );
        // An older commit, not a branch tip, checks out too: as it was.
        let at_one = checkout(&url, &one, &root.path().join("nested/run-1"), T)
            .await
            .unwrap();
        assert_eq!(
            tree(&at_one.dir),
            files(&[
                ("Cargo.toml", "[package]\n"),
                ("docs/a.md", "a\n"),
                ("src/main.rs", "fn main() {}\n"),
            ])
        );
        // Cheap: a blobless partial clone, file contents fetched for this tree only.
        assert_eq!(
            git(&at_one.dir, &["config", "remote.origin.partialclonefilter"]),
            "blob:none"
        );
        // Detached at the commit, nothing modified.
        assert_eq!(git(&at_one.dir, &["rev-parse", "HEAD"]), one);
        assert_eq!(git(&at_one.dir, &["status", "--porcelain"]), "");
        let symbolic = super::test_server::git_output(&at_one.dir, &["symbolic-ref", "-q", "HEAD"]);
        assert!(!symbolic.status.success(), "HEAD is detached");

        // A directory with something in it is not overwritten.
        let err = checkout(&url, &one, &at_three.dir, T).await.unwrap_err();
        assert!(
            err.to_string().contains("the directory is not empty"),
            "{err}"
        );
        assert_eq!(tree(&at_three.dir).len(), 3, "left as it was");
    }

    #[tokio::test]
    async fn an_unknown_commit_is_a_clear_error_and_leaves_nothing() {
        let server = GitDaemon::start();
        let url = server.create_repo("app");
        let work = WorkClone::new(&url);
        work.commit(&[("a", "a")], "a");
        work.push(&["HEAD:refs/heads/main"]);
        let missing = "1234567890123456789012345678901234567890";
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("run");
        let err = checkout(&url, missing, &dest, T).await.unwrap_err();
        assert!(matches!(err, GitError::CommitNotFound { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("commit {missing} is not in {url}: ")),
            "{text}"
        );
        assert!(!dest.exists(), "the failed workspace is removed");

        // A repository that does not exist fails as git says.
        let err = checkout(&server.url("nope"), missing, &dest, T)
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Failed { .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn commit_messages_and_files_across_a_push_of_three_commits() {
        let server = GitDaemon::start();
        let url = server.create_repo("app");
        let work = WorkClone::new(&url);
        let base = work.commit(&[("src/lib.rs", "1\n"), ("README.md", "r\n")], "base");
        work.push(&["HEAD:refs/heads/main"]);
        let before = ls_remote(&url, T).await.unwrap();

        let a = work.commit(&[("src/new.rs", "n\n")], "add new.rs");
        let b = work.commit(
            &[("src/lib.rs", "2\n")],
            "change lib\n\nWith a body.\nskip-checks: false",
        );
        let c = work.remove(&["README.md"], "drop the readme [skip ci]");
        work.push(&["HEAD:refs/heads/main"]);
        let after = ls_remote(&url, T).await.unwrap();

        let root = tempfile::tempdir().unwrap();
        let ws = checkout(&url, &c, &root.path().join("run"), T)
            .await
            .unwrap();
        let commits = commit_messages(&ws.dir, &base, &c).await.unwrap();
        let summary: Vec<_> = commits
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.message.as_str(),
                    c.added.clone(),
                    c.removed.clone(),
                    c.modified.clone(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (a.as_str(), "add new.rs", s(&["src/new.rs"]), s(&[]), s(&[])),
                (
                    b.as_str(),
                    "change lib\n\nWith a body.\nskip-checks: false",
                    s(&[]),
                    s(&[]),
                    s(&["src/lib.rs"])
                ),
                (
                    c.as_str(),
                    "drop the readme [skip ci]",
                    s(&[]),
                    s(&["README.md"]),
                    s(&[])
                ),
            ]
        );
        // A new ref (before all zeros) lists its head commit only.
        let only = commit_messages(&ws.dir, ZERO_OID, &c).await.unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].id, c);

        // Polling sees the same push and, filled from the checkout, it is
        // judged like a webhook's: here the head commit says [skip ci].
        let mut events = diff_refs(&before, &after, &url);
        assert_eq!(events.len(), 1);
        let event = &mut events[0];
        fill_push_event(event, &ws.dir).await.unwrap();
        assert_eq!(
            (event.before.as_str(), event.after.as_str()),
            (base.as_str(), c.as_str())
        );
        assert!(!event.forced && !event.created && !event.deleted);
        assert_eq!(
            event.messages(),
            vec![
                "add new.rs",
                "change lib\n\nWith a body.\nskip-checks: false",
                "drop the readme [skip ci]"
            ]
        );
        assert_eq!(event.head_commit.as_ref().unwrap().id, c);
        assert_eq!(
            event
                .changed_files()
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            s(&["README.md", "src/lib.rs", "src/new.rs"])
        );
        let file = crate::manifest::ManifestFile::parse(
            Path::new("pipeline.yaml"),
            "pipeline: p\non:\n  push:\n    branches: [main]\n    paths: [\"src/**\"]\nstages:\n  - name: a\n    uses: noop\n".into(),
        )
        .unwrap();
        let rules = crate::triggers::PushRules::new(&file).unwrap();
        assert_eq!(
            rules.decide(event).reason,
            "skipped: [skip ci] in the head commit message"
        );
        event.head_commit.as_mut().unwrap().message = "drop the readme".into();
        let d = rules.decide(event);
        assert!(d.run, "{}", d.reason);
        assert!(
            d.reason.contains("src/lib.rs matches on.push.paths"),
            "{}",
            d.reason
        );
    }

    #[tokio::test]
    async fn diff_refs_reports_created_moved_and_deleted_refs() {
        let server = GitDaemon::start();
        let url = server.create_repo("app");
        let work = WorkClone::new(&url);
        let one = work.commit(&[("a", "1")], "one");
        work.push(&[
            "HEAD:refs/heads/main",
            "HEAD:refs/heads/old",
            "HEAD:refs/heads/rewrite",
        ]);
        let first = ls_remote(&url, T).await.unwrap();
        assert!(
            diff_refs(&first, &first, &url).is_empty(),
            "nothing changed"
        );

        let two = work.commit(&[("a", "2")], "two");
        work.git(&["tag", "v2"]);
        work.push(&["HEAD:refs/heads/main", ":refs/heads/old", "refs/tags/v2"]);
        // `rewrite` is force-pushed to a commit that does not contain `one`.
        work.git(&["checkout", "--quiet", "--orphan", "other"]);
        let unrelated = work.commit(&[("b", "b")], "unrelated");
        work.push(&["+HEAD:refs/heads/rewrite"]);
        let second = ls_remote(&url, T).await.unwrap();

        let events = diff_refs(&first, &second, &url);
        let summary: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.reference.as_str(),
                    e.before.as_str(),
                    e.after.as_str(),
                    e.created,
                    e.deleted,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("refs/heads/main", one.as_str(), two.as_str(), false, false),
                ("refs/heads/old", one.as_str(), ZERO_OID, false, true),
                (
                    "refs/heads/rewrite",
                    one.as_str(),
                    unrelated.as_str(),
                    false,
                    false
                ),
                ("refs/tags/v2", ZERO_OID, two.as_str(), true, false),
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.repository == url && e.commits.is_empty())
        );

        // Filling tells the fast-forward from the force push.
        let root = tempfile::tempdir().unwrap();
        let mut main = events[0].clone();
        let ws = checkout(&url, &two, &root.path().join("main"), T)
            .await
            .unwrap();
        fill_push_event(&mut main, &ws.dir).await.unwrap();
        assert!(!main.forced);
        assert_eq!(main.messages(), vec!["two"]);
        let mut rewrite = events[2].clone();
        let ws = checkout(&url, &unrelated, &root.path().join("rewrite"), T)
            .await
            .unwrap();
        fill_push_event(&mut rewrite, &ws.dir).await.unwrap();
        assert!(rewrite.forced);
        assert_eq!(rewrite.messages(), vec!["unrelated"]);
        assert_eq!(
            rewrite.changed_files(),
            None,
            "a forced push's file list is incomplete"
        );
        // The deleted ref never runs.
        let rules = crate::triggers::PushRules::new(
            &crate::manifest::ManifestFile::parse(
                Path::new("pipeline.yaml"),
                "pipeline: p\nstages:\n  - name: a\n    uses: noop\n".into(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            rules.decide(&events[1]).reason,
            "skipped: refs/heads/old was deleted"
        );
    }

    #[tokio::test]
    async fn option_looking_urls_and_ids_are_refused_without_running_git() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let injected = format!("--upload-pack=touch {}", marker.display());
        let injected_nospace = format!("--upload-pack=touch${{IFS}}{}", marker.display());
        let ext = format!("ext::sh -c touch% {}", marker.display());
        for url in [
            injected.as_str(),
            injected_nospace.as_str(),
            ext.as_str(),
            "ext::sh",
            "ssh://-oProxyCommand=touch/x/repo.git",
            "-oProxyCommand=x:repo",
            "user@-oProxyCommand=x:repo",
            "relative/path",
            "ftp://example.com/r.git",
            "",
        ] {
            let err = ls_remote(url, T).await.unwrap_err();
            assert!(matches!(err, GitError::BadUrl { .. }), "{url}: {err:?}");
            let dest = dir.path().join("ws");
            let err = checkout(url, &"a".repeat(40), &dest, T).await.unwrap_err();
            assert!(matches!(err, GitError::BadUrl { .. }), "{url}: {err:?}");
            assert!(!dest.exists(), "{url}: nothing created");
        }
        assert!(!marker.exists(), "git never ran the injected command");
        let err = ls_remote(&injected, T).await.unwrap_err().to_string();
        assert!(
            err.contains("starts with `-`, so git would read it as an option"),
            "{err}"
        );

        for id in [
            "--upload-pack=x",
            "HEAD",
            "abc",
            &"g".repeat(40),
            &"a".repeat(41),
        ] {
            let err = checkout("https://example.com/r.git", id, &dir.path().join("ws"), T)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    GitError::BadObjectId {
                        field: "commit",
                        ..
                    }
                ),
                "{id}: {err:?}"
            );
            let err = commit_messages(dir.path(), id, &"a".repeat(40))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    GitError::BadObjectId {
                        field: "before",
                        ..
                    }
                ),
                "{id}: {err:?}"
            );
        }
        for url in [
            "https://example.com/o/r.git",
            "http://127.0.0.1:8080/r.git",
            "git://127.0.0.1:9418/r.git",
            "ssh://git@example.com/o/r.git",
            "git@example.com:o/r.git",
            "file:///srv/git/r.git",
            "/srv/git/r.git",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_url("https://bot:s3cret@example.com/r.git"),
            "https://bot:***@example.com/r.git"
        );
        assert_eq!(
            redact_url("https://tok3n@example.com/r.git"),
            "https://***@example.com/r.git"
        );
        assert_eq!(
            redact_url("https://example.com/a@b"),
            "https://example.com/a@b"
        );
        assert_eq!(
            redact_url("git@example.com:o/r.git"),
            "git@example.com:o/r.git"
        );
        let err = check_url("https://bot:s3cret@example.com/r .git")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_and_git_is_killed() {
        // Connections complete in the listen backlog, and nothing ever answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "git://127.0.0.1:{}/r.git",
            silent.local_addr().unwrap().port()
        );
        let err = ls_remote(&url, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("did not finish within 300ms; it was killed"),
            "{err}"
        );
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("ws");
        let err = checkout(&url, &"a".repeat(40), &dest, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn hooks_in_a_workspace_never_run() {
        let server = GitDaemon::start();
        let url = server.create_repo("app");
        let work = WorkClone::new(&url);
        let head = work.commit(&[("a", "a")], "a");
        work.push(&["HEAD:refs/heads/main"]);
        let root = tempfile::tempdir().unwrap();
        let ws = checkout(&url, &head, &root.path().join("ws"), T)
            .await
            .unwrap();
        // A stage could leave a hook behind in the workspace's repository.
        let hooks = ws.dir.join(".git/hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        let marker = root.path().join("hook-ran");
        let hook = hooks.join("post-checkout");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        run(
            Some(&ws.dir),
            &["checkout", "--quiet", "--detach", &head, "--"],
            T,
        )
        .await
        .unwrap();
        assert!(!marker.exists(), "gantry's git disables hooks");
        // The same command in plain git does run it: the hook is real.
        git(&ws.dir, &["checkout", "--quiet", "--detach", &head, "--"]);
        assert!(marker.exists(), "plain git runs the hook");
    }

    #[test]
    fn prune_keeps_the_newest_and_those_in_use() {
        let root = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let mut dirs = vec![];
        for i in 0..5u64 {
            let d = root.path().join(format!("run-{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("file"), "x").unwrap();
            // run-4 is the newest.
            let t = now - Duration::from_secs(1000 - i * 100);
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
            dirs.push(d);
        }
        std::fs::write(root.path().join("notes.txt"), "kept").unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), root.path().join("link")).unwrap();

        // run-0, the oldest, is in use; keep the two newest others.
        let removed = prune_workspaces(root.path(), 2, &[dirs[0].clone()]).unwrap();
        assert_eq!(removed, vec![dirs[2].clone(), dirs[1].clone()]);
        let mut left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["link", "notes.txt", "run-0", "run-3", "run-4"]);
        assert!(target.path().exists());
        // Keeping none removes all but the one in use; a missing root is fine.
        let removed = prune_workspaces(root.path(), 0, &[dirs[0].clone()]).unwrap();
        assert_eq!(removed, vec![dirs[4].clone(), dirs[3].clone()]);
        assert_eq!(
            prune_workspaces(&root.path().join("none"), 1, &[]).unwrap(),
            Vec::<PathBuf>::new()
        );
    }
}
