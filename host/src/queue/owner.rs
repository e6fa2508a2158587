//! Who holds a running run, and the recovery of runs whose holder died.
//!
//! Each open [`Store`] has an owner token and holds an exclusive `flock` on a
//! file of that name in `<database>-owners/`; a run it claims records the
//! token. The kernel drops the lock when the process dies, SIGKILL included,
//! so "the claimer is dead" is a lock that can be taken, not a timeout: a
//! `gantry promote` running a run by hand next to `gantry serve` keeps its
//! run even if the service restarts meanwhile, and a killed service's runs
//! are recovered at once by its successor.

use super::runs::{RunStatus, get_run, ids};
use super::{Error, Result, Run, Store};
use rusqlite::params;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// This store's token and the lock that says it is alive.
pub(super) struct Owner {
    pub(super) token: String,
    dir: PathBuf,
    /// Held (locked) for the store's life; closing it releases the lock.
    lock: Option<File>,
}

impl Owner {
    /// Create this store's lock file, locked, in the directory beside `db`.
    pub(super) fn acquire(db: &Path) -> Result<Owner> {
        let dir = owners_dir(db);
        let lock_err = |path: &Path, source| Error::OwnerLock {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| lock_err(&dir, e))?;
        // Unique without a random source: a process id is not reused while
        // its process lives, and the counter separates stores in a process;
        // the time separates a reused pid from a dead predecessor's file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Locked under a temporary name, then renamed: a file with a
        // token's name is locked from the moment it exists, so no sweep can
        // take a starting store for a dead one.
        let temporary = dir.join(format!(".{token}.new"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|e| lock_err(&temporary, e))?;
        file.try_lock().map_err(|e| {
            lock_err(
                &temporary,
                match e {
                    TryLockError::Error(e) => e,
                    TryLockError::WouldBlock => std::io::Error::other("already locked"),
                },
            )
        })?;
        let path = dir.join(&token);
        std::fs::rename(&temporary, &path).map_err(|e| lock_err(&path, e))?;
        Ok(Owner {
            token,
            dir,
            lock: Some(file),
        })
    }

    /// Whether the store that wrote `token` is gone: its lock file is
    /// missing or can be locked. On `Some(file)` the caller holds that lock
    /// (so a store starting meanwhile cannot be mistaken for it) and removes
    /// the file after taking the runs over.
    fn try_take(&self, token: &str) -> Result<Option<Option<File>>> {
        // Tokens are written by this module; anything that could name a path
        // outside the directory was not, and its runs have no live owner.
        if token.is_empty() || token.contains(['/', '\\']) || token.starts_with('.') {
            return Ok(Some(None));
        }
        let path = self.dir.join(token);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(None)),
            Err(source) => return Err(Error::OwnerLock { path, source }),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(Some(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(Error::OwnerLock { path, source }),
        }
    }
}

impl Owner {
    /// Remove the lock files of stores that died holding no running run
    /// (SIGKILL leaves the file): any named file whose lock can be taken.
    /// Best effort; a file left is harmless (unlocked means dead).
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == self.token || name.starts_with('.') {
                continue;
            }
            if let Ok(Some(Some(_lock))) = self.try_take(name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Removed before it is unlocked: a recoverer finds no file, which
        // means dead too. Best effort: a file left behind is unlocked, and
        // unlocked means dead.
        let _ = std::fs::remove_file(self.dir.join(&self.token));
        self.lock.take();
    }
}

/// `gantry.db` -> `gantry.db-owners`, beside SQLite's own `-wal` and `-shm`.
pub(super) fn owners_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push("-owners");
    db.with_file_name(name)
}

impl Store {
    /// At start-up (and safe at any time): the runs that are `running` but
    /// whose claimer is gone (its process was killed, or its store closed),
    /// oldest first, now claimed by this store. Runs a live store holds, in
    /// this process or another, are not returned. They stay `running`, so
    /// they keep their (pipeline, branch) and count against the cap: the
    /// caller resumes each from its journal (`journal_run_id`) and finishes
    /// it. One with no journal yet was claimed but never started a stage:
    /// start it afresh under the same run id. Each run is returned once:
    /// a second call, here or in another store, does not return it again.
    pub fn recover(&mut self) -> Result<Vec<Run>> {
        let owner = &self.owner;
        let mut taken_locks = Vec::new();
        let ctx = super::Ctx {
            path: &self.path,
            op: "recovering runs left running",
            busy_timeout: self.busy_timeout,
        };
        let tx = self.conn.transaction().map_err(|e| ctx.sql(e))?;
        let holders: Vec<Option<String>> = {
            let mut stmt = tx
                .prepare(
                    "SELECT DISTINCT claimed_by FROM runs WHERE status = 'running' \
                     AND (claimed_by IS NULL OR claimed_by <> ?1)",
                )
                .map_err(|e| ctx.sql(e))?;
            stmt.query_map([&owner.token], |r| r.get(0))
                .map_err(|e| ctx.sql(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| ctx.sql(e))?
        };
        let mut recovered = Vec::new();
        for holder in holders {
            let dead = match &holder {
                None => true,
                Some(token) => match owner.try_take(token)? {
                    None => false,
                    Some(lock) => {
                        taken_locks.push((token.clone(), lock));
                        true
                    }
                },
            };
            if dead {
                recovered.extend(ids(
                    &tx,
                    &ctx,
                    "UPDATE runs SET claimed_by = ?1 WHERE status = 'running' \
                     AND claimed_by IS ?2 RETURNING id",
                    params![owner.token, holder],
                )?);
            }
        }
        recovered.sort_unstable();
        let runs = recovered
            .into_iter()
            .map(|id| get_run(&tx, &ctx, id))
            .collect::<Result<Vec<_>>>()?;
        debug_assert!(runs.iter().all(|r| r.status == RunStatus::Running));
        tx.commit().map_err(|e| ctx.sql(e))?;
        // The dead stores' files, now that their runs are ours.
        for (token, lock) in taken_locks {
            if lock.is_some() {
                let _ = std::fs::remove_file(owner.dir.join(token));
            }
        }
        owner.sweep();
        Ok(runs)
    }
}
