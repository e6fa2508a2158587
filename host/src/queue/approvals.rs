//! Approvals a run needs before it deploys to an environment (Azure
//! Pipelines' environment approvals): requested, then approved or rejected
//! once, by someone, at a time, with an optional comment.

use super::runs::{RunStatus, get_run};
use super::{Error, Result, Store, not_empty, now_ms};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for ApprovalState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ApprovalState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "pending" => Ok(ApprovalState::Pending),
            "approved" => Ok(ApprovalState::Approved),
            "rejected" => Ok(ApprovalState::Rejected),
            s => Err(FromSqlError::Other(
                format!("unknown approval state {s:?}").into(),
            )),
        }
    }
}

/// A decision on a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub run: i64,
    pub environment: String,
    pub state: ApprovalState,
    pub requested_at_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub comment: Option<String>,
}

const APPROVAL_COLUMNS: &str =
    "run_id, environment, state, requested_at_ms, decided_by, decided_at_ms, comment";

fn approval_from_row(r: &Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        run: r.get(0)?,
        environment: r.get(1)?,
        state: r.get(2)?,
        requested_at_ms: r.get(3)?,
        decided_by: r.get(4)?,
        decided_at_ms: r.get(5)?,
        comment: r.get(6)?,
    })
}

fn get_approval(
    conn: &rusqlite::Connection,
    ctx: &super::Ctx<'_>,
    run: i64,
    environment: &str,
) -> Result<Option<Approval>> {
    conn.query_row(
        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = ?1 AND environment = ?2"),
        params![run, environment],
        approval_from_row,
    )
    .optional()
    .map_err(|e| ctx.sql(e))
}

impl Store {
    /// Ask for an approval of `run` in `environment` (a running run that
    /// must wait for one before a stage; a queued promotion gets its own
    /// from [`Store::enqueue`] with `needs_approval`). Asking again returns
    /// the approval as it stands (pending or decided), unchanged.
    pub fn request_approval(&mut self, run: i64, environment: &str) -> Result<Approval> {
        not_empty("the approval's environment", environment)?;
        self.write("requesting an approval", |tx, ctx| {
            get_run(tx, ctx, run)?;
            tx.execute(
                "INSERT INTO approvals (run_id, environment, state, requested_at_ms) \
                 VALUES (?1, ?2, 'pending', ?3) ON CONFLICT (run_id, environment) DO NOTHING",
                params![run, environment, now_ms()],
            )
            .map_err(|e| ctx.sql(e))?;
            get_approval(tx, ctx, run, environment)?.ok_or_else(|| Error::NoSuchApproval {
                run,
                environment: environment.to_owned(),
            })
        })
    }

    /// Approve or reject a pending approval, as `who`. A decided approval is
    /// refused: a rejection cannot be turned into a deployment afterwards; so
    /// is one of a run that is done (superseded, cancelled, ...). Rejecting
    /// the approval a queued run waits for (`needs_approval`, its own
    /// environment) makes the run `rejected`: it never starts. Approving it
    /// lets [`Store::claim_next`] start it.
    pub fn decide_approval(
        &mut self,
        run: i64,
        environment: &str,
        decision: Decision,
        who: &str,
        comment: Option<&str>,
    ) -> Result<Approval> {
        not_empty("who decides an approval", who)?;
        self.write("deciding an approval", |tx, ctx| {
            let current = get_approval(tx, ctx, run, environment)?.ok_or_else(|| {
                Error::NoSuchApproval {
                    run,
                    environment: environment.to_owned(),
                }
            })?;
            if current.state != ApprovalState::Pending {
                return Err(Error::AlreadyDecided {
                    run,
                    environment: environment.to_owned(),
                    state: current.state,
                    by: current.decided_by.unwrap_or_default(),
                    at_ms: current.decided_at_ms.unwrap_or_default(),
                });
            }
            let waiting = get_run(tx, ctx, run)?;
            if waiting.status.is_done() {
                return Err(Error::WrongState {
                    run,
                    op: "decide an approval of",
                    status: waiting.status,
                });
            }
            let state = match decision {
                Decision::Approve => ApprovalState::Approved,
                Decision::Reject => ApprovalState::Rejected,
            };
            let now = now_ms();
            tx.execute(
                "UPDATE approvals SET state = ?3, decided_by = ?4, decided_at_ms = ?5, comment = ?6 \
                 WHERE run_id = ?1 AND environment = ?2",
                params![run, environment, state, who, now, comment],
            )
            .map_err(|e| ctx.sql(e))?;
            if state == ApprovalState::Rejected
                && waiting.status == RunStatus::Queued
                && waiting.needs_approval
                && waiting.environment == environment
            {
                tx.execute(
                    "UPDATE runs SET status = 'rejected', finished_at_ms = ?2 WHERE id = ?1",
                    params![run, now],
                )
                .map_err(|e| ctx.sql(e))?;
            }
            get_approval(tx, ctx, run, environment)?.ok_or_else(|| Error::NoSuchApproval {
                run,
                environment: environment.to_owned(),
            })
        })
    }

    /// One approval, if it was requested.
    pub fn approval(&self, run: i64, environment: &str) -> Result<Option<Approval>> {
        self.read("reading an approval", |conn, ctx| {
            get_approval(conn, ctx, run, environment)
        })
    }

    /// Approvals waiting for a decision, of runs not done, oldest first.
    pub fn pending_approvals(&self) -> Result<Vec<Approval>> {
        self.read("listing pending approvals", |conn, ctx| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = 'pending' \
                     AND run_id IN (SELECT id FROM runs WHERE status IN ('queued', 'running')) \
                     ORDER BY requested_at_ms, run_id, environment"
                ))
                .map_err(|e| ctx.sql(e))?;
            let rows = stmt
                .query_map([], approval_from_row)
                .map_err(|e| ctx.sql(e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| ctx.sql(e))
        })
    }
}
