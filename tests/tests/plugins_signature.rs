//! Cosign signatures of plugins pulled by OCI reference (`verify: { key }`),
//! against a real registry (Debian's docker-registry on loopback), with
//! signatures the harness makes in cosign's format (tests/src/cosign.rs):
//! signed runs, unsigned and badly signed are refused before anything runs,
//! the referrers fallback, the key checked by `validate`, and offline runs
//! that verify again from the cache.

use gantry_e2e::cosign::{self, KeyPair, Layer, tag_of};
use gantry_e2e::oci::{cached_plugins, push, sha256};
use gantry_e2e::{Registry, Workspace, plugin};

const REPO: &str = "plugins/echo";

/// A registry with the echo plugin pushed as `plugins/echo:1`, a workspace
/// (own cache) whose `cosign.pub` is key 1's and whose pipeline runs it with
/// `verify: { key: cosign.pub }`; the reference and the manifest digest.
struct Signed {
    registry: Registry,
    ws: Workspace,
    reference: String,
    digest: String,
    key: KeyPair,
}

impl Signed {
    fn new() -> Self {
        let registry = Registry::start(None);
        let ws = Workspace::new().with_fresh_cache();
        let reference = format!("oci://{}/{REPO}:1", registry.addr);
        let digest = push(&ws, "echo", &reference, &[]);
        let key = KeyPair::new(1);
        ws.write("cosign.pub", key.public_pem());
        ws.manifest(&format!(
            r#"pipeline: signed
plugins:
  echo: {{ oci: "{}/{REPO}:1", insecure: true, verify: {{ key: cosign.pub }} }}
stages:
  - name: hello
    uses: echo
    with: {{ message: "signed and sealed" }}
"#,
            registry.addr
        ));
        Self {
            registry,
            ws,
            reference,
            digest,
            key,
        }
    }

    /// A layer signing `digest` with `key`.
    fn layer(&self, key: &KeyPair, digest: &str) -> Layer {
        key.layer(&format!("{}/{REPO}", self.registry.addr), digest)
    }

    /// Sign under the legacy tag with these layers (replacing what was there).
    fn sign_tag(&self, layers: &[Layer]) -> String {
        cosign::push_tag_signature(&self.registry.addr, REPO, &self.digest, layers)
    }

    /// `gantry run` with a cache of its own is refused for `reasons` (after
    /// the plugin, reference and key), before anything was pulled or run;
    /// its stderr.
    fn refused(&self, reasons: &str) -> String {
        let cache = tempfile::tempdir().unwrap();
        let out = self
            .ws
            .command(&["run", "pipeline.yaml"])
            .env("GANTRY_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            !self.ws.path().join(".gantry/runs").exists(),
            "nothing ran: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("signed and sealed"),
            "the stage did not run"
        );
        assert!(
            cached_plugins(cache.path()).is_empty(),
            "nothing was pulled into the cache: {:?}",
            cached_plugins(cache.path())
        );
        let expected = format!("{}{reasons}", self.refusal());
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
        stderr
    }

    /// `gantry run` succeeds, the stage ran, and the signature was verified
    /// as `verified` says.
    fn runs(&self, verified: &str) {
        let out = self.ws.run();
        assert_eq!(out.code, Some(0), "{}", out.all());
        assert!(out.succeeded("hello"));
        assert!(
            out.all().contains("echo: signed and sealed"),
            "{}",
            out.all()
        );
        assert!(out.stdout.contains(verified), "{}", out.stdout);
    }

    /// The start of every refusal: which plugin, which reference, which key.
    fn refusal(&self) -> String {
        format!(
            "stages[0] ({}): refusing it: no valid cosign signature by the key cosign.pub ({}…) for {}@{}: ",
            self.reference,
            self.key.short_fingerprint(),
            self.reference.trim_start_matches("oci://"),
            self.digest
        )
    }
}

