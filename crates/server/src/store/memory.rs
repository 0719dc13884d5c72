//! In-memory backend, for tests and for running without a disk.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Backend, StoreError, StoreOp, StoredVar};

/// Keeps everything in a map; lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    rooms: HashMap<Arc<str>, Vec<StoredVar>>,
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
            }
        }
        Ok(())
    }
}
