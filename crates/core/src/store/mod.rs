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
//!
//! Failures: a batch that does not commit (disk full, I/O error) is kept and
//! retried with [`nimbus_proto::backoff`]; later writes merge into it in order.
//! Meanwhile [`Store::can_write`] is `false`, and rooms refuse new changes rather
//! than fan them out as if they were durable (see `docs/security.md`, "Store
//! failures"). Loads still answer, with the kept changes applied on top.
//!
//! Compaction of document logs runs on its own thread: the writer thread only
//! reads the log and, later, replaces it in one short transaction, so commits
//! never wait for a large document to be merged.

mod doc;
mod failing;
pub mod history;
mod memory;
pub mod metrics;
mod settings;
#[doc(hidden)]
pub mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Weak};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nimbus_proto::backoff::Backoff;
use nimbus_proto::cloud::CloudValue;
use thiserror::Error;
use tokio::sync::oneshot;

use history::HistoryEntry;

pub use doc::{apply_records, compact, Applied, DocLog};
pub use failing::{FailSwitch, FailingBackend};
pub use memory::MemoryBackend;
pub use settings::{StoreConfig, StoreSettings};

/// The close reason of a client whose change was refused because the store cannot write.
pub const STORE_UNAVAILABLE: &str = "store unavailable";

/// When a failed commit is retried: from 100 ms doubling up to 5 s (equal jitter).
pub const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A backend's own error, boxed (the core does not know SQLite's error type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend failed (its name, e.g. `sqlite`, and its error).
    #[error("{backend}: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Its error.
        source: BoxError,
    },
    /// The database file could not be opened or written at startup.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        source: BoxError,
    },
    /// The data directory could not be created or is not writable.
    #[error("cannot use data directory {path}: {source}")]
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
    /// Changes accepted earlier are still not stored (the backend keeps failing).
    #[error("{ops} accepted changes are not stored yet: {reason}")]
    Unflushed {
        /// How many operations wait (repeated sets of a variable count once).
        ops: usize,
        /// The backend's last error.
        reason: String,
    },
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
    /// Remove a document room's log (snapshot and updates); a compaction of it that is
    /// running is dropped.
    DocDelete {
        /// Document room key.
        room: Arc<str>,
    },
    /// Append an entry to a cloud room's history, then trim the room's history to
    /// `retention` (count, and age relative to the entry) in the same transaction.
    HistoryAppend {
        /// Room key.
        room: Arc<str>,
        /// The entry.
        entry: HistoryEntry,
        /// What the room keeps.
        retention: history::Retention,
    },
}

impl StoreOp {
    /// The room the operation belongs to.
    pub fn room(&self) -> &Arc<str> {
        match self {
            StoreOp::Put { room, .. }
            | StoreOp::Rename { room, .. }
            | StoreOp::Delete { room, .. }
            | StoreOp::DocAppend { room, .. }
            | StoreOp::DocCompact { room }
            | StoreOp::DocDelete { room }
            | StoreOp::HistoryAppend { room, .. } => room,
        }
    }
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
    pub compactions: AtomicU64,
    /// Log bytes replaced by compactions.
    pub bytes_before: AtomicU64,
    /// Snapshot bytes written by compactions.
    pub bytes_after: AtomicU64,
    /// Compactions started and not finished yet.
    pub running: AtomicU64,
}

/// The store's health, shared with every room: a relaxed load tells whether a new
/// change can be accepted.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Set while a commit failed and its batch waits for a retry.
    write_failing: AtomicBool,
    /// Set while the last load of the backend failed (e.g. a corrupted database).
    read_failing: AtomicBool,
    /// Set once the writer thread has stopped.
    stopped: AtomicBool,
    /// Commits that failed (each retry counts).
    commit_failures: AtomicU64,
    /// Operations accepted and not committed yet (after a failure: the kept batch).
    pending_ops: AtomicUsize,
    /// Loads that failed.
    load_failures: AtomicU64,
    /// The backend's last error, for `/readyz` and logs.
    reason: Mutex<String>,
}

/// What [`StoreHealth::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStatus {
    /// Writes and loads work.
    Ok,
    /// Commits fail: changes accepted before are kept and retried, new ones are refused.
    WriteFailing {
        /// The backend's last error.
        reason: String,
        /// Accepted changes waiting to be stored.
        pending_ops: usize,
    },
    /// The last load failed (e.g. a corrupted database): rooms cannot be opened.
    ReadFailing {
        /// The backend's error.
        reason: String,
    },
    /// The writer thread has stopped.
    Stopped,
}

