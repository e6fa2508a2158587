//! Turning a plan's OCI plugins into verified bytes: the lock's digests
//! (or, when a reference is not locked yet, the registry's answer, then
//! pinned), the cache by digest, and the registry only when the cache does
//! not have the component. Nothing is compiled before its digest is checked.
//!
//! A plugin with `verify: { key }` is also refused, before its component is
//! pulled or taken from the cache, unless a cosign signature by that key over
//! its manifest digest (the locked one, when locked) verifies: one kept in the
//! cache from an earlier check, verified again, or else one from the registry.

use super::artifact::{self, MAX_COMPONENT};
use super::client::{Client, Credentials, RetryNote};
use super::lockfile::{Lockfile, Pin};
use super::signature;
use super::store::Store;
use super::{OciError, OciPlugin};
use crate::capabilities::secrets::SecretStore;
use crate::manifest::ManifestFile;
use crate::pipeline::manifest_dir;
use crate::plan::Plan;
use crate::plugins::PluginSource;
use crate::report::Reporter;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// How a command treats `gantry.lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `--locked`: every reference must be pinned, and tags must still
    /// resolve to their pins; nothing is written.
    Locked,
    /// `run`: pins what is not pinned yet and writes the lock.
    Update,
    /// `validate`, `plan`: resolves what is not pinned, writes nothing.
    ReadOnly,
}

/// Where retries are reported.
fn retry_note() -> RetryNote {
    Arc::new(|line: &str| eprintln!("warn: {line}"))
}

/// A client for `plugin`'s registry, with its credentials from `secrets`.
fn client_for(
    plugin: &OciPlugin,
    secrets: &SecretStore,
    environment: &str,
) -> Result<Client, String> {
    let credentials = match &plugin.auth {
        None => None,
        Some(a) => {
            let value = |name: &str| {
                secrets.value(name).map(str::to_string).ok_or_else(|| {
                    format!(
                        "{}: secret `{name}` (registry credentials) has no value in environment `{environment}`: \
                         check its source under `secrets:`",
                        plugin.written
                    )
                })
            };
            Some(Credentials {
                username: value(&a.username_secret)?,
                password: value(&a.password_secret)?,
                origin: format!("secrets `{}`/`{}`", a.username_secret, a.password_secret),
            })
        }
    };
    Client::new(
        &plugin.reference.registry,
        plugin.insecure,
        credentials,
        retry_note(),
    )
    .map_err(|e| format!("{}: {e}", plugin.written))
}

/// When `plugin` asks for a signature: check that one by its key over
/// `manifest_digest` verifies, from the cache (verified again) or else the
/// registry (then kept). Fails closed.
async fn check_signature(
    client: &Client,
    plugin: &OciPlugin,
    manifest_digest: &str,
    store: &Store,
    reporter: &dyn Reporter,
) -> Result<(), OciError> {
    let Some(key) = &plugin.verify else {
        return Ok(());
    };
    if let Some(kept) = cached_signature(plugin, manifest_digest, store, reporter) {
        return kept;
    }
    signature_from_registry(client, plugin, key, manifest_digest, store, reporter).await
}

/// Find and verify a signature in the registry, and keep it.
async fn signature_from_registry(
    client: &Client,
    plugin: &OciPlugin,
    key: &signature::TrustedKey,
    manifest_digest: &str,
    store: &Store,
    reporter: &dyn Reporter,
) -> Result<(), OciError> {
    let evidence = signature::find(client, &plugin.reference, manifest_digest, key).await?;
    store.put_signature(manifest_digest, &key.fingerprint, &evidence);
    reporter.note(&format!(
        "{}: cosign signature by {} verified ({})",
        plugin.written,
        key.describe(),
        evidence.source
    ));
    Ok(())
}

/// The verdict on a signature kept in the cache, if there is one. One that no
/// longer verifies (a damaged or forged entry) is dropped and refused.
fn cached_signature(
    plugin: &OciPlugin,
    manifest_digest: &str,
    store: &Store,
    reporter: &dyn Reporter,
) -> Option<Result<(), OciError>> {
    let key = plugin.verify.as_ref()?;
    let kept = store.get_signature(manifest_digest, &key.fingerprint)?;
    Some(match kept.check(key, manifest_digest) {
        Ok(()) => {
            reporter.debug(&format!(
                "{}: cosign signature by {} verified again from the plugin cache ({})",
                plugin.written,
                key.describe(),
                kept.source
            ));
            Ok(())
        }
        Err(e) => {
            store.drop_signature(manifest_digest, &key.fingerprint);
            Err(OciError::Unsigned {
                reference: plugin.reference.to_string(),
                digest: manifest_digest.to_string(),
                key: key.describe(),
                reasons: format!("the signature kept in the plugin cache: {e}"),
            })
        }
    })
}

