//! Azure DevOps service hooks, event `git.push` ("Code pushed"). Azure DevOps
//! signs nothing: the subscription sends basic auth and/or custom headers, and
//! the consumer checks them.

use super::{
    Commit, Delivery, Outcome, PushEvent, WebhookError, check_object_id, check_ref, header,
    is_zero, parse_json,
};
use base64::Engine as _;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// What a delivery must carry; at least one of the two.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `basicAuthUsername` / `basicAuthPassword` of the subscription.
    pub basic: Option<(String, String)>,
    /// A header the subscription sends (`httpHeaders`), name and value.
    pub header: Option<(String, String)>,
}

impl Auth {
    fn check(&self, headers: &http::HeaderMap) -> Result<(), WebhookError> {
        if self.basic.is_none() && self.header.is_none() {
            // Without either, anyone could post pushes.
            return Err(WebhookError::Unauthorized(
                "no basic auth or header is configured for Azure DevOps hooks".into(),
            ));
        }
        if let Some((user, password)) = &self.basic {
            let given = header(headers, "authorization")
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .ok_or_else(|| {
                    WebhookError::Unauthorized("no basic Authorization header".into())
                })?;
            let expected = format!("{user}:{password}");
            if !bool::from(given.as_slice().ct_eq(expected.as_bytes())) {
                return Err(WebhookError::Unauthorized(
                    "wrong basic auth user or password".into(),
                ));
            }
        }
        if let Some((name, value)) = &self.header {
            let given = headers
                .get(name.as_str())
                .ok_or_else(|| WebhookError::Unauthorized(format!("no `{name}` header")))?;
            if !bool::from(given.as_bytes().ct_eq(value.as_bytes())) {
                return Err(WebhookError::Unauthorized(format!("wrong `{name}` header")));
            }
        }
        Ok(())
    }
}

