//! Cosign signatures made by the test harness, in cosign's documented
//! "simple signing" format (the real `cosign` cannot be installed here: it is
//! not in Debian, PyPI or npm): the payload `cosign sign --key` writes, an
//! ECDSA P-256 signature over its bytes (ASN.1 DER, base64, in the layer's
//! `dev.cosignproject.cosign/signature` annotation), stored under the legacy
//! tag `sha256-<hex>.sig` or as an OCI 1.1 referrer listed in the referrers
//! tag `sha256-<hex>`, pushed into a real registry.

use crate::oci::{http, put_blob, put_manifest, sha256};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use serde_json::{Value, json};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A cosign key pair (`cosign generate-key-pair`), fixed by `seed` so that
/// runs are reproducible.
pub struct KeyPair(SigningKey);

impl KeyPair {
    pub fn new(seed: u8) -> Self {
        Self(SigningKey::from_slice(&[seed; 32]).expect("a valid P-256 scalar"))
    }

    /// The public key as `cosign.pub` holds it.
    pub fn public_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    }

    /// How gantry names the key in messages: `sha256:` and the first 12 hex
    /// digits of the sha256 of its DER.
    pub fn short_fingerprint(&self) -> String {
        let der = self.0.verifying_key().to_public_key_der().unwrap();
        sha256(der.as_bytes())[..19].to_string()
    }

    /// The annotation's value: base64 of the DER signature over `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> String {
        let s: Signature = self.0.sign(bytes);
        base64::engine::general_purpose::STANDARD.encode(s.to_der().as_bytes())
    }

    /// A layer whose payload signs `digest`, as pushed to `docker_reference`.
    pub fn layer(&self, docker_reference: &str, digest: &str) -> Layer {
        let payload = payload(docker_reference, digest);
        Layer {
            signature: self.sign(&payload),
            payload,
        }
    }
}

/// The simple-signing payload `cosign sign` writes for `digest`.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

/// One signature layer: the payload blob and the annotation's signature.
pub struct Layer {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// Push the layers' blobs; their descriptors.
fn layer_descriptors(addr: &str, repo: &str, layers: &[Layer]) -> Vec<Value> {
    layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": SIMPLE_SIGNING,
                "size": l.payload.len(),
                "digest": put_blob(addr, repo, &l.payload),
                "annotations": { ANNOTATION: l.signature },
            })
        })
        .collect()
}

/// `sha256:<hex>` → `sha256-<hex>`.
pub fn tag_of(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Push a signature of `digest` the way cosign 2 does by default: an image
/// manifest under the tag `sha256-<hex>.sig`. Returns its digest.
pub fn push_tag_signature(addr: &str, repo: &str, digest: &str, layers: &[Layer]) -> String {
    let descriptors = layer_descriptors(addr, repo, layers);
    let diff_ids: Vec<&Value> = descriptors.iter().map(|d| &d["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": put_blob(addr, repo, &config),
        },
        "layers": descriptors,
    });
    put_manifest(addr, repo, &format!("{}.sig", tag_of(digest)), &manifest)
}

/// The referrer manifest of a signature of `subject` (an image manifest in
/// `repo`), as cosign writes it in OCI 1.1 mode, pushed by digest; its
/// digest and size.
pub fn push_referrer(addr: &str, repo: &str, subject: &str, layers: &[Layer]) -> (String, usize) {
    let (status, head, body) = http(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{subject}"),
        &[("accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(status, 200, "{head}");
    let empty = put_blob(addr, repo, b"{}");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty },
        "layers": layer_descriptors(addr, repo, layers),
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": body.len() },
    });
    let size = serde_json::to_vec(&manifest).unwrap().len();
    let digest = put_manifest(
        addr,
        repo,
        &sha256(&serde_json::to_vec(&manifest).unwrap()),
        &manifest,
    );
    (digest, size)
}

/// The referrers index (what `GET /v2/<repo>/referrers/<digest>` answers, and
/// what the referrers tag holds) listing `referrers` (digest, size).
pub fn referrers_index(referrers: &[(String, usize)]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": referrers.iter().map(|(d, size)| json!({
            "mediaType": OCI_MANIFEST,
            "digest": d,
            "size": size,
            "artifactType": ARTIFACT_TYPE,
        })).collect::<Vec<_>>(),
    })
}

/// A signature of `subject` as an OCI 1.1 referrer, listed under the
/// referrers tag `sha256-<hex>` (the fallback for registries without the
/// referrers API). Returns the referrer's digest.
pub fn push_referrer_with_tag(addr: &str, repo: &str, subject: &str, layers: &[Layer]) -> String {
    let referrer = push_referrer(addr, repo, subject, layers);
    put_manifest(
        addr,
        repo,
        &tag_of(subject),
        &referrers_index(std::slice::from_ref(&referrer)),
    );
    referrer.0
}

/// A registry front with the OCI 1.1 referrers API, which Debian's
/// docker-registry 2.8 lacks: `GET /v2/<repo>/referrers/<digest>` is
/// answered with `index`; every other request is passed to the registry at
/// `target`. One request per connection (answers carry `connection: close`).
pub struct ReferrersApi {
    pub addr: String,
    /// Request lines, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ReferrersApi {
    pub fn start(target: &str, index: Value) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, target) = (requests.clone(), target.to_string());
        let index = serde_json::to_vec(&index).unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                // GETs and HEADs only: the head is the whole request.
                let mut head = vec![];
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or("").to_string();
                log.lock().unwrap().push(line.clone());
                if line.starts_with("GET /v2/") && line.contains("/referrers/") {
                    let _ = write!(
                        client,
                        "HTTP/1.1 200 OK\r\ncontent-type: {OCI_INDEX}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        index.len()
                    );
                    let _ = client.write_all(&index);
                    continue;
                }
                let Ok(mut upstream) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut forwarded: String = text
                    .trim_end()
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                forwarded.push_str("connection: close\r\n\r\n");
                let _ = upstream.write_all(forwarded.as_bytes());
                let _ = std::io::copy(&mut upstream, &mut client);
            }
        });
        Self { addr, requests }
    }
}
