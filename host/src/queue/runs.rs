//! Runs: queued, claimed, finished; superseding and cancelling; recovery after
//! a crash; the history views.
//!
//! Two groupings, as GitHub Actions' concurrency groups do it:
//! - at most one run at a time per (pipeline, branch) (claim_next, and a
//!   unique index that makes the database refuse a second one). The branch is
//!   the full ref, as GitHub's `github.ref` groups are, so a tag `v1` and a
//!   branch `v1` do not wait for each other;
//! - a newer commit supersedes a queued older run of the same (pipeline,
//!   branch, environment). The environment is part of it so that a commit
//!   arriving in `ci` does not silently drop a queued promotion of an older,
//!   already-built commit to `staging`.

use super::{Ctx, Error, Result, Store, not_empty, now_ms};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for its (pipeline, branch) to be free, the global cap, or its
    /// approval.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A newer commit of its (pipeline, branch, environment) was queued
    /// before it started.
    Superseded,
    /// Its approval was rejected before it started: it never runs.
    Rejected,
    /// The manifest at its commit did not want it (`on:` filters, `[skip ci]`).
    Skipped,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Superseded,
        RunStatus::Rejected,
        RunStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Superseded => "superseded",
            RunStatus::Rejected => "rejected",
            RunStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A status a running run can finish with.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Skipped
        )
    }

    /// Neither queued nor running: nothing more happens to it.
    pub fn is_done(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        RunStatus::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown run status {s:?}").into()))
    }
}

