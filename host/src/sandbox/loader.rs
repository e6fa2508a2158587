//! How a granted program is found and loaded: the variables a plugin may not
//! pass because they change which code runs before the program's own, and the
//! PATH lookup of a granted name.

use std::path::{Path, PathBuf};

/// Variables that change how a program is loaded or which files its C library
/// trusts: glibc's own list of variables it drops for setuid programs
/// (`UNSECURE_ENVVARS`), plus every `LD_` variable. TMPDIR is on it too: each
/// stage's programs get their private temp dir, which a plugin must not move.
const REFUSED: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
];

/// Whether a plugin may not set `name` for a program it runs.
pub fn refused(name: &str) -> bool {
    name.starts_with("LD_") || REFUSED.contains(&name)
}

/// The refused variables, in words, for messages and the README.
pub fn refused_in_words() -> String {
    format!("LD_*, {}", REFUSED.join(", "))
}

/// The first executable file named `program` in `path` (a PATH value).
/// Relative and empty entries are skipped: they would resolve against the
/// workspace, where a stage may plant a program of that name (Go's os/exec
/// refuses them the same way, ErrDot).
pub fn find_on_path(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Where a program is installed, to be readable by it: its directory and, for
/// a `bin` directory, that directory's `lib*`, `libexec` and `share`
/// siblings. Nothing else of the prefix (e.g. `~/.cargo`, which holds
/// credentials) is included.
pub fn installation(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![];
    for exe in [
        exe.to_path_buf(),
        exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf()),
    ] {
        let Some(dir) = exe.parent() else { continue };
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
        if dir.file_name().is_some_and(|n| n == "bin")
            && let Some(prefix) = dir.parent()
        {
            for sib in ["lib", "lib64", "libexec", "share"] {
                let p = prefix.join(sib);
                if !dirs.contains(&p) {
                    dirs.push(p);
                }
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_variables_are_refused() {
        for v in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GCONV_PATH",
            "TMPDIR",
            "GLIBC_TUNABLES",
        ] {
            assert!(refused(v), "{v}");
        }
        for v in ["PATH", "RUSTFLAGS", "HOME", "CARGO_HOME", "OLD_PRELOAD"] {
            assert!(!refused(v), "{v}");
        }
    }

    #[test]
    fn relative_and_empty_path_entries_are_skipped() {
        // Tests run in host/, so `../scripts` names the repository's scripts,
        // which hold an executable `test`.
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
        assert_eq!(
            find_on_path("test", std::ffi::OsStr::new("../scripts::.")),
            None
        );
        let abs = std::ffi::OsString::from(format!("../scripts:{}", scripts.display()));
        assert_eq!(find_on_path("test", &abs), Some(scripts.join("test")));
    }
}
