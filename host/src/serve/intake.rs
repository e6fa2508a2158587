//! Pushes become queued runs: webhook deliveries (authenticated by the
//! `webhook` module, deduplicated by delivery id in the store) and polled refs
//! (`git ls-remote` against what the store saw last). Both queue the same
//! kind of run; whether the manifest's `on:` wants it is decided when the run
//! is dispatched, with the manifest at that very commit.

use super::Service;
use crate::queue::{self, DeliveryOutcome, Enqueued, NewRun};
use crate::webhook::{self, Outcome, PushEvent};
use std::sync::Arc;
use std::time::Duration;

/// Bounds one `git ls-remote`.
pub(super) const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// What became of a delivery, for the HTTP answer.
#[derive(Debug, serde::Serialize)]
pub(super) struct Accepted {
    /// `queued`, `duplicate`, `ignored` or `pong`.
    pub outcome: &'static str,
    /// The store ids of the runs it queued (or, for a duplicate, nothing).
    pub runs: Vec<i64>,
    pub detail: String,
}

/// The queued run a push becomes.
pub(super) fn new_run(svc: &Service, repo: usize, event: &PushEvent, trigger: &str) -> NewRun {
    let r = &svc.repos[repo].config;
    NewRun {
        pipeline: r.name.clone(),
        repository: r.url.clone(),
        git_ref: event.reference.clone(),
        commit: event.after.clone(),
        commit_messages: event.messages().iter().map(|m| m.to_string()).collect(),
        before: (!event.before.bytes().all(|b| b == b'0')).then(|| event.before.clone()),
        environment: r.environment.clone(),
        trigger: trigger.to_string(),
        cancel_in_progress: r.cancel_in_progress,
        ..NewRun::default()
    }
}

/// Queue what an authenticated delivery asks for, durably, before the
/// caller answers it.
pub(super) async fn accept(
    svc: &Arc<Service>,
    repo: usize,
    provider: &'static str,
    event_name: String,
    delivery: webhook::Delivery,
) -> anyhow::Result<Accepted> {
    let (runs, ignored) = match &delivery.outcome {
        Outcome::Ping => {
            return Ok(Accepted {
                outcome: "pong",
                runs: vec![],
                detail: "ping received; the hook works".into(),
            });
        }
        Outcome::Ignored(why) => (vec![], why.clone()),
        Outcome::Push(events) => (
            events
                .iter()
                .filter(|e| !e.deleted)
                .map(|e| new_run(svc, repo, e, "push"))
                .collect::<Vec<_>>(),
            "every ref it names was deleted".to_string(),
        ),
    };
    let record = queue::Delivery {
        provider: provider.to_string(),
        id: delivery.id.clone(),
        event: event_name,
    };
    let seen: Vec<(String, String)> = runs
        .iter()
        .map(|r| (r.git_ref.clone(), r.commit.clone()))
        .collect();
    let repository = svc.repos[repo].config.url.clone();
    let outcome = svc
        .db(move |s| {
            let outcome = s.record_delivery(&record, &runs, &ignored)?;
            // The poller need not find these pushes again.
            s.note_refs(&repository, &seen)?;
            Ok(outcome)
        })
        .await?;
    let accepted = match outcome {
        DeliveryOutcome::Duplicate { outcome } => Accepted {
            outcome: "duplicate",
            runs: vec![],
            detail: format!(
                "delivery {} was received before ({outcome}); nothing queued",
                delivery.id
            ),
        },
        DeliveryOutcome::New { runs } if runs.is_empty() => Accepted {
            outcome: "ignored",
            runs: vec![],
            detail: match &delivery.outcome {
                Outcome::Ignored(why) => why.clone(),
                _ => "every ref it names was deleted".into(),
            },
        },
        DeliveryOutcome::New { runs } => {
            after_enqueue(svc, &runs);
            Accepted {
                outcome: "queued",
                runs: runs.iter().map(Enqueued::run).collect(),
                detail: format!("{} run(s) queued", runs.len()),
            }
        }
    };
    svc.say(&format!(
        "{provider} delivery {} for {}: {} ({})",
        delivery.id, svc.repos[repo].config.name, accepted.outcome, accepted.detail
    ));
    Ok(accepted)
}

/// Wake the dispatcher, and stop the running runs a newer push cancels.
pub(super) fn after_enqueue(svc: &Service, runs: &[Enqueued]) {
    for e in runs {
        if let Enqueued::Queued {
            cancel_requested, ..
        } = e
        {
            let active = svc.active.lock().unwrap();
            for id in cancel_requested {
                if let Some(token) = active.get(id) {
                    token.cancel();
                }
            }
        }
    }
    svc.wake.notify_one();
}

/// Poll repository `repo` every interval: what moved since the store last saw
/// it is queued as pushes. The first poll of a repository only records its
/// refs (pointing gantry at a repository does not run every branch).
pub(super) async fn poll_loop(svc: Arc<Service>, repo: usize) {
    let every = svc.repos[repo].poll.expect("polling is on");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = svc.shutdown.cancelled() => return,
        }
        if let Err(e) = poll_once(&svc, repo).await {
            svc.say(&format!(
                "poll {}: {e:#} (trying again in {})",
                svc.repos[repo].config.name,
                humantime::format_duration(every)
            ));
        }
    }
}

/// One poll: `git ls-remote`, compared with the refs the store holds.
pub(super) async fn poll_once(svc: &Arc<Service>, repo: usize) -> anyhow::Result<()> {
    let url = svc.repos[repo].config.url.clone();
    let now = crate::git::ls_remote(&url, LS_REMOTE_TIMEOUT).await?;
    let known = {
        let url = url.clone();
        svc.db(move |s| s.remote_refs(&url)).await?
    };
    let Some(known) = known else {
        let n = now.len();
        let url2 = url.clone();
        let refs: Vec<(String, String)> = now
            .iter()
            .map(|r| (r.name.clone(), r.oid.clone()))
            .collect();
        svc.db(move |s| s.record_poll(&url2, &refs, &[])).await?;
        svc.debug(&format!(
            "poll {}: first look, {n} ref(s) recorded",
            svc.repos[repo].config.name
        ));
        return Ok(());
    };
    let known: Vec<crate::git::RemoteRef> = known
        .into_iter()
        .map(|(name, oid)| crate::git::RemoteRef { name, oid })
        .collect();
    let events = crate::git::diff_refs(&known, &now, &url);
    let runs: Vec<NewRun> = events
        .iter()
        .filter(|e| !e.deleted && is_branch_or_tag(&e.reference))
        .map(|e| new_run(svc, repo, e, "poll"))
        .collect();
    let refs: Vec<(String, String)> = now
        .iter()
        .map(|r| (r.name.clone(), r.oid.clone()))
        .collect();
    let queued = svc.db(move |s| s.record_poll(&url, &refs, &runs)).await?;
    if !queued.is_empty() {
        svc.say(&format!(
            "poll {}: {} push(es) found, run(s) {} queued",
            svc.repos[repo].config.name,
            queued.len(),
            queued
                .iter()
                .map(|e| e.run().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        after_enqueue(svc, &queued);
    }
    Ok(())
}

fn is_branch_or_tag(reference: &str) -> bool {
    reference.starts_with("refs/heads/") || reference.starts_with("refs/tags/")
}
