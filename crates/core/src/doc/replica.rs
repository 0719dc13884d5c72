//! [`SyncState`]: how far a node's copy of a document room has followed the room's
//! sequence in Redis (see `crate::backplane::doc`). IO-free, so the bookkeeping is
//! unit-tested on its own.

use std::collections::BTreeSet;
use std::sync::Arc;

/// What a node must do after an update of the room arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing more: the update is applied (or already was).
    Done,
    /// An earlier update is missing: reload the room from Redis.
    CatchUp,
    /// Redis lost the room (its epoch changed): the copy here no longer matches it.
    Reset,
    /// The room this copy follows was deleted (Redis names its epoch as the one last
    /// deleted): as [`Step::Reset`], but the clients are told the room is gone (4410).
    Deleted,
}

/// A node's progress through one document room's sequence.
#[derive(Debug, Default)]
pub struct SyncState {
    /// The room's epoch as last seen ("" before the room was ever written).
    epoch: Arc<str>,
    /// Every update up to this sequence number is applied here.
    applied: u64,
    /// Applied updates beyond a gap.
    ahead: BTreeSet<u64>,
    /// The initial load has not finished: gaps are expected and not reported.
    loading: bool,
}

impl SyncState {
    /// The state of a room whose initial load is under way.
    pub fn loading() -> SyncState {
        SyncState {
            loading: true,
            ..SyncState::default()
        }
    }

    /// The highest sequence number up to which every update is applied.
    #[cfg(test)]
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The room's epoch this copy follows ("" before it saw one): a room in Redis under
    /// another epoch (or none) is not the room this copy holds.
    pub fn epoch(&self) -> Arc<str> {
        self.epoch.clone()
    }

    fn same_epoch(&mut self, epoch: &str) -> bool {
        if self.epoch.is_empty() {
            self.epoch = Arc::from(epoch);
            return true;
        }
        *self.epoch == *epoch
    }

    fn advance(&mut self) {
        while self.ahead.remove(&(self.applied + 1)) {
            self.applied += 1;
        }
        let applied = self.applied;
        self.ahead.retain(|&s| s > applied);
    }

    fn gap(&self) -> bool {
        self.ahead.first().is_some_and(|&s| s > self.applied + 1)
    }

    /// Update `seq` of `epoch` arrived (and is applied by the caller).
    pub fn on_update(&mut self, epoch: &str, seq: u64) -> Step {
        if !self.same_epoch(epoch) {
            return Step::Reset;
        }
        if seq > self.applied {
            self.ahead.insert(seq);
            self.advance();
        }
        if self.gap() && !self.loading {
            Step::CatchUp
        } else {
            Step::Done
        }
    }

    /// The room was (re)loaded from Redis up to `seq` of `epoch`; `deleted` is the epoch
    /// Redis last deleted the room under ("" when none known).
    pub fn loaded(&mut self, epoch: &str, seq: u64, deleted: &str) -> Step {
        let followed = self.epoch.clone();
        match self.reloaded(epoch, seq) {
            Step::Reset if !followed.is_empty() && *followed == *deleted => Step::Deleted,
            step => step,
        }
    }

    fn reloaded(&mut self, epoch: &str, seq: u64) -> Step {
        self.loading = false;
        if epoch.is_empty() && seq == 0 {
            // Nothing in Redis: fine for a new room, a loss for one that had updates.
            if self.epoch.is_empty() && self.applied == 0 {
                return if self.gap() {
                    Step::CatchUp
                } else {
                    Step::Done
                };
            }
            return Step::Reset;
        }
        if !self.same_epoch(epoch) {
            return Step::Reset;
        }
        self.applied = self.applied.max(seq);
        self.advance();
        if self.gap() {
            Step::CatchUp
        } else {
            Step::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy that loaded `seq` of `epoch` and follows it.
    fn following(epoch: &str, seq: u64) -> SyncState {
        let mut s = SyncState::default();
        assert_eq!(s.loaded(epoch, seq, ""), Step::Done);
        s
    }

    #[test]
    fn updates_in_order_advance_and_duplicates_are_ignored() {
        let mut s = SyncState::default();
        assert_eq!(s.loaded("e", 3, ""), Step::Done);
        assert_eq!(s.on_update("e", 4), Step::Done);
        assert_eq!(s.on_update("e", 4), Step::Done);
        assert_eq!(s.on_update("e", 2), Step::Done);
        assert_eq!(s.applied(), 4);
    }

    #[test]
    fn a_gap_asks_for_a_catch_up_and_the_reload_closes_it() {
        let mut s = SyncState::default();
        assert_eq!(s.loaded("e", 1, ""), Step::Done);
        assert_eq!(s.on_update("e", 3), Step::CatchUp);
        assert_eq!(s.on_update("e", 4), Step::CatchUp);
        assert_eq!(s.applied(), 1);
        // The reload covered up to 2: 3 and 4 were applied already.
        assert_eq!(s.loaded("e", 2, ""), Step::Done);
        assert_eq!(s.applied(), 4);
        assert_eq!(s.on_update("e", 6), Step::CatchUp);
        assert_eq!(s.loaded("e", 7, ""), Step::Done);
        assert_eq!(s.applied(), 7);
    }

    #[test]
    fn updates_during_the_initial_load_are_not_gaps() {
        let mut s = SyncState::loading();
        assert_eq!(s.on_update("e", 9), Step::Done);
        assert_eq!(s.loaded("e", 8, ""), Step::Done);
        assert_eq!(s.applied(), 9);
        let mut s = SyncState::loading();
        assert_eq!(s.on_update("e", 9), Step::Done);
        assert_eq!(s.loaded("e", 7, ""), Step::CatchUp, "8 is missing");
    }

    #[test]
    fn a_new_epoch_or_a_vanished_room_is_a_reset() {
        let mut s = SyncState::default();
        assert_eq!(s.loaded("", 0, ""), Step::Done, "a new room");
        assert_eq!(
            s.on_update("e", 1),
            Step::Done,
            "its first update sets the epoch"
        );
        assert_eq!(s.on_update("f", 1), Step::Reset);
        assert_eq!(s.loaded("", 0, ""), Step::Reset, "Redis lost the room");
        let mut s = following("e", 5);
        assert_eq!(s.loaded("f", 2, ""), Step::Reset);
    }

    #[test]
    fn a_copy_of_the_epoch_redis_last_deleted_is_deleted_not_lost() {
        let mut s = following("e", 5);
        assert_eq!(
            s.loaded("", 0, "e"),
            Step::Deleted,
            "deleted, not recreated"
        );
        let mut s = following("e", 5);
        assert_eq!(
            s.loaded("f", 1, "e"),
            Step::Deleted,
            "deleted, then recreated"
        );
        let mut s = following("e", 5);
        assert_eq!(
            s.loaded("", 0, "d"),
            Step::Reset,
            "another epoch was deleted"
        );
        // A copy that follows nothing yet was not deleted: it starts the room.
        let mut s = SyncState::loading();
        assert_eq!(s.loaded("", 0, "e"), Step::Done);
        // A room that is still there is loaded, whatever was deleted before.
        let mut s = SyncState::default();
        assert_eq!(s.loaded("e", 5, "e"), Step::Done);
    }
}
