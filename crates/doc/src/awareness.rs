//! The room's table of awareness states, with the server-side timeout (`awareness.js` rules)
//! and the room's bounds.
//!
//! - Only present states are kept. A removed state leaves a **tombstone** (client id and
//!   clock) for [`AwarenessLimits::tombstone_ttl`] so that a late echo of the older state
//!   cannot bring it back; tombstones are capped in number (oldest dropped first). A removal
//!   of a client the room does not hold is ignored and stores nothing.
//! - Each present state is owned by the connection that last set it (a newer clock from
//!   another connection moves it, as when a client reconnects); a connection owns at most
//!   `max_ids` client ids. When a connection ends, the states it owns are removed.
//! - The room holds at most [`AwarenessLimits::max_states`] states and
//!   [`AwarenessLimits::max_bytes`] bytes of state JSON.

use std::collections::{BTreeMap, HashMap, VecDeque};

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

/// The bounds of a room's awareness table (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessLimits {
    /// Present states in the room. Default 10,000.
    pub max_states: usize,
    /// Bytes of state JSON in the room. Default 8 MiB.
    pub max_bytes: usize,
    /// Tombstones kept (removed clients' clocks). Default 16,384.
    pub max_tombstones: usize,
    /// How long a tombstone is kept. Default 60 s (two awareness timeouts).
    pub tombstone_ttl: Duration,
}

