//! Kernel confinement of the programs a stage starts through `exec`.
//!
//! The WebAssembly sandbox ends where a stage asks the host to start a native
//! program, so that program gets a sandbox of its own from the kernel, in the
//! spirit of Bazel's linux-sandbox and the Nix build sandbox (but without a
//! mount namespace: nothing is remounted, access is filtered instead):
//!
//! - [`landlock`]: what it may read, write, execute and connect to; it may not
//!   signal or trace (nor read `/proc/<pid>/mem` or `environ` of) any process
//!   outside its own domain, gantry included;
//! - [`spawn`]: it is the first process of a PID namespace of its own, killed
//!   with gantry (parent-death signal), and the kernel kills every process left
//!   in that namespace when it exits: `setsid`, double forks and daemons
//!   included;
//! - [`cgroup`]: the stage's processes share a pids cgroup that caps their
//!   number and is emptied when the stage ends (and again on `gantry resume`);
//! - [`seccomp`]: where Landlock cannot refuse connecting to unix sockets by
//!   path (before ABI 9), no unix sockets without `exec-network`;
//! - [`loader`]: variables that change how programs are loaded are refused, and
//!   granted names are looked up on the host's PATH without relative entries.
//!
//! Where the kernel has no Landlock, `exec` is refused unless the user opts
//! into unconfined programs (`GANTRY_UNCONFINED_EXEC=1` or
//! `--unconfined-exec`); plan and summary then say so.

pub mod cgroup;
pub mod landlock;
pub mod loader;
pub mod seccomp;
pub mod spawn;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that opts into unconfined exec.
pub const UNCONFINED_ENV: &str = "GANTRY_UNCONFINED_EXEC";

static UNCONFINED_FLAG: AtomicBool = AtomicBool::new(false);

/// `--unconfined-exec` on the command line.
pub fn opt_into_unconfined() {
    UNCONFINED_FLAG.store(true, Ordering::SeqCst);
}

/// Whether the user asked for exec'd programs to run unconfined.
pub fn unconfined_opted_in() -> bool {
    UNCONFINED_FLAG.load(Ordering::SeqCst)
        || std::env::var(UNCONFINED_ENV).is_ok_and(|v| v == "1" || v == "true")
}

/// What this machine offers to confine exec'd programs; found once.
#[derive(Debug, Clone)]
pub struct Support {
    /// The Landlock ABI version; 0 when the kernel has no Landlock.
    pub landlock_abi: i32,
    /// How programs get a PID namespace of their own, if they can.
    pub pid_namespace: spawn::PidNamespace,
    /// The directory per-stage pids cgroups are made in, when writable.
    pub cgroup: Option<PathBuf>,
}

impl Support {
    pub fn get() -> &'static Support {
        static SUPPORT: OnceLock<Support> = OnceLock::new();
        SUPPORT.get_or_init(|| Support {
            landlock_abi: landlock::abi(),
            pid_namespace: spawn::PidNamespace::detect(),
            cgroup: cgroup::root(),
        })
    }

    /// How exec'd programs will run, for `plan`, `validate` and the run's
    /// notes: one line.
    pub fn describe(&self) -> String {
        use spawn::PidNamespace as P;
        let ns = match self.pid_namespace {
            P::Direct => "a PID namespace per program",
            P::InUserNamespace => "a PID namespace (in a user namespace) per program",
            P::No => {
                "a process group per program (no PID namespace here: descendants that call \
                 setsid may outlive the stage)"
            }
        };
        let cap = match self.cgroup {
            Some(_) => "a pids cgroup per stage",
            None => "RLIMIT_NPROC",
        };
        let guard = format!("{ns}, {cap}");
        if unconfined_opted_in() {
            format!(
                "UNCONFINED ({UNCONFINED_ENV}=1 or --unconfined-exec): programs run with your full access; {guard}"
            )
        } else if self.landlock_abi < 1 {
            format!(
                "refused: this kernel offers no Landlock, so programs cannot be confined (set {UNCONFINED_ENV}=1 to run them with your full access)"
            )
        } else {
            format!(
                "Landlock ABI {} ({}); {guard}",
                self.landlock_abi,
                landlock::enforced(self.landlock_abi)
            )
        }
    }

    /// Whether exec'd programs run under Landlock; `Err` when exec must be
    /// refused.
    pub fn confine(&self) -> Result<bool, String> {
        if unconfined_opted_in() {
            Ok(false)
        } else if self.landlock_abi < 1 {
            Err(format!(
                "exec is refused: this kernel offers no Landlock (Linux 5.13 or later with `landlock` \
                 in its LSM list), so the program could not be confined; set {UNCONFINED_ENV}=1 \
                 (or pass --unconfined-exec) to run programs with your full access"
            ))
        } else {
            Ok(true)
        }
    }
}
