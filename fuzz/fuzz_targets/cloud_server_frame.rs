//! Any text frame a server can send to our client: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_proto::cloud::{parse_server_line, split_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = std::str::from_utf8(data) {
        for line in split_frame(frame) {
            let _ = parse_server_line(line);
        }
    }
});