impl Default for AwarenessLimits {
    fn default() -> Self {
        AwarenessLimits {
            max_states: 10_000,
            max_bytes: 8 << 20,
            max_tombstones: 16_384,
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

/// The per-connection bounds applied to one awareness update.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Client ids one connection may own.
    pub max_ids: usize,
    /// Bytes of one state's JSON.
    pub max_state_bytes: usize,
}

#[derive(Debug)]
struct Slot {
    clock: u64,
    state: String,
    expires: Instant,
    owner: u64,
}

/// What applying an update did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The entries that changed the table, one per client id (the last one), in order:
    /// what the room relays.
    pub entries: Vec<AwarenessEntry>,
    /// How many entries changed the table (before merging per client id).
    pub changes: u64,
    /// Entries dropped: state over the per-state cap.
    pub too_big: u64,
    /// Entries dropped: the connection owns its cap of ids.
    pub too_many_ids: u64,
    /// Entries dropped: the room is full (states or bytes).
    pub room_full: u64,
}

impl Applied {
    fn push(&mut self, index: &mut HashMap<u64, usize>, e: AwarenessEntry) {
        self.changes += 1;
        match index.get(&e.client_id) {
            Some(&i) => self.entries[i] = e,
            None => {
                index.insert(e.client_id, self.entries.len());
                self.entries.push(e);
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct AwarenessTable {
    limits: AwarenessLimits,
    slots: HashMap<u64, Slot>,
    /// Bytes of state JSON held.
    bytes: usize,
    /// Client ids owned per connection.
    owned: HashMap<u64, Vec<u64>>,
    tombstones: HashMap<u64, (u64, Instant)>,
    /// Tombstones in creation order (entries whose id was revived or re-buried are stale
    /// and skipped when popped).
    tomb_order: VecDeque<(u64, Instant)>,
}

impl AwarenessTable {
    pub fn new(limits: AwarenessLimits) -> AwarenessTable {
        AwarenessTable {
            limits,
            ..AwarenessTable::default()
        }
    }

    fn disown(&mut self, conn: u64, id: u64) {
        if let Some(ids) = self.owned.get_mut(&conn) {
            if let Some(i) = ids.iter().position(|x| *x == id) {
                ids.swap_remove(i);
            }
            if ids.is_empty() {
                self.owned.remove(&conn);
            }
        }
    }

    fn owned_count(&self, conn: u64) -> usize {
        self.owned.get(&conn).map_or(0, Vec::len)
    }

    fn bury(&mut self, id: u64, clock: u64, now: Instant) {
        let until = now + self.limits.tombstone_ttl;
        self.tombstones.insert(id, (clock, until));
        self.tomb_order.push_back((id, until));
        self.prune_tombstones(now);
    }

    fn prune_tombstones(&mut self, now: Instant) {
        while let Some(&(id, until)) = self.tomb_order.front() {
            if until > now && self.tomb_order.len() <= self.limits.max_tombstones {
                break;
            }
            self.tomb_order.pop_front();
            if self.tombstones.get(&id).is_some_and(|t| t.1 == until) {
                self.tombstones.remove(&id);
            }
        }
    }

    fn tombstone_clock(&self, id: u64, now: Instant) -> Option<u64> {
        self.tombstones.get(&id).filter(|t| t.1 > now).map(|t| t.0)
    }

    /// Remove a present state (the caller broadcasts the removal); returns its slot.
    fn take(&mut self, id: u64, clock: u64, now: Instant) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.bytes -= slot.state.len();
        self.disown(slot.owner, id);
        self.bury(id, clock, now);
        Some(slot)
    }

    /// Apply an update from connection `conn`: an entry applies when its clock is newer
    /// than the known one (or equal with a `null` state removing a present one), within the
    /// bounds; the states of the entries must already be checked to be JSON.
    pub fn apply(
        &mut self,
        update: &AwarenessUpdate,
        conn: u64,
        conn_limits: ConnLimits,
        now: Instant,
        timeout: Duration,
    ) -> Applied {
        self.prune_tombstones(now);
        let mut out = Applied::default();
        let mut index = HashMap::new();
        let expires = now + timeout;
        for e in &update.entries {
            let present = self.slots.get(&e.client_id);
            let newer = match (present, self.tombstone_clock(e.client_id, now)) {
                (Some(s), _) => e.clock > s.clock || (e.clock == s.clock && e.state.is_none()),
                (None, Some(tomb)) => e.clock > tomb,
                (None, None) => true,
            };
            if !newer {
                continue;
            }
            let Some(state) = &e.state else {
                if self.take(e.client_id, e.clock, now).is_some() {
                    out.push(&mut index, e.clone());
                } else if let Some(t) = self.tombstones.get_mut(&e.client_id) {
                    // Already removed: remember the newer clock, nothing to relay.
                    t.0 = e.clock;
                }
                continue;
            };
            if state.len() > conn_limits.max_state_bytes {
                out.too_big += 1;
                continue;
            }
            let (old_len, old_owner) =
                present.map_or((0, None), |s| (s.state.len(), Some(s.owner)));
            if old_owner != Some(conn) && self.owned_count(conn) >= conn_limits.max_ids {
                out.too_many_ids += 1;
                continue;
            }
            if (old_owner.is_none() && self.slots.len() >= self.limits.max_states)
                || self.bytes - old_len + state.len() > self.limits.max_bytes
            {
                out.room_full += 1;
                continue;
            }
            match old_owner {
                Some(o) if o == conn => {}
                Some(o) => {
                    self.disown(o, e.client_id);
                    self.owned.entry(conn).or_default().push(e.client_id);
                }
                None => {
                    self.tombstones.remove(&e.client_id);
                    self.owned.entry(conn).or_default().push(e.client_id);
                }
            }
            self.bytes = self.bytes - old_len + state.len();
            self.slots.insert(
                e.client_id,
                Slot {
                    clock: e.clock,
                    state: state.clone(),
                    expires,
                    owner: conn,
                },
            );
            out.push(&mut index, e.clone());
        }
        out
    }

    /// Remove every state `conn` owns; returns the removal entries to broadcast (clock + 1).
    pub fn remove_conn(&mut self, conn: u64, now: Instant) -> Vec<AwarenessEntry> {
        let ids = self.owned.get(&conn).cloned().unwrap_or_default();
        self.remove(ids, now)
    }

    /// Remove these clients' states; returns the removal entries to broadcast (clock + 1).
    fn remove(&mut self, ids: impl IntoIterator<Item = u64>, now: Instant) -> Vec<AwarenessEntry> {
        let mut out = Vec::new();
        for id in ids {
            let Some(clock) = self.slots.get(&id).map(|s| s.clock + 1) else {
                continue;
            };
            self.take(id, clock, now);
            out.push(AwarenessEntry {
                client_id: id,
                clock,
                state: None,
            });
        }
        out
    }

    /// Remove the states not renewed before `now`; returns the removal entries.
    pub fn expire(&mut self, now: Instant) -> Vec<AwarenessEntry> {
        let due: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        let out = self.remove(due, now);
        self.prune_tombstones(now);
        out
    }

    /// When the next present state expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.values().map(|s| s.expires).min()
    }

    /// Whether any state is present.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many states are present.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of state JSON held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many tombstones are kept.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// The present client ids, sorted (to send the table in chunks).
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.slots.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The next chunk of the table: the present states of `ids[from..]`, as many as fit in
    /// `max_bytes` (at least one); returns it and the index after its last id.
    pub fn chunk(&self, ids: &[u64], from: usize, max_bytes: usize) -> (AwarenessUpdate, usize) {
        let mut entries = Vec::new();
        let mut size = 1;
        let mut i = from;
        while let Some(id) = ids.get(i) {
            if let Some(s) = self.slots.get(id) {
                // varUint id + clock (≤ 10 bytes each), varUint length, the JSON.
                let n = 25 + s.state.len();
                if !entries.is_empty() && size + n > max_bytes {
                    break;
                }
                size += n;
                entries.push(AwarenessEntry {
                    client_id: *id,
                    clock: s.clock,
                    state: Some(s.state.clone()),
                });
            }
            i += 1;
        }
        (AwarenessUpdate { entries }, i)
    }

    /// All present states as one update (for small tables and tests).
    #[cfg(test)]
    pub fn full_update(&self) -> AwarenessUpdate {
        self.chunk(&self.ids(), 0, usize::MAX).0
    }

    /// The present states by client id.
    pub fn states(&self) -> BTreeMap<u64, AwarenessState> {
        self.slots
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    AwarenessState {
                        clock: s.clock,
                        json: s.state.clone(),
                    },
                )
            })
            .collect()
    }
}

