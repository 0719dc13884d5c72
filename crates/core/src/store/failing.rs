//! [`FailingBackend`]: a backend wrapper that fails on demand, to test what the server
//! does when its disk is full or its database broken (no tmpfs or root needed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::{Backend, DocLog, StoreError, StoreOp, StoredVar};

/// The switches of a [`FailingBackend`], shared with the test that drives it.
#[derive(Debug, Default)]
pub struct FailSwitch {
    writes: AtomicBool,
    reads: AtomicBool,
    failed_commits: AtomicU64,
}

impl FailSwitch {
    /// Make every commit and compaction fail (as a full disk does), or work again.
    pub fn fail_writes(&self, on: bool) {
        self.writes.store(on, Relaxed);
    }

    /// Make every load fail (as a corrupted database does), or work again.
    pub fn fail_reads(&self, on: bool) {
        self.reads.store(on, Relaxed);
    }

    /// Commits refused so far.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Relaxed)
    }
}

/// Wraps a backend; fails writes and/or reads while its [`FailSwitch`] says so. A failed
/// commit changes nothing, like a rolled-back transaction.
#[derive(Debug)]
pub struct FailingBackend<B> {
    inner: B,
    switch: Arc<FailSwitch>,
}

impl<B: Backend> FailingBackend<B> {
    /// Wrap `inner`; the switch starts with everything working.
    pub fn new(inner: B) -> (FailingBackend<B>, Arc<FailSwitch>) {
        let switch = Arc::new(FailSwitch::default());
        (
            FailingBackend {
                inner,
                switch: switch.clone(),
            },
            switch,
        )
    }
}

/// The failures SQLite reports, by their text (the core does not link SQLite).
fn disk_full() -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        source: "database or disk is full".into(),
    }
}

fn corrupt() -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        source: "database disk image is malformed".into(),
    }
}

impl<B: Backend> Backend for FailingBackend<B> {
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError> {
        if self.switch.reads.load(Relaxed) {
            return Err(corrupt());
        }
        self.inner.load(room)
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.switch.writes.load(Relaxed) {
            self.switch.failed_commits.fetch_add(1, Relaxed);
            return Err(disk_full());
        }
        self.inner.commit(ops)
    }

    fn load_doc(&mut self, room: &str) -> Result<DocLog, StoreError> {
        if self.switch.reads.load(Relaxed) {
            return Err(corrupt());
        }
        self.inner.load_doc(room)
    }

    fn replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> Result<(), StoreError> {
        if self.switch.writes.load(Relaxed) {
            return Err(disk_full());
        }
        self.inner.replace_doc(room, snapshot, covered)
    }

    fn load_history(
        &mut self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> Result<Vec<crate::store::history::HistoryEntry>, StoreError> {
        if self.switch.reads.load(Relaxed) {
            return Err(corrupt());
        }
        self.inner.load_history(room, limit, offset, since_ms)
    }
}
