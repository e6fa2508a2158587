//! Files the host writes are reached from an open directory one component at
//! a time, with `O_NOFOLLOW`: a link (planted by a stage, say) is refused,
//! never followed, and a path cannot be swapped for a link between a check and
//! a write, since nothing is looked up by full path again.

use anyhow::Context;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The modes of what a [`NoFollowDir`] creates.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

/// An open directory; its files and subdirectories are reached relative to
/// it, without following links.
#[derive(Debug)]
pub struct NoFollowDir {
    fd: OwnedFd,
    path: PathBuf,
    modes: Modes,
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

impl NoFollowDir {
    /// Open the directory at `path`, which the caller chose (links on the way
    /// to it are followed: it is where the walk starts, not a step of it).
    pub fn open(path: &Path, modes: Modes) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            modes,
        })
    }

    /// Walk from `root` down the relative path `rel` (plain components only),
    /// creating missing directories when `create`; any link on the way is
    /// refused.
    pub fn open_beneath(
        root: &Path,
        rel: &Path,
        create: bool,
        modes: Modes,
    ) -> anyhow::Result<Self> {
        let mut dir =
            Self::open(root, modes).with_context(|| format!("opening {}", root.display()))?;
        for c in rel.components() {
            let name = match c {
                std::path::Component::Normal(n) => {
                    n.to_str().context("a path that is not UTF-8")?
                }
                std::path::Component::CurDir => continue,
                _ => anyhow::bail!("`{}` is not a plain relative path", rel.display()),
            };
            dir = dir
                .subdir(name, create)?
                .with_context(|| format!("{} does not exist", dir.path.join(name).display()))?;
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Owner and mode of this directory.
    pub fn stat(&self) -> std::io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// The subdirectory `name`, created when missing and `create`; `None`
    /// when missing and not `create`. A link there is an error.
    pub fn subdir(&self, name: &str, create: bool) -> anyhow::Result<Option<Self>> {
        check_name(name)?;
        let path = self.path.join(name);
        if create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(self.modes.dir)) {
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
                anyhow::bail!(
                    "{} is not a directory (a link?); refusing to use it",
                    path.display()
                )
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("opening {}", path.display()));
            }
        };
        Ok(Some(Self {
            fd,
            path,
            modes: self.modes,
        }))
    }

    /// Create the subdirectory `name`, which must not exist yet.
    pub fn create_subdir(&self, name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(self.modes.dir))
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
            Mode::from_raw_mode(self.modes.file),
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
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.join(name).display())),
        }
    }

    /// Replace `name` with `bytes` atomically and durably: a reader sees the
    /// old or the new contents, and after a crash one of them is on disk.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        check_name(name)?;
        // `~` is in no state key or fixed name, so a temp file never shadows
        // one. Unique per call, not just per process: the tasks of one
        // `gantry serve` write the same names at the same time.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!("{name}~{}-{n}", std::process::id());
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

    /// Write `bytes` to the new file `name` (it must not exist).
    pub fn write_new(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.open_file(name, OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY)
            .and_then(|mut f| f.write_all(bytes))
            .with_context(|| format!("writing {}", self.path.join(name).display()))
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

    /// Remove `name` and, if it is a directory, everything in it; a link is
    /// removed itself, never what it points to.
    pub fn remove_all(&self, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        let st = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(std::io::Error::from(e).into()),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = self
                .subdir(name, false)?
                .with_context(|| format!("{} vanished", self.path.join(name).display()))?;
            for entry in sub.entries()? {
                sub.remove_all(&entry)?;
            }
            rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                .map_err(std::io::Error::from)
                .with_context(|| format!("removing {}", self.path.join(name).display()))?;
        } else {
            self.remove(name)?;
        }
        Ok(())
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
        let f = self
            .open_file(name, OFlags::CREATE | OFlags::RDWR)
            .with_context(|| format!("opening {}", self.path.join(name).display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", self.path.join(name).display()))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: Modes = Modes {
        dir: 0o755,
        file: 0o644,
    };

    #[test]
    fn concurrent_atomic_writes_of_one_name_all_succeed() {
        let root = tempfile::tempdir().unwrap();
        let dir = std::sync::Arc::new(NoFollowDir::open(root.path(), MODES).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        dir.write_atomic("workspace", format!("{i}\n").as_bytes())?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_walk_refuses_links_and_remove_all_removes_links_not_targets() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let err = NoFollowDir::open_beneath(root.path(), Path::new("link/sub"), true, MODES)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(!outside.path().join("sub").exists());
        let made = NoFollowDir::open_beneath(root.path(), Path::new("a/b"), true, MODES).unwrap();
        made.write_new("f", b"1").unwrap();
        assert!(made.write_new("f", b"2").is_err(), "never overwrites");
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/b/out")).unwrap();
        let top = NoFollowDir::open(root.path(), MODES).unwrap();
        top.remove_all("a").unwrap();
        top.remove_all("link").unwrap();
        assert!(!root.path().join("a").exists() && !root.path().join("link").exists());
        assert!(
            outside.path().join("keep").exists(),
            "what links pointed to is untouched"
        );
    }
}