/// A run to queue. `Default` gives empty strings, which
/// [`Store::enqueue`] refuses: fill in every text field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRun {
    pub pipeline: String,
    /// The clone URL.
    pub repository: String,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`; the run's
    /// branch is its short name.
    pub git_ref: String,
    pub commit: String,
    /// The messages of the commits the push brought (oldest first), for
    /// stages to read; empty for a poll, a manual run or a promotion.
    pub commit_messages: Vec<String>,
    /// What the ref pointed at before the push; `None` for a new ref or when
    /// unknown (a manual run).
    pub before: Option<String>,
    pub environment: String,
    /// What started it: `push`, `poll`, `manual`, `promotion`.
    pub trigger: String,
    /// A promotion: the succeeded run (same pipeline and commit) whose build
    /// stages it reuses.
    pub source_run: Option<i64>,
    /// It needs an approval for its environment before it starts: one is
    /// requested with it, and [`Store::claim_next`] passes it over until the
    /// approval is approved (a rejection makes it `rejected`).
    pub needs_approval: bool,
    /// Ask runs of the same (pipeline, branch, environment) that are running
    /// to stop (GitHub's `cancel-in-progress`); see [`Store::cancel_requested`].
    pub cancel_in_progress: bool,
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    pub pipeline: String,
    /// The clone URL.
    pub repository: String,
    /// The full ref, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The ref's short name (`main`, `v1`): `run.branch` for stages.
    pub branch: String,
    pub commit: String,
    pub commit_messages: Vec<String>,
    pub before: Option<String>,
    pub environment: String,
    pub trigger: String,
    /// The run this one promotes (whose build stages it reuses).
    pub source_run: Option<i64>,
    /// It waits for an approval of its environment before it starts.
    pub needs_approval: bool,
    pub status: RunStatus,
    /// The newer run that replaced this one while it was queued.
    pub superseded_by: Option<i64>,
    /// Someone asked this running run to stop.
    pub cancel_requested: bool,
    /// The run id of gantry's journal, once the run started writing one.
    pub journal_run_id: Option<String>,
    /// The webhook delivery (provider, id) that queued it.
    pub delivery: Option<(String, String)>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Why it failed or was skipped.
    pub detail: Option<String>,
}

const RUN_COLUMNS: &str = "id, pipeline, repository, git_ref, branch, commit_sha, commit_messages, \
     environment, trigger, source_run_id, needs_approval, status, superseded_by, cancel_requested, \
     journal_run_id, delivery_provider, delivery_id, created_at_ms, started_at_ms, finished_at_ms, \
     before_sha, detail";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    let messages: String = r.get(6)?;
    let commit_messages = serde_json::from_str(&messages)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(6, Type::Text, Box::new(e)))?;
    let provider: Option<String> = r.get(15)?;
    let delivery_id: Option<String> = r.get(16)?;
    Ok(Run {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        repository: r.get(2)?,
        git_ref: r.get(3)?,
        branch: r.get(4)?,
        commit: r.get(5)?,
        commit_messages,
        environment: r.get(7)?,
        trigger: r.get(8)?,
        source_run: r.get(9)?,
        needs_approval: r.get(10)?,
        status: r.get(11)?,
        superseded_by: r.get(12)?,
        cancel_requested: r.get(13)?,
        journal_run_id: r.get(14)?,
        delivery: provider.zip(delivery_id),
        created_at_ms: r.get(17)?,
        started_at_ms: r.get(18)?,
        finished_at_ms: r.get(19)?,
        before: r.get(20)?,
        detail: r.get(21)?,
    })
}

/// The short name of a full ref: `main` for `refs/heads/main`, `v1` for
/// `refs/tags/v1`; any other ref (`refs/pull/1/merge`) is its own name.
pub fn short_ref(git_ref: &str) -> &str {
    git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref)
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new run, and the queued runs it superseded and the running ones it
    /// asked to stop (with `cancel_in_progress`).
    Queued {
        run: i64,
        superseded: Vec<i64>,
        cancel_requested: Vec<i64>,
    },
    /// The same commit is already queued for this (pipeline, branch,
    /// environment): nothing was added.
    AlreadyQueued { run: i64 },
}

impl Enqueued {
    pub fn run(&self) -> i64 {
        match self {
            Enqueued::Queued { run, .. } | Enqueued::AlreadyQueued { run } => *run,
        }
    }
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: it is now cancelled and will never run.
    Dequeued,
    /// It is running: it is marked, and the process running it stops it and
    /// finishes it as cancelled.
    Requested,
}

/// Which runs [`Store::runs`] lists; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    /// The short name (`main`), as [`Run::branch`].
    pub branch: Option<String>,
    pub environment: Option<String>,
    pub status: Option<RunStatus>,
    /// At most this many (newest first); `None` is all.
    pub limit: Option<u32>,
}

pub(super) fn get_run(conn: &Connection, ctx: &Ctx<'_>, id: i64) -> Result<Run> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id],
        run_from_row,
    )
    .optional()
    .map_err(|e| ctx.sql(e))?
    .ok_or(Error::NoSuchRun(id))
}

pub(super) fn ids(
    conn: &Connection,
    ctx: &Ctx<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| ctx.sql(e))?;
    let rows = stmt
        .query_map(params, |r| r.get(0))
        .map_err(|e| ctx.sql(e))?;
    rows.collect::<rusqlite::Result<Vec<i64>>>()
        .map_err(|e| ctx.sql(e))
}

/// Check what a promotion promotes: a succeeded run of the same pipeline and
/// commit (the same bytes go on to the next environment).
fn check_source(conn: &Connection, ctx: &Ctx<'_>, run: &NewRun, source: i64) -> Result<()> {
    let from = get_run(conn, ctx, source)?;
    if from.status != RunStatus::Succeeded {
        return Err(Error::WrongState {
            run: source,
            op: "promote from",
            status: from.status,
        });
    }
    for (field, theirs, ours) in [
        ("pipeline", &from.pipeline, &run.pipeline),
        ("commit", &from.commit, &run.commit),
    ] {
        if theirs != ours {
            return Err(Error::PromotionMismatch {
                source_run: source,
                field,
                source_value: theirs.clone(),
                value: ours.clone(),
            });
        }
    }
    Ok(())
}

/// Queue `run` inside an open transaction (shared with record_delivery, so a
/// delivery and the runs it became commit together).
pub(super) fn enqueue_in(
    conn: &Connection,
    ctx: &Ctx<'_>,
    run: &NewRun,
    delivery: Option<(&str, &str)>,
) -> Result<Enqueued> {
    for (what, value) in [
        ("the run's pipeline", &run.pipeline),
        ("the run's repository", &run.repository),
        ("the run's ref", &run.git_ref),
        ("the run's commit", &run.commit),
        ("the run's environment", &run.environment),
        ("the run's trigger", &run.trigger),
    ] {
        not_empty(what, value)?;
    }
    if !run.git_ref.starts_with("refs/") || short_ref(&run.git_ref).is_empty() {
        return Err(Error::NotAFullRef(run.git_ref.clone()));
    }
    if let Some(source) = run.source_run {
        check_source(conn, ctx, run, source)?;
    }
    let same = conn
        .query_row(
            "SELECT id FROM runs WHERE status = 'queued' AND pipeline = ?1 AND git_ref = ?2 \
             AND environment = ?3 AND commit_sha = ?4",
            params![run.pipeline, run.git_ref, run.environment, run.commit],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| ctx.sql(e))?;
    if let Some(id) = same {
        return Ok(Enqueued::AlreadyQueued { run: id });
    }
    let now = now_ms();
    let messages =
        serde_json::to_string(&run.commit_messages).expect("a list of strings serializes");
    conn.execute(
        "INSERT INTO runs (pipeline, repository, git_ref, branch, commit_sha, commit_messages, \
         environment, trigger, source_run_id, needs_approval, status, delivery_provider, delivery_id, \
         created_at_ms, before_sha) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', ?11, ?12, ?13, ?14)",
        params![
            run.pipeline,
            run.repository,
            run.git_ref,
            short_ref(&run.git_ref),
            run.commit,
            messages,
            run.environment,
            run.trigger,
            run.source_run,
            run.needs_approval,
            delivery.map(|d| d.0),
            delivery.map(|d| d.1),
            now,
            run.before
        ],
    )
    .map_err(|e| ctx.sql(e))?;
    let id = conn.last_insert_rowid();
    if run.needs_approval {
        conn.execute(
            "INSERT INTO approvals (run_id, environment, state, requested_at_ms) \
             VALUES (?1, ?2, 'pending', ?3)",
            params![id, run.environment, now],
        )
        .map_err(|e| ctx.sql(e))?;
    }
    let superseded = ids(
        conn,
        ctx,
        "UPDATE runs SET status = 'superseded', superseded_by = ?4, finished_at_ms = ?5 \
         WHERE status = 'queued' AND pipeline = ?1 AND git_ref = ?2 AND environment = ?3 AND id <> ?4 \
         RETURNING id",
        params![run.pipeline, run.git_ref, run.environment, id, now],
    )?;
    let cancel_requested = if run.cancel_in_progress {
        ids(
            conn,
            ctx,
            "UPDATE runs SET cancel_requested = 1 \
             WHERE status = 'running' AND pipeline = ?1 AND git_ref = ?2 AND environment = ?3 \
             RETURNING id",
            params![run.pipeline, run.git_ref, run.environment],
        )?
    } else {
        vec![]
    };
    Ok(Enqueued::Queued {
        run: id,
        superseded,
        cancel_requested,
    })
}

impl Store {
    /// Queue a run. A queued older run of the same (pipeline, branch,
    /// environment) is superseded by it; the same commit already queued
    /// there is not queued twice. A promotion (`source_run`) is refused
    /// unless that run succeeded with the same pipeline and commit.
    pub fn enqueue(&mut self, run: &NewRun) -> Result<Enqueued> {
        self.write("queueing a run", |tx, ctx| enqueue_in(tx, ctx, run, None))
    }

    /// Start the oldest queued run whose (pipeline, branch) has nothing
    /// running and that needs no approval or has it, if fewer than
    /// `global_cap` runs are running; `None` if there is none or the cap is
    /// reached. The run is `running` and claimed by this store when this
    /// returns: no other claimer, in this process or another, can get it,
    /// and [`Store::recover`] elsewhere leaves it alone while this store is
    /// open.
    pub fn claim_next(&mut self, global_cap: usize) -> Result<Option<Run>> {
        let owner = self.owner.token.clone();
        self.write("claiming the next run", |tx, ctx| {
            let running: i64 = tx
                .query_row(
                    "SELECT count(*) FROM runs WHERE status = 'running'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| ctx.sql(e))?;
            if running as u64 >= global_cap as u64 {
                return Ok(None);
            }
            let next: Option<i64> = tx
                .query_row(
                    "SELECT q.id FROM runs q WHERE q.status = 'queued' \
                     AND (q.needs_approval = 0 OR EXISTS (SELECT 1 FROM approvals a \
                          WHERE a.run_id = q.id AND a.environment = q.environment \
                          AND a.state = 'approved')) \
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.status = 'running' \
                          AND r.pipeline = q.pipeline AND r.git_ref = q.git_ref) \
                     ORDER BY q.id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| ctx.sql(e))?;
            let Some(id) = next else { return Ok(None) };
            tx.execute(
                "UPDATE runs SET status = 'running', started_at_ms = ?2, claimed_by = ?3 WHERE id = ?1",
                params![id, now_ms(), owner],
            )
            .map_err(|e| ctx.sql(e))?;
            get_run(tx, ctx, id).map(Some)
        })
    }

    /// Record the journal run id of a running run, so that [`Store::recover`]
    /// can name the journal to resume it from.
    pub fn attach_journal(&mut self, run: i64, journal_run_id: &str) -> Result<()> {
        not_empty("the journal run id", journal_run_id)?;
        self.write("recording a run's journal", |tx, ctx| {
            let status = get_run(tx, ctx, run)?.status;
            if status != RunStatus::Running {
                return Err(Error::WrongState {
                    run,
                    op: "attach a journal to",
                    status,
                });
            }
            tx.execute(
                "UPDATE runs SET journal_run_id = ?2 WHERE id = ?1",
                params![run, journal_run_id],
            )
            .map_err(|e| ctx.sql(e))?;
            Ok(())
        })
    }

    /// A running run ended with `status` (succeeded, failed or cancelled).
    pub fn finish(&mut self, run: i64, status: RunStatus) -> Result<Run> {
        self.finish_with(run, status, "")
    }

    /// [`Store::finish`], with why it ended so (a failure, a skip) in words.
    pub fn finish_with(&mut self, run: i64, status: RunStatus, detail: &str) -> Result<Run> {
        if !status.is_final() {
            return Err(Error::NotFinal { run, status });
        }
        self.write("finishing a run", |tx, ctx| {
            let current = get_run(tx, ctx, run)?.status;
            if current != RunStatus::Running {
                return Err(Error::WrongState {
                    run,
                    op: "finish",
                    status: current,
                });
            }
            tx.execute(
                "UPDATE runs SET status = ?2, finished_at_ms = ?3, detail = ?4 WHERE id = ?1",
                params![
                    run,
                    status,
                    now_ms(),
                    (!detail.is_empty()).then_some(detail)
                ],
            )
            .map_err(|e| ctx.sql(e))?;
            get_run(tx, ctx, run)
        })
    }

    /// Cancel a run: a queued one never runs; a running one is asked to stop.
    pub fn cancel(&mut self, run: i64) -> Result<CancelOutcome> {
        self.write("cancelling a run", |tx, ctx| {
            match get_run(tx, ctx, run)?.status {
                RunStatus::Queued => {
                    tx.execute(
                        "UPDATE runs SET status = 'cancelled', finished_at_ms = ?2 WHERE id = ?1",
                        params![run, now_ms()],
                    )
                    .map_err(|e| ctx.sql(e))?;
                    Ok(CancelOutcome::Dequeued)
                }
                RunStatus::Running => {
                    tx.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?1", [run])
                        .map_err(|e| ctx.sql(e))?;
                    Ok(CancelOutcome::Requested)
                }
                status => Err(Error::WrongState {
                    run,
                    op: "cancel",
                    status,
                }),
            }
        })
    }

    /// Whether someone asked this run to stop (polled by the process running it).
    pub fn cancel_requested(&self, run: i64) -> Result<bool> {
        self.read("reading a run", |conn, ctx| {
            Ok(get_run(conn, ctx, run)?.cancel_requested)
        })
    }

    /// One run.
    pub fn run(&self, id: i64) -> Result<Run> {
        self.read("reading a run", |conn, ctx| get_run(conn, ctx, id))
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.read("listing runs", |conn, ctx| list(conn, ctx, filter))
    }
}

fn list(conn: &Connection, ctx: &Ctx<'_>, filter: &RunFilter) -> Result<Vec<Run>> {
    // NULL parameters match anything, so one cached statement serves every filter.
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR branch = ?2) \
             AND (?3 IS NULL OR environment = ?3) AND (?4 IS NULL OR status = ?4) \
             ORDER BY id DESC LIMIT ?5"
        ))
        .map_err(|e| ctx.sql(e))?;
    let limit = filter.limit.map_or(-1, i64::from);
    let rows = stmt
        .query_map(
            params![
                filter.pipeline,
                filter.branch,
                filter.environment,
                filter.status,
                limit
            ],
            run_from_row,
        )
        .map_err(|e| ctx.sql(e))?;
    rows.collect::<rusqlite::Result<Vec<Run>>>()
        .map_err(|e| ctx.sql(e))
}

/// Runs by status and the queue's depth, for Prometheus `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Every status in [`RunStatus::ALL`] order, zeros included (a series
    /// that vanishes at zero breaks `rate()` and alerts).
    pub runs_by_status: Vec<(RunStatus, u64)>,
    /// Runs queued: waiting for their branch, the cap or an approval.
    pub queue_depth: u64,
    /// Of those, the ones waiting for an approval not yet given.
    pub awaiting_approval: u64,
    /// Approvals waiting for a decision (of runs not yet done).
    pub pending_approvals: u64,
    /// Webhook deliveries ever recorded.
    pub deliveries: u64,
}