/// Authenticate and understand one Azure DevOps service hook delivery.
pub fn receive(
    auth: &Auth,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Delivery, WebhookError> {
    auth.check(headers)?;
    let envelope: Envelope = parse_json("service hook event", body)?;
    // The event id stays the same when Azure DevOps retries a delivery.
    let id = format!("azure-devops:{}", envelope.id);
    if envelope.event_type != "git.push" {
        return Ok(Delivery {
            id,
            outcome: Outcome::Ignored(format!(
                "Azure DevOps event `{}` does not start runs",
                envelope.event_type
            )),
        });
    }
    let resource = envelope.resource.ok_or_else(|| {
        WebhookError::Malformed("git.push event: missing field `resource`".into())
    })?;
    let push: Push = parse_json(
        "git.push event: in `resource`",
        resource.to_string().as_bytes(),
    )?;
    Ok(Delivery {
        id,
        outcome: push.into_outcome()?,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    id: String,
    event_type: String,
    /// Read only once the event type is known to be `git.push`.
    resource: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Push {
    ref_updates: Vec<RefUpdate>,
    #[serde(default)]
    commits: Vec<AzCommit>,
    repository: Repository,
    pushed_by: Identity,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdate {
    name: String,
    old_object_id: String,
    new_object_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzCommit {
    commit_id: String,
    comment: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Repository {
    remote_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    unique_name: Option<String>,
}

impl Push {
    fn into_outcome(self) -> Result<Outcome, WebhookError> {
        for (i, c) in self.commits.iter().enumerate() {
            check_object_id(&format!("resource.commits[{i}].commitId"), &c.commit_id)?;
        }
        let commits: Vec<Commit> = self
            .commits
            .into_iter()
            .map(|c| Commit {
                id: c.commit_id,
                message: c.comment,
                // The event lists no changed files.
                added: None,
                removed: None,
                modified: None,
            })
            .collect();
        let pusher = self
            .pushed_by
            .unique_name
            .or(self.pushed_by.display_name)
            .unwrap_or_default();
        let mut events = vec![];
        let mut deleted = vec![];
        for (i, u) in self.ref_updates.into_iter().enumerate() {
            let field = format!("resource.refUpdates[{i}]");
            check_ref(&format!("{field}.name"), &u.name)?;
            check_object_id(&format!("{field}.oldObjectId"), &u.old_object_id)?;
            check_object_id(&format!("{field}.newObjectId"), &u.new_object_id)?;
            if is_zero(&u.new_object_id) {
                deleted.push(u.name);
                continue;
            }
            // One push may update several refs and lists its commits once:
            // each ref gets them all, and the one it now names as its head.
            events.push(PushEvent {
                repository: self.repository.remote_url.clone(),
                created: is_zero(&u.old_object_id),
                head_commit: commits.iter().find(|c| c.id == u.new_object_id).cloned(),
                reference: u.name,
                before: u.old_object_id,
                after: u.new_object_id,
                deleted: false,
                forced: false,
                commits: commits.clone(),
                // Azure DevOps does not say whether it capped the list.
                commits_truncated: false,
                pusher: pusher.clone(),
            });
        }
        Ok(if events.is_empty() {
            Outcome::Ignored(if deleted.is_empty() {
                "the push updated no refs".into()
            } else {
                format!("{} was deleted", deleted.join(", "))
            })
        } else {
            Outcome::Push(events)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &str = include_str!("fixtures/azure-devops-git-push.json");

    fn auth() -> Auth {
        Auth {
            basic: Some(("gantry".into(), "s3cret".into())),
            header: Some(("x-gantry-token".into(), "t0ken".into())),
        }
    }

    fn headers(user_pass: &str, token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        let b = base64::engine::general_purpose::STANDARD.encode(user_pass);
        h.insert("authorization", format!("Basic {b}").parse().unwrap());
        h.insert("x-gantry-token", token.parse().unwrap());
        h
    }

    #[test]
    fn a_git_push_becomes_one_event_per_updated_ref() {
        let d = receive(&auth(), &headers("gantry:s3cret", "t0ken"), PUSH.as_bytes()).unwrap();
        assert_eq!(d.id, "azure-devops:03c164c2-8912-4d5e-8009-3707d5f83734");
        let Outcome::Push(events) = d.outcome else {
            panic!("{:?}", d.outcome)
        };
        // The fixture updates main and deletes old-feature: only main remains.
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.reference, "refs/heads/main");
        assert_eq!(
            e.repository,
            "https://fabrikam.visualstudio.com/DefaultCollection/_git/Fabrikam-Fiber-Git"
        );
        assert_eq!(e.after, "33b55f7cb7e7e245323987634f960cf4a6e6bc74");
        assert_eq!(
            e.head_commit.as_ref().unwrap().message,
            "Fixed bug in web.config file"
        );
        assert_eq!(e.pusher, "fabrikamfiber4@hotmail.com");
        assert!(!e.created);
        // Azure DevOps lists no files: path filters cannot be decided.
        assert_eq!(e.changed_files(), None);
    }

    #[test]
    fn wrong_or_missing_credentials_are_unauthorized() {
        for (h, expected) in [
            (headers("gantry:wrong", "t0ken"), "wrong basic auth"),
            (
                headers("gantry:s3cret", "nope"),
                "wrong `x-gantry-token` header",
            ),
            (http::HeaderMap::new(), "no basic Authorization header"),
        ] {
            let err = receive(&auth(), &h, PUSH.as_bytes()).unwrap_err();
            assert_eq!(err.status(), 401);
            assert!(err.to_string().contains(expected), "{err}");
        }
        let header_only = Auth {
            basic: None,
            header: auth().header,
        };
        let mut h = http::HeaderMap::new();
        h.insert("x-gantry-token", "t0ken".parse().unwrap());
        assert!(receive(&header_only, &h, PUSH.as_bytes()).is_ok());
        h.remove("x-gantry-token");
        assert!(
            receive(&header_only, &h, PUSH.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("no `x-gantry-token` header")
        );
        let nothing = Auth {
            basic: None,
            header: None,
        };
        assert_eq!(
            receive(
                &nothing,
                &headers("gantry:s3cret", "t0ken"),
                PUSH.as_bytes()
            )
            .unwrap_err()
            .status(),
            401
        );
    }

    #[test]
    fn deletes_other_events_and_malformed_bodies() {
        let h = headers("gantry:s3cret", "t0ken");
        let only_delete = PUSH
            .replacen("\"refs/heads/main\"", "\"refs/heads/gone\"", 1)
            .replacen(
                "\"newObjectId\": \"33b55f7cb7e7e245323987634f960cf4a6e6bc74\"",
                "\"newObjectId\": \"0000000000000000000000000000000000000000\"",
                1,
            );
        assert_eq!(
            receive(&auth(), &h, only_delete.as_bytes())
                .unwrap()
                .outcome,
            Outcome::Ignored("refs/heads/gone, refs/heads/old-feature was deleted".into())
        );
        let other = PUSH.replacen("\"git.push\"", "\"git.pullrequest.created\"", 1);
        assert_eq!(
            receive(&auth(), &h, other.as_bytes()).unwrap().outcome,
            Outcome::Ignored(
                "Azure DevOps event `git.pullrequest.created` does not start runs".into()
            )
        );
        let bad = PUSH.replacen("\"remoteUrl\"", "\"remoteURL\"", 1);
        let err = receive(&auth(), &h, bad.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string()
                .contains("in `resource`: at `repository`: missing field `remoteUrl`"),
            "{err}"
        );
        let bad = PUSH.replacen("\"commitId\": \"33b5", "\"commitId\": 5, \"x\": \"", 1);
        let err = receive(&auth(), &h, bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("`commits[0].commitId`"), "{err}");
        let err = receive(&auth(), &h, b"not json").unwrap_err();
        assert!(err.to_string().contains("service hook event"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn mutated_pushes_never_panic(at in 0usize..6000, byte in proptest::num::u8::ANY) {
            let mut body = PUSH.as_bytes().to_vec();
            let at = at % body.len();
            body[at] = byte;
            let _ = receive(&auth(), &headers("gantry:s3cret", "t0ken"), &body);
        }
    }
}
