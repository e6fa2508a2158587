//! What is live in each environment, and every deployment before it (Argo
//! CD's sync history): append-only, the newest row per (pipeline,
//! environment) is what is live.

use super::runs::{RunStatus, get_run};
use super::{Error, Result, Store, not_empty, now_ms};
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: i64,
    pub pipeline: String,
    pub environment: String,
    pub commit: String,
    pub image_digest: Option<String>,
    /// The run that deployed it.
    pub run: i64,
    pub deployed_at_ms: i64,
}

const DEPLOYMENT_COLUMNS: &str =
    "id, pipeline, environment, commit_sha, image_digest, run_id, deployed_at_ms";

fn deployment_from_row(r: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        environment: r.get(2)?,
        commit: r.get(3)?,
        image_digest: r.get(4)?,
        run: r.get(5)?,
        deployed_at_ms: r.get(6)?,
    })
}

impl Store {
    /// Record that `run` deployed `commit` (and `image_digest`) to
    /// `environment`: it is now what is live there. The run must be running
    /// (its deploy stage just succeeded) or have succeeded.
    pub fn set_live(
        &mut self,
        run: i64,
        environment: &str,
        commit: &str,
        image_digest: Option<&str>,
    ) -> Result<Deployment> {
        not_empty("the deployment's environment", environment)?;
        not_empty("the deployed commit", commit)?;
        self.write("recording a deployment", |tx, ctx| {
            let recorded = get_run(tx, ctx, run)?;
            if !matches!(recorded.status, RunStatus::Running | RunStatus::Succeeded) {
                return Err(Error::WrongState {
                    run,
                    op: "record a deployment of",
                    status: recorded.status,
                });
            }
            tx.execute(
                "INSERT INTO deployments (pipeline, environment, commit_sha, image_digest, run_id, deployed_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![recorded.pipeline, environment, commit, image_digest, run, now_ms()],
            )
            .map_err(|e| ctx.sql(e))?;
            let id = tx.last_insert_rowid();
            tx.query_row(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                [id],
                deployment_from_row,
            )
            .map_err(|e| ctx.sql(e))
        })
    }

    /// What is live in every environment of every pipeline (or of
    /// `pipeline`), by pipeline then environment.
    pub fn live(&self, pipeline: Option<&str>) -> Result<Vec<Deployment>> {
        self.deployments(
            "listing live environments",
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id IN \
                 (SELECT max(id) FROM deployments WHERE ?1 IS NULL OR pipeline = ?1 \
                  GROUP BY pipeline, environment) \
                 ORDER BY pipeline, environment"
            ),
            params![pipeline],
        )
    }

    /// Every deployment of `pipeline` to `environment`, newest first.
    pub fn deployment_history(&self, pipeline: &str, environment: &str) -> Result<Vec<Deployment>> {
        self.deployments(
            "listing an environment's deployments",
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments \
                 WHERE pipeline = ?1 AND environment = ?2 ORDER BY id DESC"
            ),
            params![pipeline, environment],
        )
    }

    fn deployments(
        &self,
        op: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Deployment>> {
        self.read(op, |conn, ctx| {
            let mut stmt = conn.prepare_cached(sql).map_err(|e| ctx.sql(e))?;
            let rows = stmt
                .query_map(params, deployment_from_row)
                .map_err(|e| ctx.sql(e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| ctx.sql(e))
        })
    }
}
