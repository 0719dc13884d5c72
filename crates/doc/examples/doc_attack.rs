//! Hostile document clients against a running `nimbus serve`, printing the server's RSS
//! before, during and after (the figures of docs/security.md, "Document rooms and
//! awareness"). Bounded: every phase sends a fixed amount and ends.
//!
//! ```text
//! cargo run --release -p nimbus-doc --example doc_attack -- ws://127.0.0.1:9080/doc PID awareness
//! cargo run --release -p nimbus-doc --example doc_attack -- ws://127.0.0.1:9080/doc PID nonreader
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nimbus_doc::yrs::{ReadTxn, Text, Transact};
use nimbus_proto::doc::{AwarenessEntry, AwarenessUpdate, Message};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as M;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples the RSS every 50 ms; `peak()` is the largest seen since the last `reset`.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Sampler { peak, stop }
    }
    fn reset(&self) {
        self.peak.store(0, Ordering::Relaxed);
    }
    fn peak(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn open(base: &str, room: &str, small_window: bool) -> Ws {
    let url = url::Url::parse(&format!("{base}/{room}")).unwrap();
    let addr = url.socket_addrs(|| None).unwrap()[0];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small_window {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    ws
}

/// Read (and drop) everything until the connection ends; returns the close code (0: none).
async fn drain(ws: &mut Ws, limit: Duration) -> (u16, usize, usize) {
    let (mut frames, mut biggest) = (0, 0);
    let end = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(M::Binary(b))) => {
                    frames += 1;
                    biggest = biggest.max(b.len());
                }
                Some(Ok(M::Close(c))) => return c.map_or(1005, |c| u16::from(c.code)),
                Some(Ok(_)) => {}
                _ => return 0,
            }
        }
    })
    .await
    .unwrap_or(0);
    (end, frames, biggest)
}

