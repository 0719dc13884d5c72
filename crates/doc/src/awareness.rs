//! The room's table of awareness states, with the server-side timeout (`awareness.js` rules).

use std::collections::{BTreeMap, HashMap};

use nimbus_proto::doc::{AwarenessEntry, AwarenessUpdate};
use tokio::time::{Duration, Instant};

/// One client's awareness state as the room holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessState {
    /// The last clock seen.
    pub clock: u64,
    /// The state as JSON text.
    pub json: String,
}

#[derive(Debug)]
struct Slot {
    clock: u64,
    /// `None` = removed (the clock is kept so an older state cannot come back).
    state: Option<String>,
    expires: Instant,
}

/// What applying an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Client ids whose state was set or renewed.
    pub set: Vec<u64>,
    /// Client ids removed.
    pub removed: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct AwarenessTable {
    slots: HashMap<u64, Slot>,
}

impl AwarenessTable {
    /// Apply an update: an entry applies when its clock is newer than the known one, or equal
    /// with a `null` state (a removal).
    pub fn apply(&mut self, update: &AwarenessUpdate, now: Instant, timeout: Duration) -> Applied {
        let mut out = Applied::default();
        let expires = now + timeout;
        for e in &update.entries {
            let known = self.slots.get(&e.client_id);
            let newer = match known {
                None => true,
                Some(s) => e.clock > s.clock || (e.clock == s.clock && e.state.is_none()),
            };
            if !newer {
                continue;
            }
            let was_present = known.is_some_and(|s| s.state.is_some());
            match &e.state {
                Some(_) => out.set.push(e.client_id),
                None if was_present => out.removed.push(e.client_id),
                None => {}
            }
            self.slots.insert(
                e.client_id,
                Slot {
                    clock: e.clock,
                    state: e.state.clone(),
                    expires,
                },
            );
        }
        out
    }

    /// Remove these clients' states; returns the removal entries to broadcast (clock + 1).
    pub fn remove(&mut self, ids: impl IntoIterator<Item = u64>) -> Vec<AwarenessEntry> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                if slot.state.take().is_some() {
                    slot.clock += 1;
                    out.push(AwarenessEntry {
                        client_id: id,
                        clock: slot.clock,
                        state: None,
                    });
                }
            }
        }
        out
    }

    /// Remove the states not renewed before `now`; returns the removal entries.
    pub fn expire(&mut self, now: Instant) -> Vec<AwarenessEntry> {
        let due: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state.is_some() && s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        self.remove(due)
    }

    /// When the next present state expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.state.is_some())
            .map(|s| s.expires)
            .min()
    }

    /// Whether any state is present.
    pub fn is_empty(&self) -> bool {
        self.slots.values().all(|s| s.state.is_none())
    }

    /// All present states as one update.
    pub fn full_update(&self) -> AwarenessUpdate {
        let mut entries: Vec<AwarenessEntry> = self
            .slots
            .iter()
            .filter_map(|(id, s)| {
                s.state.as_ref().map(|st| AwarenessEntry {
                    client_id: *id,
                    clock: s.clock,
                    state: Some(st.clone()),
                })
            })
            .collect();
        entries.sort_by_key(|e| e.client_id);
        AwarenessUpdate { entries }
    }

    /// The present states by client id.
    pub fn states(&self) -> BTreeMap<u64, AwarenessState> {
        self.slots
            .iter()
            .filter_map(|(id, s)| {
                s.state.as_ref().map(|st| {
                    (
                        *id,
                        AwarenessState {
                            clock: s.clock,
                            json: st.clone(),
                        },
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(id: u64, clock: u64, state: Option<&str>) -> AwarenessUpdate {
        AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: id,
                clock,
                state: state.map(str::to_owned),
            }],
        }
    }

    #[test]
    fn clock_rules_and_expiry() {
        let t0 = Instant::now();
        let d = Duration::from_secs(30);
        let mut t = AwarenessTable::default();
        assert_eq!(t.apply(&upd(1, 1, Some("{}")), t0, d).set, [1]);
        // Older or equal clock with a state: ignored.
        assert_eq!(
            t.apply(&upd(1, 1, Some("{\"a\":1}")), t0, d),
            Applied::default()
        );
        assert_eq!(t.apply(&upd(1, 0, Some("{}")), t0, d), Applied::default());
        // Equal clock with null: removal.
        assert_eq!(t.apply(&upd(1, 1, None), t0, d).removed, [1]);
        assert!(t.is_empty());
        assert_eq!(t.apply(&upd(1, 2, Some("{}")), t0, d).set, [1]);
        assert_eq!(t.next_deadline(), Some(t0 + d));
        assert!(t.expire(t0 + d - Duration::from_millis(1)).is_empty());
        let gone = t.expire(t0 + d);
        assert_eq!(
            gone,
            [AwarenessEntry {
                client_id: 1,
                clock: 3,
                state: None
            }]
        );
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
        // A removal of an unknown client changes nothing visible.
        assert_eq!(t.apply(&upd(9, 5, None), t0, d), Applied::default());
        assert!(t.remove([9, 1]).is_empty());
    }
}