/// Whether `state` is one JSON value (checked without building it); a state of only
/// whitespace around `null` is a removal, as `JSON.parse` reads it.
pub(crate) fn check_state(state: &str) -> Result<bool, serde_json::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(state)?;
    Ok(state.trim_matches(|c: char| c.is_ascii_whitespace()) == "null")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: ConnLimits = ConnLimits {
        max_ids: 4,
        max_state_bytes: 100,
    };

    fn upd(id: u64, clock: u64, state: Option<&str>) -> AwarenessUpdate {
        AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: id,
                clock,
                state: state.map(str::to_owned),
            }],
        }
    }

    fn ids(a: &Applied) -> Vec<(u64, bool)> {
        a.entries
            .iter()
            .map(|e| (e.client_id, e.state.is_some()))
            .collect()
    }

    #[test]
    fn clock_rules_and_expiry() {
        let t0 = Instant::now();
        let d = Duration::from_secs(30);
        let mut t = AwarenessTable::default();
        assert_eq!(
            ids(&t.apply(&upd(1, 1, Some("{}")), 7, CONN, t0, d)),
            [(1, true)]
        );
        // Older or equal clock with a state: ignored.
        assert_eq!(
            t.apply(&upd(1, 1, Some("{\"a\":1}")), 7, CONN, t0, d),
            Applied::default()
        );
        assert_eq!(
            t.apply(&upd(1, 0, Some("{}")), 7, CONN, t0, d),
            Applied::default()
        );
        // Equal clock with null: removal.
        assert_eq!(
            ids(&t.apply(&upd(1, 1, None), 7, CONN, t0, d)),
            [(1, false)]
        );
        assert!(t.is_empty());
        // The tombstone keeps an older state out.
        assert_eq!(
            t.apply(&upd(1, 1, Some("{}")), 7, CONN, t0, d),
            Applied::default()
        );
        assert_eq!(
            ids(&t.apply(&upd(1, 2, Some("{}")), 7, CONN, t0, d)),
            [(1, true)]
        );
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
        // A removal of an unknown client changes nothing and stores nothing.
        assert_eq!(
            t.apply(&upd(9, 5, None), 7, CONN, t0, d),
            Applied::default()
        );
        assert!(t.remove([9, 1], t0).is_empty());
        assert_eq!(t.tombstones(), 1);
    }

    #[test]
    fn removals_leave_bounded_tombstones_that_expire() {
        let t0 = Instant::now();
        let d = Duration::from_secs(30);
        let mut t = AwarenessTable::new(AwarenessLimits {
            max_tombstones: 100,
            tombstone_ttl: Duration::from_secs(60),
            ..AwarenessLimits::default()
        });
        let conn = ConnLimits {
            max_ids: usize::MAX,
            max_state_bytes: 100,
        };
        for id in 0..10_000 {
            t.apply(&upd(id, 1, Some("{}")), 1, conn, t0, d);
            t.apply(&upd(id, 1, None), 1, conn, t0, d);
        }
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
        assert_eq!(t.tombstones(), 100);
        assert!(t.tomb_order.len() <= 100);
        // A flood of removals of unknown clients stores nothing.
        for id in 20_000..120_000 {
            t.apply(&upd(id, 5, None), 1, conn, t0, d);
        }
        assert_eq!(t.tombstones(), 100);
        assert!(t.owned.is_empty());
        t.expire(t0 + Duration::from_secs(61));
        assert_eq!(t.tombstones(), 0);
        assert!(t.tomb_order.is_empty());
    }

    #[test]
    fn per_connection_and_per_room_caps() {
        let t0 = Instant::now();
        let d = Duration::from_secs(30);
        let mut t = AwarenessTable::new(AwarenessLimits {
            max_states: 6,
            max_bytes: 64,
            ..AwarenessLimits::default()
        });
        // Four ids per connection; the fifth is refused.
        for id in 0..4 {
            assert_eq!(t.apply(&upd(id, 1, Some("1")), 1, CONN, t0, d).changes, 1);
        }
        assert_eq!(
            t.apply(&upd(4, 1, Some("1")), 1, CONN, t0, d).too_many_ids,
            1
        );
        // Renewing an owned id is fine.
        assert_eq!(t.apply(&upd(3, 2, Some("2")), 1, CONN, t0, d).changes, 1);
        // A state over the per-state cap.
        let big = "1".repeat(101);
        assert_eq!(t.apply(&upd(10, 1, Some(&big)), 2, CONN, t0, d).too_big, 1);
        // Room: 6 states at most.
        t.apply(&upd(10, 1, Some("1")), 2, CONN, t0, d);
        t.apply(&upd(11, 1, Some("1")), 2, CONN, t0, d);
        assert_eq!(t.apply(&upd(12, 1, Some("1")), 2, CONN, t0, d).room_full, 1);
        assert_eq!(t.len(), 6);
        // Room: 64 bytes at most (6 bytes held).
        let fat = "1".repeat(60);
        assert_eq!(
            t.apply(&upd(11, 2, Some(&fat)), 2, CONN, t0, d).room_full,
            1
        );
        assert_eq!(
            t.apply(&upd(11, 2, Some(&fat[..59])), 2, CONN, t0, d)
                .changes,
            1
        );
        assert_eq!(t.bytes(), 64);
        // A newer clock from another connection takes the id over (a reconnect).
        assert_eq!(t.apply(&upd(0, 2, Some("1")), 3, CONN, t0, d).changes, 1);
        assert_eq!(t.remove_conn(1, t0).len(), 3);
        assert_eq!(t.remove_conn(3, t0).len(), 1);
        assert_eq!(t.remove_conn(2, t0).len(), 2);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
        assert!(t.owned.is_empty());
    }

    #[test]
    fn one_update_relays_one_entry_per_client() {
        let t0 = Instant::now();
        let mut t = AwarenessTable::default();
        let u = AwarenessUpdate {
            entries: (1..=1000)
                .map(|c| AwarenessEntry {
                    client_id: 5,
                    clock: c,
                    state: Some(format!("{c}")),
                })
                .collect(),
        };
        let a = t.apply(&u, 1, CONN, t0, Duration::from_secs(30));
        assert_eq!(a.changes, 1000);
        assert_eq!(a.entries.len(), 1);
        assert_eq!(a.entries[0].clock, 1000);
    }

    #[test]
    fn the_table_goes_out_in_chunks_of_bounded_size() {
        let t0 = Instant::now();
        let mut t = AwarenessTable::default();
        let conn = ConnLimits {
            max_ids: usize::MAX,
            max_state_bytes: 1000,
        };
        let state = format!("\"{}\"", "x".repeat(98));
        for id in 0..1000 {
            t.apply(
                &upd(id, 1, Some(&state)),
                1,
                conn,
                t0,
                Duration::from_secs(30),
            );
        }
        let ids = t.ids();
        let (mut from, mut seen) = (0, 0);
        while from < ids.len() {
            let (chunk, next) = t.chunk(&ids, from, 4096);
            assert!(chunk.encode().len() <= 4096);
            assert!(!chunk.entries.is_empty());
            seen += chunk.entries.len();
            from = next;
        }
        assert_eq!(seen, 1000);
        assert_eq!(t.full_update().entries.len(), 1000);
    }

    #[test]
    fn states_must_be_json() {
        assert_eq!(check_state("{\"user\":{\"name\":\"a\"}}").ok(), Some(false));
        assert_eq!(check_state(" null ").ok(), Some(true));
        assert_eq!(check_state("\"\\ud800\"").ok(), Some(false));
        assert!(check_state("{").is_err());
        assert!(check_state("not json").is_err());
        assert!(check_state("{} {}").is_err());
        assert!(check_state("").is_err());
    }
}
