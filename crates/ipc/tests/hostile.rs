//! Hostile clients against the IPC server, over real loopback sockets (issue 13: ping flood,
//! idle strangers before authentication, framing errors). The client here speaks raw TCP so
//! it can break the protocol on purpose. Every wait is bounded by `WAIT`, which is only there
//! to stop a failing test; no assertion depends on how long anything takes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nimbus_ipc::{ClientSession, Request, Server, ServerBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn builder() -> ServerBuilder {
    Server::builder().host("127.0.0.1").port(0).multicast(false)
}

async fn start(b: ServerBuilder) -> Server {
    let s = b.build().unwrap();
    s.route("echo", |r: Request| async move {
        Ok(Value::Object(r.data().clone()))
    });
    s.start().await.unwrap();
    s
}

/// A WebSocket client that writes whatever frames it is told to.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent, as the raw client saw it.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(u8, Vec<u8>),
    /// EOF or reset: the TCP connection ended without (more) frames.
    Eof,
    /// Nothing within `WAIT`.
    Silent,
}

impl Raw {
    /// Upgrade; `None` if the server refused or dropped the connection.
    async fn connect(port: u16) -> Option<Raw> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return None;
        }
        buf.drain(..end);
        Some(Raw { tcp, buf })
    }

    /// One frame: `first` is the FIN/RSV/opcode byte, masked with a fixed key when `masked`.
    fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![first];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x11, 0x22, 0x33, 0x44];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    async fn text(&mut self, s: &str) {
        self.send(&Self::frame(0x80 | OP_TEXT, s.as_bytes(), true))
            .await
            .unwrap();
    }

    async fn fill(&mut self, n: usize) -> Result<(), Got> {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < n {
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Err(_) => return Err(Got::Silent),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Got::Eof),
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        Ok(())
    }

    /// The next server frame (servers never mask).
    async fn next(&mut self) -> Got {
        if let Err(g) = self.fill(2).await {
            return g;
        }
        let op = self.buf[0] & 0x0F;
        let (len, head) = match self.buf[1] & 0x7F {
            126 => {
                if let Err(g) = self.fill(4).await {
                    return g;
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if let Err(g) = self.fill(10).await {
                    return g;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if let Err(g) = self.fill(head + len).await {
            return g;
        }
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Got::Frame(op, payload)
    }

    /// Skip pongs and text replies until a close frame: its code and reason, or what came instead.
    async fn close_code(&mut self) -> Result<(u16, String), Got> {
        loop {
            match self.next().await {
                Got::Frame(OP_CLOSE, p) if p.len() >= 2 => {
                    let reason = String::from_utf8_lossy(&p[2..]).into_owned();
                    return Ok((u16::from_be_bytes([p[0], p[1]]), reason));
                }
                Got::Frame(OP_CLOSE, p) => return Err(Got::Frame(OP_CLOSE, p)),
                Got::Frame(_, _) => continue,
                other => return Err(other),
            }
        }
    }

    /// The next text frame as JSON.
    async fn reply(&mut self) -> Value {
        loop {
            match self.next().await {
                Got::Frame(OP_TEXT, p) => return serde_json::from_slice(&p).unwrap(),
                Got::Frame(OP_PONG, _) => continue,
                other => panic!("expected a text reply, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn ping_flood_without_reading_is_closed_1008_and_the_pongs_are_bounded() {
    // No secret: the unauthenticated path (issue 13, finding 1: "IPC without a secret").
    let s = start(builder()).await;
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    const PINGS: usize = 5_000;
    let ping = Raw::frame(0x80 | OP_PING, &[b'p'; 125], true);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * PINGS)
        .collect();
    // Write the whole flood without reading anything. The server may close while we write.
    let _ = c.send(&flood).await;
    let mut pongs = 0usize;
    let end = loop {
        match c.next().await {
            Got::Frame(OP_PONG, _) => pongs += 1,
            other => break other,
        }
    };
    let Got::Frame(OP_CLOSE, p) = end else {
        panic!("expected a close frame after {pongs} pongs, got {end:?}");
    };
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008);
    assert_eq!(&p[2..], b"too many pings");
    // Burst 16, refilled at 1 per second: the pongs the server queued are bounded by the
    // budget (with room for the refill while the flood was read), not by the flood.
    assert!(pongs <= 32, "{pongs} pongs for {PINGS} pings");
    assert!(s.stats().ping_floods >= 1);
    s.terminate_server().await;
}

#[tokio::test]
async fn pings_within_the_budget_are_answered_and_the_socket_stays_usable() {
    let s = start(builder()).await;
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    for _ in 0..8 {
        c.send(&Raw::frame(0x80 | OP_PING, b"hi", true))
            .await
            .unwrap();
        assert_eq!(c.next().await, Got::Frame(OP_PONG, b"hi".to_vec()));
    }
    c.text(r#"{"endpoint":"echo","data":{"a":1}}"#).await;
    assert_eq!(c.reply().await, json!({"a": 1}));
    assert_eq!(s.stats().ping_floods, 0);
    s.terminate_server().await;
}

#[tokio::test]
async fn idle_upgraded_strangers_do_not_lock_out_a_client_that_authenticates() {
    // Default pools: 64 authenticated connections per peer, 16 before authentication. The
    // deadline is long so that only the pool pushes strangers out here.
    let s = start(
        builder()
            .secret_key("k")
            .pre_auth_timeout(Duration::from_secs(120)),
    )
    .await;
    let p = s.local_addr().unwrap().port();
    let mut strangers = Vec::new();
    for _ in 0..80 {
        if let Some(c) = Raw::connect(p).await {
            strangers.push(c);
        }
    }
    // A client with the secret still connects and is answered, more than once.
    for i in 0..3 {
        let mut c =
            ClientSession::new("127.0.0.1", Some(p), 1, Some("k".into())).with_timeout(WAIT);
        assert_eq!(
            c.request("echo", json!({ "i": i })).await.unwrap(),
            json!({ "i": i })
        );
        c.close().await;
    }
    // The strangers were pushed out, oldest first, with 1013: at most 16 are left open.
    let stats = s.stats();
    assert!(stats.pre_auth_evicted >= 80 - 16, "{stats:?}");
    let (code, _) = strangers[0].close_code().await.unwrap();
    assert_eq!(code, 1013);
    s.terminate_server().await;
}

#[tokio::test]
async fn authenticated_sockets_do_not_count_in_the_pre_auth_pool() {
    let s = start(builder().secret_key("k").max_pre_auth_per_peer(2)).await;
    let p = s.local_addr().unwrap().port();
    let mut open = Vec::new();
    for i in 0..6 {
        let mut c = Raw::connect(p).await.unwrap();
        c.text(&format!(
            r#"{{"endpoint":"echo","data":{{"i":{i}}},"headers":{{"Authorization":"k"}}}}"#
        ))
        .await;
        assert_eq!(c.reply().await, json!({ "i": i }));
        open.push(c);
    }
    // All six are still served (none was evicted as a pre-auth socket).
    for (i, c) in open.iter_mut().enumerate() {
        c.text(&format!(
            r#"{{"endpoint":"echo","data":{{"again":{i}}},"headers":{{"Authorization":"k"}}}}"#
        ))
        .await;
        assert_eq!(c.reply().await, json!({ "again": i }));
    }
    assert_eq!(s.stats().pre_auth_evicted, 0);
    s.terminate_server().await;
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed_1008_at_the_deadline() {
    let s = start(
        builder()
            .secret_key("k")
            .pre_auth_timeout(Duration::from_secs(1)),
    )
    .await;
    let p = s.local_addr().unwrap().port();
    // Silent after the upgrade.
    let mut idle = Raw::connect(p).await.unwrap();
    // A wrong secret gets its 403 but does not authenticate.
    let mut wrong = Raw::connect(p).await.unwrap();
    wrong
        .text(r#"{"endpoint":"echo","headers":{"Authorization":"nope"}}"#)
        .await;
    assert_eq!(wrong.reply().await["code"], 403);
    // An authenticated socket outlives the deadline (no idle timeout after authentication).
    let mut good = Raw::connect(p).await.unwrap();
    good.text(r#"{"endpoint":"echo","data":{"n":1},"headers":{"Authorization":"k"}}"#)
        .await;
    assert_eq!(good.reply().await, json!({"n": 1}));

    for c in [&mut idle, &mut wrong] {
        assert_eq!(
            c.close_code().await,
            Ok((1008, "authentication timeout".into()))
        );
    }
    assert!(s.stats().pre_auth_timeouts >= 2);
    good.text(r#"{"endpoint":"echo","data":{"n":2},"headers":{"Authorization":"k"}}"#)
        .await;
    assert_eq!(good.reply().await, json!({"n": 2}));
    s.terminate_server().await;
}

#[tokio::test]
async fn a_socket_that_never_finishes_the_upgrade_is_dropped_at_the_deadline() {
    let s = start(builder().pre_auth_timeout(Duration::from_millis(300))).await;
    let p = s.local_addr().unwrap().port();
    let mut tcp = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut b)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    assert!(s.stats().pre_auth_timeouts >= 1);
    s.terminate_server().await;
}

/// Upgrade, send `bytes`, expect a close frame with `code`.
async fn closes_with(bytes: &[u8], code: u16) -> Server {
    let s = start(builder().max_frame(1024)).await;
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    c.send(bytes).await.unwrap();
    let got = c.close_code().await;
    assert_eq!(got.map(|(c, _)| c), Ok(code), "after {:02x?}", &bytes[..2]);
    s
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_gets_1007() {
    let s = closes_with(
        &Raw::frame(0x80 | OP_TEXT, b"{\"a\":\"\xff\xfe\"}", true),
        1007,
    )
    .await;
    assert_eq!(s.stats().invalid_utf8, 1);
    // Split over two fragments as well.
    closes_with(
        &[
            Raw::frame(OP_TEXT, b"\"\xe2\x82", true),
            Raw::frame(0x80, b"\xff\"", true),
        ]
        .concat(),
        1007,
    )
    .await;
}

#[tokio::test]
async fn an_unmasked_frame_gets_1002() {
    let s = closes_with(&Raw::frame(0x80 | OP_TEXT, b"{}", false), 1002).await;
    assert_eq!(s.stats().protocol_errors, 1);
}

#[tokio::test]
async fn rsv_bits_and_reserved_opcodes_get_1002() {
    // RSV1 without a negotiated extension.
    closes_with(&Raw::frame(0x80 | 0x40 | OP_TEXT, b"{}", true), 1002).await;
    // Reserved data opcode 0x3 and reserved control opcode 0xB.
    closes_with(&Raw::frame(0x80 | 0x3, b"{}", true), 1002).await;
    closes_with(&Raw::frame(0x80 | 0xB, b"", true), 1002).await;
    // A continuation with nothing to continue.
    closes_with(&Raw::frame(0x80, b"{}", true), 1002).await;
}

#[tokio::test]
async fn an_oversized_frame_gets_a_400_reply_then_1009() {
    let s = start(builder().max_frame(1024)).await;
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    c.send(&Raw::frame(0x80 | OP_TEXT, &[b' '; 4096], true))
        .await
        .unwrap();
    assert_eq!(
        c.reply().await,
        json!({"error":"Invalid request","code":400})
    );
    assert_eq!(c.close_code().await.map(|(c, _)| c), Ok(1009));
    assert_eq!(s.stats().too_big, 1);
    s.terminate_server().await;
}

#[tokio::test]
async fn a_reply_larger_than_max_reply_becomes_a_500() {
    let s = start(builder().max_reply(2048)).await;
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    let big = "x".repeat(4096);
    c.text(&format!(r#"{{"endpoint":"echo","data":{{"s":"{big}"}}}}"#))
        .await;
    assert_eq!(
        c.reply().await,
        json!({"error":"IPC route raised error of type ReplyTooLarge","code":500})
    );
    // The socket stays usable.
    c.text(r#"{"endpoint":"echo","data":{"s":"y"}}"#).await;
    assert_eq!(c.reply().await, json!({"s": "y"}));
    s.terminate_server().await;
}

#[tokio::test]
async fn a_route_error_too_long_for_max_reply_is_cut_to_a_short_500() {
    let s = builder().max_reply(1024).build().unwrap();
    s.route("fail", |_r: Request| async move {
        Err(nimbus_ipc::RouteError::with_kind(
            "K".repeat(4096),
            "m".repeat(4096),
        ))
    });
    s.start().await.unwrap();
    let p = s.local_addr().unwrap().port();
    let mut c = Raw::connect(p).await.unwrap();
    c.text(r#"{"endpoint":"fail"}"#).await;
    assert_eq!(
        c.reply().await,
        json!({"error":"IPC route raised error of type ReplyTooLarge","code":500})
    );
    // better-ipc dialect: a 500 whose details say why.
    c.text(r#"{"endpoint":"fail","kwargs":{}}"#).await;
    let r = c.reply().await;
    assert_eq!(r["code"], 500);
    assert!(r.to_string().len() <= 1024, "{r}");
    s.terminate_server().await;
}

#[tokio::test]
async fn a_client_session_that_connected_early_survives_the_deadline() {
    // `ClientSession::connect` opens the socket before the first request; if the deadline
    // closes it first, the request goes out once more on a fresh connection.
    let s = start(
        builder()
            .secret_key("k")
            .pre_auth_timeout(Duration::from_millis(200)),
    )
    .await;
    let p = s.local_addr().unwrap().port();
    let mut c = ClientSession::connect("127.0.0.1", Some(p), 1, Some("k".into()))
        .await
        .unwrap()
        .with_timeout(WAIT);
    // Wait (bounded) until the server has closed that socket.
    for _ in 0..200 {
        if s.stats().pre_auth_timeouts >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.stats().pre_auth_timeouts, 1);
    assert_eq!(
        c.request("echo", json!({"late": true})).await.unwrap(),
        json!({"late": true})
    );
    c.close().await;
    s.terminate_server().await;
}
