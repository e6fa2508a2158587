//! Cosign signatures over a plugin's manifest digest, in cosign's "simple
//! signing" format, checked against an ECDSA P-256 public key
//! (`cosign generate-key-pair`'s `cosign.pub`).
//!
//! A signature is an OCI manifest whose layers have media type
//! `application/vnd.dev.cosign.simplesigning.v1+json`: each layer's blob is a
//! JSON payload naming the signed manifest digest, and its annotation
//! `dev.cosignproject.cosign/signature` the base64 ASN.1 DER ECDSA signature
//! over the blob's bytes. It is found under the legacy tag
//! `<repo>:sha256-<hex>.sig`, or as an OCI 1.1 referrer (artifact type
//! `application/vnd.dev.cosign.artifact.sig.v1+json`, `subject` = the plugin)
//! through `GET /v2/<repo>/referrers/<digest>`, or, where a registry has no
//! referrers API (404), the referrers tag `<repo>:sha256-<hex>`.
//!
//! Not supported: keyless signatures (Fulcio certificates), the Rekor
//! transparency log, sigstore bundles (cosign v3's default). A layer that
//! carries only those does not verify here.

use super::artifact::{self, OCI_INDEX};
use super::client::Client;
use super::{OciError, Reference};
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SIGNATURE_TYPE: &str = "cosign container image signature";
/// A simple-signing payload is a few hundred bytes; more is not one.
const MAX_PAYLOAD: usize = 1 << 20;
/// Referrers looked at, at most: a registry cannot keep gantry busy with
/// thousands of them.
const MAX_REFERRERS: usize = 16;

/// A public key signatures must verify with.
pub struct TrustedKey {
    /// The path as the manifest (or the command line) wrote it.
    pub shown: String,
    key: VerifyingKey,
    /// `sha256:<hex>` of the key's DER (SubjectPublicKeyInfo): what the cache
    /// of verified signatures is keyed by, so another key checks again.
    pub fingerprint: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({} {})", self.shown, self.fingerprint)
    }
}

impl TrustedKey {
    /// Read the PEM public key at `path` (`shown` is how to name it).
    pub fn read(path: &Path, shown: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the public key {}: {e}", path.display()))?;
        Self::from_pem(&text, shown)
    }

    pub fn from_pem(pem: &str, shown: &str) -> Result<Self, String> {
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            let what = if pem.contains("PRIVATE KEY-----") {
                "a private key (give the public key, `cosign.pub`)"
            } else {
                "not a PEM public key (`-----BEGIN PUBLIC KEY-----`)"
            };
            return Err(format!("{shown} is {what}"));
        }
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            format!(
                "{shown} is not an ECDSA P-256 public key as `cosign generate-key-pair` writes ({e}); \
                 other key types are not supported"
            )
        })?;
        let der = key
            .to_public_key_der()
            .map_err(|e| format!("{shown}: cannot encode the key: {e}"))?;
        Ok(Self {
            shown: shown.to_string(),
            key,
            fingerprint: artifact::sha256(der.as_bytes()),
        })
    }

    /// `cosign.pub (sha256:0123abcd…)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({}…)", self.shown, &self.fingerprint[..19])
    }
}

/// What it takes to verify a signature again without the registry: kept in
/// the plugin cache once it verified, and checked again on every use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Where it was found, e.g. "tag sha256-….sig".
    pub source: String,
    /// The simple-signing payload, base64.
    pub payload: String,
    /// The annotation's signature, base64 DER.
    pub signature: String,
}

impl Evidence {
    /// Verify again: the signature over the payload with `key`, and the
    /// payload naming `digest`.
    pub fn check(&self, key: &TrustedKey, digest: &str) -> Result<(), String> {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&self.payload)
            .map_err(|e| format!("the kept payload is not base64: {e}"))?;
        check_layer(key, digest, &payload, &self.signature).map_err(|f| f.to_string())
    }
}

/// Why one signature layer is not a signature of the digest by the key.
#[derive(Debug)]
enum Flaw {
    OtherKey,
    OtherDigest(String),
    Malformed(String),
}

