//! What a client can send on a fresh TCP connection: an HTTP/1.1 upgrade request and then
//! WebSocket frames, run through tungstenite's server handshake and frame reader with the
//! limits the server's routes use, over an in-memory socket that can stall reads and
//! writes (a client that sends slowly, or never reads).
//!
//! Checks, besides "never panics":
//! - every message returned respects the profile's `max_message_size` (control frames
//!   ≤ 125 bytes, close reasons ≤ 123);
//! - no call writes more than `max_write_buffer_size` bytes to the socket, and after the
//!   input ends the bytes still buffered (drained by a final flush) are at most that too:
//!   the write side never holds more than the configured bound, even under a ping flood
//!   from a client that never reads;
//! - the handshake answer is bounded by a constant plus the subprotocol it echoes.
//!
//! Input layout (see `fuzz/build.rs`, which writes the seed corpus):
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bits 0-2: profile (`PROFILES[b % 5]`); bit 3: the input ends with EOF (else the client stays idle); bit 4: the peer never reads after the handshake; bit 5: the server echoes each data message; bit 6: frames may arrive in the same read as the request (else reads stop at the request's blank line, as a client waits for the 101) |
//! | 1 | bytes per read call: `b + 1` (writes accept up to 16 × that) |
//! | 2 | read stall pattern: read call `n` returns `WouldBlock` when bit `n % 7` of `b & 0x3f` is set (one call in 7 always goes through) |
//! | 3 | write stall pattern, the same for write calls |
//! | 4.. | the bytes the client sends |
//!
//! The upgrade itself is parsed by hyper in the server's axum routes (`/`, `/doc`,
//! `/gateway`) and by tungstenite for IPC and `nimbus-doc`'s own server; the frame layer is
//! tungstenite on every route.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error, Message};

/// The WebSocket limits of one route with the default settings, as `nimbus serve` sets
/// them (`crates/server/src/http.rs`, `crates/server/src/gateway/mod.rs`,
/// `crates/server/src/edge/ws.rs`) and as `crates/ipc/src/server.rs` does.
struct Profile {
    read_buffer: usize,
    write_buffer: usize,
    max_message: usize,
    max_write_buffer: usize,
}

/// `edge::ws::CONTROL_SLACK`: room for a close frame and the pongs of the ping budget.
const CONTROL_SLACK: usize = 4096;

const PROFILES: [Profile; 5] = [
    // `/` (cloud): max_frame_bytes 1 MiB in, 256-byte reads, unbuffered writes; the largest
    // outgoing frame is `cloud::max_frame_out` = (1024 + 100,000) × 6 + 64 bytes.
    Profile {
        read_buffer: 256,
        write_buffer: 0,
        max_message: 1 << 20,
        max_write_buffer: (1024 + 100_000) * 6 + 64 + CONTROL_SLACK,
    },
    // `/doc/{room}`: 16 MiB in, 4 KiB reads, unbuffered writes; the largest outgoing
    // message is the first SyncStep2, max_doc_bytes (64 MiB) + 1 MiB.
    Profile {
        read_buffer: 4096,
        write_buffer: 0,
        max_message: 16 << 20,
        max_write_buffer: (64 << 20) + (1 << 20) + CONTROL_SLACK,
    },
    // `/gateway`: 16 × MAX_PAYLOAD_BYTES (4096) in, 1 KiB reads, 64 KiB write buffer; the
    // largest dispatch is `GatewayConfig::dispatch_bound(16 MiB)`: a base64 document
    // update of 16 MiB plus 64 KiB.
    Profile {
        read_buffer: 1024,
        write_buffer: 64 * 1024,
        max_message: 16 * 4096,
        max_write_buffer: (16usize << 20).div_ceil(3) * 4 + (64 << 10) + CONTROL_SLACK,
    },
    // IPC: max_frame 1 MiB in, 128 KiB buffers, max_reply 16 MiB + 8 KiB (`WRITE_SLACK`).
    Profile {
        read_buffer: 128 * 1024,
        write_buffer: 128 * 1024,
        max_message: 1 << 20,
        max_write_buffer: (16 << 20) + (8 << 10),
    },
    // The cloud shape with small limits, so that inputs of a few KiB reach every bound.
    Profile {
        read_buffer: 16,
        write_buffer: 0,
        max_message: 512,
        max_write_buffer: 1024,
    },
];

impl Profile {
    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(self.write_buffer)
            .max_write_buffer_size(self.max_write_buffer)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }
}

/// Upper bound of the handshake answer apart from the echoed subprotocol.
const MAX_HANDSHAKE_ANSWER: usize = 512;

