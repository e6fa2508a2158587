//! The Landlock ruleset of one stage's programs, built once per stage and
//! applied to each program between fork and exec.
//!
//! Handled (so denied unless a rule allows it): every filesystem access the
//! kernel knows, TCP bind and connect unless the stage is granted
//! `exec-network`, and (ABI 6) signals to and abstract unix sockets of
//! processes outside the domain. Landlock also refuses ptrace, and with it
//! `/proc/<pid>/mem` and `environ`, of any process outside the domain.

use anyhow::Context;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The ABI whose rights gantry asks for; newer kernels enforce all of it,
/// older ones what they know (see [`enforced`]).
const TARGET: ABI = ABI::V6;

/// The kernel's Landlock ABI version, 0 without Landlock.
pub fn abi() -> i32 {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the
    // VERSION flag only returns the ABI version (or -1); it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    v.max(0) as i32
}

/// What a kernel with ABI `abi` enforces, in words.
pub fn enforced(abi: i32) -> &'static str {
    match abi {
        ..=0 => "nothing",
        1..=3 => "files; no TCP or signal scoping, so a network namespace is used",
        4 | 5 => "files, TCP; no signal scoping",
        6..=8 => "files, TCP, signals, abstract unix sockets",
        _ => "files, TCP, signals, abstract and path unix sockets",
    }
}

/// What a stage's programs may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Read and execute below these.
    pub read: Vec<PathBuf>,
    /// Read, write, create, remove and execute below these.
    pub write: Vec<PathBuf>,
    /// Single device files to read and write (`/dev/null`, ...).
    pub devices: Vec<PathBuf>,
    /// TCP bind and connect are allowed.
    pub network: bool,
}

/// System directories programs need to run: their code, libraries, the
/// loader's cache, name resolution, certificates, the machine's description.
/// /etc is listed file by file so that e.g. /etc/shadow stays out of reach,
/// and /proc too: no `/proc/<pid>` is readable, since the kernel lets a
/// Landlock domain read another process's `environ`, `cmdline` and `maps`
/// (only ptrace and `mem` are refused across domains).
pub fn system_read() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/sys/devices/system/cpu",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for name in [
        "cpuinfo",
        "meminfo",
        "stat",
        "loadavg",
        "uptime",
        "version",
        "filesystems",
        "sys/kernel",
        "sys/vm",
        "sys/fs",
    ] {
        paths.push(Path::new("/proc").join(name));
    }
    for name in [
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "passwd",
        "group",
        "nsswitch.conf",
        "hosts",
        "host.conf",
        "resolv.conf",
        "gai.conf",
        "services",
        "protocols",
        "localtime",
        "timezone",
        "ssl",
        "ca-certificates",
        "ca-certificates.conf",
        "pki",
        "crypto-policies",
        "alternatives",
        "os-release",
        "locale.alias",
        "locale.conf",
        "mime.types",
        "gitconfig",
        "terminfo",
        "inputrc",
        "environment",
        "debian_version",
        "mtab",
    ] {
        paths.push(Path::new("/etc").join(name));
    }
    paths
}

/// Device files every program may use.
pub fn system_devices() -> Vec<PathBuf> {
    [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

/// The ruleset for `policy`, as a file descriptor to hand to
/// `landlock_restrict_self` in each program. Paths that do not exist are
/// skipped (a rule needs an open file).
pub fn ruleset(policy: &Policy) -> anyhow::Result<OwnedFd> {
    let abi = TARGET;
    let file_rw =
        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    // Connecting to a unix socket by its path (Docker's, say) is handled
    // where the kernel knows it (ABI 9); allowed only below writable paths.
    let write = AccessFs::from_all(abi) | AccessFs::ResolveUnix;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(write)
        .context("Landlock: filesystem rights")?
        .scope(Scope::from_all(abi))
        .context("Landlock: scopes")?;
    if !policy.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .context("Landlock: network rights")?;
    }
    let mut created = ruleset.create().context("Landlock: creating the ruleset")?;
    let rules = (policy.read.iter().map(|p| (p, AccessFs::from_read(abi))))
        .chain(policy.devices.iter().map(|p| (p, file_rw)))
        .chain(policy.write.iter().map(|p| (p, write)));
    for (path, access) in rules {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            // Missing system directories (no /lib32 here) are nothing to allow.
            Err(_) if !path.exists() => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("Landlock: opening {}", path.display()));
            }
        };
        // A rule on a file may only name file rights.
        let access: BitFlags<AccessFs> = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .with_context(|| format!("Landlock: a rule for {}", path.display()))?;
    }
    let fd: Option<OwnedFd> = created.into();
    fd.context("Landlock is not supported by this kernel")
}