impl StoreStatus {
    /// A stable label (`ok`, `write_failing`, `read_failing`, `stopped`).
    pub fn label(&self) -> &'static str {
        match self {
            StoreStatus::Ok => "ok",
            StoreStatus::WriteFailing { .. } => "write_failing",
            StoreStatus::ReadFailing { .. } => "read_failing",
            StoreStatus::Stopped => "stopped",
        }
    }
}

impl StoreHealth {
    /// `true` when new changes can be accepted (one relaxed load each).
    pub fn can_write(&self) -> bool {
        !self.write_failing.load(Relaxed) && !self.stopped.load(Relaxed)
    }

    /// The current state, with the reason when it is not ok.
    pub fn status(&self) -> StoreStatus {
        if self.stopped.load(Relaxed) {
            return StoreStatus::Stopped;
        }
        let reason = || {
            self.reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        if self.write_failing.load(Relaxed) {
            return StoreStatus::WriteFailing {
                reason: reason(),
                pending_ops: self.pending_ops.load(Relaxed),
            };
        }
        if self.read_failing.load(Relaxed) {
            return StoreStatus::ReadFailing { reason: reason() };
        }
        StoreStatus::Ok
    }

    /// Commits that failed so far (each attempt counts).
    pub fn commit_failures(&self) -> u64 {
        self.commit_failures.load(Relaxed)
    }

    /// Loads that failed so far.
    pub fn load_failures(&self) -> u64 {
        self.load_failures.load(Relaxed)
    }

    /// Accepted changes not committed yet.
    pub fn pending_ops(&self) -> usize {
        self.pending_ops.load(Relaxed)
    }

    fn set_reason(&self, e: &StoreError) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = e.to_string();
    }

    fn load_result<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Ok(_) => self.read_failing.store(false, Relaxed),
            Err(e) => {
                self.load_failures.fetch_add(1, Relaxed);
                self.set_reason(e);
                self.read_failing.store(true, Relaxed);
            }
        }
    }
}

/// Where the writer thread puts things. Implementations are synchronous: they run
/// on the writer thread only.
pub trait Backend: Send + 'static {
    /// A room's variables in insertion order; empty for an unknown room.
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError>;
    /// Apply a batch of operations atomically, in order. `DocCompact` ops are the
    /// writer's business (it calls [`Backend::replace_doc`]); backends ignore them here.
    /// A failed commit changes nothing; the writer retries the same batch later.
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
    /// Up to `limit` history entries of `room`, newest first, after skipping `offset`,
    /// none older than `since_ms`.
    fn load_history(
        &mut self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
}

enum Job {
    Load(
        Arc<str>,
        oneshot::Sender<Result<Vec<StoredVar>, StoreError>>,
    ),
    LoadDoc(Arc<str>, oneshot::Sender<Result<DocLog, StoreError>>),
    LoadHistory(
        HistoryRead,
        oneshot::Sender<Result<Vec<HistoryEntry>, StoreError>>,
    ),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Reply once no compaction is running (tests, benchmarks).
    Settle(oneshot::Sender<()>),
}

/// A history read (see [`Store::history`]).
struct HistoryRead {
    room: Arc<str>,
    limit: usize,
    offset: usize,
    since_ms: u64,
}

/// A compaction the compaction thread finished.
struct Compacted {
    room: Arc<str>,
    /// The merged state, or `None` when merging failed (logged).
    snapshot: Option<Vec<u8>>,
    /// Updates of the log the snapshot covers.
    covered: usize,
    /// Bytes of the log it replaces (snapshot + covered updates).
    before: usize,
}

/// What the writer thread has to do, guarded by one mutex.
#[derive(Default)]
struct Pending {
    batch: Batch,
    /// When the oldest uncommitted op arrived.
    since: Option<Instant>,
    jobs: Vec<Job>,
    compacted: Vec<Compacted>,
    stopped: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    stats: DocStoreStats,
    health: StoreHealth,
    /// Document size counters of loaded rooms (see [`Store::doc_size`]).
    sizes: Mutex<SizeCells>,
}

