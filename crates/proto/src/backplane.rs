//! The messages nimbus nodes exchange through Redis (the backplane), IO-free: the global
//! event ids, the `GID KIND BODY` framing of the events channel, and document updates.
//! Cloud and presence bodies are JSON (parsed by the server).

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

/// A backplane message that is not in the format nimbus writes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed backplane data: {0}")]
pub struct Malformed(pub String);

/// A Redis stream entry id (`MS-SEQ`); the ids of the global event stream order every room
/// event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for StreamId {
    type Err = Malformed;
    fn from_str(s: &str) -> Result<StreamId, Malformed> {
        let bad = || Malformed(format!("stream id {s:?}"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// Split a message of the events channel (`GID KIND BODY`) into its GID, kind byte and body.
pub fn split_event(payload: &[u8]) -> Result<(StreamId, u8, &[u8]), Malformed> {
    let bad = |what: &str| Malformed(what.to_owned());
    let sp = payload
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| bad("event without id"))?;
    let gid: StreamId = std::str::from_utf8(&payload[..sp])
        .map_err(|_| bad("event id is not UTF-8"))?
        .parse()?;
    let (kind, body) = split_kind(&payload[sp + 1..])?;
    Ok((gid, kind, body))
}

/// Split `KIND BODY` (an entry of the global event stream).
pub fn split_kind(entry: &[u8]) -> Result<(u8, &[u8]), Malformed> {
    match entry {
        [kind, b' ', body @ ..] => Ok((*kind, body)),
        _ => Err(Malformed("event without kind".into())),
    }
}

/// A document update as every node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMessage {
    /// Room.
    pub room: Arc<str>,
    /// The room's epoch (changes when Redis lost the room and restarted its sequence).
    pub epoch: Arc<str>,
    /// Sequence number in the room.
    pub seq: u64,
    /// Whether this node wrote it (its room already has it).
    pub local: bool,
    /// The Yjs v1 update.
    pub update: Bytes,
}

/// Parse a document update body, `EPOCH SEQ NODE CONN ROOMLEN ROOM+UPDATE` (ROOM is ROOMLEN
/// bytes, directly followed by the update); `node` is this node's id.
pub fn parse_doc_message(node: &str, body: &[u8]) -> Result<DocMessage, Malformed> {
    let bad = |what: &str| Malformed(format!("document update: {what}"));
    let mut rest = body;
    let mut field = || -> Result<&str, Malformed> {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("truncated header"))?;
        let f = std::str::from_utf8(&rest[..sp]).map_err(|_| bad("header is not UTF-8"))?;
        rest = &rest[sp + 1..];
        Ok(f)
    };
    let epoch = Arc::<str>::from(field()?);
    let seq: u64 = field()?.parse().map_err(|_| bad("sequence"))?;
    let origin = field()? == node;
    let _conn = field()?;
    let len: usize = field()?.parse().map_err(|_| bad("room length"))?;
    if rest.len() < len {
        return Err(bad("truncated room"));
    }
    let room = std::str::from_utf8(&rest[..len]).map_err(|_| bad("room is not UTF-8"))?;
    Ok(DocMessage {
        room: Arc::from(room),
        epoch,
        seq,
        local: origin,
        update: Bytes::copy_from_slice(&rest[len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_binary_updates_and_rooms_with_spaces() {
        let mut body = b"ep 12 me 0 6 a room".to_vec();
        body.extend_from_slice(&[0, 1, b' ', 255]);
        let m = parse_doc_message("me", &body).expect("parse");
        assert_eq!(
            (&*m.epoch, m.seq, m.local, &*m.room),
            ("ep", 12, true, "a room")
        );
        assert_eq!(&m.update[..], &[0, 1, b' ', 255]);
        assert!(!parse_doc_message("you", &body).expect("parse").local);
        for bad in [
            &b""[..],
            b"ep",
            b"ep x me 0 1 r",
            b"ep 1 me 0 9 r",
            b"ep 1 me 0 z r",
        ] {
            assert!(parse_doc_message("me", bad).is_err(), "{bad:?}");
        }
    }
}
