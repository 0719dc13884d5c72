//! Persistence of room state.
//!
//! [`Store`] is a cheap handle to one writer thread that owns a [`Backend`]
//! (SQLite by default, in-memory for tests). Writes are queued without
//! blocking and committed together once per flush window (group commit), with
//! repeated writes of one variable collapsed to the last. Loads and flushes go
//! through the same queue, so a load always observes every earlier write.
//!
//! Durability: a write is on disk at most one flush window after the room
//! accepted it, so `kill -9` loses at most that window (SQLite WAL,
//! `synchronous=NORMAL`: a committed transaction survives a process crash).

mod memory;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nimbus_proto::cloud::CloudValue;
use thiserror::Error;
use tokio::sync::oneshot;

pub use memory::MemoryBackend;
pub use sqlite::SqliteBackend;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The SQLite database failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread has stopped.
    #[error("the store writer has stopped")]
    Stopped,
    /// The commit this request waited for failed.
    #[error("commit failed: {0}")]
    Commit(String),
}

/// One persisted variable: name, value, and its position in the room's insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVar {
    /// Variable name, byte-exact.
    pub name: Arc<str>,
    /// Value with its JSON type.
    pub value: CloudValue,
    /// Insertion position (ascending = insertion order).
    pub pos: i64,
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or update a variable (an update keeps the stored position).
    Put {
        /// Room key.
        room: Arc<str>,
        /// The variable.
        var: StoredVar,
    },
    /// Rename a variable.
    Rename {
        /// Room key.
        room: Arc<str>,
        /// Current name.
        name: Arc<str>,
        /// New name.
        new_name: Arc<str>,
    },
    /// Delete a variable.
    Delete {
        /// Room key.
        room: Arc<str>,
        /// Name.
        name: Arc<str>,
    },
}

/// Where the writer thread puts things. Implementations are synchronous: they run
/// on the writer thread only.
pub trait Backend: Send + 'static {
    /// A room's variables in insertion order; empty for an unknown room.
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError>;
    /// Apply a batch of operations atomically, in order.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

enum Job {
    Load(
        Arc<str>,
        oneshot::Sender<Result<Vec<StoredVar>, StoreError>>,
    ),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// What the writer thread has to do, guarded by one mutex.
#[derive(Default)]
struct Pending {
    batch: Batch,
    /// When the oldest uncommitted op arrived.
    since: Option<Instant>,
    jobs: Vec<Job>,
    stopped: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to the store's writer thread. Clone freely; the thread stops when the
/// last handle is dropped (after committing what is pending).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.wake.notify_one();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Open the SQLite store at `data_dir/nimbus.sqlite3`.
    pub fn open_sqlite(data_dir: &std::path::Path, flush: Duration) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.into(),
            source,
        })?;
        let backend = SqliteBackend::open(&data_dir.join("nimbus.sqlite3"))?;
        Ok(Store::spawn(backend, flush))
    }

    /// Start a writer thread over any backend.
    pub fn spawn(backend: impl Backend, flush: Duration) -> Store {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nimbus-store".into())
            .spawn(move || writer(backend, &thread_shared, flush));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the store writer thread");
            shared.lock().stopped = true;
        }
        Store {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        }
    }

    /// Queue a change (never blocks on IO). It is committed within one flush window.
    /// Only the first change of a window wakes the writer thread.
    pub fn apply(&self, op: StoreOp) {
        let mut p = self.shared.lock();
        if p.stopped {
            tracing::error!("store writer stopped: a change was not persisted");
            return;
        }
        p.batch.push(op);
        if p.since.is_none() {
            p.since = Some(Instant::now());
            drop(p);
            self.shared.wake.notify_one();
        }
    }

    fn job(&self, job: Job) -> Result<(), StoreError> {
        let mut p = self.shared.lock();
        if p.stopped {
            return Err(StoreError::Stopped);
        }
        p.jobs.push(job);
        drop(p);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Load a room, after every change queued before this call.
    pub async fn load(&self, room: &str) -> Result<Vec<StoredVar>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.job(Job::Load(Arc::from(room), tx))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Commit everything queued so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.job(Job::Flush(tx))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Pending operations with repeated puts of one variable collapsed.
#[derive(Default)]
struct Batch {
    ops: Vec<StoreOp>,
    /// (room, name) -> index of its pending Put in `ops`.
    puts: HashMap<(Arc<str>, Arc<str>), usize>,
}

impl Batch {
    fn push(&mut self, op: StoreOp) {
        match &op {
            StoreOp::Put { room, var } => {
                let key = (room.clone(), var.name.clone());
                if let Some(&i) = self.puts.get(&key) {
                    self.ops[i] = op;
                    return;
                }
                self.puts.insert(key, self.ops.len());
            }
            StoreOp::Rename { room, name, .. } | StoreOp::Delete { room, name } => {
                // Later puts must not jump over this op.
                self.puts.remove(&(room.clone(), name.clone()));
                if let StoreOp::Rename { new_name, .. } = &op {
                    self.puts.remove(&(room.clone(), new_name.clone()));
                }
            }
        }
        self.ops.push(op);
    }

    fn commit(&mut self, backend: &mut impl Backend) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let result = backend.commit(&self.ops);
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = self.ops.len(), "store commit failed");
        }
        self.ops.clear();
        self.puts.clear();
        result
    }
}