impl std::fmt::Display for Flaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flaw::OtherKey => write!(
                f,
                "the signature does not verify with the key (signed by another key, or the payload was altered)"
            ),
            Flaw::OtherDigest(d) => write!(f, "the signature is for another digest, {d}"),
            Flaw::Malformed(m) => write!(f, "malformed: {m}"),
        }
    }
}

/// Check one layer: the signature over `payload` verifies with `key`, and
/// the payload is a cosign image signature of `digest`.
fn check_layer(
    key: &TrustedKey,
    digest: &str,
    payload: &[u8],
    signature: &str,
) -> Result<(), Flaw> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|e| Flaw::Malformed(format!("the signature annotation is not base64 ({e})")))?;
    let signature = Signature::from_der(&der).map_err(|_| {
        Flaw::Malformed("the signature is not an ASN.1 DER ECDSA P-256 signature".into())
    })?;
    // p256 hashes with SHA-256, as cosign signs.
    key.key
        .verify(payload, &signature)
        .map_err(|_| Flaw::OtherKey)?;
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| Flaw::Malformed(format!("the signed payload is not JSON ({e})")))?;
    let critical = &v["critical"];
    if critical["type"] != SIGNATURE_TYPE {
        return Err(Flaw::Malformed(format!(
            "the signed payload's critical.type is {}, not `{SIGNATURE_TYPE}`",
            critical["type"]
        )));
    }
    match critical["image"]["docker-manifest-digest"].as_str() {
        Some(d) if d == digest => Ok(()),
        Some(d) => Err(Flaw::OtherDigest(d.to_string())),
        None => Err(Flaw::Malformed(
            "the signed payload has no critical.image.docker-manifest-digest".into(),
        )),
    }
}

