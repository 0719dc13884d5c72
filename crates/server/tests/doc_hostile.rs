//! Hostile document clients against `nimbus serve` over real loopback sockets: the byte
//! budget of a non-reader's queue, the awareness bounds as configured, and the JSON view
//! of a root written with two types. Bounds are asserted from the server's own counters
//! (`DocLimits::stats`) and what the clients observe, never from timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{config, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::doc::{AwarenessEntry, AwarenessUpdate, Message};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::updates::decoder::Decode;
use yrs::{Map, ReadTxn, Text, Transact, Update};

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A document client with a tiny receive buffer (the kernel absorbs little of what the
/// server sends to it while it does not read).
async fn open(server: &TestServer, room: &str, small_window: bool) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small_window {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/doc/{room}", server.addr);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// Read until the server closes: (code, reason, bytes of binary frames received); a
/// connection dropped without a close frame gives code 0.
async fn until_close(ws: &mut Socket) -> (u16, String, usize) {
    let mut bytes = 0;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Ws::Binary(b))) => bytes += b.len(),
            Some(Ok(Ws::Close(Some(f)))) => {
                let _ = ws.flush().await;
                return (u16::from(f.code), f.reason.to_string(), bytes);
            }
            Some(Ok(Ws::Close(None))) => return (1005, String::new(), bytes),
            Some(Ok(_)) => {}
            Some(Err(e)) => return (0, e.to_string(), bytes),
            None => return (0, String::new(), bytes),
        }
    }
}

async fn send(ws: &mut Socket, msg: Message) {
    ws.send(Ws::Binary(msg.encode())).await.unwrap();
}

fn awareness(entries: impl IntoIterator<Item = (u64, Option<&'static str>)>) -> Message {
    let update = AwarenessUpdate {
        entries: entries
            .into_iter()
            .map(|(client_id, state)| AwarenessEntry {
                client_id,
                clock: 1,
                state: state.map(str::to_owned),
            })
            .collect(),
    };
    Message::Awareness(update.encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_client_that_never_reads_is_closed_with_1008_at_its_byte_budget() {
    const BUDGET: usize = 1 << 20;
    const FRAME: usize = 256 << 10;
    const FRAMES: usize = 96;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.queue_bytes = BUDGET;
    // The byte budget must cut it, not the send timeout.
    cfg.doc.send_timeout = Duration::from_secs(60);
    let stats = cfg.doc.stats.clone();
    let server = TestServer::start(cfg).await;
    let mut deaf = open(&server, "flood", true).await;
    let mut writer = open(&server, "flood", false).await;
    // 24 MiB of updates while `deaf` reads nothing.
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    let chunk = "x".repeat(FRAME);
    for _ in 0..FRAMES {
        let sv = doc.transact().state_vector();
        t.insert(&mut doc.transact_mut(), 0, &chunk);
        let u = doc.transact().encode_state_as_update_v1(&sv);
        send(&mut writer, Message::Update(u.into())).await;
    }
    for _ in 0..500 {
        if stats.slow_queue_bytes.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.slow_queue_bytes.load(Ordering::Relaxed), 1);
    // Now reading: what had reached the socket, then the end. The close frame (1008 "too
    // slow") is queued behind a frame that could not go out, so the connection may be
    // dropped once the close timeout passes.
    let (code, reason, received) = until_close(&mut deaf).await;
    assert!(
        (code, reason.as_str()) == (1008, "too slow") || code == 0,
        "{code} {reason}"
    );
    assert!(
        received < FRAMES * FRAME / 2,
        "{received} bytes received: the queue was not cut"
    );
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(
        metrics.contains("nimbus_doc_bounds_total{bound=\"slow_queue_bytes\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_bounds_follow_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.awareness_max_ids = 2;
    cfg.doc.awareness_max_state_bytes = 64;
    let stats = cfg.doc.stats.clone();
    let server = TestServer::start(cfg).await;
    // A state that is not JSON: 1007.
    let mut bad = open(&server, "aw", false).await;
    send(&mut bad, awareness([(1, Some("{oops"))])).await;
    let (code, reason, _) = until_close(&mut bad).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("not JSON"), "{reason}");
    assert_eq!(stats.awareness_invalid_json.load(Ordering::Relaxed), 1);
    // Two ids per connection, 64 bytes per state: the rest is dropped and counted, and past
    // 100 dropped entries the connection is closed with 1008.
    let mut greedy = open(&server, "aw", false).await;
    let long: &'static str = Box::leak(format!("\"{}\"", "l".repeat(100)).into_boxed_str());
    send(&mut greedy, awareness([(10, Some("{}")), (11, Some(long))])).await;
    send(&mut greedy, awareness((20..140).map(|id| (id, Some("{}"))))).await;
    let (code, reason, _) = until_close(&mut greedy).await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("awareness limits exceeded"), "{reason}");
    assert_eq!(stats.awareness_state_too_big.load(Ordering::Relaxed), 1);
    // 11 was refused, so 10 and one more were taken: 119 of the 120 dropped.
    assert_eq!(stats.awareness_too_many_ids.load(Ordering::Relaxed), 119);
    assert_eq!(stats.awareness_abuse_closes.load(Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_written_under_a_text_root_does_not_change_the_api_view_of_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut ws = open(&server, "mixed", false).await;
    let honest = yrs::Doc::with_client_id(1);
    let t = honest.get_or_insert_text("t");
    t.insert(&mut honest.transact_mut(), 0, "hello");
    let u = honest
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    send(&mut ws, Message::Update(u.clone().into())).await;
    // Another client writes a map entry under "t".
    let hostile = yrs::Doc::with_client_id(2);
    hostile
        .transact_mut()
        .apply_update(Update::decode_v1(&u).unwrap())
        .unwrap();
    let sv = hostile.transact().state_vector();
    let m = hostile.get_or_insert_map("t");
    m.insert(&mut hostile.transact_mut(), "k", "v");
    let u = hostile.transact().encode_state_as_update_v1(&sv);
    send(&mut ws, Message::Update(u.into())).await;
    // Both applied (the client's second SyncStep1 is answered after them).
    send(
        &mut ws,
        Message::SyncStep1(
            yrs::updates::encoder::Encode::encode_v1(&yrs::StateVector::default()).into(),
        ),
    )
    .await;
    let mut step2s = 0;
    while step2s == 0 {
        let Some(Ok(Ws::Binary(b))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else {
            continue;
        };
        step2s += usize::from(b.starts_with(&[0, 1]));
    }
    let (status, body) = server.http_get("/api/docs/mixed").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json, serde_json::json!({"t": "hello"}));
    drop(ws);
    server.stop().await;
}
