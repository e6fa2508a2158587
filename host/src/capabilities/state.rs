//! The `state` capability: small values the host keeps for stages between
//! runs (docker-deploy's live slot, for one), in the workspace's state
//! directory outside the workspace, so that no stage can forge or roll them
//! back by writing files. Keys are granted by prefix
//! (`permissions.state: [docker-deploy/]`); values and key counts are capped.

use super::{Subject, configure_names};
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use crate::runtime::bindings::state as wit;
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;
use crate::state_dir::PrivateDir;
use std::sync::{Arc, Mutex};

/// Longest key, in bytes (a key is a file name, whose limit is 255).
pub const MAX_KEY: usize = 200;
/// Largest value.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most keys one workspace holds.
pub const MAX_KEYS: usize = 1024;

/// Why a key is malformed; `None` when it is fine. Keys become file names
/// (`/` as `%`), so they are kept to characters that need no escaping and
/// segments that name no directory.
pub fn check_key(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Some(format!("a state key is 1 to {MAX_KEY} characters"));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Some(format!(
            "state key `{key}` may hold only a-z A-Z 0-9 . _ - /"
        ));
    }
    // Only the last segment may be empty (`docker-deploy/`, a prefix).
    let segments: Vec<&str> = key.split('/').collect();
    let last = segments.len() - 1;
    if segments
        .iter()
        .enumerate()
        .any(|(i, s)| matches!(*s, "." | "..") || (s.is_empty() && i != last))
    {
        return Some(format!(
            "state key `{key}` must not start with `/` or have empty, `.` or `..` segments"
        ));
    }
    None
}

/// The key prefixes a stage may use.
#[derive(Debug, Clone, Default)]
pub struct StateGrant {
    pub prefixes: Vec<String>,
}

impl StateGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let check = |prefix: &str| match check_key(prefix) {
            None => Ok(()),
            Some(why) => Err((
                why.replace("state key", "state prefix"),
                Some(
                    "e.g. `state: [docker-deploy/]` grants the keys under `docker-deploy/`".into(),
                ),
            )),
        };
        Self {
            prefixes: configure_names(file, &format!("{field}.state"), &perms.state, check, errors),
        }
    }

    /// Whether `key` is within a granted prefix: `p/` grants what starts with
    /// it; `p` grants `p` and what is under `p/` (not `px`).
    pub fn allows(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| {
            key == p
                || (key.starts_with(p.as_str())
                    && (p.ends_with('/') || key.as_bytes().get(p.len()) == Some(&b'/')))
        })
    }
}

/// The grant to suggest for `key`: its first segment as a prefix.
fn suggestion(key: &str) -> String {
    match key.split_once('/') {
        Some((first, _)) => format!("{first}/"),
        None => key.to_string(),
    }
}

/// A workspace's state values: one file per key in `state/`.
pub struct StateStore {
    dir: PrivateDir,
    /// Serialises writers of this process; the lock file, other processes.
    local: Mutex<()>,
}

fn file_name(key: &str) -> String {
    key.replace('/', "%")
}

fn key_of(file: &str) -> Option<String> {
    let key = file.replace('%', "/");
    check_key(&key).is_none().then_some(key)
}

// `~` is in no key, so the lock file is never listed as one.
const LOCK: &str = "~lock";

impl StateStore {
    pub fn new(dir: PrivateDir) -> Self {
        Self {
            dir,
            local: Mutex::new(()),
        }
    }

    pub fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.dir.read(&file_name(key))
    }

    /// Every key set, sorted.
    pub fn keys(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .dir
            .entries()?
            .iter()
            .filter_map(|f| key_of(f))
            .collect())
    }

    /// Run `f` with the writers of every process held off.
    fn exclusive<R>(&self, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
        let _local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let _file = self.dir.lock(LOCK)?;
        f()
    }

    /// Set `key` to `value` when its value is `expected` (any value when
    /// `expected` is `None`); `Ok(false)` when it was not. Errors say which cap
    /// a write would exceed.
    pub fn set(
        &self,
        key: &str,
        value: &[u8],
        expected: Option<Option<&[u8]>>,
    ) -> anyhow::Result<Result<bool, String>> {
        if value.len() > MAX_VALUE {
            return Ok(Err(format!(
                "a state value of {} bytes is more than the {} a value may hold",
                value.len(),
                crate::units::format_size(MAX_VALUE as u64)
            )));
        }
        self.exclusive(|| {
            let current = self.get(key)?;
            if let Some(expected) = expected
                && current.as_deref() != expected
            {
                return Ok(Ok(false));
            }
            if current.is_none() && self.keys()?.len() >= MAX_KEYS {
                return Ok(Err(format!(
                    "this workspace already holds {MAX_KEYS} state keys, the most it may; \
                     delete some with `gantry state delete`"
                )));
            }
            self.dir.write_atomic(&file_name(key), value)?;
            Ok(Ok(true))
        })
    }

    pub fn delete(&self, key: &str) -> anyhow::Result<bool> {
        self.exclusive(|| self.dir.remove(&file_name(key)))
    }
}

