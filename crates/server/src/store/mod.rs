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

mod doc;
mod memory;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nimbus_proto::cloud::CloudValue;
use thiserror::Error;
use tokio::sync::oneshot;

pub use doc::{apply_records, compact, Applied, DocLog};
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
    /// The Redis backplane (the store of cloud rooms with `--redis`) failed.
    #[error("backplane: {0}")]
    Backplane(String),
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
    /// Append a Yjs v1 update to a document room's log.
    DocAppend {
        /// Document room key.
        room: Arc<str>,
        /// The update, as the room applied it.
        update: bytes::Bytes,
    },
    /// Fold a document room's log into one snapshot now (e.g. when the room goes idle).
    DocCompact {
        /// Document room key.
        room: Arc<str>,
    },
}

/// When the writer folds a document log into a snapshot on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact once a room's log holds this many updates after its snapshot.
    pub max_updates: usize,
    /// ... or this many bytes.
    pub max_bytes: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            max_updates: 1000,
            max_bytes: 4 << 20,
        }
    }
}

/// What the writer thread has done to document logs, for `/metrics`.
#[derive(Debug, Default)]
pub struct DocStoreStats {
    /// Compactions run.
    pub compactions: std::sync::atomic::AtomicU64,
    /// Log bytes replaced by compactions.
    pub bytes_before: std::sync::atomic::AtomicU64,
    /// Snapshot bytes written by compactions.
    pub bytes_after: std::sync::atomic::AtomicU64,
}

/// Where the writer thread puts things. Implementations are synchronous: they run
/// on the writer thread only.
pub trait Backend: Send + 'static {
    /// A room's variables in insertion order; empty for an unknown room.
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError>;
    /// Apply a batch of operations atomically, in order. `DocCompact` ops are the
    /// writer's business (it calls [`Backend::replace_doc`]); backends ignore them here.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// A document room's log; empty for an unknown room.
    fn load_doc(&mut self, room: &str) -> Result<DocLog, StoreError>;
    /// Atomically replace the snapshot and the first `covered` updates of a room's log
    /// with `snapshot` (updates appended after those stay, in order).
    fn replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> Result<(), StoreError>;
}

