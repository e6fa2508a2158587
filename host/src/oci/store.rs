//! Pulled components, cached by digest next to the compile cache
//! (`<cache dir>/plugins/sha256/<hex>.wasm`), so that a locked pipeline runs
//! offline once its plugins were pulled. Only checked components are stored,
//! each written to a temp file and renamed; every read is checked against
//! its digest again.
//!
//! Beside them, the cosign signatures that verified
//! (`<cache dir>/plugins/signatures/<manifest hex>.<key fingerprint hex>.json`):
//! payload and signature, verified again with the key on every use, so an
//! offline run still checks its plugins cryptographically, and another key
//! finds no entry and asks the registry.

use super::signature::Evidence;
use crate::runtime::cache::{owned_by_me_and_private, write_private};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub struct Store {
    dir: Option<PathBuf>,
    signatures: Option<PathBuf>,
}

/// `dir`, created private, if it is usable.
fn private_dir(dir: PathBuf) -> Option<PathBuf> {
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_ok();
    (made && owned_by_me_and_private(&dir).is_ok()).then_some(dir)
}

impl Store {
    /// The store under the cache root `root`; `None` (or an unusable
    /// directory) keeps pulled plugins in memory only.
    pub fn open(root: Option<&Path>) -> Self {
        let dir = root.and_then(|r| private_dir(r.join("plugins").join("sha256")));
        let signatures = root.and_then(|r| private_dir(r.join("plugins").join("signatures")));
        Self { dir, signatures }
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

impl Store {
    fn signature_path(&self, manifest_digest: &str, fingerprint: &str) -> Option<PathBuf> {
        let m = manifest_digest.strip_prefix("sha256:")?;
        let k = fingerprint.strip_prefix("sha256:")?;
        Some(self.signatures.as_ref()?.join(format!("{m}.{k}.json")))
    }

    /// The signature of `manifest_digest` by the key `fingerprint` that
    /// verified before; the caller verifies it again.
    pub fn get_signature(&self, manifest_digest: &str, fingerprint: &str) -> Option<Evidence> {
        let path = self.signature_path(manifest_digest, fingerprint)?;
        owned_by_me_and_private(&path).ok()?;
        serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
    }

    /// Keep a signature that verified; a failure only costs a registry visit.
    pub fn put_signature(&self, manifest_digest: &str, fingerprint: &str, evidence: &Evidence) {
        if let Some(path) = self.signature_path(manifest_digest, fingerprint) {
            let json = serde_json::to_vec_pretty(evidence).expect("JSON");
            let _ = write_private(&path, &json);
        }
    }

    /// Drop a kept signature that no longer verifies.
    pub fn drop_signature(&self, manifest_digest: &str, fingerprint: &str) {
        if let Some(path) = self.signature_path(manifest_digest, fingerprint) {
            let _ = std::fs::remove_file(path);
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