/// One instance's view: its grant, the store, who it is.
pub struct StateState {
    pub grant: StateGrant,
    /// None where there is no run (describe()).
    pub store: Option<Arc<StateStore>>,
    pub subject: Subject,
}

impl StateState {
    /// The store, when `key` is well-formed and granted for `what` (`to read`,
    /// `to write`).
    fn check(&self, key: &str, what: &str) -> Result<&StateStore, HostError> {
        if let Some(why) = check_key(key) {
            return Err(HostError::Invalid(why));
        }
        if !self.grant.allows(key) {
            return Err(HostError::Denied(self.subject.deny(
                what,
                &format!("state key `{key}`"),
                &format!("state: [{}]", suggestion(key)),
            )));
        }
        self.store
            .as_deref()
            .ok_or_else(|| HostError::Unavailable("no state outside a run".into()))
    }
}

fn failed(e: anyhow::Error) -> HostError {
    HostError::Failed(format!("{e:#}"))
}

impl wit::Host for StageState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        Ok(self
            .state
            .check(&key, "to read")
            .and_then(|s| s.get(&key).map_err(failed)))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.state.check(&key, "to write").and_then(|s| {
            match s.set(&key, &value, None).map_err(failed)? {
                Ok(_) => Ok(()),
                Err(why) => Err(HostError::Invalid(why)),
            }
        }))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self
            .state
            .check(&key, "to delete")
            .and_then(|s| s.delete(&key).map(drop).map_err(failed)))
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, HostError>> {
        Ok(self.state.check(&key, "to write").and_then(|s| {
            match s
                .set(&key, &value, Some(expected.as_deref()))
                .map_err(failed)?
            {
                Ok(done) => Ok(done),
                Err(why) => Err(HostError::Invalid(why)),
            }
        }))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        Ok(self.state.check(&prefix, "to list").and_then(|s| {
            Ok(s.keys()
                .map_err(failed)?
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
                .collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain() {
        assert!(check_key("docker-deploy/app").is_none());
        assert!(check_key("docker-deploy/").is_none());
        for bad in [
            "",
            "/abs",
            "a/../b",
            "a//b",
            "..",
            "a b",
            "a%b",
            "a~b",
            &"k".repeat(201),
        ] {
            assert!(check_key(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn prefixes_grant_what_is_under_them() {
        let g = StateGrant {
            prefixes: vec!["docker-deploy/".into(), "app".into()],
        };
        assert!(g.allows("docker-deploy/hello"));
        assert!(!g.allows("docker-deployx/hello"));
        assert!(g.allows("app") && g.allows("app/x"));
        assert!(!g.allows("apple"));
        assert!(!StateGrant::default().allows("x"));
        assert_eq!(suggestion("docker-deploy/hello"), "docker-deploy/");
    }

    #[test]
    fn values_and_counts_are_capped_and_cas_compares() {
        let t = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = StateStore::new(PrivateDir::open_for_tests(t.path()));
        assert_eq!(store.set("a/b", b"1", None).unwrap(), Ok(true));
        assert_eq!(store.get("a/b").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.set("a/b", b"2", Some(Some(b"0"))).unwrap(), Ok(false));
        assert_eq!(store.set("a/b", b"2", Some(Some(b"1"))).unwrap(), Ok(true));
        assert_eq!(store.set("new", b"x", Some(None)).unwrap(), Ok(true));
        assert_eq!(store.keys().unwrap(), vec!["a/b".to_string(), "new".into()]);
        let big = vec![0u8; MAX_VALUE + 1];
        assert!(
            store
                .set("a/b", &big, None)
                .unwrap()
                .unwrap_err()
                .contains("64.0 KiB")
        );
        assert!(store.delete("a/b").unwrap());
        assert!(!store.delete("a/b").unwrap());
    }
}