/// Resolve `reference` (tag or digest) to a pin and the checked component
/// (whose signature, when asked for, verified before it was pulled).
pub async fn resolve(
    client: &Client,
    plugin: &OciPlugin,
    store: &Store,
    reporter: &dyn Reporter,
) -> Result<(Pin, Vec<u8>), OciError> {
    let pin = resolve_manifest(client, plugin, store, reporter).await?;
    let bytes = pull_layer(client, plugin, &pin.layer_digest).await?;
    Ok((pin, bytes))
}

/// Resolve `reference` to its pin, the signature checked when asked for,
/// without pulling the component.
pub async fn resolve_manifest(
    client: &Client,
    plugin: &OciPlugin,
    store: &Store,
    reporter: &dyn Reporter,
) -> Result<Pin, OciError> {
    let r = &plugin.reference;
    let manifest = client.get_manifest(&r.repository, r.manifest_ref()).await?;
    let manifest_digest = artifact::sha256(&manifest.body);
    if let Some(want) = &r.digest
        && *want != manifest_digest
    {
        return Err(OciError::DigestMismatch {
            what: "the manifest",
            reference: r.to_string(),
            expected: want.clone(),
            actual: manifest_digest,
        });
    }
    let layer = artifact::wasm_layer(&r.to_string(), &manifest.body, content_type(&manifest))?;
    check_signature(client, plugin, &manifest_digest, store, reporter).await?;
    Ok(Pin {
        reference: plugin.written.clone(),
        manifest_digest,
        layer_digest: layer.digest,
    })
}

/// Pull exactly what `pin` names, checking both digests.
async fn pull_pinned(client: &Client, plugin: &OciPlugin, pin: &Pin) -> Result<Vec<u8>, OciError> {
    let r = plugin.reference.at_digest(&pin.manifest_digest);
    let manifest = client
        .get_manifest(&r.repository, &pin.manifest_digest)
        .await?;
    let actual = artifact::sha256(&manifest.body);
    if actual != pin.manifest_digest {
        return Err(OciError::DigestMismatch {
            what: "the manifest",
            reference: r.to_string(),
            expected: pin.manifest_digest.clone(),
            actual,
        });
    }
    let layer = artifact::wasm_layer(&r.to_string(), &manifest.body, content_type(&manifest))?;
    if layer.digest != pin.layer_digest {
        return Err(OciError::DigestMismatch {
            what: "the layer the manifest names",
            reference: r.to_string(),
            expected: pin.layer_digest.clone(),
            actual: layer.digest,
        });
    }
    pull_layer(client, plugin, &pin.layer_digest).await
}

