//! The durable queue and history of continuous delivery (issue #14), in one
//! SQLite file: webhook deliveries (so a redelivery runs nothing twice), runs
//! from queued to finished, approvals, and what is live in each environment
//! with its history. `gantry serve` is its user; nothing here starts a run.
//!
//! Every operation is one transaction, begun `IMMEDIATE` (the write lock is
//! taken up front), so connections in other threads or processes see either
//! all of an operation or none of it, and two claimers never get the same run.
//! The file is in WAL mode with `synchronous=FULL`: an operation that returned
//! is on disk even across a power cut, which is what lets the service answer
//! a webhook only once its event is queued (GitHub does not redeliver by
//! itself). NORMAL would be safe against a killed process but not a lost
//! machine, for a cost (one fsync of the WAL per commit) a queue does not feel.
//!
//! The schema is versioned by `PRAGMA user_version` through
//! `rusqlite_migration`, one file per migration in `migrations/`; a database
//! written by a newer gantry is refused, not guessed at.
//!
//! A [`Store`] is one synchronous connection: not shared between threads;
//! each thread opens its own on the same file. Async code (the service) uses
//! an [`AsyncStore`], which owns a `Store` on a thread of its own, so that a
//! wait for the write lock or an fsync never blocks the runtime's workers.
//!
//! Runs a store claims are its own while it is open (a lock file beside the
//! database, see [`Store::recover`]): what a killed process left running is
//! found by its successor, and nothing a live process holds is taken.

mod approvals;
mod async_store;
mod deliveries;
mod environments;
mod owner;
mod refs;
mod runs;
#[cfg(test)]
mod tests;

