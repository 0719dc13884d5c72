//! The backplane's Lua scripts (their text in `lua/*.lua`) and the SHA1 each is called
//! by (`EVALSHA`: the writer task loads its scripts with `SCRIPT LOAD` in its first
//! pipeline and after a failed one, the gateway writer in each of its pipelines; the
//! scripts run once in a while go by `EVAL`).

/// The script that accepts one room's cloud changes of a writer batch, in order (see the
/// module docs of the crate); each change is checked and ordered as if it came alone.
///
/// KEYS: seq, epoch, vars, pos, npos, log, events, hist. ARGV: epoch candidate, log
/// length, channel, events length, history entries (0: none kept), history age (ms), then
/// five per change: op (`s`, `r`, `d`), name, value (set) or new name (rename), max
/// variables, change JSON. Every accepted change gets the room's next sequence number, is
/// appended to the room's stream and the global stream and published, one message each;
/// its message is also pushed on the room's history list (newest first; the list is
/// trimmed to the entries and set to expire after the age once per call). Returns one
/// integer per change: its sequence number, or -1 when it is refused (variable limit,
/// unknown name, name taken). What the changes share (the epoch, the number
/// of variables, whether a name exists, its value and position) is read once per call. The
/// state hash's values and the counter are written once per call (one `HSET`, one `HDEL`,
/// one `INCRBY`), before anything is appended or published: the same end state and numbers
/// as one call per change, with two Redis calls per change fewer.
///
/// For a rename or a delete the script adds the variable's value as the state hash holds
/// it (the renamed variable's value, the deleted one's old value) to the change JSON as
/// `"hv"` (a JSON string: the `n`/`s`-prefixed text of `encode_value_into`), so every node
/// builds the same event as a single node would.
pub const CLOUD_SCRIPT: &str = include_str!("lua/cloud.lua");

/// The script that records one presence event (`ROOM_JOIN`/`ROOM_LEAVE`) in the global
/// order. KEYS: events. ARGV: body JSON (`PresenceBody`), events length, channel.
pub const PRESENCE_SCRIPT: &str = include_str!("lua/presence.lua");

/// A Lua script and its SHA1 (computed on first use), for `EVALSHA`.
pub(crate) struct Lua {
    text: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Lua {
    pub(crate) const fn new(text: &'static str) -> Lua {
        Lua {
            text,
            sha: std::sync::OnceLock::new(),
        }
    }

    /// The script's text (for `SCRIPT LOAD`).
    pub(crate) fn text(&self) -> &'static str {
        self.text
    }

    /// The script's SHA1.
    pub(crate) fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| redis::Script::new(self.text).get_hash().to_owned())
    }
}

pub(crate) static CLOUD_LUA: Lua = Lua::new(CLOUD_SCRIPT);
pub(crate) static PRESENCE_LUA: Lua = Lua::new(PRESENCE_SCRIPT);

/// The webhook lease (`lease.rs`): renew it when held (and record the holder's progress),
/// take it when free (and return the progress its previous holder recorded).
/// KEYS: lease, progress. ARGV: node, ttl (ms), progress (`""`: unchanged). Returns
/// `[1, ""]` renewed, `[2, progress]` taken, `[0, ""]` held by another node.
pub const LEASE_SCRIPT: &str = include_str!("lua/lease.lua");

/// Give the lease up if held (at shutdown). KEYS: lease. ARGV: node.
pub const RELEASE_SCRIPT: &str = include_str!("lua/release.lua");

/// A bot's Identify against its shared budget (`identify.rs`). KEYS: starts, bucket.
/// ARGV: window (ms, 0: no bucket), total per day, member suffix. Returns 1 taken, 0 refused.
pub const IDENTIFY_SCRIPT: &str = include_str!("lua/identify.lua");

/// A bot's session start limit (`identify.rs`). KEYS: starts. Returns `[used, reset ms]`.
pub const IDENTIFY_LIMIT_SCRIPT: &str = include_str!("lua/identify_limit.lua");