/// Run gantry with `args` in `ws`: it exits with `code` and says `needle` on
/// stderr, which is returned.
fn fails(ws: &Workspace, args: &[&str], code: i32, needle: &str) -> String {
    let out = ws.gantry(args);
    assert_eq!(out.code, Some(code), "{}", out.all());
    assert!(out.stderr.contains(needle), "{}", out.stderr);
    out.stderr
}

#[test]
fn a_signed_plugin_runs_and_runs_offline_verifying_again_from_the_cache() {
    let s = Signed::new();
    s.sign_tag(&[s.layer(&s.key, &s.digest)]);
    s.runs(&format!(
        "{}: cosign signature by cosign.pub ({}…) verified (tag {}.sig)",
        s.reference,
        s.key.short_fingerprint(),
        tag_of(&s.digest)
    ));
    // The lock pins the digest the signature was checked against.
    let lock = std::fs::read_to_string(s.ws.path().join("gantry.lock")).unwrap();
    assert!(
        lock.contains(&format!("manifest-digest = \"{}\"", s.digest)),
        "{lock}"
    );

    // `plan` says which key signed it.
    let out = s.ws.gantry(&["plan", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "signed by cosign.pub ({}…) (cosign signature verified)",
            s.key.short_fingerprint()
        )),
        "{}",
        out.stdout
    );

    // The registry is gone: the signature kept in the cache is verified again.
    let addr = s.registry.addr.clone();
    let Signed { registry, ws, .. } = s;
    drop(registry);
    let out = ws.gantry(&["run", "pipeline.yaml", "--verbose"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("echo: signed and sealed"),
        "{}",
        out.all()
    );
    assert!(
        out.all()
            .contains("verified again from the plugin cache (tag sha256-"),
        "{}",
        out.all()
    );

    // A kept signature is checked, not trusted: one edited to sign another
    // digest is refused offline, and dropped.
    let cache = ws.cache_dir().unwrap().join("plugins/signatures");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let kept = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut evidence: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    let other = format!("sha256:{}", "0".repeat(64));
    let forged = cosign::payload(&format!("{addr}/{REPO}"), &other);
    use base64::Engine as _;
    evidence["payload"] = base64::engine::general_purpose::STANDARD
        .encode(&forged)
        .into();
    std::fs::write(&kept, serde_json::to_vec(&evidence).unwrap()).unwrap();
    fails(
        &ws,
        &["run", "pipeline.yaml"],
        2,
        "the signature kept in the plugin cache: the signature does not verify with the key",
    );
    assert!(!kept.exists());

    // Another key: nothing kept for it, so the registry is asked (and is gone).
    ws.write("cosign.pub", KeyPair::new(2).public_pem());
    fails(
        &ws,
        &["run", "pipeline.yaml"],
        2,
        "the connection was refused",
    );
}

#[test]
fn an_unsigned_plugin_is_refused_and_nothing_runs_or_is_pinned() {
    let s = Signed::new();
    s.refused(&format!(
        "no signature found (no tag {}.sig; no referrer",
        tag_of(&s.digest)
    ));
    assert!(!s.ws.path().join("gantry.lock").exists(), "nothing pinned");
    fails(&s.ws, &["lock", "pipeline.yaml"], 2, "no signature found");
    assert!(!s.ws.path().join("gantry.lock").exists(), "nothing pinned");

    // `plugins pull --key` and `plugins verify` refuse it too.
    let reference = s.reference.as_str();
    let with_key = |command| {
        [
            "plugins",
            command,
            reference,
            "--insecure",
            "--key",
            "cosign.pub",
        ]
    };
    fails(&s.ws, &with_key("pull"), 2, "no signature found");
    assert!(cached_plugins(s.ws.cache_dir().unwrap()).is_empty());
    fails(&s.ws, &with_key("verify"), 1, "no signature found");

    // Signed now: both agree.
    s.sign_tag(&[s.layer(&s.key, &s.digest)]);
    let out = s.ws.gantry(&with_key("verify"));
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "verified: {}@{} is signed by cosign.pub (sha256:",
            s.reference, s.digest
        )),
        "{}",
        out.stdout
    );
    let out = s.ws.gantry(&with_key("pull"));
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        cached_plugins(s.ws.cache_dir().unwrap()),
        [format!(
            "{}.wasm",
            sha256(&std::fs::read(plugin("echo")).unwrap()).trim_start_matches("sha256:")
        )]
    );
}

