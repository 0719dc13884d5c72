//! Any text an IPC peer can send: the server's frame parser and the client's reply
//! parsers never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::ipc::{parse_frame, parse_handshake_reply, parse_reply, route_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_frame(text);
        let _ = parse_reply(text);
        let _ = parse_handshake_reply(text);
        let _ = route_name(text);
    }
});
