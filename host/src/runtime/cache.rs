//! The on-disk compile cache: a component is compiled by Cranelift once, and
//! later invocations deserialize the native code instead (~0.3 ms instead of
//! ~100+ ms).
//!
//! Deserializing is trusted native code, so gantry only deserializes files it
//! wrote itself, in a directory only the current user can write: the directory
//! must be owned by the user and not writable by group or others, and so must
//! each file (checked without following symlinks). Anything else is ignored and
//! the component is compiled in memory.
//!
//! The cache is bounded (`GANTRY_CACHE_MAX_SIZE`, default 1 GiB): a hit marks
//! its file as used (its mtime), and storing a new entry removes the least
//! recently used ones until the cache fits. A rebuilt Python or JavaScript
//! plugin is a new digest and ~40 MB of native code each time, so without the
//! bound the cache would only grow. `gantry cache prune` does the same on
//! demand.

use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained, for `--verbose` and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from the cache.
    Hit,
    /// Compiled and written to the cache.
    Stored,
    /// Compiled; the cache is off or unusable.
    Bypassed,
}

pub struct CompileCache {
    dir: Option<PathBuf>,
    /// Identifies the engine configuration and gantry build; part of every key.
    engine_key: String,
    /// The size the cache is pruned to after each new entry.
    max_size: u64,
}

/// The cache's bound when `GANTRY_CACHE_MAX_SIZE` does not set one.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// One compiled component in the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub size: u64,
    /// When it was last stored or loaded.
    pub used: std::time::SystemTime,
}

/// What a prune removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub removed: usize,
    pub freed: u64,
    /// What is left.
    pub entries: usize,
    pub size: u64,
}

impl CompileCache {
    /// The default location: `$GANTRY_CACHE_DIR`, else `$XDG_CACHE_HOME/gantry`,
    /// else `$HOME/.cache/gantry`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("GANTRY_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("gantry"))
    }

    /// Open (creating with mode 0700) the cache at `dir`; `None` disables caching.
    /// Returns the cache and, when `dir` is unusable, why.
    pub fn open(engine: &Engine, dir: Option<PathBuf>) -> (Self, Option<String>) {
        let engine_key = engine_key(engine);
        let (max_size, size_warning) = match std::env::var("GANTRY_CACHE_MAX_SIZE") {
            Ok(text) => match crate::units::parse_size(&text) {
                Ok(max) => (max, None),
                Err(e) => (
                    DEFAULT_MAX_SIZE,
                    Some(format!("GANTRY_CACHE_MAX_SIZE: {e}")),
                ),
            },
            Err(_) => (DEFAULT_MAX_SIZE, None),
        };
        let Some(dir) = dir else {
            return (
                Self {
                    dir: None,
                    engine_key,
                    max_size,
                },
                size_warning,
            );
        };
        let dir = dir.join("components");
        let checked = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            .and_then(|()| owned_by_me_and_private(&dir));
        match checked {
            Ok(()) => (
                Self {
                    dir: Some(dir),
                    engine_key,
                    max_size,
                },
                size_warning,
            ),
            Err(why) => (
                Self {
                    dir: None,
                    engine_key,
                    max_size,
                },
                Some(format!("compile cache disabled: {why}")),
            ),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Every compiled component in the cache (files gantry wrote: private and
    /// owned by this user), least recently used first.
    pub fn entries(&self) -> Vec<Entry> {
        let Some(dir) = &self.dir else {
            return vec![];
        };
        let mut entries: Vec<Entry> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .filter(|p| owned_by_me_and_private(p).is_ok())
            .filter_map(|path| {
                let meta = fs::symlink_metadata(&path).ok()?;
                Some(Entry {
                    size: meta.len(),
                    used: meta.modified().ok()?,
                    path,
                })
            })
            .collect();
        entries.sort_by_key(|e| (e.used, e.path.clone()));
        entries
    }

    /// Remove the least recently used entries until the cache holds at most
    /// `max` bytes; `keep` (the entry just written) is never removed.
    pub fn prune(&self, max: u64, keep: Option<&Path>) -> Pruned {
        let entries = self.entries();
        let mut size: u64 = entries.iter().map(|e| e.size).sum();
        let mut pruned = Pruned::default();
        let count = entries.len();
        for e in entries {
            if size <= max {
                break;
            }
            if Some(e.path.as_path()) == keep || fs::remove_file(&e.path).is_err() {
                continue;
            }
            size -= e.size;
            pruned.removed += 1;
            pruned.freed += e.size;
        }
        pruned.entries = count - pruned.removed;
        pruned.size = size;
        pruned
    }

    /// The component for `bytes` (whose sha256 is `digest`), from the cache or
    /// compiled now; `compiling` is called just before a compile starts.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
        compiling: &dyn Fn(),
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            compiling();
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Bypassed));
        };
        let hex = digest.trim_start_matches("sha256:");
        let path = dir.join(format!("{hex}-{}.cwasm", self.engine_key));
        if owned_by_me_and_private(&path).is_ok() {
            // SAFETY: the file was written by this user (see the module docs) with
            // this engine configuration (it is in the key); wasmtime still checks
            // the header and refuses an incompatible file.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                mark_used(&path);
                return Ok((component, CacheOutcome::Hit));
            }
        }
        compiling();
        let component = Component::new(engine, bytes)?;
        let stored = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|code| write_private(&path, &code));
        if stored.is_ok() {
            self.prune(self.max_size, Some(&path));
        }
        Ok((
            component,
            if stored.is_ok() {
                CacheOutcome::Stored
            } else {
                CacheOutcome::Bypassed
            },
        ))
    }
}

