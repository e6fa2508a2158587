//! GitHub webhooks: `X-Hub-Signature-256` verified over the raw body, then
//! `ping` and `push` understood, everything else ignored.

use super::{
    Commit, Delivery, Outcome, PushEvent, WebhookError, check_object_id, check_ref, header,
    parse_json,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub lists at most this many commits in a push payload.
const COMMIT_CAP: usize = 2048;

/// Check `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, body).
pub fn verify_signature(
    secret: &[u8],
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    if secret.is_empty() {
        // An empty key would let anyone sign; refuse rather than accept.
        return Err(WebhookError::Unauthorized(
            "no webhook secret is configured".into(),
        ));
    }
    let signature = signature
        .ok_or_else(|| WebhookError::Unauthorized("no X-Hub-Signature-256 header".into()))?;
    let expected = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| {
            WebhookError::Unauthorized("X-Hub-Signature-256 is not `sha256=<hex>`".into())
        })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected).map_err(|_| {
        WebhookError::Unauthorized("X-Hub-Signature-256 does not match the body".into())
    })
}

/// Authenticate and understand one GitHub delivery.
pub fn receive(
    secret: &[u8],
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Delivery, WebhookError> {
    verify_signature(secret, header(headers, "x-hub-signature-256"), body)?;
    let id = header(headers, "x-github-delivery")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| WebhookError::Malformed("no X-GitHub-Delivery header".into()))?;
    let id = format!("github:{id}");
    let event = header(headers, "x-github-event")
        .ok_or_else(|| WebhookError::Malformed("no X-GitHub-Event header".into()))?;
    let outcome = match event {
        "ping" => Outcome::Ping,
        "push" => {
            let json = payload(headers, body)?;
            let push: GhPush = parse_json("push payload", &json)?;
            push.into_outcome()?
        }
        other => Outcome::Ignored(format!("GitHub event `{other}` does not start runs")),
    };
    Ok(Delivery { id, outcome })
}

/// The JSON of a delivery: the body, or its `payload` form field.
fn payload(headers: &http::HeaderMap, body: &[u8]) -> Result<Vec<u8>, WebhookError> {
    let content_type = header(headers, "content-type").unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json" => Ok(body.to_vec()),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or_else(|| WebhookError::Malformed("form body has no `payload` field".into())),
        other => Err(WebhookError::Malformed(format!(
            "content type `{other}`; GitHub sends application/json or application/x-www-form-urlencoded"
        ))),
    }
}

/// The parts of a push payload gantry reads. Fields not listed are not read,
/// so their quirks (integer `repository.created_at`) cannot break parsing.
#[derive(Deserialize)]
struct GhPush {
    #[serde(rename = "ref")]
    reference: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Vec<GhCommit>,
    head_commit: Option<GhCommit>,
    repository: GhRepository,
    pusher: GhPusher,
}

