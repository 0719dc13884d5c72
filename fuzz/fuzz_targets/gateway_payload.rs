//! Any text a gateway peer can send: payload decoding, the typed `d` shapes and the
//! connect-query parser never panic, and a decoded payload re-encodes to an equal one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::gateway::{
    decode_client_payload, decode_payload, parse_connect_query, shard_of, Identify, Resume,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_client_payload(text);
        if let Ok(p) = decode_payload(text) {
            let _ = serde_json::from_value::<Identify>(p.d.clone());
            let _ = serde_json::from_value::<Resume>(p.d.clone());
            let again = decode_payload(&p.encode()).expect("re-encoded payload decodes");
            assert_eq!(again.op, p.op);
            assert_eq!(again.s, p.s);
        }
        let _ = parse_connect_query(text);
        let _ = shard_of(text, 7);
    }
});