/// Mark a cache file as just used (its mtime), for least-recently-used pruning.
fn mark_used(path: &Path) {
    // Not following links: the file was checked to be a private regular file.
    if let Ok(f) = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// A short hash of everything that makes compiled code incompatible: the
/// engine's compile settings, the wasmtime version and this gantry build.
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Refuse paths that are symlinks, not owned by the effective user, or writable
/// by group or others.
pub(crate) fn owned_by_me_and_private(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symlink", path.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not {me}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by group or others", path.display()));
    }
    Ok(())
}

/// Write `bytes` to `path` with mode 0600, atomically (temp file + rename), so
/// that a concurrent reader never sees half a file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_files_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.cwasm");
        write_private(&f, b"data").unwrap();
        assert!(owned_by_me_and_private(&f).is_ok());
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            owned_by_me_and_private(&f)
                .unwrap_err()
                .contains("writable by group or others")
        );
        let link = dir.path().join("link.cwasm");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            owned_by_me_and_private(&link)
                .unwrap_err()
                .contains("symlink")
        );
    }

    #[test]
    fn pruning_removes_the_least_recently_used_but_never_the_new_entry() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let (cache, _) = CompileCache::open(&engine, Some(dir.path().to_path_buf()));
        let comps = cache.dir().unwrap().to_path_buf();
        let t = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + s);
        for (name, used) in [("old", 1), ("mid", 2), ("new", 3)] {
            let path = comps.join(format!("{name}.cwasm"));
            write_private(&path, &[0u8; 100]).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t(used))
                .unwrap();
        }
        // A file that is not private is not ours to count or remove.
        let foreign = comps.join("foreign.cwasm");
        fs::write(&foreign, [0u8; 100]).unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o666)).unwrap();
        let names = |c: &CompileCache| -> Vec<String> {
            c.entries()
                .iter()
                .map(|e| e.path.file_stem().unwrap().to_string_lossy().into())
                .collect()
        };
        assert_eq!(names(&cache), ["old", "mid", "new"]);

        // Using `old` makes `mid` the least recently used.
        mark_used(&comps.join("old.cwasm"));
        assert_eq!(names(&cache), ["mid", "new", "old"]);
        let pruned = cache.prune(200, None);
        assert_eq!(
            pruned,
            Pruned {
                removed: 1,
                freed: 100,
                entries: 2,
                size: 200
            }
        );
        assert_eq!(names(&cache), ["new", "old"]);

        // The entry just written stays even if it alone is over the bound.
        let pruned = cache.prune(0, Some(&comps.join("new.cwasm")));
        assert_eq!((pruned.removed, pruned.entries), (1, 1));
        assert_eq!(names(&cache), ["new"]);
        assert!(foreign.exists());
    }

    #[test]
    fn open_disables_a_world_writable_dir() {
        let dir = tempfile::tempdir().unwrap();
        let comps = dir.path().join("components");
        fs::create_dir(&comps).unwrap();
        fs::set_permissions(&comps, fs::Permissions::from_mode(0o777)).unwrap();
        let engine = Engine::default();
        let (cache, why) = CompileCache::open(&engine, Some(dir.path().to_path_buf()));
        assert!(cache.dir().is_none());
        assert!(why.unwrap().contains("writable by group or others"));
    }
}
