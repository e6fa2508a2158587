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
//! `O_NOFOLLOW` ([`crate::nofollow`]): a link in there is refused, never
//! followed.

use crate::nofollow::{Modes, NoFollowDir};
use anyhow::{Context, bail};
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
    format!(
        "{}-{}",
        if name.is_empty() { "ws" } else { name },
        &hash[..16]
    )
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
/// reached relative to it, without following links ([`NoFollowDir`]'s
/// operations, creating 0600 files), and its subdirectories are checked the
/// same way when opened.
#[derive(Debug)]
pub struct PrivateDir(NoFollowDir);

impl std::ops::Deref for PrivateDir {
    type Target = NoFollowDir;
    fn deref(&self) -> &NoFollowDir {
        &self.0
    }
}

/// Modes of what the host creates in the state directory: nobody else's.
const PRIVATE: Modes = Modes {
    dir: 0o700,
    file: 0o600,
};

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuse an open directory that another user owns or that has any of the
/// `forbidden` mode bits: someone else could then change what gantry trusts.
fn check_owned(dir: &NoFollowDir, forbidden: u32, fix: &str) -> anyhow::Result<()> {
    let path = dir.path();
    let st = dir
        .stat()
        .with_context(|| format!("checking {}", path.display()))?;
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
        let dir = NoFollowDir::open(path, PRIVATE)
            .with_context(|| format!("opening the state directory {}", path.display()))?;
        check_owned(&dir, 0o022, "`chmod go-w` it")?;
        Ok(Self(dir))
    }

    /// A private directory the caller just made for itself (e.g. a temp dir,
    /// mode 0700): checked like the state root.
    pub fn open_private(path: &Path) -> anyhow::Result<Self> {
        Self::open_root(path)
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
        let Some(dir) = self.0.subdir(name, create)? else {
            return Ok(None);
        };
        check_owned(&dir, 0o077, "`chmod 700` it")?;
        Ok(Some(PrivateDir(dir)))
    }

    /// Create the subdirectory `name`, which must not exist yet.
    pub fn create_subdir(&self, name: &str) -> anyhow::Result<PrivateDir> {
        let dir = self.0.create_subdir(name)?;
        check_owned(&dir, 0o077, "`chmod 700` it")?;
        Ok(PrivateDir(dir))
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
        assert!(
            d.write_atomic("summary.json", b"{}").is_ok(),
            "the link is replaced"
        );
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
        std::fs::set_permissions(
            t.path().join("open"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let err = d.subdir("open", false).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        assert!(d.subdir("missing", false).unwrap().is_none());
    }

    #[test]
    fn keys_are_readable_and_distinct() {
        let a = workspace_key(Path::new("/srv/app"));
        let b = workspace_key(Path::new("/other/app"));
        assert!(a.starts_with("app-") && b.starts_with("app-"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "app-".len() + 16);
        assert!(workspace_key(Path::new("/")).starts_with("root-"));
        assert!(workspace_key(Path::new("/x/a b")).starts_with("a_b-"));
    }
}