#[test]
fn signatures_by_another_key_for_another_digest_over_other_bytes_or_malformed_are_refused() {
    let s = Signed::new();
    let docker_ref = format!("{}/{REPO}", s.registry.addr);
    let another = KeyPair::new(2);
    let sig = format!("tag {}.sig", tag_of(&s.digest));

    s.sign_tag(&[s.layer(&another, &s.digest)]);
    s.refused(&format!(
        "{sig} layer 1: the signature does not verify with the key (signed by another key, or the payload was altered)"
    ));

    let other = format!("sha256:{}", "e".repeat(64));
    s.sign_tag(&[s.layer(&s.key, &other)]);
    s.refused(&format!(
        "{sig} layer 1: the signature is for another digest, {other}"
    ));

    // The key's signature over one payload, attached to another (which
    // names the right digest): the signed bytes are not the blob's.
    let signed = cosign::payload(&docker_ref, &s.digest);
    let mut altered = signed.clone();
    altered.extend_from_slice(b" ");
    s.sign_tag(&[Layer {
        signature: s.key.sign(&signed),
        payload: altered,
    }]);
    s.refused(&format!(
        "{sig} layer 1: the signature does not verify with the key"
    ));

    // The registry serves other bytes for a valid signature's payload blob.
    s.sign_tag(&[s.layer(&s.key, &s.digest)]);
    let blob = sha256(&signed);
    let file = s.registry.blob_file(&blob);
    std::fs::write(&file, cosign::payload(&docker_ref, &other)).unwrap();
    s.refused(&format!(
        "{sig} layer 1: malformed: the payload blob does not match its digest {blob}"
    ));
    std::fs::write(&file, &signed).unwrap();

    // Malformed layers: each is named, with what is wrong.
    let empty = b"{\"critical\":{}}";
    s.sign_tag(&[
        Layer {
            payload: signed.clone(),
            signature: "not base64!".into(),
        },
        Layer {
            payload: empty.to_vec(),
            signature: s.key.sign(empty),
        },
    ]);
    let stderr = s.refused(&format!(
        "{sig} layer 1: malformed: the signature annotation is not base64"
    ));
    assert!(
        stderr.contains(&format!(
            "; {sig} layer 2: malformed: the signed payload's critical.type is null"
        )),
        "{stderr}"
    );

    // Any one valid layer suffices.
    s.sign_tag(&[s.layer(&another, &s.digest), s.layer(&s.key, &s.digest)]);
    s.runs(&format!("verified (tag {}.sig)", tag_of(&s.digest)));
}

#[test]
fn a_signature_stored_as_a_referrer_is_found_through_the_referrers_tag() {
    let s = Signed::new();
    let addr = s.registry.addr.clone();
    // A referrer by another key only: refused, and named as a referrer.
    cosign::push_referrer_with_tag(
        &addr,
        REPO,
        &s.digest,
        &[s.layer(&KeyPair::new(2), &s.digest)],
    );
    let tag = tag_of(&s.digest);
    let referrer = s.refused("referrer sha256:");
    assert!(
        referrer.contains(&format!(
            " (from the referrers tag {tag}) layer 1: the signature does not verify"
        )),
        "{referrer}"
    );

    let referrer =
        cosign::push_referrer_with_tag(&addr, REPO, &s.digest, &[s.layer(&s.key, &s.digest)]);
    s.runs(&format!(
        "verified (referrer {referrer} (from the referrers tag {}))",
        tag_of(&s.digest)
    ));
}

