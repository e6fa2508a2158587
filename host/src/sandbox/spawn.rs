//! Starting one confined program, and killing it with everything it started.
//!
//! The program is started with `clone(CLONE_VM | CLONE_VFORK | CLONE_NEWPID)`,
//! like glibc's posix_spawn but into a PID namespace of its own: no copy of
//! gantry's address space is made (a fork of a process holding wasmtime's
//! reservations costs milliseconds), and no helper process sits between gantry
//! and the program. Between clone and exec the child joins the stage's pids
//! cgroup, asks for SIGKILL when gantry dies (PR_SET_PDEATHSIG), sets
//! no_new_privs and applies the stage's Landlock ruleset.
//!
//! Being the first process of its namespace, the program is its init: when it
//! exits or is killed, the kernel kills every process left in the namespace,
//! whatever session or process group they moved to. So nothing it started
//! outlives it, and since it dies with gantry, nothing outlives gantry either.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// How a program gets a PID namespace of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// It cannot: it leads its own process group instead.
    No,
    /// Directly: gantry has CAP_SYS_ADMIN (root).
    Direct,
    /// Inside a user namespace of its own that maps only gantry's user and
    /// group, which any user may create where the kernel allows it.
    InUserNamespace,
}

impl PidNamespace {
    pub fn detect() -> Self {
        const CAP_SYS_ADMIN: u32 = 21;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if caps & (1 << CAP_SYS_ADMIN) != 0 {
            return Self::Direct;
        }
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Debian's switch, and Ubuntu's AppArmor restriction of unprivileged
        // user namespaces.
        let allowed = sysctl("user/max_user_namespaces").unwrap_or(0) > 0
            && sysctl("kernel/unprivileged_userns_clone").unwrap_or(1) == 1
            && sysctl("kernel/apparmor_restrict_unprivileged_userns").unwrap_or(0) == 0;
        if allowed {
            Self::InUserNamespace
        } else {
            Self::No
        }
    }
}

/// What to start and how to confine it.
pub struct Request<'a> {
    pub exe: &'a Path,
    /// argv, the program's name first.
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// The stage's Landlock ruleset; `None` when unconfined.
    pub landlock: Option<BorrowedFd<'a>>,
    /// The stage cgroup's `cgroup.procs`, to join.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// Start the program as the init of a new PID namespace, and how.
    pub pid_namespace: PidNamespace,
    /// Start it in a new (empty) network namespace.
    pub net_namespace: bool,
    /// RLIMIT_NPROC, where no cgroup caps processes.
    pub nproc: Option<u64>,
    /// A seccomp filter to install (after no_new_privs).
    pub seccomp: Option<&'a super::seccomp::Filter>,
}

