//! Hostile clients against the edge: every bound closes with its documented code.
//!
//! These clients speak raw TCP so they can do what a well-behaved library never does:
//! flood pings without reading, send unmasked or reserved frames, trickle headers.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, http_get, set_line, Client, Ended, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client frame: FIN + `opcode`, masked unless `unmasked`, with `rsv1` when asked.
fn frame(opcode: u8, payload: &[u8], unmasked: bool, rsv1: bool) -> Vec<u8> {
    let mut out = vec![0x80 | if rsv1 { 0x40 } else { 0 } | opcode];
    let mask_bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | u8::try_from(n).unwrap()),
        n if n < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
        }
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    out
}

/// Open a TCP connection and upgrade `path`; returns the socket after the 101 head.
async fn upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: hostile-test\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "EOF in the upgrade response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// What the server sent after the upgrade, read until EOF: (pongs, close code).
async fn read_all(tcp: &mut TcpStream) -> (usize, Option<u16>) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT * 2, async {
        let mut chunk = [0u8; 16384];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let (mut pongs, mut close) = (0, None);
    let mut i = 0;
    while i + 2 <= buf.len() {
        let op = buf[i] & 0x0f;
        let mut len = usize::from(buf[i + 1] & 0x7f);
        let mut at = i + 2;
        if len == 126 {
            len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
            at += 2;
        } else if len == 127 {
            len = usize::try_from(u64::from_be_bytes(buf[at..at + 8].try_into().unwrap())).unwrap();
            at += 8;
        }
        if at + len > buf.len() {
            break;
        }
        match op {
            0xA => pongs += 1,
            0x8 if len >= 2 => close = Some(u16::from_be_bytes([buf[at], buf[at + 1]])),
            _ => {}
        }
        i = at + len;
    }
    (pongs, close)
}

fn hostile_config(dir: &std::path::Path) -> nimbus_server::Config {
    let mut c = config(dir);
    c.gateway.tokens = vec![nimbus_server::GatewayToken::parse("t0k3n").unwrap()];
    c.cloud.close_timeout = Duration::from_secs(1);
    c
}

const WIRES: [&str; 3] = ["/", "/doc/hostile", "/gateway?v=10&encoding=json"];

#[tokio::test]
async fn a_ping_flood_without_reading_is_closed_with_1008_on_every_wire() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(hostile_config(dir.path())).await;
    for path in WIRES {
        let mut tcp = upgrade(srv.addr, path).await;
        // 20,000 pings with 125-byte payloads (2.6 MB), never reading a pong.
        let ping = frame(0x9, &[7u8; 125], false, false);
        let burst: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 500)
            .collect();
        for _ in 0..40 {
            if tcp.write_all(&burst).await.is_err() {
                break;
            }
        }
        let (pongs, close) = read_all(&mut tcp).await;
        assert_eq!(close, Some(1008), "{path}: ping flood must close with 1008");
        // The budget is 16 pings; one more pong may be in flight when the flood is noticed.
        assert!(
            pongs <= 17,
            "{path}: {pongs} pongs queued for a client that never read"
        );
    }
    let (_, metrics) = http_get(srv.addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("nimbus_edge_violations_total{bound=\"ping_flood\"} 3"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn framing_errors_close_with_1007_or_1002_on_every_wire() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(hostile_config(dir.path())).await;
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "invalid utf-8",
            frame(0x1, &[0xff, 0xfe, 0x80], false, false),
            1007,
        ),
        ("unmasked frame", frame(0x2, b"abc", true, false), 1002),
        (
            "rsv1 without an extension",
            frame(0x2, b"abc", false, true),
            1002,
        ),
        ("reserved opcode", frame(0x3, b"abc", false, false), 1002),
    ];
    for path in WIRES {
        for (what, bytes, code) in &cases {
            let mut tcp = upgrade(srv.addr, path).await;
            tcp.write_all(bytes).await.unwrap();
            let (_, close) = read_all(&mut tcp).await;
            assert_eq!(close, Some(*code), "{path}: {what}");
        }
    }
    srv.stop().await;
}

/// Read what the server answers on a fresh connection before any request.
async fn status_of_new_connection(addr: SocketAddr) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_refused_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.max_conns_per_ip = 8;
    c.edge.limit_loopback = true;
    let srv = TestServer::start(c).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(upgrade(srv.addr, "/").await);
    }
    let refused = status_of_new_connection(srv.addr).await;
    assert_eq!(refused.as_deref(), Some("HTTP/1.1 429 Too Many Requests"));
    // Closing one frees its place.
    drop(held.pop());
    let mut admitted = None;
    for _ in 0..50 {
        admitted = status_of_new_connection(srv.addr).await;
        if admitted.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admitted.as_deref(), Some("HTTP/1.1 200 OK"));
    let (_, metrics) = http_get(srv.addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("nimbus_edge_refused_total{reason=\"too_many_connections\"}"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn new_connections_over_the_per_address_rate_are_refused_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.new_conns_per_ip_per_sec = 1;
    c.edge.new_conns_per_ip_burst = 3;
    c.edge.limit_loopback = true;
    let srv = TestServer::start(c).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status_of_new_connection(srv.addr).await);
    }
    let refused = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("HTTP/1.1 429 Too Many Requests"))
        .count();
    assert!(refused >= 2, "{statuses:?}");
    assert_eq!(statuses[0].as_deref(), Some("HTTP/1.1 200 OK"));
    srv.stop().await;
}

/// Whether the server closes `tcp` (EOF or reset) before the test's wait runs out.
async fn closed_by_server(tcp: &mut TcpStream, trickle: bool) -> bool {
    let waited = tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 256];
        loop {
            if trickle && tcp.write_all(b"X").await.is_err() {
                return;
            }
            let read = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut b)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return;
            }
        }
    })
    .await;
    waited.is_ok()
}

