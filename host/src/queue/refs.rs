//! What polling last saw of each repository, and the runs a poll finds. A
//! push whose webhook was lost is found by the next poll; one a webhook (or an
//! earlier poll) already queued is not queued again.

use super::runs::{Enqueued, NewRun, enqueue_in};
use super::{Result, Run, RunStatus, Store, now_ms};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The refs (full name, commit) of `repository` as the last poll saw
    /// them; `None` when it was never polled.
    pub fn remote_refs(&self, repository: &str) -> Result<Option<Vec<(String, String)>>> {
        self.read("reading polled refs", |conn, ctx| {
            let polled: Option<i64> = conn
                .query_row(
                    "SELECT polled_at_ms FROM polled_repositories WHERE repository = ?1",
                    [repository],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| ctx.sql(e))?;
            if polled.is_none() {
                return Ok(None);
            }
            let mut stmt = conn
                .prepare_cached(
                    "SELECT git_ref, commit_sha FROM remote_refs WHERE repository = ?1 ORDER BY git_ref",
                )
                .map_err(|e| ctx.sql(e))?;
            let rows = stmt
                .query_map([repository], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| ctx.sql(e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map(Some)
                .map_err(|e| ctx.sql(e))
        })
    }

    /// Record a poll of `repository` (its refs now) and queue `runs`, in one
    /// transaction; a run whose (pipeline, ref, commit) already has a run
    /// started by a push, a poll or by hand is left out. Returns what was
    /// queued.
    pub fn record_poll(
        &mut self,
        repository: &str,
        refs: &[(String, String)],
        runs: &[NewRun],
    ) -> Result<Vec<Enqueued>> {
        self.write("recording a poll", |tx, ctx| {
            tx.execute(
                "INSERT INTO polled_repositories (repository, polled_at_ms) VALUES (?1, ?2) \
                 ON CONFLICT (repository) DO UPDATE SET polled_at_ms = excluded.polled_at_ms",
                params![repository, now_ms()],
            )
            .map_err(|e| ctx.sql(e))?;
            tx.execute("DELETE FROM remote_refs WHERE repository = ?1", [repository])
                .map_err(|e| ctx.sql(e))?;
            for (name, commit) in refs {
                tx.execute(
                    "INSERT INTO remote_refs (repository, git_ref, commit_sha) VALUES (?1, ?2, ?3)",
                    params![repository, name, commit],
                )
                .map_err(|e| ctx.sql(e))?;
            }
            let mut queued = vec![];
            for run in runs {
                let seen: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM runs WHERE pipeline = ?1 AND git_ref = ?2 AND commit_sha = ?3 \
                         AND trigger IN ('push', 'poll', 'manual') LIMIT 1",
                        params![run.pipeline, run.git_ref, run.commit],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| ctx.sql(e))?;
                if seen.is_none() {
                    queued.push(enqueue_in(tx, ctx, run, None)?);
                }
            }
            Ok(queued)
        })
    }

    /// A webhook reported these (ref, commit) pushes of `repository`: the
    /// poller need not find them again. Only for a repository polled before
    /// (its first poll records everything anyway).
    pub fn note_refs(&mut self, repository: &str, refs: &[(String, String)]) -> Result<()> {
        self.write("recording pushed refs", |tx, ctx| {
            for (name, commit) in refs {
                tx.execute(
                    "INSERT INTO remote_refs (repository, git_ref, commit_sha) \
                     SELECT ?1, ?2, ?3 WHERE EXISTS \
                       (SELECT 1 FROM polled_repositories WHERE repository = ?1) \
                     ON CONFLICT (repository, git_ref) DO UPDATE SET commit_sha = excluded.commit_sha",
                    params![repository, name, commit],
                )
                .map_err(|e| ctx.sql(e))?;
            }
            Ok(())
        })
    }

    /// Queue a cancelled run again, to be resumed from its journal (its
    /// finished stages are kept): `gantry resume --server`. Only a run that
    /// was cancelled after it started a journal can be.
    pub fn requeue(&mut self, run: i64) -> Result<Run> {
        self.write("queueing a run again", |tx, ctx| {
            let current = super::runs::get_run(tx, ctx, run)?;
            if current.status != RunStatus::Cancelled || current.journal_run_id.is_none() {
                return Err(super::Error::WrongState {
                    run,
                    op: "resume",
                    status: current.status,
                });
            }
            tx.execute(
                "UPDATE runs SET status = 'queued', finished_at_ms = NULL, started_at_ms = NULL, \
                 cancel_requested = 0, claimed_by = NULL, detail = NULL WHERE id = ?1",
                [run],
            )
            .map_err(|e| ctx.sql(e))?;
            super::runs::get_run(tx, ctx, run)
        })
    }

    /// Runs not done yet (queued or running), oldest first: whose workspaces
    /// retention must keep.
    pub fn unfinished_runs(&self) -> Result<Vec<Run>> {
        let mut all = vec![];
        for status in [RunStatus::Queued, RunStatus::Running] {
            all.extend(self.runs(&super::RunFilter {
                status: Some(status),
                ..Default::default()
            })?);
        }
        all.sort_by_key(|r| r.id);
        Ok(all)
    }
}
