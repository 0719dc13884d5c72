//! In-memory backend, for tests and for running without a disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Backend, DocLog, StoreError, StoreOp, StoredVar};
use crate::store::history::HistoryEntry;

/// Keeps everything in a map; lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    rooms: HashMap<Arc<str>, Vec<StoredVar>>,
    docs: HashMap<Arc<str>, DocLog>,
    /// Each room's history, oldest first.
    history: HashMap<Arc<str>, VecDeque<HistoryEntry>>,
}

impl MemoryBackend {
    /// A backend holding one room's variables.
    pub fn with_vars(room: Arc<str>, vars: Vec<StoredVar>) -> MemoryBackend {
        let mut rooms = HashMap::new();
        rooms.insert(room, vars);
        MemoryBackend {
            rooms,
            docs: HashMap::new(),
            history: HashMap::new(),
        }
    }
}

impl Backend for MemoryBackend {
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError> {
        let mut vars = self.rooms.get(room).cloned().unwrap_or_default();
        vars.sort_by_key(|v| v.pos);
        Ok(vars)
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            match op {
                StoreOp::Put { room, var } => {
                    let vars = self.rooms.entry(room.clone()).or_default();
                    match vars.iter_mut().find(|v| v.name == var.name) {
                        Some(v) => v.value = var.value.clone(),
                        None => vars.push(var.clone()),
                    }
                }
                StoreOp::Rename {
                    room,
                    name,
                    new_name,
                } => {
                    if let Some(v) = self
                        .rooms
                        .get_mut(room)
                        .and_then(|vars| vars.iter_mut().find(|v| v.name == *name))
                    {
                        v.name = new_name.clone();
                    }
                }
                StoreOp::Delete { room, name } => {
                    if let Some(vars) = self.rooms.get_mut(room) {
                        vars.retain(|v| v.name != *name);
                    }
                }
                StoreOp::DocAppend { room, update } => {
                    let log = self.docs.entry(room.clone()).or_default();
                    log.updates.push(update.to_vec());
                }
                StoreOp::DocCompact { .. } => {}
                StoreOp::DocDelete { room } => {
                    self.docs.remove(room);
                }
                StoreOp::HistoryAppend {
                    room,
                    entry,
                    retention,
                } => {
                    let h = self.history.entry(room.clone()).or_default();
                    h.push_back(entry.clone());
                    let oldest = retention.oldest_kept(entry.at_ms);
                    while h.len() > retention.max_entries
                        || h.front().is_some_and(|e| e.at_ms < oldest)
                    {
                        h.pop_front();
                    }
                }
            }
        }
        Ok(())
    }

    fn load_doc(&mut self, room: &str) -> Result<DocLog, StoreError> {
        Ok(self.docs.get(room).cloned().unwrap_or_default())
    }

    fn replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> Result<(), StoreError> {
        let log = self.docs.entry(Arc::from(room)).or_default();
        log.snapshot = Some(snapshot.to_vec());
        log.updates.drain(..covered.min(log.updates.len()));
        Ok(())
    }

    fn load_history(
        &mut self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self
            .history
            .get(room)
            .map(|h| {
                h.iter()
                    .rev()
                    .take_while(|e| e.at_ms >= since_ms)
                    .skip(offset)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}
