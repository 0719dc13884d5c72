//! Writes the seed corpus of the `ws_edge` target into `corpus/ws_edge/seed-*`: valid
//! upgrade requests followed by masked frames, in the input layout documented in
//! `fuzz_targets/ws_edge.rs` (4 control bytes, then what the client sends).
//! Only the `seed-*` files are written; the fuzzer's own corpus entries are never touched.

use std::path::PathBuf;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: nimbus-fuzz-seed\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A client frame: FIN bit from `fin`, masked with a fixed key, as RFC 6455 requires.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

fn seed(control: [u8; 4], parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = control.to_vec();
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("corpus")
        .join("ws_edge");
    let close = {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        frame(true, CLOSE, &p)
    };
    let handshake = br#"{"method":"handshake","user":"fuzz","project_id":"1"}"#;
    let set = br#"{"method":"set","name":"\u2601 x","value":"42"}"#;
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        // Cloud: handshake, set, ping, close; echo on, EOF at the end.
        (
            "cloud-session",
            seed(
                [0x28, 0xff, 0, 0],
                &[
                    upgrade("/", "Sec-WebSocket-Protocol: scratch, other\r\n"),
                    frame(true, TEXT, handshake),
                    frame(true, TEXT, set),
                    frame(true, PING, b"keepalive"),
                    frame(true, PONG, b""),
                    close.clone(),
                ],
            ),
        ),
        // Document route: binary y-sync step 1, a fragmented binary message, close.
        (
            "doc-fragments",
            seed(
                [0x29, 0x3f, 0, 0],
                &[
                    upgrade("/doc/room-1?token=t", ""),
                    frame(true, BINARY, &[0, 0, 1, 0]),
                    frame(false, BINARY, &[0, 2]),
                    frame(true, PING, b"in between"),
                    frame(false, CONTINUATION, &[1, 2, 3]),
                    frame(true, CONTINUATION, &[4]),
                    close.clone(),
                ],
            ),
        ),
        // Gateway: a JSON Identify split into 1-byte reads with stalls.
        (
            "gateway-slow",
            seed(
                [0x2a, 0x0f, 0x15, 0x0a],
                &[
                    upgrade("/gateway?v=10&encoding=json", ""),
                    frame(true, TEXT, br#"{"op":2,"d":{"token":"t","intents":1}}"#),
                    close.clone(),
                ],
            ),
        ),
        // IPC: tungstenite's default buffers; a text request and a 126-byte extended length.
        (
            "ipc-request",
            seed(
                [0x2b, 0x7f, 0, 0],
                &[
                    upgrade("/", "Secret-Key: s\r\n"),
                    frame(true, TEXT, br#"{"endpoint":"stats","data":{}}"#),
                    frame(true, TEXT, &[b'a'; 200]),
                    close.clone(),
                ],
            ),
        ),
        // Ping flood from a client that never reads, on the small-limit profile: the pongs
        // must not pile up beyond max_write_buffer_size. Idle at the end (no EOF).
        (
            "tight-ping-flood",
            seed(
                [0x14, 0xff, 0, 0],
                &[
                    upgrade("/", ""),
                    (0..60)
                        .flat_map(|i| frame(true, PING, &[i as u8; 100]))
                        .collect(),
                ],
            ),
        ),
        // Echo of large messages to a client that never reads, small limits.
        (
            "tight-echo-full",
            seed(
                [0x34, 0xff, 0, 0],
                &[
                    upgrade("/", ""),
                    (0..8)
                        .flat_map(|_| frame(true, BINARY, &[7u8; 400]))
                        .collect(),
                    frame(true, TEXT, &[b'x'; 600]),
                ],
            ),
        ),
        // A frame header that claims more than the route allows.
        (
            "cloud-oversized-claim",
            seed(
                [0x08, 0xff, 0, 0],
                &[upgrade("/", ""), {
                    let mut f = vec![0x82, 0x80 | 127];
                    f.extend_from_slice(&(2u64 << 20).to_be_bytes());
                    f.extend_from_slice(&[1, 2, 3, 4]);
                    f
                }],
            ),
        ),
    ];
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed-{name}"));
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            let _ = std::fs::write(path, bytes);
        }
    }
}