/// A started program, its output pipes, and the handle that kills its tree.
pub struct Spawned {
    pub child: Child,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// The steps between clone and exec, for the error when one fails.
const STEPS: &[&str] = &[
    "",
    "joining the stage's cgroup",
    "redirecting its input and output",
    "entering its working directory",
    "setting its parent-death signal",
    "setting its process group",
    "setting its process limit",
    "setting no_new_privs",
    "applying the Landlock ruleset",
    "executing it",
    "installing the seccomp filter",
    "mapping its user and group in its user namespace",
    "checking that gantry still runs",
];

/// Everything the child needs, prepared by the parent: between clone and exec
/// the child may not allocate (it shares gantry's memory, and another thread
/// may hold the allocator's lock) and calls only async-signal-safe functions.
struct ChildArgs {
    exe: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    landlock: RawFd,
    cgroup: RawFd,
    nproc: u64,
    /// The seccomp program, or null.
    seccomp: *const super::seccomp::SockFprog,
    /// In a user namespace: the lines for uid_map and gid_map, or null.
    uid_map: *const c_char,
    gid_map: *const c_char,
    own_group: bool,
    /// A pidfd of gantry itself, or -1.
    gantry: RawFd,
    /// Written by the child when a step fails: the step and errno.
    failed_step: AtomicI32,
    errno: AtomicI32,
}

extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points at the parent's ChildArgs, alive and unchanged
    // until this child execs or exits (CLONE_VFORK suspends the parent).
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: i32| -> c_int {
        a.failed_step.store(step, Ordering::SeqCst);
        a.errno.store(
            io::Error::last_os_error().raw_os_error().unwrap_or(0),
            Ordering::SeqCst,
        );
        // SAFETY: _exit is async-signal-safe and does not return.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: every call below is a thin wrapper around one system call
    // (async-signal-safe), on memory prepared by the parent.
    unsafe {
        // Signal handlers are gantry's (tokio's), its code shared with us:
        // back to the defaults, and the mask the parent blocked cleared. Rust
        // ignores SIGPIPE; programs expect the default.
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handler = old.sa_sigaction;
            let handled = handler != libc::SIG_IGN && handler != libc::SIG_DFL;
            if handled || (sig == libc::SIGPIPE && handler == libc::SIG_IGN) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if !a.uid_map.is_null() {
            // Map only our own user and group; setgroups must be refused
            // before an unprivileged process may write gid_map.
            let write_file = |path: &[u8], text: *const c_char| -> bool {
                let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                let len = libc::strlen(text);
                let ok = libc::write(fd, text.cast(), len) == len as isize;
                libc::close(fd);
                ok
            };
            if !write_file(b"/proc/self/setgroups\0", c"deny".as_ptr())
                || !write_file(b"/proc/self/uid_map\0", a.uid_map)
                || !write_file(b"/proc/self/gid_map\0", a.gid_map)
            {
                return fail(11);
            }
        }
        if a.cgroup >= 0 && libc::write(a.cgroup, b"0".as_ptr().cast(), 1) != 1 {
            return fail(1);
        }
        if libc::dup2(a.stdin, 0) < 0 || libc::dup2(a.stdout, 1) < 0 || libc::dup2(a.stderr, 2) < 0
        {
            return fail(2);
        }
        if libc::chdir(a.cwd) != 0 {
            return fail(3);
        }
        // The parent is the thread that called clone (a tokio worker, which
        // lives as long as gantry's runtime), suspended until exec. If gantry
        // was killed before this call, no signal will come: gantry's pidfd
        // is readable once it has exited, and then this child stops here.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return fail(4);
        }
        if a.gantry >= 0 {
            let mut p = libc::pollfd {
                fd: a.gantry,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) != 0 {
                return fail(12);
            }
        }
        if a.own_group && libc::setpgid(0, 0) != 0 {
            return fail(5);
        }
        if a.nproc > 0 {
            let lim = libc::rlimit {
                rlim_cur: a.nproc,
                rlim_max: a.nproc,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                return fail(6);
            }
        }
        if (a.landlock >= 0 || !a.seccomp.is_null())
            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return fail(7);
        }
        // SPEC_ALLOW: without it the kernel turns on speculative-store-bypass
        // mitigations for the filtered process, which made each program
        // several milliseconds slower here; the filter is not a boundary
        // against speculation attacks, Landlock and the namespaces are.
        if !a.seccomp.is_null()
            && libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                a.seccomp,
            ) != 0
        {
            return fail(10);
        }
        if a.landlock >= 0 && libc::syscall(libc::SYS_landlock_restrict_self, a.landlock, 0u32) != 0
        {
            return fail(8);
        }
        libc::execve(a.exe, a.argv, a.envp);
        fail(9)
    }
}