/// `sha256:<hex>` → `sha256-<hex>`, the tag form of a digest.
fn tag_of(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Find a signature of `digest` (a manifest in `reference`'s repository) by
/// `key` in the registry. Any one valid signature layer suffices; when none
/// is, the error says what each candidate was.
pub async fn find(
    client: &Client,
    reference: &Reference,
    digest: &str,
    key: &TrustedKey,
) -> Result<Evidence, OciError> {
    let repo = &reference.repository;
    let mut flaws: Vec<String> = vec![];
    let legacy = format!("{}.sig", tag_of(digest));
    match client.get_manifest(repo, &legacy).await {
        Ok(m) => {
            let source = format!("tag {legacy}");
            if let Some(e) = check_manifest(
                client, repo, digest, key, &source, &m.body, None, &mut flaws,
            )
            .await?
            {
                return Ok(e);
            }
        }
        Err(OciError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let (index, via) = match client.get_referrers(repo, digest, COSIGN_ARTIFACT).await? {
        Some(r) => (Some(r.body), "the referrers API".to_string()),
        None => {
            let tag = tag_of(digest);
            match client.get_manifest(repo, &tag).await {
                Ok(m) => (Some(m.body), format!("the referrers tag {tag}")),
                Err(OciError::NotFound { .. }) => (None, String::new()),
                Err(e) => return Err(e),
            }
        }
    };
    if let Some(index) = index {
        for d in referrers(&index, &via, &mut flaws) {
            let source = format!("referrer {d} (from {via})");
            let m = client.get_manifest(repo, &d).await?;
            if artifact::sha256(&m.body) != d {
                flaws.push(format!(
                    "{source}: malformed: the manifest does not match its digest"
                ));
                continue;
            }
            if let Some(e) = check_manifest(
                client,
                repo,
                digest,
                key,
                &source,
                &m.body,
                Some(digest),
                &mut flaws,
            )
            .await?
            {
                return Ok(e);
            }
        }
    }
    if flaws.is_empty() {
        flaws.push(format!(
            "no signature found (no tag {legacy}; no referrer of type {COSIGN_ARTIFACT} through the referrers API or the tag {})",
            tag_of(digest)
        ));
    }
    Err(OciError::Unsigned {
        reference: reference.to_string(),
        digest: digest.to_string(),
        key: key.describe(),
        reasons: flaws.join("; "),
    })
}

/// The digests of the cosign signatures an image index of referrers lists.
fn referrers(index: &[u8], via: &str, flaws: &mut Vec<String>) -> Vec<String> {
    let v: Value = match serde_json::from_slice(index) {
        Ok(v) => v,
        Err(e) => {
            flaws.push(format!("{via}: malformed: not JSON ({e})"));
            return vec![];
        }
    };
    if v["mediaType"].as_str().is_some_and(|t| t != OCI_INDEX) {
        flaws.push(format!(
            "{via}: malformed: not an image index ({})",
            v["mediaType"]
        ));
        return vec![];
    }
    let listed = v["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // cosign 3 writes sigstore bundles as referrers: say why they do not count.
    for m in listed {
        if let Some(t) = m["artifactType"]
            .as_str()
            .filter(|t| t.contains("sigstore.bundle"))
        {
            flaws.push(format!(
                "{via}: referrer {} is a sigstore bundle ({t}, cosign 3's default), which gantry does not verify: sign in the simple-signing format",
                m["digest"].as_str().unwrap_or("?")
            ));
        }
    }
    listed
        .iter()
        .filter(|m| m["artifactType"] == COSIGN_ARTIFACT)
        .filter_map(|m| m["digest"].as_str())
        .filter(|d| super::reference::check_digest(d).is_ok())
        .take(MAX_REFERRERS)
        .map(str::to_string)
        .collect()
}

/// Check the signature manifest `body` found at `source`: its simple-signing
/// layers, until one verifies. A referrer must name `subject` as its
/// subject. Flaws are added to `flaws`; registry errors end the search.
#[allow(clippy::too_many_arguments)]
async fn check_manifest(
    client: &Client,
    repo: &str,
    digest: &str,
    key: &TrustedKey,
    source: &str,
    body: &[u8],
    subject: Option<&str>,
    flaws: &mut Vec<String>,
) -> Result<Option<Evidence>, OciError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            flaws.push(format!(
                "{source}: malformed: the manifest is not JSON ({e})"
            ));
            return Ok(None);
        }
    };
    if let Some(s) = subject
        && v["subject"]["digest"] != s
    {
        flaws.push(format!(
            "{source}: malformed: its subject is {}, not the plugin",
            v["subject"]["digest"]
        ));
        return Ok(None);
    }
    let layers: Vec<&Value> = v["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|l| l["mediaType"] == SIMPLE_SIGNING)
        .collect();
    if layers.is_empty() {
        flaws.push(format!(
            "{source}: malformed: no layer of media type {SIMPLE_SIGNING} (sigstore bundles and keyless signatures are not supported)"
        ));
    }
    for (i, layer) in layers.iter().enumerate() {
        let at = format!("{source} layer {}", i + 1);
        let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
            flaws.push(format!(
                "{at}: malformed: no annotation {SIGNATURE_ANNOTATION}"
            ));
            continue;
        };
        let blob = layer["digest"].as_str().unwrap_or_default();
        if let Err(e) = super::reference::check_digest(blob) {
            flaws.push(format!("{at}: malformed: {e}"));
            continue;
        }
        let payload = client.get_blob(repo, blob, MAX_PAYLOAD).await?;
        if artifact::sha256(&payload) != blob {
            flaws.push(format!(
                "{at}: malformed: the payload blob does not match its digest {blob}"
            ));
            continue;
        }
        match check_layer(key, digest, &payload, signature) {
            Ok(()) => {
                return Ok(Some(Evidence {
                    source: source.to_string(),
                    payload: base64::engine::general_purpose::STANDARD.encode(&payload),
                    signature: signature.trim().to_string(),
                }));
            }
            Err(flaw) => flaws.push(format!("{at}: {flaw}")),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;

    fn signer(n: u8) -> (SigningKey, TrustedKey) {
        let secret = SigningKey::from_slice(&[n; 32]).unwrap();
        let pem = secret
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (secret, TrustedKey::from_pem(&pem, "cosign.pub").unwrap())
    }

    fn payload(digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": { "docker-reference": "r.io/p" },
                "image": { "docker-manifest-digest": digest },
                "type": SIGNATURE_TYPE,
            },
            "optional": null,
        }))
        .unwrap()
    }

    fn sign(key: &SigningKey, bytes: &[u8]) -> String {
        let s: Signature = key.sign(bytes);
        base64::engine::general_purpose::STANDARD.encode(s.to_der().as_bytes())
    }

    #[test]
    fn a_layer_verifies_only_with_its_key_over_its_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let other = format!("sha256:{}", "b".repeat(64));
        let (secret, key) = signer(1);
        let (_, another) = signer(2);
        let p = payload(&d);
        assert!(check_layer(&key, &d, &p, &sign(&secret, &p)).is_ok());
        assert!(matches!(
            check_layer(&another, &d, &p, &sign(&secret, &p)),
            Err(Flaw::OtherKey)
        ));
        let q = payload(&other);
        assert!(matches!(
            check_layer(&key, &d, &q, &sign(&secret, &q)),
            Err(Flaw::OtherDigest(x)) if x == other
        ));
        // A signature over other bytes than the payload.
        assert!(matches!(
            check_layer(&key, &d, &p, &sign(&secret, &q)),
            Err(Flaw::OtherKey)
        ));
        let e = check_layer(&key, &d, &p, "not base64!").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let junk = b"{\"critical\":{\"type\":\"x\"}}";
        let e = check_layer(&key, &d, junk, &sign(&secret, junk)).unwrap_err();
        assert!(e.to_string().contains("critical.type"), "{e}");
    }

    #[test]
    fn signatures_with_either_s_verify_as_go_writes_both() {
        // Go's crypto/ecdsa (cosign) does not normalize s to the low half.
        let d = format!("sha256:{}", "a".repeat(64));
        let (secret, key) = signer(3);
        let p = payload(&d);
        let s: Signature = secret.sign(&p);
        let negated = -*s.s().as_ref();
        let other = Signature::from_scalars(s.r().to_bytes(), negated.to_bytes()).unwrap();
        for sig in [s, other] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
            assert!(check_layer(&key, &d, &p, &b64).is_ok());
        }
    }

    #[test]
    fn referrers_are_cosign_signatures_and_bundles_are_named() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                { "digest": d('a'), "artifactType": COSIGN_ARTIFACT },
                { "digest": d('b'), "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json" },
                { "digest": d('c'), "artifactType": "application/spdx+json" },
                { "digest": "sha256:short", "artifactType": COSIGN_ARTIFACT },
            ],
        });
        let mut flaws = vec![];
        let found = referrers(
            &serde_json::to_vec(&index).unwrap(),
            "the referrers API",
            &mut flaws,
        );
        assert_eq!(found, [d('a')]);
        assert_eq!(flaws.len(), 1, "{flaws:?}");
        assert!(
            flaws[0].contains(&format!("referrer {} is a sigstore bundle", d('b'))),
            "{flaws:?}"
        );
        let mut flaws = vec![];
        assert!(referrers(b"{\"mediaType\":\"x\"}", "tag t", &mut flaws).is_empty());
        assert!(flaws[0].contains("not an image index"), "{flaws:?}");
    }

    #[test]
    fn keys_are_pem_p256_public_keys() {
        let (_, key) = signer(1);
        assert!(key.fingerprint.starts_with("sha256:"));
        assert!(key.describe().starts_with("cosign.pub (sha256:"));
        let e = TrustedKey::from_pem("-----BEGIN PRIVATE KEY-----\n", "k").unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let e = TrustedKey::from_pem("hello", "k").unwrap_err();
        assert!(e.contains("not a PEM public key"), "{e}");
        let e = TrustedKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "k",
        )
        .unwrap_err();
        assert!(e.contains("not an ECDSA P-256 public key"), "{e}");
    }
}
