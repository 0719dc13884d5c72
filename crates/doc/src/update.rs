//! Applying client updates so that a broken one cannot corrupt the room.
//!
//! An update from a client is decoded with `Update::decode_v1` first (a decoding error
//! refuses it). yrs can still panic on some updates that decode but are inconsistent
//! (yrs issues about panics in `apply_update` exist; a fuzz target,
//! `fuzz/fuzz_targets/doc_update_apply.rs`, looks for more). A panic inside a
//! `TransactionMut` would leave the room's document half-applied and its lock state
//! unknown, and `catch_unwind` around the room's own transaction cannot undo that.
//!
//! So each room keeps a **validator replica**: a second `Doc` holding the same state.
//! A client update is applied to the replica first, under `catch_unwind`; only if that
//! succeeds is it applied to the room's document. Every other transaction of the room's
//! document (server code editing it directly, a load hook) is queued for the replica and
//! applied to it before the next validation, so the replica stays a copy. When the replica panics
//! or reports an error it is discarded (a panicking transaction is leaked with
//! `mem::forget`, so that its `Drop`, which commits, cannot panic a second time during
//! unwinding) and rebuilt from the room's full state at the next update.
//!
//! The replica also refuses an update that leaves it with *missing dependencies* (content
//! that yrs would stash as pending because it builds on blocks the room does not have).
//! An honest client only builds on what it got from the room, so such an update is broken;
//! accepting it would make the room's encoded state (which includes the stash) read
//! differently from its visible content, and late joiners diverge. The client is closed
//! with 1007; if it was honest after all (it got content from elsewhere), its reconnect
//! resyncs everything in its SyncStep2.
//!
//! What this cannot catch: an update that decodes, integrates and depends on nothing
//! missing, but whose item origins were forged (say, a right origin placed before the left
//! one). YATA trusts writers: replicas that integrate such items in different groupings
//! may order them differently. Every Yjs server has this property; give write access only
//! to authorised clients. `tests/update_robustness.rs` applies thousands of mutated updates
//! and checks that the room stays open, loadable and syncing.
//!
//! Cost: twice the memory of the document and about twice the apply time. A room made with
//! [`RoomOptions::validate_updates`](crate::RoomOptions) `= false` skips the replica
//! (still decoding first, and still containing panics, but then a panic closes the room).

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// Why a client's update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Not a valid v1 update.
    #[error("update does not decode: {0}")]
    Decode(String),
    /// yrs refused to integrate it.
    #[error("update does not apply: {0}")]
    Integrate(String),
    /// It refers to content the room does not have (yrs would stash it as pending). An
    /// honest client only builds on what it got from the room, so this is a broken or
    /// hostile update; accepting it makes the room's encoded state differ from its visible
    /// content, and replicas diverge.
    #[error("update depends on content the room does not have")]
    MissingDependencies,
    /// yrs panicked while integrating it (contained in the validator replica).
    #[error("update made the CRDT panic")]
    Panicked,
}

/// Decode a v1 update, containing a panic of the decoder.
pub(crate) fn decode_update(bytes: &[u8]) -> Result<Update, ApplyError> {
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(u)) => Ok(u),
        Ok(Err(e)) => Err(ApplyError::Decode(e.to_string())),
        Err(_) => Err(ApplyError::Panicked),
    }
}

/// Decode a v1 state vector, containing a panic of the decoder.
pub(crate) fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, String> {
    match catch_unwind(|| StateVector::decode_v1(bytes)) {
        Ok(Ok(sv)) => Ok(sv),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("state vector decoding panicked".into()),
    }
}

/// The v1 diff of `doc` against `sv`, or `None` if yrs panicked encoding it (a document
/// holding a pending stash from a broken update can make `merge_pending_v1` panic).
pub fn encode_diff(doc: &Doc, sv: &StateVector) -> Option<Vec<u8>> {
    catch_unwind(AssertUnwindSafe(|| doc.transact().encode_diff_v1(sv))).ok()
}

/// The full v1 state of `doc`, or `None` if yrs panicked encoding it (see [`encode_diff`]).
pub fn encode_state(doc: &Doc) -> Option<Vec<u8>> {
    encode_diff(doc, &StateVector::default())
}

/// Whether `bytes` is the empty v1 update (no structs, no deletions).
pub(crate) fn is_empty_update(bytes: &[u8]) -> bool {
    bytes == [0, 0]
}

