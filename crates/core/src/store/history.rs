//! The types of a cloud room's history as the store keeps them (see `crate::history`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::{json_value, EventBody, RoomEvent};

/// Default [`Retention::max_entries`]: no history. Keeping it costs every cloud change a
/// store row (measured: at 20k sets/s the fanout p50 went from 5 to 35 ms, the server
/// saturated; `docs/benchmarks.md`), so it is opt-in; 1000 is a usual value.
pub const DEFAULT_MAX_ENTRIES: usize = 0;
/// Default [`Retention::max_age`] (7 days).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a history entry records (Scratch's `verb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `create_var`: the first set of a variable.
    Create,
    /// `set_var`.
    Set,
    /// `rename_var` (`name` the old name, `value` the new one).
    Rename,
    /// `del_var` (`value` the value it had, `null` when unknown).
    Delete,
}

impl Verb {
    /// Scratch's verb.
    pub const fn name(self) -> &'static str {
        match self {
            Verb::Create => "create_var",
            Verb::Set => "set_var",
            Verb::Rename => "rename_var",
            Verb::Delete => "del_var",
        }
    }

    /// The inverse of [`Verb::name`].
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "create_var" => Verb::Create,
            "set_var" => Verb::Set,
            "rename_var" => Verb::Rename,
            "del_var" => Verb::Delete,
            _ => return None,
        })
    }
}

/// One change of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Who made it (`None`: a server-side change, written as `""`).
    pub user: Option<Arc<str>>,
    /// What happened.
    pub verb: Verb,
    /// The variable's name (for a rename, the old name).
    pub name: Arc<str>,
    /// The value as JSON text: a set's value (numbers stay numbers), a rename's new name,
    /// a delete's old value (`null` when unknown).
    pub value: Arc<str>,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

impl HistoryEntry {
    /// The entry of a cloud event at `at_ms`; `None` for any other event.
    pub fn from_event(ev: &RoomEvent, at_ms: u64) -> Option<HistoryEntry> {
        let json = |v: &serde_json::Value| Arc::<str>::from(v.to_string());
        let (verb, name, value) = match &ev.body {
            EventBody::CloudCreate { name, value } => {
                (Verb::Create, name.clone(), json(&json_value(value)))
            }
            EventBody::CloudSet { name, value } => {
                (Verb::Set, name.clone(), json(&json_value(value)))
            }
            EventBody::CloudRename { name, new_name, .. } => (
                Verb::Rename,
                name.clone(),
                json(&serde_json::Value::String(new_name.to_string())),
            ),
            EventBody::CloudDelete { name, value } => (
                Verb::Delete,
                name.clone(),
                match value {
                    Some(v) => json(&json_value(v)),
                    None => Arc::from("null"),
                },
            ),
            _ => return None,
        };
        Some(HistoryEntry {
            user: ev.user.clone(),
            verb,
            name,
            value,
            at_ms,
        })
    }

    /// The entry as Scratch's log object: `{"user","verb","name","value","timestamp"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let value = serde_json::from_str::<serde_json::Value>(&self.value)
            .unwrap_or_else(|_| serde_json::Value::String(self.value.to_string()));
        serde_json::json!({
            "user": self.user.as_deref().unwrap_or(""),
            "verb": self.verb.name(),
            "name": &*self.name,
            "value": value,
            "timestamp": self.at_ms,
        })
    }
}

/// How much history a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most entries per room (0: no history is kept).
    pub max_entries: usize,
    /// Oldest entry kept, by age.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

impl Retention {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// The oldest timestamp kept at `now_ms`.
    pub fn oldest_kept(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Wall clock in ms since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