/// A pidfd of this process (close-on-exec), opened once; -1 without pidfds.
fn own_pidfd() -> RawFd {
    static FD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    FD.get_or_init(|| {
        // SAFETY: pidfd_open of our own pid; the result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    })
    .as_ref()
    .map_or(-1, |fd| fd.as_raw_fd())
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just returned by pipe2 and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Start the program. Errors name the step that failed.
pub fn spawn(req: &Request<'_>) -> io::Result<Spawned> {
    let exe = cstring(req.exe.as_os_str().as_bytes())?;
    let cwd = cstring(req.cwd.as_os_str().as_bytes())?;
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = req
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let argv_ptrs: Vec<*const c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let seccomp = req.seccomp.map(|f| f.prog());
    let in_userns = req.pid_namespace == PidNamespace::InUserNamespace;
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = cstring(format!("{uid} {uid} 1").as_bytes())?;
    let gid_map = cstring(format!("{gid} {gid} 1").as_bytes())?;
    let stdin: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let args = ChildArgs {
        exe: exe.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        stdin: stdin.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        landlock: req.landlock.map_or(-1, |fd| fd.as_raw_fd()),
        cgroup: req.cgroup.map_or(-1, |fd| fd.as_raw_fd()),
        nproc: req.nproc.unwrap_or(0),
        seccomp: seccomp.as_ref().map_or(std::ptr::null(), |p| p as *const _),
        uid_map: if in_userns {
            uid_map.as_ptr()
        } else {
            std::ptr::null()
        },
        gid_map: if in_userns {
            gid_map.as_ptr()
        } else {
            std::ptr::null()
        },
        own_group: req.pid_namespace == PidNamespace::No,
        gantry: own_pidfd(),
        failed_step: AtomicI32::new(0),
        errno: AtomicI32::new(0),
    };
    // The child runs on this stack until it execs; it needs little.
    let mut stack = vec![0u8; 64 * 1024];
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    match req.pid_namespace {
        PidNamespace::No => {}
        PidNamespace::Direct => flags |= libc::CLONE_NEWPID,
        PidNamespace::InUserNamespace => flags |= libc::CLONE_NEWUSER | libc::CLONE_NEWPID,
    }
    if req.net_namespace {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: sigset operations on local memory; all signals are blocked in
    // this thread while the child borrows its memory, so no handler runs in
    // the child before it resets them, and restored right after.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = (top as usize & !15) as *mut c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: child_main only reads `args` and calls async-signal-safe
        // functions until it execs or exits; CLONE_VFORK keeps this frame
        // (args, the strings, the stack) alive and unchanged until then.
        let pid = libc::clone(
            child_main,
            top,
            flags,
            &args as *const ChildArgs as *mut c_void,
        );
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(io::Error::new(e.kind(), format!("clone: {e}")));
        }
        pid
    };
    drop((out_w, err_w, stdin));
    let step = args.failed_step.load(Ordering::SeqCst);
    if step != 0 {
        let mut status = 0;
        // SAFETY: reaps our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let e = io::Error::from_raw_os_error(args.errno.load(Ordering::SeqCst));
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", STEPS[step as usize]),
        ));
    }
    // SAFETY: pidfd_open on our unreaped child: the pid cannot be reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let child = Child {
        pid,
        group: req.pid_namespace == PidNamespace::No,
        pidfd: if pidfd >= 0 {
            // SAFETY: a descriptor pidfd_open just returned, owned by the
            // OwnedFd, which the AsyncFd keeps open (and unchanged) for as
            // long as it lives.
            let fd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
            Some(
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(io::Error::from)?,
            )
        } else {
            None
        },
        reaped: false,
    };
    Ok(Spawned {
        child,
        stdout: pipe::Receiver::from_owned_fd(out_r)?,
        stderr: pipe::Receiver::from_owned_fd(err_r)?,
    })
}

/// A running program. Dropping it kills it and everything it started.
pub struct Child {
    pid: libc::pid_t,
    /// Without a PID namespace: the program leads its own process group.
    group: bool,
    pidfd: Option<AsyncFd<OwnedFd>>,
    reaped: bool,
}

impl Child {
    /// Wait for the program to exit: its exit code, or `None` when a signal
    /// ended it.
    pub async fn wait(&mut self) -> io::Result<Option<i32>> {
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child only, without blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                return Ok(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)));
            }
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            match &self.pidfd {
                Some(fd) => fd.readable().await?.clear_ready(),
                // No pidfd (Linux < 5.3): poll.
                None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }

    /// Kill the program and everything it started.
    pub fn kill(&self) {
        if self.reaped {
            return;
        }
        // SAFETY: signals our own unreaped child (its pid cannot have been
        // reused), or its process group.
        unsafe {
            if self.group {
                libc::killpg(self.pid, libc::SIGKILL);
            }
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            if self.group {
                // SAFETY: the group may outlive its leader; ESRCH is fine.
                unsafe { libc::killpg(self.pid, libc::SIGKILL) };
            }
            return;
        }
        self.kill();
        let mut status = 0;
        // SAFETY: reaps our own child, just sent SIGKILL: it exits at once
        // (as a namespace's init, once the kernel killed the rest).
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}
