//! One pids cgroup per stage: it caps how many processes (and threads) the
//! stage's programs may have at once, and it is how gantry finds every one of
//! them to kill, when the stage ends and, after a crash, when `gantry resume`
//! starts the stage again. Its name is derived from the run and the stage, so
//! the next gantry can find what an earlier one left.

use anyhow::Context;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory stage cgroups are made in: `gantry/` below gantry's own
/// cgroup in the pids hierarchy (cgroup v1), or in the unified hierarchy when
/// its pids controller is delegated there (cgroup v2). `None` when there is
/// none or it is not writable (then RLIMIT_NPROC caps processes instead).
pub fn root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut found = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fstype, opts) = (right.next()?, right.nth(1).unwrap_or(""));
        let path = if fstype == "cgroup" && opts.split(',').any(|o| o == "pids") {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "pids")
                    .then(|| path.to_string())
            })
        } else if fstype == "cgroup2" {
            own.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                .filter(|path| {
                    let dir = Path::new(mount_point).join(path.trim_start_matches('/'));
                    std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
                })
        } else {
            None
        };
        if let Some(path) = path {
            let dir = Path::new(mount_point)
                .join(path.trim_start_matches('/'))
                .join("gantry");
            if std::fs::create_dir(&dir).is_ok() || dir.is_dir() {
                // Usable only if we may make cgroups in it.
                let probe = dir.join(format!("probe-{}", std::process::id()));
                if std::fs::create_dir(&probe).is_ok() {
                    let _ = std::fs::remove_dir(&probe);
                    found = Some(dir);
                    // cgroup v1 first: its pids controller is the one in use.
                    if fstype == "cgroup" {
                        break;
                    }
                }
            }
        }
    }
    found
}

/// The cgroup of one stage of one run.
pub struct StageCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: a program joins by writing `0`.
    procs: OwnedFd,
}

/// The cgroup's name for `stage` of `run_id`.
pub fn path(root: &Path, run_id: &str, stage: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    root.join(format!("{}.{}", clean(run_id), clean(stage)))
}

impl StageCgroup {
    /// Make (or take over) the stage's cgroup, capped at `max` processes.
    /// Whatever an earlier gantry left in it is killed first.
    pub fn create(root: &Path, run_id: &str, stage: &str, max: u64) -> anyhow::Result<Self> {
        let dir = path(root, run_id, stage);
        if dir.is_dir() {
            kill_all(&dir);
        } else {
            std::fs::create_dir(&dir)
                .with_context(|| format!("creating the stage's cgroup {}", dir.display()))?;
        }
        std::fs::write(dir.join("pids.max"), max.to_string())
            .with_context(|| format!("setting {}/pids.max", dir.display()))?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", dir.display()))?;
        Ok(Self {
            dir,
            procs: procs.into(),
        })
    }

    pub fn procs_fd(&self) -> &OwnedFd {
        &self.procs
    }
}

impl Drop for StageCgroup {
    fn drop(&mut self) {
        kill_all(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Kill every process in the cgroup at `dir`: no new process may start in it,
/// then each one is sent SIGKILL until none is left (or 5 s passed: a process
/// stuck in the kernel cannot be helped).
pub fn kill_all(dir: &Path) {
    let _ = std::fs::write(dir.join("pids.max"), "0");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<libc::pid_t> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill only sends a signal. The pid was read from the
            // cgroup just now; pids.max = 0 keeps the cgroup from gaining new
            // ones, so at worst a pid that just exited is signalled (ESRCH).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kill what an earlier gantry left in `stage`'s cgroup of `run_id` and remove
/// it: `gantry resume` calls this before starting an interrupted stage again.
pub fn reap_leftovers(root: &Path, run_id: &str, stage: &str) -> bool {
    let dir = path(root, run_id, stage);
    if !dir.is_dir() {
        return false;
    }
    kill_all(&dir);
    let _ = std::fs::remove_dir(&dir);
    true
}
