//! Hostile clients against the bounds of a room, over real loopback WebSockets; each test
//! asserts a bound in bytes or counts from the room's own accounting, never a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nimbus_doc::yrs::updates::encoder::Encode;
use nimbus_doc::yrs::{Doc, ReadTxn, StateVector, Text, Transact};
use nimbus_doc::{
    AwarenessLimits, NoHooks, RateLimit, Room, RoomOptions, ServeOptions, ServeStats, ServerOptions,
};
use nimbus_proto::doc::{decode_frame, AwarenessEntry, AwarenessUpdate, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client with a tiny receive buffer (so the kernel absorbs little of what a
/// server sends to a client that does not read).
async fn small_window_client(addr: &Addr, id: &str) -> Ws {
    let Addr::WebSocket(a) = addr else {
        panic!("a WebSocket server")
    };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(*a).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{a}/{id}"), stream)
        .await
        .unwrap();
    ws
}

/// A server whose clients may send 10 updates/s with a burst of `burst`, closed after 2 s
/// over the rate; and its counters.
async fn update_rated_server(burst: u32) -> (TestServer, Arc<ServeStats>) {
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            update_rate: RateLimit {
                per_second: 10,
                burst,
            },
            rate_abuse_after: Duration::from_secs(2),
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    (s, stats)
}

async fn ws_server(serve: ServeOptions, room: RoomOptions) -> TestServer {
    serve_with(
        Addr::new(Kind::WebSocket),
        move |id: &str| Room::with_options(id, Arc::new(NoHooks), room.clone()),
        ServerOptions {
            serve,
            ..ServerOptions::default()
        },
    )
    .await
}

/// `n` updates of `size` bytes of text each, as y-sync Update frames.
fn big_updates(n: usize, size: usize) -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(42);
    let t = doc.get_or_insert_text("t");
    let chunk = "x".repeat(size);
    (0..n)
        .map(|_| {
            let sv = doc.transact().state_vector();
            t.insert(&mut doc.transact_mut(), 0, &chunk);
            let u = doc.transact().encode_state_as_update_v1(&sv);
            Message::Update(u.into()).encode().to_vec()
        })
        .collect()
}

/// The largest value `f` returns while the returned flag is not set (sampled every ms).
fn sample_peak(f: impl Fn() -> usize + Send + 'static) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let (peak, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (p, s) = (peak.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(f(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (peak, stop)
}

fn awareness_frame(entries: impl IntoIterator<Item = (u64, u64, Option<String>)>) -> Vec<u8> {
    let update = AwarenessUpdate {
        entries: entries
            .into_iter()
            .map(|(client_id, clock, state)| AwarenessEntry {
                client_id,
                clock,
                state,
            })
            .collect(),
    };
    Message::Awareness(update.encode()).encode().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_at_its_byte_budget_and_its_queue_released() {
    const BUDGET: usize = 1 << 20;
    const FRAME: usize = 256 << 10;
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            queue_bytes: BUDGET,
            // The byte budget must cut it, not the send timeout.
            send_timeout: Duration::from_secs(60),
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    let deaf = small_window_client(&s.addr, "flood").await;
    let room = s.guard.manager().get_room("/flood").await.unwrap();
    eventually("the deaf client joined", || room.client_count() == 1).await;
    let r = room.clone();
    let (peak, stop) = sample_peak(move || r.queued_bytes());
    // 24 MiB of updates: far more than the kernel absorbs for a non-reader.
    let mut writer = Raw::open(&s.addr, "flood").await;
    for frame in big_updates(96, FRAME) {
        writer.send(&frame).await;
    }
    eventually("the deaf client is cut", || room.client_count() == 1).await;
    eventually("its queue is released", || room.queued_bytes() == 0).await;
    stop.store(true, Ordering::Relaxed);
    let peak = peak.load(Ordering::Relaxed);
    // One frame is always accepted into an empty queue; beyond that, the budget.
    assert!(
        peak <= BUDGET + FRAME + 64,
        "queued {peak} bytes for one client, budget {BUDGET}"
    );
    assert_eq!(stats.slow_queue_bytes.load(Ordering::Relaxed), 1);
    drop(deaf);
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleared_awareness_states_do_not_grow_the_table() {
    let s = ws_server(ServeOptions::default(), RoomOptions::default()).await;
    let mut c = Raw::open(&s.addr, "nulls").await;
    let room = s.guard.manager().get_room("/nulls").await.unwrap();
    assert!(matches!(c.recv().await, Got::Frame(_)));
    // 200,000 removals of clients the room never held, 10,000 a frame.
    for batch in 0..20u64 {
        let ids = batch * 10_000..(batch + 1) * 10_000;
        c.send(&awareness_frame(ids.map(|id| (id, 1, None)))).await;
    }
    // Its own client id set and cleared 100 times.
    for clock in 0..200u64 {
        let state = (clock % 2 == 0).then(|| r#"{"user":{"name":"a"}}"#.to_owned());
        c.send(&awareness_frame([(1_000_000, clock + 1, state)]))
            .await;
    }
    // The same connection is still served (a query is answered).
    c.send(&[3]).await;
    loop {
        match c.recv().await {
            Got::Frame(f) if f[0] == 1 => {
                let msgs = decode_frame(&bytes::Bytes::from(f.clone())).unwrap();
                let Message::Awareness(p) = &msgs[msgs.len() - 1] else {
                    continue;
                };
                if AwarenessUpdate::decode(p).unwrap().entries.is_empty() {
                    break;
                }
            }
            Got::Frame(_) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    let (states, bytes, tombstones) = room.awareness_usage();
    assert_eq!((states, bytes), (0, 0));
    assert!(tombstones <= 1, "{tombstones} tombstones kept");
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_announcing_too_many_client_ids_is_capped_then_closed_with_1008() {
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    let mut c = Raw::open(&s.addr, "ids").await;
    let room = s.guard.manager().get_room("/ids").await.unwrap();
    // 150 ids: 8 are taken, 142 dropped, which is over the 100 allowed.
    for batch in 0..3u64 {
        let ids = batch * 50..(batch + 1) * 50;
        c.send(&awareness_frame(ids.map(|id| (id, 1, Some("{}".into())))))
            .await;
    }
    assert_eq!(
        c.until_close().await,
        Got::Close(
            1008,
            "awareness limits exceeded: 142 entries dropped".into()
        )
    );
    assert_eq!(stats.awareness_abuse_closes.load(Ordering::Relaxed), 1);
    // Its states went with it; at most 8 were ever held.
    assert!(stats.awareness_too_many_ids.load(Ordering::Relaxed) >= 101);
    eventually("its states are removed", || room.awareness_usage().0 == 0).await;
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_caps_states_and_bytes_without_closing_anyone() {
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions {
            awareness: AwarenessLimits {
                max_states: 20,
                max_bytes: 24 * 1024,
                ..AwarenessLimits::default()
            },
            ..RoomOptions::default()
        },
    )
    .await;
    let room = s.guard.manager().get_room("/full").await.unwrap();
    let mut clients = Vec::new();
    let state = format!("\"{}\"", "s".repeat(1000));
    for n in 0..4u64 {
        let mut c = Raw::open(&s.addr, "full").await;
        let ids = n * 8..(n + 1) * 8;
        c.send(&awareness_frame(ids.map(|id| (id, 1, Some(state.clone())))))
            .await;
        clients.push(c);
    }
    eventually("every frame was handled", || {
        stats.awareness_room_full.load(Ordering::Relaxed) == 12
    })
    .await;
    let (states, bytes, _) = room.awareness_usage();
    assert_eq!(states, 20);
    assert_eq!(bytes, 20 * 1002);
    assert_eq!(room.client_count(), 4);
    // A larger state does not fit in the room's bytes (24 KiB) either.
    let fat = format!("\"{}\"", "f".repeat(6000));
    clients[0].send(&awareness_frame([(0, 2, Some(fat))])).await;
    eventually("refused", || {
        stats.awareness_room_full.load(Ordering::Relaxed) == 13
    })
    .await;
    assert_eq!(room.awareness_usage().1, 20 * 1002);
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awareness_state_that_is_not_json_closes_with_1007_and_is_never_relayed() {
    let s = ws_server(ServeOptions::default(), RoomOptions::default()).await;
    let room = s.guard.manager().get_room("/json").await.unwrap();
    let mut watcher = Raw::open(&s.addr, "json").await;
    assert!(matches!(watcher.recv().await, Got::Frame(_)));
    let mut bad = Raw::open(&s.addr, "json").await;
    let good = r#"{"user":{"name":"b"}}"#.to_owned();
    bad.send(&awareness_frame([
        (5, 1, Some(good)),
        (6, 1, Some("<script>".into())),
    ]))
    .await;
    match bad.until_close().await {
        Got::Close(code, reason) => {
            assert_eq!(code, 1007);
            assert!(
                reason.starts_with("invalid awareness state: client 6"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing of that update was applied or relayed: the watcher's next frame is its own.
    assert_eq!(room.awareness_usage().0, 0);
    let mine = awareness_frame([(9, 1, Some("{}".into()))]);
    watcher.send(&mine).await;
    assert_eq!(watcher.recv().await, Got::Frame(mine));
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_gets_the_awareness_table_in_bounded_chunks() {
    const CHUNK: usize = 16 << 10;
    let s = ws_server(
        ServeOptions {
            awareness_chunk_bytes: CHUNK,
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    let room = s.guard.manager().get_room("/chunks").await.unwrap();
    let state = format!("\"{}\"", "s".repeat(3000));
    let mut holders = Vec::new();
    for n in 0..5u64 {
        let mut c = Raw::open(&s.addr, "chunks").await;
        let ids = n * 8..(n + 1) * 8;
        c.send(&awareness_frame(ids.map(|id| (id, 1, Some(state.clone())))))
            .await;
        holders.push(c);
    }
    eventually("40 states", || room.awareness_usage().0 == 40).await;
    let mut joiner = Raw::open(&s.addr, "chunks").await;
    assert!(matches!(joiner.recv().await, Got::Frame(f) if f[0] == 0));
    let mut seen = 0;
    let mut frames = 0;
    while seen < 40 {
        let Got::Frame(f) = joiner.recv().await else {
            panic!("closed")
        };
        assert!(
            f.len() <= CHUNK + 8,
            "an awareness frame of {} bytes",
            f.len()
        );
        let [Message::Awareness(p)] = &decode_frame(&bytes::Bytes::from(f.clone())).unwrap()[..]
        else {
            panic!("not awareness")
        };
        seen += AwarenessUpdate::decode(p).unwrap().entries.len();
        frames += 1;
    }
    assert_eq!(seen, 40);
    assert!(frames >= 8, "{frames} frames");
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_flood_over_the_rate_is_closed_with_1008_and_a_paced_client_is_not() {
    let (s, stats) = update_rated_server(20).await;
    let room = s.guard.manager().get_room("/rate").await.unwrap();
    // Within the burst: applied, nobody is closed.
    let mut calm = Raw::open(&s.addr, "rate").await;
    for frame in big_updates(15, 10) {
        calm.send(&frame).await;
    }
    // 500 updates in one frame: 480 over the burst, 48 s of debt at 10/s.
    let mut flood = Raw::open(&s.addr, "rate").await;
    let doc = Doc::with_client_id(7);
    let t = doc.get_or_insert_text("t");
    let mut frame = Vec::new();
    for _ in 0..500 {
        let sv = doc.transact().state_vector();
        t.insert(&mut doc.transact_mut(), 0, "f");
        let u = doc.transact().encode_state_as_update_v1(&sv);
        frame.extend_from_slice(&Message::Update(u.into()).encode());
    }
    flood.send(&frame).await;
    assert_eq!(
        flood.until_close().await,
        Got::Close(1008, "update rate limit exceeded".into())
    );
    assert_eq!(stats.rate_closes.load(Ordering::Relaxed), 1);
    assert_eq!(room.client_count(), 1);
    let sv = StateVector::default().encode_v1();
    calm.send(&Message::SyncStep1(sv.into()).encode()).await;
    loop {
        match calm.recv().await {
            Got::Frame(f) if f[..2] == [0, 1] => break,
            Got::Frame(_) => {}
            other => panic!("the calm client was closed: {other:?}"),
        }
    }
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_step2_of_a_big_document_gets_the_long_allowance() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as M;
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            // Any ordinary frame that cannot go out in 300 ms cuts the client...
            send_timeout: Duration::from_millis(300),
            // ...but the whole document may take this long.
            sync_send_timeout: Duration::from_secs(30),
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    let room = s.guard.manager().get_room("/big").await.unwrap();
    let t = room.doc().get_or_insert_text("t");
    t.insert(&mut room.doc().transact_mut(), 0, &"d".repeat(8 << 20));
    // The insert is forwarded to the room's clients by its task: wait for that, or on a
    // busy machine it may reach the client below as an ordinary 8 MiB update, whose 300 ms
    // send timeout a client that does not read fails (the test would then be about that).
    room.flush().await;
    let mut slow = small_window_client(&s.addr, "big").await;
    let sv = StateVector::default().encode_v1();
    slow.send(M::Binary(Message::SyncStep1(sv.into()).encode()))
        .await
        .unwrap();
    // Not reading for longer than the ordinary send timeout, while 8 MiB wait to go out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let step2 = within(async {
        loop {
            match slow.next().await {
                Some(Ok(M::Binary(b))) if b.starts_with(&[0, 1]) => return b.len(),
                Some(Ok(M::Close(c))) => panic!("closed: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(step2 > 8 << 20);
    assert_eq!(stats.slow_send_timeout.load(Ordering::Relaxed), 0);
    assert_eq!(room.client_count(), 1);
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_awareness_queries_count_against_the_awareness_rate() {
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            awareness_chunk_bytes: 4 << 10,
            awareness_rate: RateLimit {
                per_second: 10,
                burst: 100,
            },
            rate_abuse_after: Duration::from_secs(2),
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    let room = s.guard.manager().get_room("/query").await.unwrap();
    let state = format!("\"{}\"", "q".repeat(3000));
    let mut holder = Raw::open(&s.addr, "query").await;
    holder
        .send(&awareness_frame(
            (0..8).map(|id| (id, 1, Some(state.clone()))),
        ))
        .await;
    eventually("8 states", || room.awareness_usage().0 == 8).await;
    // Each query is answered with 8 messages of one state; 100 queries in one frame ask for
    // 800 messages (2.4 MB) with one 100-byte frame.
    let mut asker = Raw::open(&s.addr, "query").await;
    asker.send(&[3; 100]).await;
    assert_eq!(
        asker.until_close().await,
        Got::Close(1008, "awareness rate limit exceeded".into())
    );
    assert_eq!(stats.rate_closes.load(Ordering::Relaxed), 1);
    s.guard.shutdown().await;
}

#[tokio::test]
async fn a_frame_of_more_messages_than_the_bound_is_closed_with_1009_before_it_is_answered() {
    let stats = Arc::new(ServeStats::default());
    let s = ws_server(
        ServeOptions {
            stats: stats.clone(),
            ..ServeOptions::default()
        },
        RoomOptions::default(),
    )
    .await;
    // 1,024 one-byte QueryAwareness messages are one frame's worth; one more is refused
    // before anything is decoded into memory or answered (a 16 MiB frame of them would
    // otherwise decode into ~800 MB).
    let mut ok = Raw::open(&s.addr, "many").await;
    ok.send(&[3; nimbus_proto::doc::MAX_MESSAGES_PER_FRAME])
        .await;
    let mut over = Raw::open(&s.addr, "many").await;
    over.send(&[3; nimbus_proto::doc::MAX_MESSAGES_PER_FRAME + 1])
        .await;
    match over.until_close().await {
        Got::Close(1009, reason) => assert!(reason.contains("more than 1024"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The bounded frame was taken: that connection still answers.
    ok.send(&[3]).await;
    s.guard.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sync_step1_count_against_the_update_rate_by_the_size_of_their_answer() {
    let (s, stats) = update_rated_server(100).await;
    let room = s.guard.manager().get_room("/resync").await.unwrap();
    let t = room.doc().get_or_insert_text("t");
    t.insert(&mut room.doc().transact_mut(), 0, &"r".repeat(1 << 20));
    // Each re-sync answers the whole 1 MiB document: 17 tokens. The first SyncStep1 of the
    // connection is free; the next ones of one frame exhaust the burst of 100.
    let mut c = Raw::open(&s.addr, "resync").await;
    let step1 = Message::SyncStep1(StateVector::default().encode_v1().into()).encode();
    let frame: Vec<u8> = std::iter::repeat_n(step1.to_vec(), 12).flatten().collect();
    c.send(&frame).await;
    assert_eq!(
        c.until_close().await,
        Got::Close(1008, "update rate limit exceeded".into())
    );
    assert!(stats.updates_throttled.load(Ordering::Relaxed) >= 1);
    s.guard.shutdown().await;
}
