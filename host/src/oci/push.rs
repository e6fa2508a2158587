//! `gantry plugins push`: a component into a registry in the Wasm artifact
//! layout, blobs first, then the manifest under the tag.

use super::artifact::{self, OCI_MANIFEST};
use super::client::Client;
use super::{OciError, Reference};
use bytes::Bytes;

/// What a push wrote.
pub struct Pushed {
    pub manifest_digest: String,
    pub layer_digest: String,
}

/// Push `component` (file name `title`, created at `created`, RFC 3339) to
/// `reference`: under its tag, or by digest when it names only a digest
/// (which must then be the digest of the manifest written).
pub async fn push(
    client: &Client,
    reference: &Reference,
    component: &[u8],
    title: &str,
    created: &str,
) -> Result<Pushed, OciError> {
    let (config, manifest) = artifact::wasm_artifact(component, title, created);
    let repo = &reference.repository;
    let layer_digest = artifact::sha256(component);
    let manifest_digest = artifact::sha256(&manifest);
    if let Some(d) = &reference.digest
        && *d != manifest_digest
    {
        return Err(OciError::DigestMismatch {
            what: "the manifest to push",
            reference: reference.to_string(),
            expected: d.clone(),
            actual: manifest_digest,
        });
    }
    client
        .push_blob(repo, &layer_digest, Bytes::copy_from_slice(component))
        .await?;
    client
        .push_blob(repo, &artifact::sha256(&config), config.into())
        .await?;
    let target = reference
        .tag
        .clone()
        .unwrap_or_else(|| manifest_digest.clone());
    client
        .put_manifest(repo, &target, manifest.into(), OCI_MANIFEST)
        .await?;
    Ok(Pushed {
        manifest_digest,
        layer_digest,
    })
}
