//! A real git server for tests: `git daemon` on loopback serving bare
//! repositories from a temporary directory, with pushes enabled, and a working
//! clone to make commits in and push them with real `git push`.
//!
//! Only std and tempfile, so gantry's own unit tests include this same file
//! (`#[path]`) without depending on this crate.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `git` command that ignores the machine's and the user's git config and
/// any `GIT_*` variables of the test process, so tests behave the same
/// everywhere.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .args([
            "-c",
            "user.name=Gantry Test",
            "-c",
            "user.email=test@gantry.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ]);
    cmd
}

/// Run `git args...` in `dir`, panicking with git's stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {} in {} failed: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("git printed UTF-8")
        .trim_end()
        .to_string()
}

/// Run `git args...` in `dir` and return what happened, failure included.
pub fn git_output(dir: &Path, args: &[&str]) -> Output {
    git_command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git")
}

/// `git daemon --export-all --enable=receive-pack` on 127.0.0.1, killed on drop.
pub struct GitDaemon {
    child: Child,
    port: u16,
    base: tempfile::TempDir,
}

impl GitDaemon {
    /// Start a daemon on a free loopback port and wait until it accepts
    /// connections.
    pub fn start() -> GitDaemon {
        let base = tempfile::tempdir().expect("temporary directory for the git daemon");
        // Ask the kernel for a free port; the daemon binds it right after.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let base_path = base.path().to_str().expect("temporary path is UTF-8");
        let child = git_command()
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--informative-errors",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={base_path}"),
                base_path,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let mut daemon = GitDaemon { child, port, base };
        // A readiness wait, not an assertion on time: the deadline only stops
        // a daemon that can never start from hanging the test.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("git daemon exited before listening on port {port}: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// The loopback port the daemon listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory the daemon serves (`--base-path`).
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// The clone URL of repository `name` (e.g. `hello` -> `git://127.0.0.1:PORT/hello.git`).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    /// Create the empty bare repository `name` and return its clone URL.
    /// Partial clone filters are allowed, as on GitHub.
    pub fn create_repo(&self, name: &str) -> String {
        let path = self.base().join(format!("{name}.git"));
        git(
            self.base(),
            &["init", "--quiet", "--bare", path.to_str().unwrap()],
        );
        git(&path, &["config", "uploadpack.allowFilter", "true"]);
        self.url(name)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working repository whose `origin` is a daemon's repository: commit files
/// and push them.
pub struct WorkClone {
    dir: tempfile::TempDir,
}

impl WorkClone {
    /// A new, empty working repository pushing to `url`, on branch `main`.
    pub fn new(url: &str) -> WorkClone {
        let dir = tempfile::tempdir().expect("temporary directory for a working clone");
        git(dir.path(), &["init", "--quiet"]);
        git(dir.path(), &["remote", "add", "origin", url]);
        WorkClone { dir }
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `files` (path relative to the work tree, contents), commit
    /// everything with `message`, and return the new commit's id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, contents) in files {
            let path: PathBuf = self.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
        }
        git(self.path(), &["add", "--all"]);
        git(
            self.path(),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// Delete `paths` from the work tree and commit that with `message`.
    pub fn remove(&self, paths: &[&str], message: &str) -> String {
        let mut args = vec!["rm", "--quiet", "--"];
        args.extend_from_slice(paths);
        git(self.path(), &args);
        git(self.path(), &["commit", "--quiet", "-m", message]);
        self.head()
    }

    /// The id of `HEAD`.
    pub fn head(&self) -> String {
        git(self.path(), &["rev-parse", "HEAD"])
    }

    /// `git push origin <refspec>...` (e.g. `HEAD:refs/heads/main`,
    /// `:refs/heads/gone` to delete, `+HEAD:refs/heads/x` to force).
    pub fn push(&self, refspecs: &[&str]) {
        let mut args = vec!["push", "--quiet", "origin"];
        args.extend_from_slice(refspecs);
        git(self.path(), &args);
    }

    /// Run any git command in the work tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }
}
