//! [`Follower`]: how far a room's copy has followed its order. IO-free: the room actor
//! asks it about every change and does what it says, so the rules are tested here.

use std::sync::Arc;

/// What the room does with a change that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It is the next change: apply it (it is counted as applied).
    Apply,
    /// Already applied (a duplicate or an older change): nothing to do.
    Ignore,
    /// Changes are missing, or the order restarted (a new epoch): fill the gap from
    /// [`super::CloudReplication::changes_since`] (`applied() + 1` on), else reload.
    Fill,
}

/// A room's place in its order: the epoch and the last applied sequence number.
#[derive(Debug, Default)]
pub struct Follower {
    /// The order's epoch as last seen ("" in process, or before the room was written).
    epoch: Arc<str>,
    /// Every change up to here is applied.
    applied: u64,
}

impl Follower {
    /// The last applied sequence number (the room's offset).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The room was (re)loaded: its state covers the order up to `seq` of `epoch`.
    pub fn reset(&mut self, epoch: Arc<str>, seq: u64) {
        self.epoch = epoch;
        self.applied = seq;
    }

    /// A change `seq` of `epoch` arrived (from the room's own commit or from elsewhere).
    pub fn on_change(&mut self, epoch: &Arc<str>, seq: u64) -> Step {
        if **epoch == *self.epoch {
            if seq <= self.applied {
                return Step::Ignore;
            }
            if seq == self.applied + 1 {
                self.applied = seq;
                return Step::Apply;
            }
        } else if self.applied == 0 && seq == 1 {
            // A room that was empty: its first change starts the epoch.
            self.epoch = epoch.clone();
            self.applied = 1;
            return Step::Apply;
        }
        Step::Fill
    }

    /// A change of a gap fill: `true` (apply it; it is counted) when it is the next one in
    /// this epoch, or the first one of an empty room; `false`: the fill does not follow,
    /// stop and reload.
    pub fn on_filled(&mut self, epoch: &Arc<str>, seq: u64) -> bool {
        let fits = seq == self.applied + 1 && (**epoch == *self.epoch || self.applied == 0);
        if fits {
            self.epoch = epoch.clone();
            self.applied = seq;
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn in_order_changes_apply() {
        let mut f = Follower::default();
        f.reset(e("a"), 3);
        assert_eq!(f.on_change(&e("a"), 4), Step::Apply);
        assert_eq!(f.on_change(&e("a"), 5), Step::Apply);
        assert_eq!(f.applied(), 5);
    }

    #[test]
    fn in_process_changes_apply_in_the_empty_epoch() {
        let mut f = Follower::default();
        f.reset(e(""), 0);
        for seq in 1..=3 {
            assert_eq!(f.on_change(&e(""), seq), Step::Apply);
        }
        assert_eq!(f.applied(), 3);
    }

    #[test]
    fn a_duplicate_or_an_older_change_is_ignored() {
        let mut f = Follower::default();
        f.reset(e("a"), 3);
        assert_eq!(f.on_change(&e("a"), 3), Step::Ignore);
        assert_eq!(f.on_change(&e("a"), 1), Step::Ignore);
        assert_eq!(f.applied(), 3);
    }

    #[test]
    fn a_gap_triggers_a_fill_and_is_not_counted() {
        let mut f = Follower::default();
        f.reset(e("a"), 3);
        assert_eq!(f.on_change(&e("a"), 5), Step::Fill);
        assert_eq!(f.applied(), 3, "the fill starts at 4");
    }

    #[test]
    fn a_fill_applies_what_follows_and_stops_at_a_hole() {
        let mut f = Follower::default();
        f.reset(e("a"), 3);
        assert!(f.on_filled(&e("a"), 4));
        assert!(f.on_filled(&e("a"), 5));
        assert!(!f.on_filled(&e("a"), 7), "6 is missing: reload");
        assert_eq!(f.applied(), 5);
    }

    #[test]
    fn an_epoch_change_triggers_a_fill_that_does_not_fit_so_the_room_resyncs() {
        let mut f = Follower::default();
        f.reset(e("a"), 3);
        assert_eq!(f.on_change(&e("b"), 4), Step::Fill);
        assert_eq!(f.on_change(&e("b"), 1), Step::Fill);
        // The order restarted: its changes do not follow this copy's.
        assert!(!f.on_filled(&e("b"), 1));
        assert!(!f.on_filled(&e("b"), 4));
        f.reset(e("b"), 2);
        assert_eq!(f.on_change(&e("b"), 3), Step::Apply);
        assert_eq!(f.on_change(&e("a"), 4), Step::Fill, "the old epoch is gone");
    }

    #[test]
    fn an_empty_room_takes_the_epoch_of_its_first_change() {
        let mut f = Follower::default();
        f.reset(e(""), 0);
        assert_eq!(f.on_change(&e("a"), 1), Step::Apply);
        assert_eq!(f.on_change(&e("a"), 2), Step::Apply);
        let mut f = Follower::default();
        f.reset(e(""), 0);
        assert_eq!(f.on_change(&e("a"), 2), Step::Fill, "1 is missing");
        assert!(f.on_filled(&e("a"), 1), "a fill may start the epoch too");
        assert!(f.on_filled(&e("a"), 2));
    }
}
