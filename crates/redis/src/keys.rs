//! The Redis key schema of cloud rooms (see the module docs of `backplane`).

use super::EVENTS_STREAM;

/// Redis key names of one cloud room.
pub(super) struct Keys {
    pub(super) seq: String,
    pub(super) epoch: String,
    pub(super) vars: String,
    pub(super) pos: String,
    pub(super) npos: String,
    pub(super) log: String,
    /// The room's cloud history: a capped list of messages, newest first.
    pub(super) hist: String,
    pub(super) events: &'static str,
}

impl Keys {
    pub(super) fn new(room: &str) -> Keys {
        // The room in a hash tag keeps a room's keys in one slot (Redis Cluster).
        let k = |what: &str| format!("nimbus:cloud:{{{room}}}:{what}");
        Keys {
            seq: k("seq"),
            epoch: k("epoch"),
            vars: k("vars"),
            pos: k("pos"),
            npos: k("npos"),
            log: k("log"),
            hist: k("hist"),
            events: EVENTS_STREAM,
        }
    }
}