#[derive(Default)]
struct SizeCells {
    cells: HashMap<Arc<str>, Weak<AtomicUsize>>,
    /// Sweep dead entries when the map reaches this length.
    sweep_at: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn size_cell(&self, room: &str) -> Option<Arc<AtomicUsize>> {
        self.sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cells
            .get(room)
            .and_then(Weak::upgrade)
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

/// What `/metrics` reads of a store: its health and document statistics, without keeping
/// its writer running (see [`Store::view`]).
#[derive(Clone)]
pub struct StoreView(Arc<Shared>);

impl StoreView {
    /// See [`Store::health`].
    pub fn health(&self) -> &StoreHealth {
        &self.0.health
    }

    /// See [`Store::doc_stats`].
    pub fn doc_stats(&self) -> &DocStoreStats {
        &self.0.stats
    }
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreView")
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
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
            health: StoreHealth::default(),
            sizes: Mutex::new(SizeCells::default()),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nimbus-store".into())
            .spawn(move || Writer::new(backend, thread_shared, flush, policy).run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the store writer thread");
            shared.lock().stopped = true;
            shared.health.stopped.store(true, Relaxed);
        }
        Store {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        }
    }

    /// A view of the store's health and statistics that does not keep the writer running.
    pub fn view(&self) -> StoreView {
        StoreView(self.shared.clone())
    }

    /// Queue a change (never blocks on IO). It is committed within one flush window.
    /// Only the first change of a window wakes the writer thread. Callers check
    /// [`Store::can_write`] first and refuse the change when it is `false`.
    pub fn apply(&self, op: StoreOp) {
        let mut p = self.shared.lock();
        if p.stopped {
            tracing::error!(room = %op.room(), "store writer stopped: a change was not persisted");
            return;
        }
        p.batch.push(op);
        if p.since.is_none() {
            p.since = Some(Instant::now());
            drop(p);
            self.shared.wake.notify_one();
        }
    }

    /// `true` when a new change can be accepted: the last commit worked (one relaxed load).
    pub fn can_write(&self) -> bool {
        self.shared.health.can_write()
    }

    /// The store's health (state, failures, pending changes).
    pub fn health(&self) -> &StoreHealth {
        &self.shared.health
    }

    /// The size counter of a document room: set by the writer to the stored bytes when
    /// the room's log is loaded, moved by each compaction to the merged size; the room
    /// adds the bytes it appends. Hold it while the room is loaded (the store keeps a
    /// weak reference only).
    pub fn doc_size(&self, room: &str) -> Arc<AtomicUsize> {
        let cell = Arc::new(AtomicUsize::new(0));
        let mut sizes = self
            .shared
            .sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sizes.cells.len() >= sizes.sweep_at {
            sizes.cells.retain(|_, w| w.strong_count() > 0);
            sizes.sweep_at = (sizes.cells.len() * 2).max(64);
        }
        sizes.cells.insert(Arc::from(room), Arc::downgrade(&cell));
        cell
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

    /// Up to `limit` history entries of `room`, newest first, after skipping `offset`,
    /// none older than `since_ms`; after every change queued before this call.
    pub async fn history(
        &self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let read = HistoryRead {
            room: Arc::from(room),
            limit,
            offset,
            since_ms,
        };
        self.job(Job::LoadHistory(read, tx))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// What the writer has done to document logs so far.
    pub fn doc_stats(&self) -> &DocStoreStats {
        &self.shared.stats
    }

    /// Commit everything queued so far. While the backend fails this tries once more at
    /// once and answers [`StoreError::Unflushed`] with the number of changes not stored.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.job(Job::Flush(tx))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Wait until every compaction due so far has finished (for tests and benchmarks).
    pub async fn settle(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.job(Job::Settle(tx))?;
        rx.await.map_err(|_| StoreError::Stopped)
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
                    // Keep the stored position the first put chose.
                    self.ops[i] = op;
                    return;
                }
                self.puts.insert(key, self.ops.len());
            }
            StoreOp::DocAppend { .. }
            | StoreOp::DocCompact { .. }
            | StoreOp::DocDelete { .. }
            | StoreOp::HistoryAppend { .. } => {}
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

    /// Append `later`'s ops after these, with the same collapse rules as if they had
    /// been pushed here one by one.
    fn merge(&mut self, later: Batch) {
        if self.ops.is_empty() {
            *self = later;
            return;
        }
        for op in later.ops {
            self.push(op);
        }
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Accepted changes in the batch (what `pending_ops` and `Unflushed` count): every op
    /// but history entries, which are best effort.
    fn changes(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| !matches!(op, StoreOp::HistoryAppend { .. }))
            .count()
    }

    /// Commit; on success the batch is emptied, on failure it is kept unchanged.
    fn commit(&mut self, backend: &mut impl Backend) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        backend.commit(&self.ops)?;
        self.ops.clear();
        self.puts.clear();
        Ok(())
    }

    /// `room`'s variables as `stored` plus the ops of this batch.
    fn overlay_vars(&self, room: &Arc<str>, stored: Vec<StoredVar>) -> Vec<StoredVar> {
        let ops: Vec<StoreOp> = self
            .ops
            .iter()
            .filter(|op| {
                op.room() == room
                    && !matches!(
                        op,
                        StoreOp::DocAppend { .. }
                            | StoreOp::DocDelete { .. }
                            | StoreOp::HistoryAppend { .. }
                    )
            })
            .cloned()
            .collect();
        if ops.is_empty() {
            return stored;
        }
        let mut mem = MemoryBackend::with_vars(room.clone(), stored);
        // The memory backend does not fail.
        let _ = mem.commit(&ops);
        mem.load(room).unwrap_or_default()
    }

    /// The history entries of `room` in this batch, newest first.
    fn pending_history(&self, room: &Arc<str>) -> Vec<HistoryEntry> {
        self.ops
            .iter()
            .rev()
            .filter_map(|op| match op {
                StoreOp::HistoryAppend { room: r, entry, .. } if r == room => Some(entry.clone()),
                _ => None,
            })
            .collect()
    }

    /// `room`'s log as `stored` plus the updates of this batch.
    fn overlay_doc(&self, room: &Arc<str>, mut stored: DocLog) -> DocLog {
        for op in &self.ops {
            match op {
                StoreOp::DocAppend { room: r, update } if r == room => {
                    stored.updates.push(update.to_vec());
                }
                StoreOp::DocDelete { room: r } if r == room => stored = DocLog::default(),
                _ => {}
            }
        }
        stored
    }
}

/// Size of a document room's log after its snapshot, as far as the writer has seen it.
#[derive(Debug, Default, Clone, Copy)]
struct LogSize {
    updates: usize,
    bytes: usize,
}

/// The writer's view of document logs: what has grown past the policy, what is being
/// compacted.
struct Compactor {
    policy: CompactionPolicy,
    sizes: HashMap<Arc<str>, LogSize>,
    /// Rooms to compact once nothing is kept uncommitted; `true`: forget it afterwards.
    due: Vec<(Arc<str>, bool)>,
    /// Rooms whose compaction runs on the compaction thread; `true`: forget afterwards.
    running: HashMap<Arc<str>, bool>,
    /// Rooms deleted while their compaction ran: its snapshot is dropped.
    cancelled: std::collections::HashSet<Arc<str>>,
}

impl Compactor {
    fn over(&self, size: LogSize) -> bool {
        size.updates >= self.policy.max_updates || size.bytes >= self.policy.max_bytes
    }

