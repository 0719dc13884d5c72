//! The awareness update codec (`awareness.js`).

use bytes::Bytes;

use super::lib0::{write_var_string, write_var_uint, Reader};
use super::DecodeError;

/// The most entries [`AwarenessUpdate::decode`] takes (a room holds at most 10,000 states by
/// default; every entry costs ~40 B decoded from as little as 3 bytes on the wire).
pub const MAX_AWARENESS_ENTRIES: usize = 16_384;

/// One client's awareness entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The client's id (its Yjs client id).
    pub client_id: u64,
    /// The clock; an entry applies when it is newer than the known one (or equal with
    /// a `None` state).
    pub clock: u64,
    /// The state as JSON text; `None` is the JSON `null`, meaning "client removed".
    pub state: Option<String>,
}

/// An awareness update: `varUint(n)`, then n × (`varUint(clientID) ‖ varUint(clock) ‖
/// varString(JSON state)`).
///
/// ```
/// use nimbus_proto::doc::{AwarenessEntry, AwarenessUpdate};
///
/// let u = AwarenessUpdate { entries: vec![AwarenessEntry { client_id: 1, clock: 2, state: None }] };
/// let bytes = u.encode();
/// assert_eq!(&bytes[..], [1, 1, 2, 4, b'n', b'u', b'l', b'l']);
/// assert_eq!(AwarenessUpdate::decode(&bytes).unwrap(), u);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwarenessUpdate {
    /// The entries in order.
    pub entries: Vec<AwarenessEntry>,
}

impl AwarenessUpdate {
    /// Decode an awareness update (the payload of a [`Message::Awareness`](super::Message)).
    /// The JSON text is not parsed; the literal `null` becomes `None`. Trailing bytes after
    /// the last entry are ignored, as lib0 does.
    pub fn decode(bytes: &[u8]) -> Result<AwarenessUpdate, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.read_var_uint("awareness entry count")?;
        if n > MAX_AWARENESS_ENTRIES as u64 {
            return Err(DecodeError::TooMany {
                what: "awareness entries",
                max: MAX_AWARENESS_ENTRIES,
                offset: 0,
            });
        }
        // Each entry takes at least 3 bytes: do not trust `n` for the allocation.
        let mut entries = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(bytes.len() / 3));
        for _ in 0..n {
            let client_id = r.read_var_uint("awareness client id")?;
            let clock = r.read_var_uint("awareness clock")?;
            let state = r.read_var_string("awareness state")?;
            entries.push(AwarenessEntry {
                client_id,
                clock,
                state: (state != "null").then(|| state.to_owned()),
            });
        }
        Ok(AwarenessUpdate { entries })
    }

    /// Encode the update.
    pub fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(
            1 + self
                .entries
                .iter()
                .map(|e| 12 + e.state.as_ref().map_or(4, String::len))
                .sum::<usize>(),
        );
        write_var_uint(&mut buf, self.entries.len() as u64);
        for e in &self.entries {
            write_var_uint(&mut buf, e.client_id);
            write_var_uint(&mut buf, e.clock);
            write_var_string(&mut buf, e.state.as_deref().unwrap_or("null"));
        }
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_update_announcing_more_entries_than_the_bound_is_refused_before_allocating() {
        let mut bytes = Vec::new();
        write_var_uint(&mut bytes, MAX_AWARENESS_ENTRIES as u64 + 1);
        bytes.extend(std::iter::repeat_n([1u8, 1, 0], MAX_AWARENESS_ENTRIES + 1).flatten());
        assert!(matches!(
            AwarenessUpdate::decode(&bytes),
            Err(DecodeError::TooMany {
                max: MAX_AWARENESS_ENTRIES,
                ..
            })
        ));
        let mut bytes = Vec::new();
        write_var_uint(&mut bytes, 2);
        bytes.extend([1u8, 1, 0, 2, 1, 0]);
        assert_eq!(AwarenessUpdate::decode(&bytes).unwrap().entries.len(), 2);
    }

    #[test]
    fn decodes_states_and_removals() {
        let u = AwarenessUpdate {
            entries: vec![
                AwarenessEntry {
                    client_id: 300,
                    clock: 1,
                    state: Some(r#"{"user":"a"}"#.into()),
                },
                AwarenessEntry {
                    client_id: 5,
                    clock: 9,
                    state: None,
                },
            ],
        };
        let bytes = u.encode();
        assert_eq!(&bytes[..5], [2, 0xAC, 0x02, 1, 12]);
        assert_eq!(AwarenessUpdate::decode(&bytes).unwrap(), u);
        assert_eq!(
            AwarenessUpdate::decode(&[]),
            Err(DecodeError::Truncated {
                what: "awareness entry count",
                offset: 0
            })
        );
        assert!(matches!(
            AwarenessUpdate::decode(&[2, 1, 1, 0]),
            Err(DecodeError::Truncated { .. })
        ));
        // A huge count does not allocate ahead.
        assert!(AwarenessUpdate::decode(&[0xFF, 0xFF, 0xFF, 0x0F]).is_err());
    }
}