/// An in-memory TCP socket: reads come from the fuzz input, writes are counted.
struct Socket<'a> {
    input: &'a [u8],
    read_chunk: usize,
    write_chunk: usize,
    read_stalls: u8,
    write_stalls: u8,
    /// Bytes left before the end of the upgrade request: no read crosses it, as a client
    /// waits for the 101 answer before it sends frames.
    request_left: Option<usize>,
    reads: u32,
    writes: u32,
    /// EOF when the input is used up; otherwise the client stays connected and idle.
    eof_at_end: bool,
    /// Every write blocks: the client does not read.
    writes_blocked: bool,
    written: usize,
}

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads = self.reads.wrapping_add(1);
        if self.read_stalls & (1 << (self.reads % 7)) != 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.input.is_empty() {
            return if self.eof_at_end {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut n = buf.len().min(self.read_chunk).min(self.input.len());
        if let Some(left) = self.request_left {
            n = n.min(left);
            self.request_left = left.checked_sub(n).filter(|&l| l > 0);
        }
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes = self.writes.wrapping_add(1);
        if self.writes_blocked || self.write_stalls & (1 << (self.writes % 7)) != 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.write_chunk);
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Steps of the handshake and read loops: every step consumes input or returns, but the
/// stall patterns can make a step do neither, so the loops stop after this many.
const MAX_STEPS: usize = 1 << 16;

fn would_block(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

fuzz_target!(|data: &[u8]| {
    let [flags, chunk, read_stalls, write_stalls, rest @ ..] = data else {
        return;
    };
    let profile = &PROFILES[usize::from(flags & 7) % PROFILES.len()];
    let never_reads = flags & 0x10 != 0;
    let pipelined = flags & 0x40 != 0;
    let echo = flags & 0x20 != 0;
    let socket = Socket {
        input: rest,
        read_chunk: usize::from(*chunk) + 1,
        write_chunk: (usize::from(*chunk) + 1) * 16,
        request_left: rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .filter(|_| !pipelined),
        read_stalls: *read_stalls & 0x3f,
        write_stalls: *write_stalls & 0x3f,
        reads: 0,
        writes: 0,
        eof_at_end: flags & 0x08 != 0,
        writes_blocked: false,
        written: 0,
    };

    // The handshake, with the server's callback: echo the first offered subprotocol.
    let mut echoed = 0usize;
    // The shape of tungstenite's `Callback`, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
        if !req.uri().path().starts_with('/') {
            let mut refusal = ErrorResponse::new(Some("bad path".to_owned()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        let first = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
            .and_then(|p| HeaderValue::from_str(p).ok());
        if let Some(p) = first {
            echoed = p.len();
            res.headers_mut().insert("sec-websocket-protocol", p);
        }
        Ok(res)
    };
    let mut attempt = tungstenite::accept_hdr_with_config(socket, callback, Some(profile.config()));
    let mut steps = 0;
    let mut ws = loop {
        match attempt {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mid)) if steps < MAX_STEPS => {
                steps += 1;
                attempt = mid.handshake();
            }
            Err(_) => return,
        }
    };
    assert!(
        ws.get_ref().written <= MAX_HANDSHAKE_ANSWER + echoed,
        "handshake answer of {} bytes",
        ws.get_ref().written
    );
    ws.get_mut().writes_blocked = never_reads;

    // Writes of one call: at most what the write buffer may hold.
    let bounded = |ws: &mut tungstenite::WebSocket<Socket>, before: usize, what: &str| {
        let wrote = ws.get_ref().written - before;
        assert!(
            wrote <= profile.max_write_buffer,
            "{what} wrote {wrote} bytes, over max_write_buffer_size {}",
            profile.max_write_buffer
        );
    };

    // Read messages until an error, as the route's read loop does.
    for _ in 0..MAX_STEPS {
        let before = ws.get_ref().written;
        let read = ws.read();
        bounded(&mut ws, before, "read");
        let msg = match read {
            Ok(msg) => msg,
            Err(e) if would_block(&e) && !ws.get_ref().input.is_empty() => continue,
            Err(_) => break,
        };
        match &msg {
            Message::Text(t) => assert!(t.len() <= profile.max_message),
            Message::Binary(b) => assert!(b.len() <= profile.max_message),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close(c) => assert!(c.as_ref().is_none_or(|c| c.reason.len() <= 123)),
            Message::Frame(_) => panic!("read returned a raw frame"),
        }
        if echo && matches!(msg, Message::Text(_) | Message::Binary(_)) {
            let before = ws.get_ref().written;
            let sent = ws.write(msg);
            bounded(&mut ws, before, "write");
            match sent {
                Ok(()) | Err(Error::WriteBufferFull(_)) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => break,
            }
            let before = ws.get_ref().written;
            let _ = ws.flush();
            bounded(&mut ws, before, "flush");
        }
    }

    // The client starts reading: what drains is what was buffered.
    let socket = ws.get_mut();
    socket.writes_blocked = false;
    socket.write_stalls = 0;
    let before = ws.get_ref().written;
    let _ = ws.flush();
    bounded(&mut ws, before, "final flush");
});