    fn mark_due(&mut self, room: &Arc<str>, forget: bool) {
        match self.due.iter_mut().find(|(r, _)| r == room) {
            Some(entry) => entry.1 |= forget,
            None => self.due.push((room.clone(), forget)),
        }
    }

    /// Account for newly queued ops; rooms past the policy become due.
    fn plan(&mut self, ops: &[StoreOp]) {
        for op in ops {
            match op {
                StoreOp::DocAppend { room, update } => {
                    let size = self.sizes.entry(room.clone()).or_default();
                    size.updates += 1;
                    size.bytes += update.len();
                    let size = *size;
                    if self.over(size) {
                        self.mark_due(room, false);
                    }
                }
                StoreOp::DocCompact { room } => self.mark_due(room, true),
                StoreOp::DocDelete { room } => {
                    self.sizes.remove(room);
                    self.due.retain(|(r, _)| r != room);
                    if self.running.contains_key(room) {
                        self.cancelled.insert(room.clone());
                    }
                }
                _ => {}
            }
        }
    }

    /// Record a loaded log's size; `true` when it is already past the policy.
    fn loaded(&mut self, room: &Arc<str>, log: &DocLog) -> bool {
        let size = LogSize {
            updates: log.updates.len(),
            bytes: log.updates.iter().map(Vec::len).sum(),
        };
        self.sizes.insert(room.clone(), size);
        self.over(size)
    }
}

/// Merges document logs on its own thread.
fn compaction_thread(shared: Arc<Shared>, jobs: mpsc::Receiver<(Arc<str>, DocLog)>) {
    while let Ok((room, log)) = jobs.recv() {
        let merged =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compact(&room, &log)));
        let snapshot = match merged {
            Ok(s) => Some(s),
            Err(_) => {
                tracing::error!(%room, "document compaction panicked; the log is kept as it is");
                None
            }
        };
        let done = Compacted {
            covered: log.updates.len(),
            before: log.bytes(),
            room,
            snapshot,
        };
        drop(log);
        shared.lock().compacted.push(done);
        shared.wake.notify_one();
    }
}

