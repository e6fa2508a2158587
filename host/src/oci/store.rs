//! Pulled components, cached by digest next to the compile cache
//! (`<cache dir>/plugins/sha256/<hex>.wasm`), so that a locked pipeline runs
//! offline once its plugins were pulled. Only checked components are stored,
//! each written to a temp file and renamed; every read is checked against
//! its digest again.

use crate::runtime::cache::{owned_by_me_and_private, write_private};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub struct Store {
    dir: Option<PathBuf>,
}

impl Store {
    /// The store under the cache root `root`; `None` (or an unusable
    /// directory) keeps pulled plugins in memory only.
    pub fn open(root: Option<&Path>) -> Self {
        let dir = root
            .map(|r| r.join("plugins").join("sha256"))
            .filter(|dir| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .is_ok()
                    && owned_by_me_and_private(dir).is_ok()
            });
        Self { dir }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        Some(self.dir.as_ref()?.join(format!("{hex}.wasm")))
    }

    /// The cached component with this digest, if it is there intact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest)?;
        owned_by_me_and_private(&path).ok()?;
        let bytes = std::fs::read(&path).ok()?;
        if super::artifact::sha256(&bytes) == digest {
            Some(bytes)
        } else {
            // Damaged: pull again rather than trust it.
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Keep `bytes` (already checked against `digest`); a failure only costs
    /// a later pull.
    pub fn put(&self, digest: &str, bytes: &[u8]) {
        if let Some(path) = self.path(digest) {
            let _ = write_private(&path, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_by_digest_and_drops_damaged_entries() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(Some(root.path()));
        let d = super::super::artifact::sha256(b"component");
        assert!(store.get(&d).is_none());
        store.put(&d, b"component");
        assert_eq!(store.get(&d).unwrap(), b"component");
        let file = store.path(&d).unwrap();
        std::fs::write(&file, b"tampered").unwrap();
        assert!(store.get(&d).is_none());
        assert!(!file.exists());
    }
}