/// The blob `digest`, refused unless its bytes hash to it.
async fn pull_layer(
    client: &Client,
    plugin: &OciPlugin,
    digest: &str,
) -> Result<Vec<u8>, OciError> {
    let bytes = client
        .get_blob(&plugin.reference.repository, digest, MAX_COMPONENT as usize)
        .await?;
    let actual = artifact::sha256(&bytes);
    if actual != digest {
        return Err(OciError::DigestMismatch {
            what: "the component",
            reference: plugin.reference.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes.to_vec())
}

fn content_type(r: &super::client::Response) -> &str {
    r.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Bytes that passed their digest must also be a component before they are
/// cached or compiled.
fn check_component(plugin: &OciPlugin, bytes: &[u8]) -> Result<(), String> {
    crate::runtime::loader::check_header(&plugin.written, bytes).map_err(|e| e.to_string())
}

/// One distinct OCI plugin: a representative, every unit's copy of it (each
/// gets the bytes), and the fields that use it.
type Group = (Arc<OciPlugin>, Vec<Arc<OciPlugin>>, Vec<String>);

/// Every OCI plugin of `plan` (one entry per distinct plugin) with the
/// fields that use it.
fn oci_units(plan: &Plan) -> Vec<Group> {
    let mut groups: Vec<Group> = vec![];
    for unit in plan.stages.iter().chain(&plan.sinks) {
        let PluginSource::Oci(p) = &unit.source else {
            continue;
        };
        match groups.iter_mut().find(|(k, _, _)| **k == **p) {
            Some((_, all, fields)) => {
                all.push(p.clone());
                fields.push(unit.field.clone());
            }
            None => groups.push((p.clone(), vec![p.clone()], vec![unit.field.clone()])),
        }
    }
    groups
}

/// Fetch and verify every OCI plugin of `plan` under `mode`; on success each
/// plugin's bytes are set. Errors are whole sentences, one per plugin.
pub async fn fetch_plan(
    plan: &Plan,
    cache_root: Option<&Path>,
    mode: LockMode,
    reporter: &dyn Reporter,
) -> Result<(), Vec<String>> {
    let groups = oci_units(plan);
    if groups.is_empty() {
        return Ok(());
    }
    let lock_path = Lockfile::path_for(&plan.manifest);
    let mut lock = Lockfile::read(&lock_path).map_err(|e| vec![format!("{e:#}")])?;
    let store = Store::open(cache_root);
    let secrets = SecretStore::resolve(&plan.secrets, &manifest_dir(&plan.manifest));
    let lock_name = lock_path.display().to_string();
    let mut errors = vec![];
    let mut pinned = vec![];
    for (plugin, all, fields) in &groups {
        let who = format!("{} ({})", fields.join(", "), plugin.written);
        let result = fetch_one(
            plugin, &mut lock, &store, &secrets, plan, mode, &lock_name, reporter,
        )
        .await;
        match result {
            Ok((bytes, new_pin)) => {
                if let Some(pin) = new_pin {
                    pinned.push(pin);
                }
                let bytes: Arc<[u8]> = bytes.into();
                for p in all {
                    let _ = p.bytes.set(bytes.clone());
                }
            }
            Err(e) => errors.push(format!("{who}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !pinned.is_empty() {
        let list = pinned
            .iter()
            .map(|p| format!("{} → {}", p.reference, p.manifest_digest))
            .collect::<Vec<_>>()
            .join(", ");
        match mode {
            LockMode::Update => {
                lock.write(&lock_path).map_err(|e| vec![format!("{e:#}")])?;
                reporter.note(&format!("{lock_name}: pinned {list}"));
            }
            _ => reporter.note(&format!(
                "not in {lock_name}, resolved now: {list} (`gantry lock` or `gantry run` pins it)"
            )),
        }
    }
    Ok(())
}

/// The bytes of one plugin, and its new pin when it had none.
#[allow(clippy::too_many_arguments)]
async fn fetch_one(
    plugin: &OciPlugin,
    lock: &mut Lockfile,
    store: &Store,
    secrets: &SecretStore,
    plan: &Plan,
    mode: LockMode,
    lock_name: &str,
    reporter: &dyn Reporter,
) -> Result<(Vec<u8>, Option<Pin>), String> {
    let pin = lock.pins.get(&plugin.written).cloned();
    // A reference that names a digest the lock does not pin needs an update.
    let stale = match (&pin, &plugin.reference.digest) {
        (Some(p), Some(d)) => p.manifest_digest != *d,
        _ => false,
    };
    let client = || client_for(plugin, secrets, &plan.environment);
    if mode == LockMode::Locked {
        let Some(pin) = pin.filter(|_| !stale) else {
            return Err(format!(
                "not pinned in {lock_name}, and --locked forbids updating it: run `gantry lock {}`",
                plan.manifest.display()
            ));
        };
        // --locked promises the manifest and the registry agree with the lock:
        // a tag is asked again.
        if plugin.reference.digest.is_none() {
            let c = client()?;
            let r = &plugin.reference;
            let now = c
                .get_manifest(&r.repository, r.manifest_ref())
                .await
                .map_err(|e| format!("cannot check the tag against {lock_name} (--locked): {e}"))?;
            let now = artifact::sha256(&now.body);
            if now != pin.manifest_digest {
                return Err(format!(
                    "the tag now resolves to {now}, but {lock_name} pins {} (--locked): run `gantry lock {}` to accept the new digest",
                    pin.manifest_digest,
                    plan.manifest.display()
                ));
            }
        }
        return pinned_bytes(plugin, &pin, store, client, reporter)
            .await
            .map(|b| (b, None));
    }
    match pin.filter(|_| !stale) {
        Some(pin) => pinned_bytes(plugin, &pin, store, client, reporter)
            .await
            .map(|b| (b, None)),
        None => {
            let c = client()?;
            let (pin, bytes) = resolve(&c, plugin, store, reporter)
                .await
                .map_err(|e| e.to_string())?;
            keep(plugin, &pin, &bytes, store, reporter)?;
            if mode == LockMode::Update {
                lock.pins.insert(pin.reference.clone(), pin.clone());
            }
            Ok((bytes, Some(pin)))
        }
    }
}

/// The component `pin` names, from the cache or the registry; when a
/// signature is asked for, only after one over the pinned manifest digest
/// verified.
async fn pinned_bytes(
    plugin: &OciPlugin,
    pin: &Pin,
    store: &Store,
    client: impl Fn() -> Result<Client, String>,
    reporter: &dyn Reporter,
) -> Result<Vec<u8>, String> {
    if let Some(key) = &plugin.verify {
        match cached_signature(plugin, &pin.manifest_digest, store, reporter) {
            Some(verdict) => verdict.map_err(|e| e.to_string())?,
            None => {
                let c = client()?;
                signature_from_registry(&c, plugin, key, &pin.manifest_digest, store, reporter)
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }
    if let Some(bytes) = store.get(&pin.layer_digest) {
        reporter.debug(&format!(
            "{} {} from the plugin cache",
            plugin.written, pin.layer_digest
        ));
        return Ok(bytes);
    }
    let c = client()?;
    let bytes = pull_pinned(&c, plugin, pin).await.map_err(|e| match e {
        OciError::DigestMismatch { what, expected, actual, .. } => format!(
            "{what} does not match the lock: expected {expected}, got {actual}; refusing it (nothing was run)"
        ),
        e => e.to_string(),
    })?;
    keep(plugin, pin, &bytes, store, reporter)?;
    Ok(bytes)
}

/// Cache pulled bytes (whose digests were checked) if they are a component.
fn keep(
    plugin: &OciPlugin,
    pin: &Pin,
    bytes: &[u8],
    store: &Store,
    reporter: &dyn Reporter,
) -> Result<(), String> {
    check_component(plugin, bytes)?;
    store.put(&pin.layer_digest, bytes);
    reporter.note(&format!(
        "pulled {} ({}, {:.1} MB)",
        plugin.written,
        pin.layer_digest,
        bytes.len() as f64 / 1e6
    ));
    Ok(())
}

/// `gantry lock`: resolve every OCI plugin the manifest uses, in every
/// environment, and write exactly those pins. Returns the lock's path and
/// whether the file changed.
pub async fn lock_manifest(
    file: &ManifestFile,
    plans: &[Plan],
    cache_root: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<(std::path::PathBuf, bool), Vec<String>> {
    let lock_path = Lockfile::path_for(&file.path);
    let old = Lockfile::read(&lock_path).map_err(|e| vec![format!("{e:#}")])?;
    let store = Store::open(cache_root);
    let mut lock = Lockfile::default();
    let mut errors = vec![];
    let mut done: BTreeMap<String, ()> = BTreeMap::new();
    for plan in plans {
        let secrets = SecretStore::resolve(&plan.secrets, &manifest_dir(&plan.manifest));
        for (plugin, _, fields) in oci_units(plan) {
            if done.insert(plugin.written.clone(), ()).is_some() {
                continue;
            }
            let who = format!("{} ({})", fields.join(", "), plugin.written);
            let result = async {
                let c = client_for(&plugin, &secrets, &plan.environment)?;
                let (pin, bytes) = resolve(&c, &plugin, &store, reporter)
                    .await
                    .map_err(|e| e.to_string())?;
                keep(&plugin, &pin, &bytes, &store, reporter)?;
                Ok::<_, String>(pin)
            }
            .await;
            match result {
                Ok(pin) => {
                    match old.pins.get(&pin.reference) {
                        Some(o) if o.manifest_digest != pin.manifest_digest => {
                            reporter.note(&format!(
                                "{}: {} → {}",
                                pin.reference, o.manifest_digest, pin.manifest_digest
                            ))
                        }
                        Some(_) => {}
                        None => {
                            reporter.note(&format!("{}: {}", pin.reference, pin.manifest_digest))
                        }
                    }
                    lock.pins.insert(pin.reference.clone(), pin);
                }
                Err(e) => errors.push(format!("{who}: {e}")),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // No OCI plugins and no lock yet: no file to write.
    if lock.pins.is_empty() && !lock_path.exists() {
        return Ok((lock_path, false));
    }
    let changed = lock.write(&lock_path).map_err(|e| vec![format!("{e:#}")])?;
    Ok((lock_path, changed))
}