fn writer(mut backend: impl Backend, shared: &Shared, flush: Duration) {
    let mut guard = shared.lock();
    loop {
        // Sleep until there is a job, the window of the oldest op has passed, or we stop.
        let due = guard.since.map(|t| t + flush);
        let ready =
            !guard.jobs.is_empty() || guard.stopped || due.is_some_and(|d| Instant::now() >= d);
        if !ready {
            guard = match due {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    shared
                        .wake
                        .wait_timeout(guard, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0)
                }
                None => shared
                    .wake
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            continue;
        }
        let mut batch = std::mem::take(&mut guard.batch);
        let jobs = std::mem::take(&mut guard.jobs);
        let stopped = guard.stopped;
        guard.since = None;
        drop(guard);
        // Commit before serving jobs: a load sees every earlier write.
        let committed = batch.commit(&mut backend);
        for job in jobs {
            match job {
                Job::Load(room, reply) => {
                    let result = match &committed {
                        Ok(()) => backend.load(&room),
                        Err(e) => Err(StoreError::Commit(e.to_string())),
                    };
                    let _ = reply.send(result);
                }
                Job::Flush(reply) => {
                    let _ = reply.send(
                        committed
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| StoreError::Commit(e.to_string())),
                    );
                }
            }
        }
        if stopped {
            return;
        }
        guard = shared.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(room: &str, name: &str, v: i64, pos: i64) -> StoreOp {
        StoreOp::Put {
            room: room.into(),
            var: StoredVar {
                name: name.into(),
                value: CloudValue::from(v),
                pos,
            },
        }
    }

    #[test]
    fn repeated_puts_collapse_to_the_last_value() {
        let mut b = Batch::default();
        b.push(put("r", "a", 1, 0));
        b.push(put("r", "b", 1, 1));
        b.push(put("r", "a", 2, 0));
        assert_eq!(b.ops, vec![put("r", "a", 2, 0), put("r", "b", 1, 1)]);
    }

    #[test]
    fn a_delete_is_not_jumped_over_by_a_later_put() {
        let mut b = Batch::default();
        b.push(put("r", "a", 1, 0));
        b.push(StoreOp::Delete {
            room: "r".into(),
            name: "a".into(),
        });
        b.push(put("r", "a", 2, 3));
        assert_eq!(b.ops.len(), 3);
        let mut mem = MemoryBackend::default();
        b.commit(&mut mem).expect("commit");
        let vars = mem.load("r").expect("load");
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].value, CloudValue::from(2));
    }

    #[tokio::test]
    async fn loads_observe_every_earlier_write() {
        let store = Store::spawn(MemoryBackend::default(), Duration::from_secs(3600));
        store.apply(put("r", "a", 7, 0));
        let vars = store.load("r").await.expect("load");
        assert_eq!(vars[0].value, CloudValue::from(7));
    }
}
