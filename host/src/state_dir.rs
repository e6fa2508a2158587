//! Where gantry keeps what it owns: run journals, logs and summaries, and the
//! plugin state that decides what is deployed, rolled back or resumed. None of
//! it lives in the workspace, which stages can write: a stage could otherwise
//! plant links that make the host write outside the workspace, or forge the
//! records that a resume or a rollback trusts.
//!
//! The root is `$GANTRY_STATE_DIR`, else `$XDG_STATE_HOME/gantry`, else
//! `~/.local/state/gantry`; each workspace gets
//! `<root>/workspaces/<name>-<hash>/`, where `hash` is the start of the sha256
//! of the workspace's canonical path and `name` its last component (for
//! people), with the path itself in a `workspace` file beside `runs/` and
//! `state/`.
//!
//! Every directory below the root is created 0700 and checked, once opened, to
//! be a directory owned by the current user that nobody else can use. Files
//! are opened relative to an open directory, one component at a time, with
//! `O_NOFOLLOW`: a link in there is refused, never followed.

use anyhow::{Context, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The variable that overrides where the state lives.
pub const ENV: &str = "GANTRY_STATE_DIR";

/// The state root: `$GANTRY_STATE_DIR`, else `$XDG_STATE_HOME/gantry`, else
/// `~/.local/state/gantry`.
pub fn root() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(ENV) {
        return Ok(PathBuf::from(dir));
    }
    // The XDG spec says to ignore a relative value.
    if let Some(dir) = var("XDG_STATE_HOME").map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir.join("gantry"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/gantry")),
        None => bail!(
            "cannot tell where to keep run records and state: set {ENV} (or XDG_STATE_HOME or HOME)"
        ),
    }
}

/// The directory name of a workspace's state: `<last component>-<hash>`.
pub fn workspace_key(canonical: &Path) -> String {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()));
    let name: String = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = name.trim_start_matches('.');
    format!("{}-{}", if name.is_empty() { "ws" } else { name }, &hash[..16])
}

/// The state of one workspace.
pub struct WorkspaceState {
    pub dir: PrivateDir,
    /// The canonical workspace path.
    pub workspace: PathBuf,
}

impl WorkspaceState {
    /// Open the state of `workspace`, creating it when `create`; `None` when it
    /// does not exist and `create` is false.
    pub fn open(workspace: &Path, create: bool) -> anyhow::Result<Option<Self>> {
        let workspace = workspace
            .canonicalize()
            .with_context(|| format!("workspace {}", workspace.display()))?;
        let root = root()?;
        if create {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&root)
            .with_context(|| format!("creating the state directory {}", root.display()))?;
        } else if !root.exists() {
            return Ok(None);
        }
        let root_canonical = root
            .canonicalize()
            .with_context(|| format!("state directory {}", root.display()))?;
        if root_canonical.starts_with(&workspace) {
            bail!(
                "the state directory {} is inside the workspace {}, where stages can write: \
                 set {ENV} to a directory outside it",
                root_canonical.display(),
                workspace.display()
            );
        }
        let root = PrivateDir::open_root(&root_canonical)?;
        let Some(all) = root.subdir("workspaces", create)? else {
            return Ok(None);
        };
        let Some(dir) = all.subdir(&workspace_key(&workspace), create)? else {
            return Ok(None);
        };
        let recorded = dir.read("workspace")?;
        let expected = format!("{}\n", workspace.display());
        match recorded {
            Some(text) if text != expected.as_bytes() => bail!(
                "{} belongs to another workspace ({}); move it away",
                dir.path().display(),
                String::from_utf8_lossy(&text).trim()
            ),
            Some(_) => {}
            None => dir.write_atomic("workspace", expected.as_bytes())?,
        }
        Ok(Some(Self { dir, workspace }))
    }

    /// The runs directory (`runs/`), created when `create`.
    pub fn runs(&self, create: bool) -> anyhow::Result<Option<PrivateDir>> {
        self.dir.subdir("runs", create)
    }
}

