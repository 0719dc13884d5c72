//! Hostile clients against the real binary, measured by its resident memory (VmRSS).
//!
//! The bounds asserted here are bytes, never times: a loaded CI machine can be slow, and
//! only how much memory a client can make the server hold is the property under test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{free_port, WAIT};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, extra: &[&str]) -> Node {
    let port = free_port();
    let child = common::spawn_serve(dir, port, extra);
    Node { child, port }
}

impl Node {
    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resident memory, bytes.
    fn rss(&self) -> u64 {
        self.status_field("VmRSS:") * 1024
    }

    async fn get(&self, path: &str) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    async fn cloud(
        &self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", self.port)).await {
                Ok((ws, _)) => return ws,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("server never came up: {e}"),
            }
        }
    }
}

/// A client that upgrades, joins `room` and then never reads, with a 4 KiB receive buffer
/// so the server's writes stall at once.
async fn non_reader(port: u16, room: &str, user: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut tcp = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let req = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let hs = format!(r#"{{"method":"handshake","user":"{user}","project_id":"{room}"}}"#);
    let payload = hs.as_bytes();
    let mut frame = vec![
        0x81,
        0x80 | u8::try_from(payload.len()).unwrap(),
        1,
        2,
        3,
        4,
    ];
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, c)| c ^ [1, 2, 3, 4][i % 4]),
    );
    tcp.write_all(&frame).await.unwrap();
    tcp
}

const VARS: usize = 128;
const VALUE_LEN: usize = 99_990;
const NON_READERS: usize = 32;

fn set_line(i: usize, round: usize) -> String {
    let digit = char::from(b'1' + u8::try_from((i + round) % 9).unwrap());
    let value: String = std::iter::repeat_n(digit, VALUE_LEN).collect();
    format!(r#"{{"method":"set","name":"☁ v{i}","value":"{value}"}}"#)
}

#[tokio::test]
async fn non_readers_of_a_large_room_are_cut_with_1008_and_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &["--write-timeout-ms", "2000"]);
    let mut writer = node.cloud().await;
    writer
        .send(Message::text(
            r#"{"method":"handshake","user":"writer","project_id":"big"}"#,
        ))
        .await
        .unwrap();
    for i in 0..VARS {
        writer.send(Message::text(set_line(i, 0))).await.unwrap();
    }
    // The room holds 128 x 100 KB (12.8 MB) once the API shows every variable.
    let deadline = Instant::now() + WAIT;
    while node
        .get("/api/rooms/big/variables")
        .await
        .matches("\"☁ v")
        .count()
        < VARS
    {
        assert!(Instant::now() < deadline, "variables never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = node.rss();
    let mut held = Vec::new();
    let mut peak = before;
    for n in 0..NON_READERS {
        held.push(non_reader(node.port, "big", &format!("idle{n}")).await);
        peak = peak.max(node.rss());
    }
    // Live updates while they are stuck.
    for round in 1..=3 {
        for i in 0..VARS {
            writer
                .send(Message::text(set_line(i, round)))
                .await
                .unwrap();
        }
        peak = peak.max(node.rss());
    }
    // Every non-reader is cut (the write timeout): wait for the count, sampling memory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        peak = peak.max(node.rss());
        let cut = node.metric("nimbus_cloud_slow_consumers_total").await;
        if cut >= NON_READERS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {cut} of {NON_READERS} non-readers were cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = node.rss();
    let grew = peak.saturating_sub(before);
    eprintln!(
        "rss before {} MiB, peak {} MiB (+{} KiB per non-reader), after cut {} MiB",
        before >> 20,
        peak >> 20,
        (grew / NON_READERS as u64) >> 10,
        after >> 20
    );
    // The bound: the 1 MiB live budget plus one 64 KiB frame and buffers per connection
    // (before this bound, each held a private copy of the 12.8 MB room twice).
    let per_conn: u64 = (1 << 20) + (256 << 10);
    assert!(
        grew <= NON_READERS as u64 * per_conn + (32 << 20),
        "RSS grew {} MiB for {NON_READERS} non-readers",
        grew >> 20
    );
    // The writer, who reads nothing but was never behind, is still connected.
    writer.send(Message::text(set_line(0, 9))).await.unwrap();
    drop(held);
    let _ = writer.close(None).await;
    while let Some(Ok(_)) = writer.next().await {}
}

#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    let limits_of =
        || std::fs::read_to_string(format!("/proc/{}/limits", node.child.id())).unwrap();
    // The limit is raised before the listener binds: wait for the socket to exist.
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
        assert!(Instant::now() < deadline, "server never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let limits = limits_of();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  <soft>  <hard>  files"
    assert_eq!(fields[3], fields[4], "{line}");
}