#[tokio::test]
async fn slow_headers_and_idle_keepalive_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.header_timeout = Duration::from_millis(500);
    let srv = TestServer::start(c).await;
    // Slowloris: a header line one byte at a time, never finished.
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
    assert!(
        closed_by_server(&mut slow, true).await,
        "slowloris still open"
    );
    // Silent after connecting.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert!(
        closed_by_server(&mut idle, false).await,
        "idle socket still open"
    );
    // Keep-alive: one request answered, then nothing.
    let mut ka = TcpStream::connect(srv.addr).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 256];
    let n = tokio::time::timeout(WAIT, ka.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut ka, false).await,
        "idle keep-alive still open"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_set_flood_is_dropped_over_the_rate_and_a_persistent_flooder_is_closed_with_1008() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.sets_per_sec = 5;
    c.edge.sets_burst = 20;
    let srv = TestServer::start(c).await;
    let url = srv.url();
    let mut watcher = Client::join(&url, "flood", "watcher").await;
    let mut flooder = Client::join(&url, "flood", "flooder").await;
    // 30 sets in one frame: 20 pass (the burst), 10 are dropped.
    let frame30: String = (0..30)
        .map(|i| set_line("v", &i.to_string()) + "\n")
        .collect();
    flooder.send(&frame30).await;
    let seen = watcher.lines(20).await;
    assert_eq!(seen.last().unwrap(), &set_line("v", "19"));
    watcher.assert_silent(Duration::from_millis(300)).await;
    // Keep flooding: once the dropped sets exceed the drop budget, the flooder is closed.
    let frame100: String = (0..100)
        .map(|i| set_line("v", &i.to_string()) + "\n")
        .collect();
    flooder.send(&frame100).await;
    match flooder.ended().await {
        (Ended::Closed(code), _) => assert_eq!(code, 1008),
        other => panic!("expected 1008, got {other:?}"),
    }
    let (_, metrics) = http_get(srv.addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("nimbus_edge_rate_limited_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nimbus_edge_violations_total{bound=\"set_rate\"} 1"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn renames_count_against_the_set_rate_and_a_rename_flooder_is_closed_with_1008() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // One token a second: no token comes back while the frame is read.
    c.edge.sets_per_sec = 1;
    c.edge.sets_burst = 20;
    c.cloud.allow_rename = true;
    c.cloud.allow_delete = true;
    let srv = TestServer::start(c).await;
    let mut flooder = Client::join(&srv.url(), "renames", "flooder").await;
    flooder.set("a", "1").await;
    // Renames back and forth, each a stored change and an event: paced like sets, then
    // closed like a set flooder (before, only the round trip limited them).
    let swap: String = (0..200)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
            format!(r#"{{"method":"rename","name":"☁ {from}","new_name":"☁ {to}"}}"#) + "\n"
        })
        .collect();
    flooder.send(&swap).await;
    match flooder.ended().await {
        (Ended::Closed(code), _) => assert_eq!(code, 1008),
        other => panic!("expected 1008, got {other:?}"),
    }
    srv.stop().await;
}

/// Fill room `big` with 100 variables of 100 KB (a 10 MB answer to
/// `GET /api/rooms/big/variables`, more than loopback buffers hold), and wait until a client
/// that reads gets all of it.
async fn big_room(srv: &TestServer) -> Client {
    let mut writer = Client::join(&srv.url(), "big", "w").await;
    let value = format!("\"{}\"", "7".repeat(99_990));
    for i in 0..100 {
        writer.set(&format!("v{i}"), &value).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(srv.addr, "/api/rooms/big/variables", &[]).await;
        if status == 200 && body.len() > 10_000_000 {
            return writer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{status}, {} bytes",
            body.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client with a 4 KiB receive window that asks for the big room's variables and never
/// reads.
async fn non_reader(srv: &TestServer) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(srv.addr).await.unwrap();
    s.write_all(b"GET /api/rooms/big/variables HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn an_http_response_to_a_client_that_never_reads_is_dropped_after_the_write_stall() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.write_stall = Duration::from_millis(300);
    let srv = TestServer::start(c).await;
    let _writer = big_room(&srv).await;
    let mut s = non_reader(&srv).await;
    // Not reading while the server's write stalls, for longer than the bound.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    let read = read.expect("the server ended the connection");
    assert!(
        read.is_err() || got.len() < 10_000_000,
        "the whole answer arrived ({} bytes): the stalled write was not cut",
        got.len()
    );
    srv.stop().await;
}

#[tokio::test]
async fn large_responses_to_clients_that_never_read_hold_one_server_wide_budget_and_the_rest_get_503(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.edge.response_budget = 12 << 20;
    let srv = TestServer::start(c).await;
    let _writer = big_room(&srv).await;
    // A client that asks and never reads holds its 10 MB of the 12 MB budget...
    let stuck = non_reader(&srv).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the next large answer is refused, with a retry hint, and small ones still go.
    let (status, body) = http_get(srv.addr, "/api/rooms/big/variables", &[]).await;
    assert_eq!(status, 503, "{} bytes", body.len());
    assert!(body.contains("\"error\""));
    assert_eq!(http_get(srv.addr, "/healthz", &[]).await.0, 200);
    let metrics = http_get(srv.addr, "/metrics", &[]).await.1;
    assert!(
        metrics.contains("nimbus_edge_busy_responses_total 1"),
        "counted"
    );
    // The stuck client leaves: its share comes back.
    drop(stuck);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(srv.addr, "/api/rooms/big/variables", &[]).await;
        if status == 200 {
            assert!(body.len() > 10_000_000);
            break;
        }
        assert_eq!(status, 503);
        assert!(tokio::time::Instant::now() < deadline, "never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}
