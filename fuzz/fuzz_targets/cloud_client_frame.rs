//! Any text frame a client can send: splitting and parsing never panic, and
//! every accepted value re-encodes to a line that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::cloud::{
    encode_set, parse_client_line, parse_server_line, split_frame, validate_name, ClientMessage,
    ServerMessage, ValueProfile,
};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    for line in split_frame(frame) {
        let Ok(msg) = parse_client_line(line) else {
            continue;
        };
        match msg {
            ClientMessage::Handshake(h) => {
                let _ = h.room();
                let _ = h.user(20);
            }
            ClientMessage::Set {
                name: Ok(name),
                value: Ok(value),
            }
            | ClientMessage::Create {
                name: Ok(name),
                value: Ok(value),
            } => {
                let accepted = validate_name(&name, 1024).is_ok()
                    && value.validate(ValueProfile::TurboWarp, 100_000).is_ok();
                if accepted {
                    let out = encode_set(&name, &value);
                    assert!(out.ends_with('\n'));
                    let back = parse_server_line(out.trim_end_matches('\n'))
                        .expect("server output must parse");
                    assert_eq!(back, ServerMessage::Set { name, value });
                }
            }
            _ => {}
        }
    }
});
