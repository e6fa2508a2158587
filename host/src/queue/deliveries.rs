//! Webhook deliveries, deduplicated by the provider's delivery id.

use super::runs::{Enqueued, NewRun, enqueue_in};
use super::{Result, Store, not_empty, now_ms};
use rusqlite::params;

/// A webhook delivery as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `github`, `azure-devops`, ...
    pub provider: String,
    /// The provider's id of this delivery (GitHub's `X-GitHub-Delivery`),
    /// the same on a redelivery.
    pub id: String,
    /// `push`, `git.push`, `ping`, ...
    pub event: String,
}

/// What [`Store::record_delivery`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// First time seen: recorded, and its runs queued.
    New { runs: Vec<Enqueued> },
    /// Seen before (a redelivery): nothing was done; `outcome` is what the
    /// first one became.
    Duplicate { outcome: String },
}

impl Store {
    /// Record a delivery and queue the runs it becomes, in one transaction:
    /// the service answers the webhook after this returns, so an answered
    /// delivery has its runs, and a redelivery (same provider and id) runs
    /// nothing twice. With no runs, `ignored` says why (a deleted ref, no
    /// trigger matched, a ping) and is kept as what the delivery became.
    pub fn record_delivery(
        &mut self,
        delivery: &Delivery,
        runs: &[NewRun],
        ignored: &str,
    ) -> Result<DeliveryOutcome> {
        not_empty("the delivery's provider", &delivery.provider)?;
        not_empty("the delivery's id", &delivery.id)?;
        not_empty("the delivery's event", &delivery.event)?;
        let outcome = if runs.is_empty() {
            not_empty("the reason a delivery queued no run", ignored)?;
            format!("ignored: {ignored}")
        } else {
            "queued".to_owned()
        };
        self.write("recording a webhook delivery", |tx, ctx| {
            let inserted = tx
                .execute(
                    "INSERT INTO deliveries (provider, delivery_id, event, received_at_ms, outcome) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (provider, delivery_id) DO NOTHING",
                    params![delivery.provider, delivery.id, delivery.event, now_ms(), outcome],
                )
                .map_err(|e| ctx.sql(e))?;
            if inserted == 0 {
                let outcome = tx
                    .query_row(
                        "SELECT outcome FROM deliveries WHERE provider = ?1 AND delivery_id = ?2",
                        params![delivery.provider, delivery.id],
                        |r| r.get(0),
                    )
                    .map_err(|e| ctx.sql(e))?;
                return Ok(DeliveryOutcome::Duplicate { outcome });
            }
            let key = Some((delivery.provider.as_str(), delivery.id.as_str()));
            let runs = runs
                .iter()
                .map(|run| enqueue_in(tx, ctx, run, key))
                .collect::<Result<Vec<_>>>()?;
            Ok(DeliveryOutcome::New { runs })
        })
    }
}