/// The room's own updates not yet applied to the replica (bounded: past the limit they are
/// dropped and the replica is rebuilt from the full state instead).
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    items: Vec<Bytes>,
    bytes: usize,
    overflowed: bool,
}

impl Backlog {
    const MAX_BYTES: usize = 4 << 20;

    /// Queue one update of the room's document.
    pub fn push(&mut self, update: Bytes) {
        if self.overflowed {
            return;
        }
        self.bytes += update.len();
        if self.bytes > Self::MAX_BYTES {
            self.items = Vec::new();
            self.overflowed = true;
        } else {
            self.items.push(update);
        }
    }
}

/// The validator replica of a room's document.
#[derive(Default)]
pub(crate) struct Validator {
    replica: Option<Doc>,
    /// How many updates the replica refused by panicking.
    pub panics: u64,
}

impl Validator {
    /// Forget the replica (rebuilt from the room at the next update).
    pub fn reset(&mut self) {
        self.replica = None;
    }

    /// Apply `update` to the replica (built from `room_doc` first when needed, then brought
    /// up to date with `backlog`: the updates the room's document produced since).
    pub fn check(
        &mut self,
        room_doc: &Doc,
        backlog: Backlog,
        update: &[u8],
    ) -> Result<(), ApplyError> {
        let parsed = decode_update(update)?;
        let replica = match self.replica.take() {
            Some(_) if backlog.overflowed => rebuild(room_doc),
            Some(replica) => {
                if !backlog.items.is_empty() && !catch_up(&replica, backlog.items) {
                    self.panics += 1;
                    rebuild(room_doc)
                } else {
                    replica
                }
            }
            // The backlog is already contained in the full state taken now.
            None => rebuild(room_doc),
        };
        let mut txn = replica.transact_mut();
        match catch_unwind(AssertUnwindSafe(|| txn.apply_update(parsed))) {
            Ok(Ok(())) => {
                let missing = txn.has_missing_updates();
                let committed = catch_unwind(AssertUnwindSafe(move || drop(txn)));
                if committed.is_err() {
                    self.panics += 1;
                    Err(ApplyError::Panicked)
                } else if missing {
                    // The replica now holds a stash the room must not get: drop it.
                    Err(ApplyError::MissingDependencies)
                } else {
                    self.replica = Some(replica);
                    Ok(())
                }
            }
            Ok(Err(e)) => {
                // A refused update may have been integrated in part: the replica is no
                // longer a copy of the room; drop it (rebuilt at the next update).
                let _ = catch_unwind(AssertUnwindSafe(move || drop(txn)));
                Err(ApplyError::Integrate(e.to_string()))
            }
            Err(_) => {
                std::mem::forget(txn);
                self.panics += 1;
                Err(ApplyError::Panicked)
            }
        }
    }
}

/// Apply the room's own updates to the replica; false if that failed (the replica is lost).
fn catch_up(replica: &Doc, backlog: Vec<Bytes>) -> bool {
    for u in backlog {
        let Ok(parsed) = decode_update(&u) else {
            return false;
        };
        let mut txn = replica.transact_mut();
        match catch_unwind(AssertUnwindSafe(|| txn.apply_update(parsed))) {
            Ok(Ok(())) => {
                if catch_unwind(AssertUnwindSafe(move || drop(txn))).is_err() {
                    return false;
                }
            }
            _ => {
                std::mem::forget(txn);
                return false;
            }
        }
    }
    true
}

/// A fresh replica holding the room document's full state.
fn rebuild(room_doc: &Doc) -> Doc {
    let replica = Doc::with_options(yrs::Options {
        skip_gc: room_doc.skip_gc(),
        ..yrs::Options::default()
    });
    let Some(state) = encode_state(room_doc) else {
        tracing::error!("validator replica: the room's state does not encode");
        return replica;
    };
    if let Ok(u) = decode_update(&state) {
        let mut txn = replica.transact_mut();
        match catch_unwind(AssertUnwindSafe(|| txn.apply_update(u))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "validator replica: the room's own state did not apply")
            }
            Err(_) => {
                std::mem::forget(txn);
                tracing::error!("validator replica: the room's own state made yrs panic");
                return Doc::new();
            }
        }
    }
    replica
}