/// Send `frames` while reading everything the server sends, then a SyncStep1; returns how
/// many frames were sent and how it ended: "synced" (the SyncStep2 answer came, so every
/// frame was handled) or the close code.
async fn flood(ws: Ws, frames: impl Iterator<Item = M>) -> (usize, String) {
    let (mut tx, mut rx) = ws.split();
    let reader = tokio::spawn(async move {
        loop {
            match rx.next().await {
                Some(Ok(M::Binary(b))) if b.starts_with(&[0, 1]) => return "synced".to_owned(),
                Some(Ok(M::Close(c))) => {
                    return format!("close {}", c.map_or(1005, |c| u16::from(c.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("dropped ({e})"),
                None => return "dropped".to_owned(),
            }
        }
    });
    let mut sent = 0;
    for frame in frames {
        if tx.send(frame).await.is_err() {
            break;
        }
        sent += 1;
    }
    let sv = nimbus_doc::yrs::updates::encoder::Encode::encode_v1(
        &nimbus_doc::yrs::StateVector::default(),
    );
    let _ = tx
        .send(M::Binary(Message::SyncStep1(sv.into()).encode()))
        .await;
    let end = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .map_or("no answer in 120 s".to_owned(), |r| r.unwrap_or_default());
    (sent, end)
}

fn awareness(entries: impl Iterator<Item = (u64, u64, Option<String>)>) -> M {
    let update = AwarenessUpdate {
        entries: entries
            .map(|(client_id, clock, state)| AwarenessEntry {
                client_id,
                clock,
                state,
            })
            .collect(),
    };
    M::Binary(Message::Awareness(update.encode()).encode())
}

async fn awareness_attack(base: &str, pid: u32) {
    let s = Sampler::start(pid);
    println!("before: RSS {:.1} MiB", rss_mib(pid));

    // 1. One connection announces 1,000,000 states (10,000 a frame).
    s.reset();
    let a = open(base, "aw", false).await;
    let state = r##"{"user":{"name":"attacker","color":"#ff0000"}}"##.to_owned();
    let frames = (0..100u64).map(move |batch| {
        let ids = batch * 10_000..(batch + 1) * 10_000;
        awareness(ids.map(|id| (id, 1, Some(state.clone()))))
    });
    let (sent, code) = flood(a, frames).await;
    println!(
        "1M states from one connection: {sent} frames sent, end {code}, peak RSS {:.1} MiB, after {:.1} MiB",
        s.peak(),
        rss_mib(pid)
    );

    // 2. 12,000,000 removals of clients the room never held (100,000 a frame).
    s.reset();
    let n = open(base, "aw", false).await;
    let started = Instant::now();
    let frames = (0..120u64).map(|batch| {
        let ids = batch * 100_000..(batch + 1) * 100_000;
        awareness(ids.map(|id| (id, 1, None)))
    });
    let (sent, code) = flood(n, frames).await;
    println!(
        "12M null states: {sent} frames handled in {:.1} s, end {code}, peak RSS {:.1} MiB, after {:.1} MiB",
        started.elapsed().as_secs_f64(),
        s.peak(),
        rss_mib(pid)
    );

    // 3. 100 connections × 100 ids × ~830-byte states (run the server with
    //    --doc-awareness-max-ids 100): the room caps take over; then 20 joiners.
    s.reset();
    let big = format!(r#"{{"user":{{"name":"{}"}}}}"#, "n".repeat(800));
    let mut holders = Vec::new();
    for c in 0..100u64 {
        let mut ws = open(base, "aw-full", false).await;
        let ids = c * 100..(c + 1) * 100;
        ws.send(awareness(ids.map(|id| (id, 1, Some(big.clone())))))
            .await
            .unwrap();
        holders.push(ws);
    }
    // Readers of the relays, so that nobody is cut as too slow.
    let readers: Vec<_> = holders
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let _ = drain(&mut ws, Duration::from_secs(15)).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut joiners = Vec::new();
    let mut worst = 0;
    for _ in 0..20 {
        let mut j = open(base, "aw-full", false).await;
        let (_, frames, biggest) = drain(&mut j, Duration::from_millis(1500)).await;
        worst = worst.max(biggest);
        joiners.push((j, frames));
    }
    println!(
        "10,000 ids offered by 100 connections, 20 joiners: joiner got {} frames, largest {} bytes; peak RSS {:.1} MiB",
        joiners[0].1,
        worst,
        s.peak()
    );
    drop(joiners);
    for r in readers {
        let _ = r.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after everyone left: RSS {:.1} MiB", rss_mib(pid));
}

/// With `deaf`, one client of the room never reads; without, the control run (the same
/// document grows with nobody stalled).
async fn nonreader_attack(base: &str, pid: u32, deaf: bool) {
    let s = Sampler::start(pid);
    println!("before: RSS {:.1} MiB", rss_mib(pid));
    let room = if deaf { "deaf" } else { "control" };
    let mut deaf = if deaf {
        Some(open(base, room, true).await)
    } else {
        None
    };
    let mut writer = open(base, room, false).await;
    let doc = nimbus_doc::new_doc();
    let t = doc.get_or_insert_text("t");
    let chunk = "x".repeat(1 << 20);
    let started = Instant::now();
    // 48 updates of 1 MiB (under the default 64 MiB document limit), each replacing the
    // text, so the document itself stays at 1 MiB of live text.
    for _ in 0..48 {
        let sv = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let len = t.len(&txn);
            t.remove_range(&mut txn, 0, len);
            t.insert(&mut txn, 0, &chunk);
        }
        let u = doc.transact().encode_state_as_update_v1(&sv);
        writer
            .send(M::Binary(Message::Update(u.into()).encode()))
            .await
            .unwrap();
    }
    println!(
        "48 MiB of updates sent in {:.1} s; peak RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        s.peak()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.reset();
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("2 s later: RSS {:.1} MiB", rss_mib(pid));
    if let Some(deaf) = &mut deaf {
        let (code, frames, _) = drain(deaf, Duration::from_secs(15)).await;
        println!("the non-reader, reading now: {frames} frames, then close {code} (0: dropped)");
    }
    drop(deaf);
    drop(writer);
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "after both left (room unloaded): RSS {:.1} MiB",
        rss_mib(pid)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (base, pid, mode) = match &args[..] {
        [_, base, pid, mode] => (base.clone(), pid.parse::<u32>().expect("pid"), mode.clone()),
        _ => {
            println!("usage: doc_attack WS_BASE_URL SERVER_PID awareness|nonreader|control");
            return;
        }
    };
    match mode.as_str() {
        "awareness" => awareness_attack(&base, pid).await,
        "nonreader" => nonreader_attack(&base, pid, true).await,
        "control" => nonreader_attack(&base, pid, false).await,
        other => println!("unknown mode {other}"),
    }
}
