//! Plugins by OCI reference: `uses: oci://registry/repo:tag` (or an alias
//! under `plugins:` with credentials), pulled in the CNCF Wasm artifact
//! layout, pinned in `gantry.lock`, verified by digest before anything is
//! compiled, and cached by digest.
//!
//! - [`reference`][reference]: parsing `oci://...`.
//! - [`client`][client]: the distribution API with auth and retries.
//! - [`artifact`][artifact]: the wasm artifact layout (what `wkg oci` reads and writes).
//! - [`lockfile`][lockfile]: `gantry.lock`.
//! - [`store`][store]: the per-user cache of pulled components.
//! - [`fetch`][fetch]: resolving a plan's OCI plugins against the lock.
//! - [`push`][push]: `gantry plugins push`.
//! - [`signature`][signature]: cosign signatures (`verify: { key: ... }`).

pub mod artifact;
pub mod client;
pub mod fetch;
pub mod lockfile;
pub mod push;
pub mod reference;
pub mod signature;
pub mod store;

pub use reference::Reference;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// Everything that can go wrong talking to a registry, in words a user can
/// act on. Secret values never appear.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot reach {url}: {reason}")]
    Connect {
        url: String,
        reason: String,
        /// A refused connection may be a restart; an unknown host is not.
        retryable: bool,
    },
    #[error("{registry} refused access ({status}); tried {tried}: {detail}")]
    Unauthorized {
        registry: String,
        status: u16,
        tried: String,
        detail: String,
    },
    #[error("{reference}: no such {what} in the registry ({detail})")]
    NotFound {
        what: &'static str,
        reference: String,
        detail: String,
    },
    #[error(
        "{reference} is not a WebAssembly component artifact: it is {found} (expected an OCI manifest \
         with config `application/vnd.wasm.config.v0+json` and one `application/wasm` layer, as `wkg oci push` writes)"
    )]
    NotWasm { reference: String, found: String },
    #[error("{what} of {reference} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{request}: {status}: {detail}")]
    Status {
        request: String,
        status: String,
        detail: String,
    },
    #[error("{request}: gave up after {attempts} attempts; last: {last}")]
    GaveUp {
        request: String,
        attempts: u32,
        last: String,
    },
    #[error("{url} sent more than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error(
        "refusing it: no valid cosign signature by the key {key} for {reference}@{digest}: {reasons}"
    )]
    Unsigned {
        reference: String,
        digest: String,
        key: String,
        reasons: String,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Tls(String),
}

/// Registry credentials by secret name (the manifest's `secrets:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretAuth {
    pub username_secret: String,
    pub password_secret: String,
}

/// A plugin pulled from a registry, as the plan names it. Its bytes are
/// filled in by [`fetch`] before plugins are loaded.
#[derive(Debug)]
pub struct OciPlugin {
    /// The reference as written (the lock's key), with the `oci://` prefix.
    pub written: String,
    pub reference: Reference,
    pub auth: Option<SecretAuth>,
    /// Plain HTTP (loopback registries only; the plan checks).
    pub insecure: bool,
    /// `verify: { key }`: refused unless signed by this key.
    pub verify: Option<Arc<signature::TrustedKey>>,
    /// The verified component, once fetched.
    pub bytes: OnceLock<Arc<[u8]>>,
}

impl OciPlugin {
    pub fn new(written: &str, auth: Option<SecretAuth>, insecure: bool) -> Result<Self, String> {
        let reference = Reference::parse(written)?;
        let written = if written.starts_with(reference::SCHEME) {
            written.to_string()
        } else {
            format!("{}{written}", reference::SCHEME)
        };
        Ok(Self {
            written,
            reference,
            auth,
            insecure,
            verify: None,
            bytes: OnceLock::new(),
        })
    }
}

impl OciPlugin {
    /// Require a signature by `key`.
    pub fn with_key(mut self, key: signature::TrustedKey) -> Self {
        self.verify = Some(Arc::new(key));
        self
    }

    fn identity(&self) -> (&str, &Option<SecretAuth>, bool, Option<&str>) {
        let key = self.verify.as_ref().map(|k| k.fingerprint.as_str());
        (&self.written, &self.auth, self.insecure, key)
    }
}

// Two uses of the same reference with the same access and key are one plugin.
impl PartialEq for OciPlugin {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}
impl Eq for OciPlugin {}
impl Hash for OciPlugin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}
