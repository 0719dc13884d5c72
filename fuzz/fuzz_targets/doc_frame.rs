//! Any bytes a y-sync peer can send: the frame and awareness decoders never panic, and
//! whatever decodes re-encodes to the same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::doc::{decode_frame, AwarenessUpdate, Message};

fuzz_target!(|data: &[u8]| {
    let frame = bytes::Bytes::copy_from_slice(data);
    if let Ok(msgs) = decode_frame(&frame) {
        let mut buf = Vec::new();
        for m in &msgs {
            m.encode_into(&mut buf);
            if let Message::Awareness(a) = m {
                if let Ok(u) = AwarenessUpdate::decode(a) {
                    assert_eq!(AwarenessUpdate::decode(&u.encode()).ok(), Some(u));
                }
            }
        }
        assert_eq!(decode_frame(&bytes::Bytes::from(buf)).ok(), Some(msgs));
    }
    let _ = AwarenessUpdate::decode(data);
});