#[derive(Deserialize)]
struct GhCommit {
    id: String,
    message: String,
    added: Option<Vec<String>>,
    removed: Option<Vec<String>>,
    modified: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct GhRepository {
    clone_url: String,
}

#[derive(Deserialize)]
struct GhPusher {
    name: String,
}

impl From<GhCommit> for Commit {
    fn from(c: GhCommit) -> Self {
        Commit {
            id: c.id,
            message: c.message,
            added: c.added,
            removed: c.removed,
            modified: c.modified,
        }
    }
}

impl GhPush {
    fn into_outcome(self) -> Result<Outcome, WebhookError> {
        check_ref("ref", &self.reference)?;
        check_object_id("before", &self.before)?;
        check_object_id("after", &self.after)?;
        for (i, c) in self.commits.iter().enumerate() {
            check_object_id(&format!("commits[{i}].id"), &c.id)?;
        }
        if self.deleted || super::is_zero(&self.after) {
            return Ok(Outcome::Ignored(format!("{} was deleted", self.reference)));
        }
        Ok(Outcome::Push(vec![PushEvent {
            repository: self.repository.clone_url,
            reference: self.reference,
            before: self.before,
            after: self.after,
            created: self.created,
            deleted: false,
            forced: self.forced,
            commits_truncated: self.commits.len() >= COMMIT_CAP,
            commits: self.commits.into_iter().map(Commit::from).collect(),
            head_commit: self.head_commit.map(Commit::from),
            pusher: self.pusher.name,
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"webhook-secret";
    const PUSH: &str = include_str!("fixtures/github-push.json");
    const PUSH_FORM: &str = include_str!("fixtures/github-push.form");
    const PING: &str = include_str!("fixtures/github-ping.json");
    const DELETE: &str = include_str!("fixtures/github-delete.json");

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn headers(event: &str, content_type: &str, signature: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-github-event", event.parse().unwrap());
        h.insert(
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap(),
        );
        h.insert("content-type", content_type.parse().unwrap());
        if let Some(s) = signature {
            h.insert("x-hub-signature-256", s.parse().unwrap());
        }
        h
    }

    fn deliver(event: &str, content_type: &str, body: &str) -> Result<Delivery, WebhookError> {
        let h = headers(event, content_type, Some(&sign(body.as_bytes())));
        receive(SECRET, &h, body.as_bytes())
    }

    #[test]
    fn githubs_documented_signature_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_signature(secret, Some(good), b"Hello, World!"),
            Ok(())
        );
        // One changed byte of the body, or of the signature, fails.
        assert!(verify_signature(secret, Some(good), b"Hello, World?").is_err());
        let bad = good.replace("e17", "e18");
        assert!(verify_signature(secret, Some(&bad), b"Hello, World!").is_err());
    }

    #[test]
    fn missing_or_bad_signatures_are_unauthorized() {
        let body = PUSH.as_bytes();
        let cases = [
            (
                headers("push", "application/json", None),
                "no X-Hub-Signature-256 header",
            ),
            (
                headers("push", "application/json", Some("sha1=abc")),
                "is not `sha256=<hex>`",
            ),
            (
                headers("push", "application/json", Some("sha256=zz")),
                "is not `sha256=<hex>`",
            ),
            (
                headers("push", "application/json", Some(&sign(b"another body"))),
                "does not match the body",
            ),
        ];
        for (h, expected) in cases {
            let err = receive(SECRET, &h, body).unwrap_err();
            assert_eq!(err.status(), 401, "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        // An empty secret would accept anyone's signature: refused.
        let h = headers("push", "application/json", Some(&sign(body)));
        assert_eq!(receive(b"", &h, body).unwrap_err().status(), 401);
    }

    #[test]
    fn a_json_push_becomes_a_push_event_with_its_delivery_id() {
        let d = deliver("push", "application/json", PUSH).unwrap();
        assert_eq!(d.id, "github:72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let Outcome::Push(events) = d.outcome else {
            panic!("{:?}", d.outcome)
        };
        let e = &events[0];
        assert_eq!(e.repository, "https://github.com/octo-org/hello.git");
        assert_eq!(e.reference, "refs/heads/main");
        assert_eq!(e.after, "1c7fd6b1e4b2e8d1a0e1f0c3d6a9e8b7c6d5e4f3");
        assert_eq!(e.pusher, "octocat");
        assert_eq!(e.commits.len(), 2);
        assert_eq!(
            e.head_commit.as_ref().unwrap().message,
            "Add the parser\n\nWith tests."
        );
        let files = e.changed_files().unwrap();
        assert!(
            files.contains("src/parser.rs") && files.contains("README.md"),
            "{files:?}"
        );
        assert!(!e.commits_truncated && !e.created && !e.deleted);
    }

    #[test]
    fn a_form_encoded_push_is_the_same_event() {
        let json = deliver("push", "application/json", PUSH).unwrap();
        let form = deliver(
            "push",
            "application/x-www-form-urlencoded",
            PUSH_FORM.trim_end(),
        )
        .unwrap();
        assert_eq!(json, form);
        // The signature covers the raw form body, not the JSON inside it.
        let h = headers(
            "push",
            "application/x-www-form-urlencoded",
            Some(&sign(PUSH.as_bytes())),
        );
        assert_eq!(
            receive(SECRET, &h, PUSH_FORM.trim_end().as_bytes())
                .unwrap_err()
                .status(),
            401
        );
        let err = deliver("push", "application/x-www-form-urlencoded", "other=1").unwrap_err();
        assert!(err.to_string().contains("no `payload` field"), "{err}");
    }

    #[test]
    fn ping_delete_and_other_events() {
        assert_eq!(
            deliver("ping", "application/json", PING).unwrap().outcome,
            Outcome::Ping
        );
        assert_eq!(
            deliver("push", "application/json", DELETE).unwrap().outcome,
            Outcome::Ignored("refs/heads/feature/old was deleted".into())
        );
        assert_eq!(
            deliver("issues", "application/json", "{}").unwrap().outcome,
            Outcome::Ignored("GitHub event `issues` does not start runs".into())
        );
    }

    #[test]
    fn malformed_pushes_name_the_field() {
        let bad_id = PUSH.replacen("\"id\": \"9f2b", "\"id\": 7, \"x\": \"", 1);
        let err = deliver("push", "application/json", &bad_id).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("at `commits[0].id`"), "{err}");
        let no_ref = PUSH.replacen("\"ref\":", "\"reff\":", 1);
        let err = deliver("push", "application/json", &no_ref).unwrap_err();
        assert!(err.to_string().contains("missing field `ref`"), "{err}");
        let bad_after = PUSH.replacen("1c7fd6b1e4b2e8d1a0e1f0c3d6a9e8b7c6d5e4f3", "; rm -rf /", 1);
        let err = deliver("push", "application/json", &bad_after).unwrap_err();
        assert!(err.to_string().contains("`after` is `; rm -rf /`"), "{err}");
        let err = deliver("push", "text/plain", PUSH).unwrap_err();
        assert!(
            err.to_string().contains("content type `text/plain`"),
            "{err}"
        );
        let mut h = headers("push", "application/json", Some(&sign(PUSH.as_bytes())));
        h.remove("x-github-delivery");
        let err = receive(SECRET, &h, PUSH.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("no X-GitHub-Delivery header"),
            "{err}"
        );
    }

    #[test]
    fn a_capped_commit_list_is_marked_truncated() {
        let mut v: serde_json::Value = serde_json::from_str(PUSH).unwrap();
        let c = v["commits"][0].clone();
        v["commits"] = serde_json::Value::Array(vec![c; COMMIT_CAP]);
        let body = v.to_string();
        let Outcome::Push(e) = deliver("push", "application/json", &body).unwrap().outcome else {
            panic!()
        };
        assert!(e[0].commits_truncated);
        assert_eq!(e[0].changed_files(), None);
    }

    proptest::proptest! {
        #[test]
        fn hostile_signed_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
                                             form in proptest::bool::ANY) {
            let ct = if form { "application/x-www-form-urlencoded" } else { "application/json" };
            let h = headers("push", ct, Some(&sign(&body)));
            proptest::prop_assert!(receive(SECRET, &h, &body).is_err());
        }

        #[test]
        fn mutated_pushes_never_panic(at in 0usize..4000, byte in proptest::num::u8::ANY) {
            let mut body = PUSH.as_bytes().to_vec();
            let at = at % body.len();
            body[at] = byte;
            let h = headers("push", "application/json", Some(&sign(&body)));
            let _ = receive(SECRET, &h, &body);
        }
    }
}