/// An open directory that only the current user can use; everything in it is
/// reached relative to it, without following links.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Refuse names that would leave the directory or name it.
fn check_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{name}` is not a plain file name"),
        ));
    }
    Ok(())
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuse an open directory that another user owns or that has any of the
/// `forbidden` mode bits: someone else could then change what gantry trusts.
fn check_owned(fd: &OwnedFd, path: &Path, forbidden: u32, fix: &str) -> anyhow::Result<()> {
    let st = rustix::fs::fstat(fd).with_context(|| format!("checking {}", path.display()))?;
    if st.st_uid != me() {
        bail!(
            "{} is owned by uid {}, not by this user ({}); refusing to use it (set {ENV} to \
             a directory of your own)",
            path.display(),
            st.st_uid,
            me()
        );
    }
    if st.st_mode & forbidden != 0 {
        bail!(
            "{} can be used by other users (mode {:o}): {fix}",
            path.display(),
            st.st_mode & 0o777
        );
    }
    Ok(())
}

impl PrivateDir {
    /// Open the state root (created by the caller). The user chose its path,
    /// so links on the way to it are theirs; the root itself must be theirs and
    /// writable by nobody else.
    fn open_root(path: &Path) -> anyhow::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the state directory {}", path.display()))?;
        check_owned(&fd, path, 0o022, "`chmod go-w` it")?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A private directory made by a test.
    #[cfg(test)]
    pub fn open_for_tests(path: &Path) -> Self {
        Self::open_root(path).unwrap()
    }

    /// The subdirectory `name`, created 0700 when missing and `create`;
    /// `None` when missing and not `create`. It must be a directory (not a
    /// link) owned by the current user with no access for anyone else.
    pub fn subdir(&self, name: &str, create: bool) -> anyhow::Result<Option<PrivateDir>> {
        check_name(name)?;
        let path = self.path.join(name);
        if create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                bail!("{} is not a directory (a link?); refusing to use it", path.display())
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("opening {}", path.display()));
            }
        };
        check_owned(&fd, &path, 0o077, "`chmod 700` it")?;
        Ok(Some(PrivateDir { fd, path }))
    }

    /// Create the subdirectory `name`, which must not exist yet.
    pub fn create_subdir(&self, name: &str) -> anyhow::Result<PrivateDir> {
        check_name(name)?;
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700))
            .map_err(std::io::Error::from)
            .with_context(|| format!("creating {}", self.path.join(name).display()))?;
        self.subdir(name, false)?
            .with_context(|| format!("{} vanished", self.path.join(name).display()))
    }

    /// Open a regular file in this directory without following a link.
    fn open_file(&self, name: &str, flags: OFlags) -> std::io::Result<File> {
        check_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                self.path.join(name).display()
            )));
        }
        Ok(File::from(fd))
    }

    /// Create `name` for appending; it must not exist.
    pub fn create_new(&self, name: &str) -> anyhow::Result<File> {
        self.open_file(
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::APPEND,
        )
        .with_context(|| format!("creating {}", self.path.join(name).display()))
    }

    /// Open `name` for appending, creating it when missing.
    pub fn append(&self, name: &str) -> anyhow::Result<File> {
        self.open_file(name, OFlags::CREATE | OFlags::WRONLY | OFlags::APPEND)
            .with_context(|| format!("opening {}", self.path.join(name).display()))
    }

    /// Open an existing `name` for appending.
    pub fn append_existing(&self, name: &str) -> anyhow::Result<File> {
        self.open_file(name, OFlags::WRONLY | OFlags::APPEND)
            .with_context(|| format!("opening {}", self.path.join(name).display()))
    }

    /// The contents of `name`; `None` when it does not exist.
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        use std::io::Read;
        match self.open_file(name, OFlags::RDONLY) {
            Ok(mut f) => {
                let mut bytes = vec![];
                f.read_to_end(&mut bytes)
                    .with_context(|| format!("reading {}", self.path.join(name).display()))?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("reading {}", self.path.join(name).display()))
            }
        }
    }

    /// Replace `name` with `bytes` atomically and durably: a reader sees the
    /// old or the new contents, and after a crash one of them is on disk.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        check_name(name)?;
        // `~` is in no key or fixed name, so a temp file never shadows one.
        let tmp = format!("{name}~{}", std::process::id());
        let path = self.path.join(name);
        let result = (|| -> std::io::Result<()> {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            let mut f = self.open_file(
                &tmp,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::TRUNC,
            )?;
            f.write_all(bytes)?;
            f.sync_all()?;
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            rustix::fs::fsync(&self.fd)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        result.with_context(|| format!("writing {}", path.display()))
    }

    /// Remove the file `name`; false when there was none.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        check_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => {
                rustix::fs::fsync(&self.fd)?;
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(std::io::Error::from(e))
                .with_context(|| format!("removing {}", self.path.join(name).display())),
        }
    }

    /// The names in this directory (not `.` and `..`), sorted.
    pub fn entries(&self) -> anyhow::Result<Vec<String>> {
        let dir = rustix::fs::Dir::read_from(&self.fd)
            .with_context(|| format!("listing {}", self.path.display()))?;
        let mut names = vec![];
        for entry in dir {
            let entry = entry.with_context(|| format!("listing {}", self.path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Make the entries created in this directory survive a crash.
    pub fn sync(&self) -> anyhow::Result<()> {
        rustix::fs::fsync(&self.fd).with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Hold an exclusive lock (flock on the file `name`) until the returned
    /// file is dropped; serialises writers across processes.
    pub fn lock(&self, name: &str) -> anyhow::Result<File> {
        let f = self.open_file(name, OFlags::CREATE | OFlags::RDWR)
            .with_context(|| format!("opening {}", self.path.join(name).display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", self.path.join(name).display()))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_tmp() -> (tempfile::TempDir, PrivateDir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let d = PrivateDir::open_root(t.path()).unwrap();
        (t, d)
    }

    #[test]
    fn links_are_refused_never_followed() {
        let (t, d) = private_tmp();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("x");
        std::os::unix::fs::symlink(&target, t.path().join("summary.json")).unwrap();
        assert!(d.write_atomic("summary.json", b"{}").is_ok(), "the link is replaced");
        assert!(!target.exists(), "nothing written through the link");
        assert!(
            !std::fs::symlink_metadata(t.path().join("summary.json"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        std::os::unix::fs::symlink(&target, t.path().join("a.log")).unwrap();
        assert!(d.append("a.log").is_err());
        assert!(d.read("a.log").is_err());
        std::os::unix::fs::symlink(outside.path(), t.path().join("logs")).unwrap();
        let err = d.subdir("logs", true).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(!target.exists());
        assert!(d.append("../x").is_err());
    }

    #[test]
    fn directories_are_private() {
        let (t, d) = private_tmp();
        let sub = d.subdir("runs", true).unwrap().unwrap();
        let mode = std::fs::metadata(sub.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::create_dir(t.path().join("open")).unwrap();
        std::fs::set_permissions(t.path().join("open"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let err = d.subdir("open", false).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        assert!(d.subdir("missing", false).unwrap().is_none());
    }

    #[test]
    fn keys_are_readable_and_distinct() {
        let a = workspace_key(Path::new("/work/app"));
        let b = workspace_key(Path::new("/other/app"));
        assert!(a.starts_with("app-") && b.starts_with("app-"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "app-".len() + 16);
        assert!(workspace_key(Path::new("/")).starts_with("root-"));
        assert!(workspace_key(Path::new("/x/a b")).starts_with("a_b-"));
    }
}