enum Job {
    Load(
        Arc<str>,
        oneshot::Sender<Result<Vec<StoredVar>, StoreError>>,
    ),
    LoadDoc(Arc<str>, oneshot::Sender<Result<DocLog, StoreError>>),
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
    stats: DocStoreStats,
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
    pub fn open_sqlite(
        data_dir: &std::path::Path,
        flush: Duration,
        policy: CompactionPolicy,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.into(),
            source,
        })?;
        let backend = SqliteBackend::open(&data_dir.join("nimbus.sqlite3"))?;
        Ok(Store::spawn_with(backend, flush, policy))
    }

    /// Start a writer thread over any backend.
    pub fn spawn(backend: impl Backend, flush: Duration) -> Store {
        Store::spawn_with(backend, flush, CompactionPolicy::default())
    }

    /// Start a writer thread over any backend, with a compaction policy for document logs.
    pub fn spawn_with(backend: impl Backend, flush: Duration, policy: CompactionPolicy) -> Store {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stats: DocStoreStats::default(),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nimbus-store".into())
            .spawn(move || writer(backend, &thread_shared, flush, policy));
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

    /// Load a document room's log, after every change queued before this call.
    pub async fn load_doc(&self, room: &str) -> Result<DocLog, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.job(Job::LoadDoc(Arc::from(room), tx))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// What the writer has done to document logs so far.
    pub fn doc_stats(&self) -> &DocStoreStats {
        &self.shared.stats
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
            StoreOp::DocAppend { .. } | StoreOp::DocCompact { .. } => {}
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

/// Size of a document room's log after its snapshot, as far as the writer has seen it.
#[derive(Debug, Default, Clone, Copy)]
struct LogSize {
    updates: usize,
    bytes: usize,
}

/// The writer's view of document logs: what has grown past the policy.
struct Compactor {
    policy: CompactionPolicy,
    sizes: HashMap<Arc<str>, LogSize>,
}

impl Compactor {
    /// Account for a batch about to be committed; returns the rooms to compact after it.
    fn plan(&mut self, ops: &[StoreOp]) -> Vec<(Arc<str>, bool)> {
        let mut due: Vec<(Arc<str>, bool)> = Vec::new();
        for op in ops {
            match op {
                StoreOp::DocAppend { room, update } => {
                    let size = self.sizes.entry(room.clone()).or_default();
                    size.updates += 1;
                    size.bytes += update.len();
                    if (size.updates >= self.policy.max_updates
                        || size.bytes >= self.policy.max_bytes)
                        && !due.iter().any(|(r, _)| r == room)
                    {
                        due.push((room.clone(), false));
                    }
                }
                StoreOp::DocCompact { room } => match due.iter_mut().find(|(r, _)| r == room) {
                    Some(entry) => entry.1 = true,
                    None => due.push((room.clone(), true)),
                },
                _ => {}
            }
        }
        due
    }

    /// Record a loaded log's size; `true` when it is already past the policy.
    fn loaded(&mut self, room: &Arc<str>, log: &DocLog) -> bool {
        let size = LogSize {
            updates: log.updates.len(),
            bytes: log.updates.iter().map(Vec::len).sum(),
        };
        self.sizes.insert(room.clone(), size);
        size.updates >= self.policy.max_updates || size.bytes >= self.policy.max_bytes
    }

    /// Fold `room`'s log into a snapshot. `forget`: the room went idle, drop its entry.
    fn compact(
        &mut self,
        backend: &mut impl Backend,
        stats: &DocStoreStats,
        room: &Arc<str>,
        forget: bool,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let result = backend.load_doc(room).and_then(|log| {
            if log.updates.is_empty() {
                return Ok(None);
            }
            let before = log.bytes();
            let snapshot = compact(room, &log);
            backend.replace_doc(room, &snapshot, log.updates.len())?;
            Ok(Some((before, snapshot.len(), log.updates.len())))
        });
        match result {
            Ok(Some((before, after, updates))) => {
                stats.compactions.fetch_add(1, Relaxed);
                stats.bytes_before.fetch_add(before as u64, Relaxed);
                stats.bytes_after.fetch_add(after as u64, Relaxed);
                tracing::debug!(%room, updates, before, after, "compacted document log");
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%room, %error, "document compaction failed"),
        }
        if forget {
            self.sizes.remove(room);
        } else {
            self.sizes.insert(room.clone(), LogSize::default());
        }
    }
}

fn writer(mut backend: impl Backend, shared: &Shared, flush: Duration, policy: CompactionPolicy) {
    let mut compactor = Compactor {
        policy,
        sizes: HashMap::new(),
    };
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
        let to_compact = compactor.plan(&batch.ops);
        // Commit before serving jobs: a load sees every earlier write.
        let committed = batch.commit(&mut backend);
        if committed.is_ok() {
            for (room, forget) in &to_compact {
                compactor.compact(&mut backend, &shared.stats, room, *forget);
            }
        }
        for job in jobs {
            let failed = |e: &StoreError| StoreError::Commit(e.to_string());
            match job {
                Job::Load(room, reply) => {
                    let result = match &committed {
                        Ok(()) => backend.load(&room),
                        Err(e) => Err(failed(e)),
                    };
                    let _ = reply.send(result);
                }
                Job::LoadDoc(room, reply) => {
                    let result = match &committed {
                        Ok(()) => backend.load_doc(&room),
                        Err(e) => Err(failed(e)),
                    };
                    let oversized = match &result {
                        Ok(log) => compactor.loaded(&room, log),
                        Err(_) => false,
                    };
                    let _ = reply.send(result);
                    if oversized {
                        // A log that grew past the policy before a restart: fold it now.
                        compactor.compact(&mut backend, &shared.stats, &room, false);
                    }
                }
                Job::Flush(reply) => {
                    let _ = reply.send(committed.as_ref().map(|_| ()).map_err(failed));
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

    fn text_updates(n: usize) -> (String, Vec<bytes::Bytes>) {
        use yrs::{GetString, Text, Transact};
        let doc = yrs::Doc::new();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        doc.observe_update_v1("test", move |_, e| {
            sink.lock()
                .expect("lock")
                .push(bytes::Bytes::from(e.update.clone()));
        })
        .expect("observe");
        let text = doc.get_or_insert_text("t");
        for i in 0..n {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &format!("{i},"));
            if i % 3 == 0 {
                text.remove_range(&mut txn, 0, 1);
            }
        }
        let s = text.get_string(&doc.transact());
        let updates = out.lock().expect("lock").clone();
        (s, updates)
    }

    fn text_of(log: &DocLog) -> String {
        use yrs::{GetString, Transact};
        let doc = yrs::Doc::new();
        let applied = apply_records("r", &doc, log.records());
        assert_eq!(applied.skipped, 0);
        let text = doc.get_or_insert_text("t");
        let s = text.get_string(&doc.transact());
        s
    }

    #[tokio::test]
    async fn a_growing_document_log_is_compacted_with_identical_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SqliteBackend::open(&dir.path().join("db")).expect("open");
        let policy = CompactionPolicy {
            max_updates: 10,
            max_bytes: usize::MAX,
        };
        let store = Store::spawn_with(backend, Duration::from_millis(1), policy);
        let (expected, updates) = text_updates(95);
        let log_bytes: usize = updates.iter().map(|u| u.len()).sum();
        for u in updates {
            store.apply(StoreOp::DocAppend {
                room: "r".into(),
                update: u,
            });
        }
        store.flush().await.expect("flush");
        let log = store.load_doc("r").await.expect("load");
        assert!(log.snapshot.is_some(), "compacted at least once");
        assert!(log.updates.len() < 10, "{} updates left", log.updates.len());
        assert!(log.bytes() < log_bytes, "{} !< {log_bytes}", log.bytes());
        assert_eq!(text_of(&log), expected);
        assert!(
            store
                .doc_stats()
                .compactions
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    }

    #[tokio::test]
    async fn an_explicit_compaction_folds_the_whole_log_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let (expected, updates) = text_updates(30);
        {
            let store = Store::spawn(SqliteBackend::open(&path).expect("open"), Duration::ZERO);
            for u in updates {
                store.apply(StoreOp::DocAppend {
                    room: "r".into(),
                    update: u,
                });
            }
            store.apply(StoreOp::DocCompact { room: "r".into() });
            store.flush().await.expect("flush");
        }
        let mut db = SqliteBackend::open(&path).expect("reopen");
        let log = db.load_doc("r").expect("load");
        assert!(log.snapshot.is_some());
        assert!(log.updates.is_empty());
        assert_eq!(text_of(&log), expected);
        assert!(db.load_doc("other").expect("load").is_empty());
    }

    #[test]
    fn replacing_a_log_prefix_keeps_the_later_updates_in_order() {
        let (expected, updates) = text_updates(20);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        let ops: Vec<StoreOp> = updates
            .iter()
            .map(|u| StoreOp::DocAppend {
                room: "r".into(),
                update: u.clone(),
            })
            .collect();
        db.commit(&ops).expect("commit");
        let prefix = DocLog {
            snapshot: None,
            updates: updates[..12].iter().map(|u| u.to_vec()).collect(),
        };
        db.replace_doc("r", &compact("r", &prefix), 12)
            .expect("replace");
        let log = db.load_doc("r").expect("load");
        assert_eq!(log.updates.len(), 8);
        assert_eq!(text_of(&log), expected);
    }
}