#[test]
fn validate_reports_a_missing_or_malformed_key_at_the_verify_field() {
    let s = Signed::new();
    s.sign_tag(&[s.layer(&s.key, &s.digest)]);
    let out = s.ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());

    // Each is an error of `validate` at the `verify` field (line 3).
    let missing = "cannot read the public key cosign.pub";
    let cases: [(Option<&str>, &str); 3] = [
        (None, missing),
        (
            Some("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nabc\n"),
            "cosign.pub is a private key",
        ),
        (
            Some("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ==\n-----END PUBLIC KEY-----\n"),
            "cosign.pub is not an ECDSA P-256 public key",
        ),
    ];
    for (content, error) in cases {
        match content {
            Some(pem) => drop(s.ws.write("cosign.pub", pem)),
            None => std::fs::remove_file(s.ws.path().join("cosign.pub")).unwrap(),
        }
        let stderr = fails(&s.ws, &["validate", "pipeline.yaml"], 2, error);
        assert!(
            stderr.contains("pipeline.yaml:3:") && stderr.contains("plugins.echo.verify.key: "),
            "{stderr}"
        );
    }

    // `verify` belongs to OCI plugins only.
    s.ws.manifest(
        "pipeline: p\nplugins:\n  echo: { path: \"{echo}\", verify: { key: cosign.pub } }\nstages:\n  - { name: a, uses: echo }\n",
    );
    fails(
        &s.ws,
        &["validate", "pipeline.yaml"],
        2,
        "`verify` only go with `oci`",
    );
}

#[test]
fn a_signature_is_found_through_the_referrers_api_where_the_registry_has_one() {
    let s = Signed::new();
    let addr = s.registry.addr.clone();
    // Only the referrers API lists the signature: no legacy tag, no referrers tag.
    let referrer = cosign::push_referrer(&addr, REPO, &s.digest, &[s.layer(&s.key, &s.digest)]);
    let api = cosign::ReferrersApi::start(
        &addr,
        cosign::referrers_index(std::slice::from_ref(&referrer)),
    );
    let manifest = std::fs::read_to_string(s.ws.path().join("pipeline.yaml")).unwrap();
    s.ws.write("pipeline.yaml", manifest.replace(&addr, &api.addr));
    s.runs(&format!(
        "verified (referrer {} (from the referrers API))",
        referrer.0
    ));
    let requests = api.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.starts_with(&format!(
            "GET /v2/{REPO}/referrers/{}?artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson ",
            s.digest
        ))),
        "{requests:?}"
    );
    // The API answered, so the referrers tag was not asked for.
    assert!(
        !requests
            .iter()
            .any(|r| r.contains(&format!("/manifests/{} ", tag_of(&s.digest)))),
        "{requests:?}"
    );
}

#[test]
fn the_signature_is_checked_against_the_locked_digest_and_relocking_needs_one() {
    let s = Signed::new();
    s.sign_tag(&[s.layer(&s.key, &s.digest)]);
    assert_eq!(s.ws.gantry(&["lock", "pipeline.yaml"]).code, Some(0));
    let lock = std::fs::read_to_string(s.ws.path().join("gantry.lock")).unwrap();

    // The tag moves to other, unsigned bytes: runs keep the locked, signed digest.
    let moved = push(&s.ws, "noop", &s.reference, &[]);
    assert_ne!(moved, s.digest);
    s.runs("echo: signed and sealed");

    // Accepting the new digest needs a signature of it.
    let stderr = fails(&s.ws, &["lock", "pipeline.yaml"], 2, "no signature found");
    assert!(stderr.contains(&format!("@{moved}: ")), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(s.ws.path().join("gantry.lock")).unwrap(),
        lock,
        "the lock is unchanged"
    );
    cosign::push_tag_signature(&s.registry.addr, REPO, &moved, &[s.layer(&s.key, &moved)]);
    assert_eq!(s.ws.gantry(&["lock", "pipeline.yaml"]).code, Some(0));
    let relocked = std::fs::read_to_string(s.ws.path().join("gantry.lock")).unwrap();
    assert!(
        relocked.contains(&format!("manifest-digest = \"{moved}\"")),
        "{relocked}"
    );
}
