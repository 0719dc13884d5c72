//! Any message a node can receive from Redis: the `GID KIND BODY` framing, stream ids and
//! document update bodies never panic, and a document body re-parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::backplane::{parse_doc_message, split_event, split_kind, StreamId};

fuzz_target!(|data: &[u8]| {
    if let Ok((gid, kind, body)) = split_event(data) {
        assert_eq!(gid.to_string().parse::<StreamId>().ok(), Some(gid));
        if kind == b'd' {
            if let Ok(m) = parse_doc_message("node", body) {
                let origin = if m.local { "node" } else { "other" };
                let mut again = format!(
                    "{} {} {origin} 0 {} {}",
                    m.epoch,
                    m.seq,
                    m.room.len(),
                    m.room
                )
                .into_bytes();
                again.extend_from_slice(&m.update);
                if !m.epoch.contains(' ') {
                    assert_eq!(parse_doc_message("node", &again).ok(), Some(m));
                }
            }
        }
    }
    let _ = split_kind(data);
    let _ = parse_doc_message("node", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<StreamId>();
    }
});
