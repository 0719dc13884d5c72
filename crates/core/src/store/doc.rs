//! Document (Yjs) persistence helpers: the shape of a stored document log and
//! the compaction that folds it into one snapshot.
//!
//! A room's document is stored as an optional snapshot plus the updates appended
//! after it, in order. Loading applies them in that order. Compaction applies the
//! whole log to a fresh document and encodes its state once: deleted content is
//! garbage-collected, so the snapshot is smaller than the log it replaces and load
//! time stays bounded.

use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

/// A room's persisted document: the snapshot (if compacted before) then the later updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocLog {
    /// Merged state as one Yjs v1 update, from the last compaction.
    pub snapshot: Option<Vec<u8>>,
    /// Yjs v1 updates appended since, in the order the room applied them.
    pub updates: Vec<Vec<u8>>,
}

impl DocLog {
    /// Every record in load order (snapshot first).
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.snapshot
            .iter()
            .chain(self.updates.iter())
            .map(Vec::as_slice)
    }

    /// Bytes held by the log.
    pub fn bytes(&self) -> usize {
        self.records().map(<[u8]>::len).sum()
    }

    /// `true` when there is nothing stored.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }
}

/// Outcome of applying stored records to a document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records applied.
    pub applied: usize,
    /// Records that did not decode or apply (logged and skipped).
    pub skipped: usize,
}

/// Apply `records` in order in `txn`, skipping (and logging) any that is corrupt, so
/// one bad record never loses the rest of a room.
pub fn apply_records<'a>(
    room: &str,
    txn: &mut TransactionMut<'_>,
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Applied {
    let mut out = Applied::default();
    for (i, record) in records.into_iter().enumerate() {
        let result = Update::decode_v1(record)
            .map_err(|e| e.to_string())
            .and_then(|u| txn.apply_update(u).map_err(|e| e.to_string()));
        match result {
            Ok(()) => out.applied += 1,
            Err(error) => {
                out.skipped += 1;
                tracing::error!(%room, record = i, %error, "skipping a corrupt stored document record");
            }
        }
    }
    out
}

/// Fold a log into one snapshot (the state of a document that applied every record).
pub fn compact(room: &str, log: &DocLog) -> Vec<u8> {
    let doc = Doc::new();
    apply_records(room, &mut doc.transact_mut(), log.records());
    let txn = doc.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    fn edits() -> (Doc, Vec<Vec<u8>>) {
        let doc = Doc::new();
        let updates = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = updates.clone();
        doc.observe_update_v1("test", move |_, e| {
            sink.lock().expect("lock").push(e.update.clone());
        })
        .expect("observe");
        let text = doc.get_or_insert_text("t");
        for i in 0..50 {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &format!("line {i}\n"));
        }
        {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.remove_range(&mut txn, 0, len / 2);
        }
        let out = updates.lock().expect("lock").clone();
        (doc, out)
    }

    #[test]
    fn compaction_keeps_the_state_and_shrinks_the_log() {
        let (original, updates) = edits();
        let log = DocLog {
            snapshot: None,
            updates,
        };
        let snapshot = compact("r", &log);
        assert!(
            snapshot.len() < log.bytes(),
            "{} !< {}",
            snapshot.len(),
            log.bytes()
        );
        let restored = Doc::new();
        let applied = apply_records("r", &mut restored.transact_mut(), [snapshot.as_slice()]);
        assert_eq!(applied.applied, 1);
        let t = restored.get_or_insert_text("t");
        let o = original.get_or_insert_text("t");
        assert_eq!(
            t.get_string(&restored.transact()),
            o.get_string(&original.transact())
        );
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_the_rest_applied() {
        let (original, mut updates) = edits();
        updates.insert(3, vec![0xff, 0x01, 0x02]);
        let doc = Doc::new();
        let log = DocLog {
            snapshot: None,
            updates,
        };
        let applied = apply_records("r", &mut doc.transact_mut(), log.records());
        assert_eq!(applied.skipped, 1);
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            original
                .get_or_insert_text("t")
                .get_string(&original.transact())
        );
    }
}