struct Writer<B> {
    backend: B,
    shared: Arc<Shared>,
    flush: Duration,
    /// Ops taken from the queue and not committed yet (kept after a failed commit).
    kept: Batch,
    /// Consecutive failed commits.
    failures: u32,
    retry_at: Option<Instant>,
    compactor: Compactor,
    to_compactor: Option<mpsc::Sender<(Arc<str>, DocLog)>>,
    settle: Vec<oneshot::Sender<()>>,
}

impl<B: Backend> Writer<B> {
    fn new(backend: B, shared: Arc<Shared>, flush: Duration, policy: CompactionPolicy) -> Self {
        let (tx, rx) = mpsc::channel();
        let worker_shared = shared.clone();
        let to_compactor = match std::thread::Builder::new()
            .name("nimbus-compact".into())
            .spawn(move || compaction_thread(worker_shared, rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the compaction thread: compacting on the writer");
                None
            }
        };
        Writer {
            backend,
            shared,
            flush,
            kept: Batch::default(),
            failures: 0,
            retry_at: None,
            compactor: Compactor {
                policy,
                sizes: HashMap::new(),
                due: Vec::new(),
                running: HashMap::new(),
                cancelled: Default::default(),
            },
            to_compactor,
            settle: Vec::new(),
        }
    }

