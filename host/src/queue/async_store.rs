//! A [`Store`] for async code: the connection lives on a thread of its own
//! and each call sends it a closure, so the runtime's workers never wait for
//! SQLite's write lock or an fsync. Rather than `spawn_blocking` per call
//! around a shared `Mutex<Store>`: one thread that owns the connection keeps
//! its prepared-statement cache, and its claim lock (see
//! [`Store::recover`]) lives exactly as long as the handles do.

use super::{DEFAULT_BUSY_TIMEOUT, Error, Result, Store};
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle to a [`Store`] on its own thread; cheap to clone, and every
/// clone talks to the same connection, one call at a time, in order. The
/// thread ends (and the store closes) when the last clone is dropped.
///
/// The calls of one handle are serialized; a service that wants reads not
/// to wait behind writes opens a second `AsyncStore` on the same file.
#[derive(Clone)]
pub struct AsyncStore {
    jobs: mpsc::Sender<Job>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for AsyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStore")
            .field("path", &self.path)
            .finish()
    }
}

impl AsyncStore {
    /// [`Store::open`] on a new thread.
    pub async fn open(path: &Path) -> Result<AsyncStore> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT).await
    }

    /// [`Store::open_with`] on a new thread.
    pub async fn open_with(path: &Path, busy_timeout: std::time::Duration) -> Result<AsyncStore> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, open_result) = oneshot::channel();
        let owned = path.to_owned();
        std::thread::Builder::new()
            .name("gantry-store".into())
            .spawn(move || {
                let mut store = match Store::open_with(&owned, busy_timeout) {
                    Ok(store) => {
                        let _ = opened.send(Ok(()));
                        store
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                // Ends when every handle is dropped.
                while let Ok(job) = queue.recv() {
                    job(&mut store);
                }
            })
            .map_err(|source| Error::Thread {
                path: path.to_owned(),
                source,
            })?;
        open_result.await.map_err(|_| Error::ThreadGone {
            path: path.to_owned(),
        })??;
        Ok(AsyncStore {
            jobs,
            path: Arc::new(path.to_owned()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the store's thread and return what it returns, e.g.
    /// `store.call(move |s| s.enqueue(&new_run)).await`. Several operations
    /// in one closure run back to back on this connection, but each is still
    /// its own transaction. A panic in `f` is resumed in the caller, as if
    /// `f` had been called there; the store goes on serving other calls.
    /// `f` holds up every other call of this handle while it runs: it does
    /// store work only, never network or a run's stages.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        type Answer<T> = std::result::Result<Result<T>, Box<dyn Any + Send>>;
        let (reply, answer) = oneshot::channel::<Answer<T>>();
        let job: Job = Box::new(move |store: &mut Store| {
            // A panic mid-operation drops its transaction, which rolls back:
            // the connection is fine for the next call.
            let _ = reply.send(std::panic::catch_unwind(AssertUnwindSafe(|| f(store))));
        });
        let gone = || Error::ThreadGone {
            path: self.path.to_path_buf(),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())? {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