impl Metrics {
    /// How many runs have `status`.
    pub fn runs(&self, status: RunStatus) -> u64 {
        self.runs_by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

impl Store {
    /// Counts for `/metrics`, read in one statement (one consistent snapshot).
    pub fn metrics(&self) -> Result<Metrics> {
        self.read("reading the queue's metrics", |conn, ctx| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT 'status', status, count(*) FROM runs GROUP BY status \
                     UNION ALL SELECT 'awaiting_approval', NULL, count(*) FROM runs q \
                       WHERE q.status = 'queued' AND q.needs_approval = 1 AND NOT EXISTS \
                       (SELECT 1 FROM approvals a WHERE a.run_id = q.id \
                        AND a.environment = q.environment AND a.state = 'approved') \
                     UNION ALL SELECT 'pending_approvals', NULL, count(*) FROM approvals a \
                       JOIN runs r ON r.id = a.run_id \
                       WHERE a.state = 'pending' AND r.status IN ('queued', 'running') \
                     UNION ALL SELECT 'deliveries', NULL, count(*) FROM deliveries",
                )
                .map_err(|e| ctx.sql(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<RunStatus>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| ctx.sql(e))?;
            let mut metrics = Metrics {
                runs_by_status: RunStatus::ALL.iter().map(|s| (*s, 0)).collect(),
                queue_depth: 0,
                awaiting_approval: 0,
                pending_approvals: 0,
                deliveries: 0,
            };
            for row in rows {
                let (what, status, n) = row.map_err(|e| ctx.sql(e))?;
                let n = n as u64;
                match (what.as_str(), status) {
                    ("status", Some(status)) => {
                        if let Some(slot) = metrics
                            .runs_by_status
                            .iter_mut()
                            .find(|(s, _)| *s == status)
                        {
                            slot.1 = n;
                        }
                    }
                    ("awaiting_approval", _) => metrics.awaiting_approval = n,
                    ("pending_approvals", _) => metrics.pending_approvals = n,
                    ("deliveries", _) => metrics.deliveries = n,
                    _ => {}
                }
            }
            metrics.queue_depth = metrics.runs(RunStatus::Queued);
            Ok(metrics)
        })
    }
}