pub use approvals::{Approval, ApprovalState, Decision};
pub use async_store::AsyncStore;
pub use deliveries::{Delivery, DeliveryOutcome};
pub use environments::Deployment;
pub use runs::{CancelOutcome, Enqueued, Metrics, NewRun, Run, RunFilter, RunStatus, short_ref};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The migrations, in order; the database's `user_version` is how many ran.
/// Never edit one that was released: add the next file.
const MIGRATIONS: &[M<'static>] = &[M::up(include_str!("migrations/0001-initial.sql"))];

/// SQLite's `application_id` header field of gantry's database ("GNTQ"),
/// set by the first migration: a file without it is another program's.
const APPLICATION_ID: i64 = 0x474E_5451;

/// How long an operation waits for another connection's write lock before
/// failing with [`Error::Busy`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the delivery database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the delivery database {} cannot use write-ahead logging (its file system kept journal mode {mode:?}); \
         put it on a local file system",
        path.display()
    )]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "the delivery database {} has schema version {found}, newer than the {known} this gantry knows: \
         it was written by a newer gantry; run that one, or move the file away to start afresh",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error(
        "{} is an SQLite database but not gantry's delivery database (its application id is not gantry's); \
         refusing to change it: give gantry a path of its own",
        path.display()
    )]
    Foreign { path: PathBuf },
    #[error("cannot bring the delivery database {} to schema version {known}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        known: usize,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error(
        "the delivery database {} is locked by another process for longer than {timeout:?} ({op})",
        path.display()
    )]
    Busy {
        path: PathBuf,
        op: &'static str,
        timeout: Duration,
    },
    #[error("delivery database {} ({op}): {source}", path.display())]
    Sql {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("there is no run {0}")]
    NoSuchRun(i64),
    #[error("cannot {op} run {run}: it is {status}")]
    WrongState {
        run: i64,
        op: &'static str,
        status: RunStatus,
    },
    #[error(
        "cannot finish run {run} as {status}: a run finishes as succeeded, failed or cancelled"
    )]
    NotFinal { run: i64, status: RunStatus },
    #[error("run {run} has no approval for environment {environment:?}")]
    NoSuchApproval { run: i64, environment: String },
    #[error(
        "the approval of run {run} for {environment:?} was already {state} by {by} at {at_ms} ms; a decision is final"
    )]
    AlreadyDecided {
        run: i64,
        environment: String,
        state: ApprovalState,
        by: String,
        at_ms: i64,
    },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("the run's ref {0:?} is not a full ref such as refs/heads/main or refs/tags/v1")]
    NotAFullRef(String),
    #[error(
        "a promotion must carry run {source_run}'s {field} ({source_value:?}) on, not {value:?}: \
         the same build goes to the next environment"
    )]
    PromotionMismatch {
        source_run: i64,
        field: &'static str,
        source_value: String,
        value: String,
    },
    #[error("the claim lock file {}: {source}", path.display())]
    OwnerLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the thread of the delivery database {}: {source}", path.display())]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread of the delivery database {} has stopped", path.display())]
    ThreadGone { path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The delivery database, open.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
    owner: owner::Owner,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (creating if missing) the database at `path` and bring its schema
    /// to the latest version. Creates `<path>-owners/` beside it too (the
    /// claim locks, see [`Store::recover`]).
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// [`Store::open`], with how long an operation waits for another
    /// connection's write lock before failing with [`Error::Busy`].
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Store> {
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        // Whose file and which version, before anything is written to it
        // (even the switch to WAL changes the header). The first read of a
        // file that is not a database fails here ("file is not a database").
        // One statement, so one snapshot: a concurrent opener's migration is
        // seen whole or not at all.
        let (found, tables, app): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), \
                 (SELECT count(*) FROM sqlite_schema WHERE type = 'table'), \
                 (SELECT application_id FROM pragma_application_id)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(open_err)?;
        let known = MIGRATIONS.len();
        let fresh = app == 0 && found == 0 && tables == 0;
        if !fresh && app != APPLICATION_ID {
            return Err(Error::Foreign {
                path: path.to_owned(),
            });
        }
        if found > known as i64 {
            return Err(Error::TooNew {
                path: path.to_owned(),
                found,
                known,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::NoWal {
                path: path.to_owned(),
                mode,
            });
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        // Operations take the write lock when they begin, so that a read
        // followed by a write inside one never fails half-way on a lock.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        if found < known as i64 {
            let ctx = Ctx {
                path,
                op: "reading the schema version",
                busy_timeout,
            };
            migrate(&mut conn, &ctx)?;
        }
        Ok(Store {
            conn,
            path: path.to_owned(),
            busy_timeout,
            // After the checks above: a file that is not gantry's, or is a
            // newer gantry's, gets nothing beside it.
            owner: owner::Owner::acquire(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this gantry writes.
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    #[cfg(test)]
    fn user_version(&self) -> Result<i64> {
        user_version(&self.conn, &self.ctx("reading the schema version"))
    }

    /// Run `f` in one immediate transaction, committed if it returns Ok.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        let ctx = Ctx {
            path: &self.path,
            op,
            busy_timeout: self.busy_timeout,
        };
        let tx = self.conn.transaction().map_err(|e| ctx.sql(e))?;
        let value = f(&tx, &ctx)?;
        tx.commit().map_err(|e| ctx.sql(e))?;
        Ok(value)
    }

    /// Run `f` outside a transaction (reads of one statement each).
    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection, &Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        f(&self.conn, &self.ctx(op))
    }

    fn ctx(&self, op: &'static str) -> Ctx<'_> {
        Ctx {
            path: &self.path,
            op,
            busy_timeout: self.busy_timeout,
        }
    }
}

fn user_version(conn: &Connection, ctx: &Ctx<'_>) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| ctx.sql(e))
}

/// Bring the schema of a connection [`Store::open_with`] checked to the
/// latest version.
fn migrate(conn: &mut Connection, ctx: &Ctx<'_>) -> Result<()> {
    let known = MIGRATIONS.len();
    let path = ctx.path.to_owned();
    match Migrations::from_slice(MIGRATIONS).to_latest(conn) {
        Ok(()) => Ok(()),
        // Another process opening the same new file migrated it between
        // our reading the version and our transaction: that is success.
        Err(_) if user_version(conn, ctx)? == known as i64 => Ok(()),
        Err(source) => Err(Error::Migrate {
            path,
            known,
            source,
        }),
    }
}

/// What an operation's SQL errors are reported with.
struct Ctx<'a> {
    path: &'a Path,
    op: &'static str,
    busy_timeout: Duration,
}

impl Ctx<'_> {
    fn sql(&self, source: rusqlite::Error) -> Error {
        if matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        ) {
            return Error::Busy {
                path: self.path.to_owned(),
                op: self.op,
                timeout: self.busy_timeout,
            };
        }
        Error::Sql {
            path: self.path.to_owned(),
            op: self.op,
            source,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn not_empty(what: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::Empty { what });
    }
    Ok(())
}