    fn run(mut self) {
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        loop {
            // Sleep until there is a job, a finished compaction, the window of the oldest
            // op has passed, a retry is due, or we stop.
            let now = Instant::now();
            let due = guard.since.map(|t| t + self.flush);
            let next = match (due, self.retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ready = !guard.jobs.is_empty()
                || !guard.compacted.is_empty()
                || guard.stopped
                || next.is_some_and(|d| now >= d);
            if !ready {
                guard = match next {
                    Some(d) => {
                        let wait = d.saturating_duration_since(now);
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
            let batch = std::mem::take(&mut guard.batch);
            let jobs = std::mem::take(&mut guard.jobs);
            let compacted = std::mem::take(&mut guard.compacted);
            let stopped = guard.stopped;
            guard.since = None;
            drop(guard);
            self.round(batch, jobs, compacted, stopped);
            if stopped {
                self.stop();
                return;
            }
            guard = shared.lock();
        }
    }

    fn round(&mut self, batch: Batch, jobs: Vec<Job>, compacted: Vec<Compacted>, stopped: bool) {
        self.compactor.plan(&batch.ops);
        self.kept.merge(batch);
        let forced = stopped || jobs.iter().any(|j| matches!(j, Job::Flush(_)));
        let retry_due = self.retry_at.is_none_or(|t| Instant::now() >= t);
        // Commit before serving jobs: a load sees every earlier write.
        if !self.kept.is_empty() && (retry_due || forced) {
            self.commit();
        }
        self.shared
            .health
            .pending_ops
            .store(self.kept.changes(), Relaxed);
        for done in compacted {
            self.replace(done);
        }
        for job in jobs {
            self.serve(job);
        }
        self.start_compactions();
        if self.compactor.running.is_empty() && self.compactor.due.is_empty() {
            for tx in self.settle.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    fn commit(&mut self) {
        let health = &self.shared.health;
        match self.kept.commit(&mut self.backend) {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::warn!(
                        attempts = self.failures,
                        "store recovered: the kept changes are stored; accepting changes again"
                    );
                }
                self.failures = 0;
                self.retry_at = None;
                health.write_failing.store(false, Relaxed);
            }
            Err(e) => {
                health.commit_failures.fetch_add(1, Relaxed);
                health.set_reason(&e);
                health.write_failing.store(true, Relaxed);
                let wait = RETRY.equal_jitter(self.failures, rand::random::<f64>());
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(Instant::now() + wait);
                tracing::error!(
                    error = %e,
                    ops = self.kept.changes(),
                    attempt = self.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "store commit failed: changes kept for a retry; new changes are refused meanwhile"
                );
            }
        }
    }

    fn serve(&mut self, job: Job) {
        match job {
            Job::Load(room, reply) => {
                let result = self
                    .backend
                    .load(&room)
                    .map(|vars| self.kept.overlay_vars(&room, vars));
                self.shared.health.load_result(&result);
                if let Err(e) = &result {
                    tracing::error!(%room, error = %e, "store load failed");
                }
                let _ = reply.send(result);
            }
            Job::LoadDoc(room, reply) => {
                let result = self
                    .backend
                    .load_doc(&room)
                    .map(|log| self.kept.overlay_doc(&room, log));
                self.shared.health.load_result(&result);
                match &result {
                    Ok(log) => {
                        if let Some(cell) = self.shared.size_cell(&room) {
                            cell.store(log.bytes(), Relaxed);
                        }
                        if !self.compactor.running.contains_key(&room)
                            && self.compactor.loaded(&room, log)
                        {
                            // A log that grew past the policy before a restart: fold it now.
                            self.compactor.mark_due(&room, false);
                        }
                    }
                    Err(e) => tracing::error!(%room, error = %e, "store load failed"),
                }
                let _ = reply.send(result);
            }
            Job::LoadHistory(read, reply) => {
                let result = self.load_history(&read);
                if let Err(e) = &result {
                    tracing::error!(room = %read.room, error = %e, "history load failed");
                }
                let _ = reply.send(result);
            }
            Job::Flush(reply) => {
                let result = if self.kept.is_empty() {
                    Ok(())
                } else {
                    Err(StoreError::Unflushed {
                        ops: self.kept.changes(),
                        reason: self
                            .shared
                            .health
                            .reason
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone(),
                    })
                };
                let _ = reply.send(result);
            }
            Job::Settle(reply) => self.settle.push(reply),
        }
    }

    /// A history read: the backend's entries under the ones a failed commit keeps.
    fn load_history(&mut self, read: &HistoryRead) -> Result<Vec<HistoryEntry>, StoreError> {
        let pending = self.kept.pending_history(&read.room);
        if pending.is_empty() {
            return self
                .backend
                .load_history(&read.room, read.limit, read.offset, read.since_ms);
        }
        let want = read.offset.saturating_add(read.limit);
        let stored = self
            .backend
            .load_history(&read.room, want, 0, read.since_ms)?;
        Ok(pending
            .into_iter()
            .filter(|e| e.at_ms >= read.since_ms)
            .chain(stored)
            .skip(read.offset)
            .take(read.limit)
            .collect())
    }

    /// Start the due compactions: read the log here, merge it on the compaction thread.
    fn start_compactions(&mut self) {
        if !self.kept.is_empty() {
            // Compact committed logs only (and leave a failing backend alone).
            return;
        }
        let due = std::mem::take(&mut self.compactor.due);
        for (room, forget) in due {
            if let Some(f) = self.compactor.running.get_mut(&room) {
                // One compaction per room at a time; fold again when it finishes.
                if forget {
                    *f = true;
                }
                self.compactor.due.push((room, false));
                continue;
            }
            let log = match self.backend.load_doc(&room) {
                Ok(log) => log,
                Err(error) => {
                    tracing::error!(%room, %error, "document compaction failed: cannot read the log");
                    continue;
                }
            };
            if log.updates.is_empty() {
                if forget {
                    self.compactor.sizes.remove(&room);
                }
                continue;
            }
            // What is appended from now on is not covered by this compaction.
            self.compactor
                .sizes
                .insert(room.clone(), LogSize::default());
            self.compactor.running.insert(room.clone(), forget);
            self.shared.stats.running.fetch_add(1, Relaxed);
            let sent = match &self.to_compactor {
                Some(tx) => tx.send((room.clone(), log)).map_err(|e| e.0),
                None => Err((room.clone(), log)),
            };
            if let Err((room, log)) = sent {
                let snapshot = Some(compact(&room, &log));
                self.replace(Compacted {
                    covered: log.updates.len(),
                    before: log.bytes(),
                    room,
                    snapshot,
                });
            }
        }
    }

    /// The short part of a compaction: replace the covered log by the snapshot.
    fn replace(&mut self, done: Compacted) {
        let stats = &self.shared.stats;
        stats.running.fetch_sub(1, Relaxed);
        let forget = self.compactor.running.remove(&done.room).unwrap_or(false);
        let room = &done.room;
        if self.compactor.cancelled.remove(room) {
            // The room was deleted meanwhile: its snapshot must not bring it back.
            tracing::debug!(%room, "compaction of a deleted document dropped");
            return;
        }
        let Some(snapshot) = done.snapshot else {
            return;
        };
        match self.backend.replace_doc(room, &snapshot, done.covered) {
            Ok(()) => {
                stats.compactions.fetch_add(1, Relaxed);
                stats.bytes_before.fetch_add(done.before as u64, Relaxed);
                stats.bytes_after.fetch_add(snapshot.len() as u64, Relaxed);
                if let Some(cell) = self.shared.size_cell(room) {
                    let _ = cell.fetch_update(Relaxed, Relaxed, |size| {
                        Some(size.saturating_sub(done.before) + snapshot.len())
                    });
                }
                tracing::debug!(%room, updates = done.covered, before = done.before, after = snapshot.len(), "compacted document log");
            }
            Err(error) => {
                tracing::error!(%room, %error, "document compaction failed: the log is kept as it is");
                // Count the covered updates again so the log is compacted later.
                let size = self.compactor.sizes.entry(room.clone()).or_default();
                size.updates += done.covered;
                size.bytes += done.before;
            }
        }
        if forget && !self.compactor.due.iter().any(|(r, _)| r == room) {
            let appended = self
                .compactor
                .sizes
                .get(room)
                .is_some_and(|s| s.updates > 0);
            if appended {
                // Appended while it was merged: fold that too.
                self.compactor.mark_due(room, true);
            } else {
                self.compactor.sizes.remove(room);
            }
        }
    }

    /// The last round ran: report what could not be stored.
    fn stop(&mut self) {
        self.shared.health.stopped.store(true, Relaxed);
        if !self.kept.is_empty() {
            tracing::error!(
                ops = self.kept.changes(),
                "store writer stopped with accepted changes that could not be stored: they are lost"
            );
        }
        // The compaction thread ends when its queue is dropped; a running merge is dropped.
        self.to_compactor = None;
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{text_of, text_updates};
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

    #[tokio::test]
    async fn a_growing_document_log_is_compacted_with_identical_state() {
        let backend = MemoryBackend::default();
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
        store.settle().await.expect("settle");
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
    async fn a_deleted_document_log_is_gone_and_no_compaction_brings_it_back() {
        let policy = CompactionPolicy {
            max_updates: 10,
            max_bytes: usize::MAX,
        };
        let store = Store::spawn_with(MemoryBackend::default(), Duration::from_millis(1), policy);
        let (_, updates) = text_updates(45);
        for u in updates {
            store.apply(StoreOp::DocAppend {
                room: "r".into(),
                update: u,
            });
        }
        // Queued behind the appends (and whatever compaction they started).
        store.apply(StoreOp::DocDelete { room: "r".into() });
        assert!(store.load_doc("r").await.expect("load").is_empty());
        store.flush().await.expect("flush");
        store.settle().await.expect("settle");
        assert!(store.load_doc("r").await.expect("load").is_empty());
        // The room starts again from nothing.
        let (expected, updates) = text_updates(3);
        for u in updates {
            store.apply(StoreOp::DocAppend {
                room: "r".into(),
                update: u,
            });
        }
        let log = store.load_doc("r").await.expect("load");
        assert_eq!(log.updates.len(), 3);
        assert_eq!(text_of(&log), expected);
    }

    fn failing_store() -> (Store, Arc<FailSwitch>) {
        let (backend, switch) = FailingBackend::new(MemoryBackend::default());
        (Store::spawn(backend, Duration::from_millis(1)), switch)
    }

    /// Poll (bounded) until `f` holds; the store's retries are on their own clock.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never happened: {what}");
    }

    #[test]
    fn merging_into_a_kept_batch_keeps_order_and_collapse_rules() {
        let mut kept = Batch::default();
        kept.push(put("r", "a", 1, 0));
        kept.push(put("r", "b", 1, 1));
        kept.push(StoreOp::Rename {
            room: "r".into(),
            name: "b".into(),
            new_name: "c".into(),
        });
        let mut later = Batch::default();
        later.push(put("r", "a", 2, 0));
        later.push(put("r", "b", 5, 2));
        later.push(put("r", "c", 3, 1));
        kept.merge(later);
        // a collapses into its kept put; b and c come after the rename, in order.
        assert_eq!(kept.ops[0], put("r", "a", 2, 0));
        assert_eq!(kept.ops.len(), 5);
        let mut mem = MemoryBackend::default();
        kept.commit(&mut mem).expect("commit");
        let vars: Vec<_> = mem
            .load("r")
            .expect("load")
            .into_iter()
            .map(|v| (v.name.to_string(), v.value))
            .collect();
        assert_eq!(
            vars,
            vec![
                ("a".to_owned(), CloudValue::from(2)),
                ("c".to_owned(), CloudValue::from(3)),
                ("b".to_owned(), CloudValue::from(5)),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_commit_is_kept_and_retried_until_the_backend_recovers() {
        let (store, switch) = failing_store();
        switch.fail_writes(true);
        store.apply(put("r", "a", 1, 0));
        until("the commit failed", || !store.can_write()).await;
        assert!(matches!(
            store.health().status(),
            StoreStatus::WriteFailing { pending_ops: 1, .. }
        ));
        // Changes that raced with the failure merge into the kept batch.
        store.apply(put("r", "a", 2, 0));
        store.apply(put("r", "b", 7, 1));
        until("a retry failed too", || switch.failed_commits() >= 2).await;
        switch.fail_writes(false);
        until("a retry worked", || store.can_write()).await;
        assert_eq!(store.health().status(), StoreStatus::Ok);
        assert_eq!(store.health().pending_ops(), 0);
        let vars = store.load("r").await.expect("load");
        assert_eq!(vars.len(), 2);
        assert_eq!(vars[0].value, CloudValue::from(2));
        assert_eq!(vars[1].value, CloudValue::from(7));
        assert!(store.health().commit_failures() >= 2);
    }

    #[tokio::test]
    async fn loads_while_failing_see_the_kept_changes() {
        let (store, switch) = failing_store();
        store.apply(put("r", "a", 1, 0));
        store.flush().await.expect("flush");
        switch.fail_writes(true);
        store.apply(put("r", "a", 2, 0));
        store.apply(StoreOp::DocAppend {
            room: "d".into(),
            update: bytes::Bytes::from_static(b"x"),
        });
        until("the commit failed", || !store.can_write()).await;
        let vars = store.load("r").await.expect("load");
        assert_eq!(vars[0].value, CloudValue::from(2));
        let log = store.load_doc("d").await.expect("load doc");
        assert_eq!(log.updates, vec![b"x".to_vec()]);
    }

    #[tokio::test]
    async fn a_flush_while_failing_names_the_changes_not_stored() {
        let (store, switch) = failing_store();
        switch.fail_writes(true);
        store.apply(put("r", "a", 1, 0));
        store.apply(put("r", "b", 1, 1));
        match store.flush().await {
            Err(StoreError::Unflushed { ops: 2, reason }) => {
                assert!(reason.contains("disk is full"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        switch.fail_writes(false);
        store.flush().await.expect("flush after recovery");
        assert_eq!(store.load("r").await.expect("load").len(), 2);
    }

    #[tokio::test]
    async fn a_failing_load_is_reported_until_a_load_works() {
        let (store, switch) = failing_store();
        switch.fail_reads(true);
        assert!(store.load("r").await.is_err());
        assert!(matches!(
            store.health().status(),
            StoreStatus::ReadFailing { .. }
        ));
        assert!(store.can_write(), "reads failing do not refuse writes");
        switch.fail_reads(false);
        store.load("r").await.expect("load");
        assert_eq!(store.health().status(), StoreStatus::Ok);
    }

    #[tokio::test]
    async fn compaction_keeps_updates_appended_while_it_runs() {
        let (expected, updates) = text_updates(60);
        let store = Store::spawn_with(
            MemoryBackend::default(),
            Duration::ZERO,
            CompactionPolicy {
                max_updates: 5,
                max_bytes: usize::MAX,
            },
        );
        // Appends keep arriving while compactions run on their own thread.
        for u in updates {
            store.apply(StoreOp::DocAppend {
                room: "r".into(),
                update: u,
            });
            tokio::task::yield_now().await;
        }
        store.flush().await.expect("flush");
        store.settle().await.expect("settle");
        let log = store.load_doc("r").await.expect("load");
        assert!(log.snapshot.is_some());
        assert_eq!(text_of(&log), expected);
        assert_eq!(store.doc_stats().running.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn the_size_counter_follows_compaction() {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::new();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        doc.observe_update_v1("test", move |_, e| {
            sink.lock().expect("lock").push(e.update.clone());
        })
        .expect("observe");
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "tiny");
        let big = "x".repeat(100_000);
        for _ in 0..10 {
            text.insert(&mut doc.transact_mut(), 2, &big);
            text.remove_range(&mut doc.transact_mut(), 2, 100_000);
        }
        let updates = out.lock().expect("lock").clone();
        let store = Store::spawn_with(
            MemoryBackend::default(),
            Duration::ZERO,
            CompactionPolicy::default(),
        );
        let size = store.doc_size("r");
        for u in &updates {
            size.fetch_add(u.len(), Relaxed);
            store.apply(StoreOp::DocAppend {
                room: "r".into(),
                update: bytes::Bytes::from(u.clone()),
            });
        }
        assert!(size.load(Relaxed) > 1_000_000);
        store.apply(StoreOp::DocCompact { room: "r".into() });
        store.flush().await.expect("flush");
        store.settle().await.expect("settle");
        // Read before loading: a load sets the counter to the stored size itself.
        let counted = size.load(Relaxed);
        let stored = store.load_doc("r").await.expect("load").bytes();
        assert_eq!(counted, stored);
        assert!(stored < 10_000, "{stored}");
    }
}
