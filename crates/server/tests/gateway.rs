//! The gateway at `/gateway` over real loopback sockets: every close code the server
//! sends, intents, sharding, resume replay, op 9, op 7 on shutdown, and 1,000 forced
//! disconnects during a stream of cloud sets without loss, duplicates or reordering.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Client as CloudClient, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::cloud::CloudValue;
use nimbus_proto::gateway::{shard_of, Payload};
use nimbus_server::hub::Hub;
use nimbus_server::store::{MemoryBackend, Store};
use nimbus_server::{Config, GatewayConfig, GatewayToken, Server};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "test-token";

struct Srv {
    addr: SocketAddr,
    hub: Arc<Hub>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn gw_config() -> GatewayConfig {
    GatewayConfig {
        tokens: vec![
            GatewayToken::parse(TOKEN).unwrap(),
            GatewayToken::parse("cloud-only=cloud").unwrap(),
        ],
        heartbeat_interval: Duration::from_secs(30),
        identify_window: Duration::ZERO,
        drain_grace: Duration::from_millis(200),
        ..GatewayConfig::default()
    }
}

impl Srv {
    async fn start(gateway: GatewayConfig) -> Srv {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            gateway,
            ..Config::default()
        };
        config.cloud.close_timeout = Duration::from_millis(200);
        // Cloud history listens to the bus too: off, so the gateway's interest alone
        // decides whether rooms build events.
        config.history.max_entries = 0;
        let store = Store::spawn(MemoryBackend::default(), Duration::from_millis(10));
        let server = Server::bind_with_store(config, store).await.unwrap();
        let addr = server.local_addr();
        let hub = server.hub();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Srv {
            addr,
            hub,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/gateway{query}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
    }

    /// Set a variable and wait until the room has applied it: `set_variable` only queues
    /// the command; a snapshot request behind it returns once the room got that far.
    async fn set(&self, room: &str, name: &str, value: i64) {
        self.hub
            .set_variable(room, name, CloudValue::Number(value.to_string()))
            .await
            .unwrap();
        self.hub.variables(room).await.unwrap();
    }
}

struct Gw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed(u16),
    Dropped,
}

impl Gw {
    async fn connect(url: &str) -> Gw {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        Gw { ws }
    }

    /// Connect and read Hello.
    async fn hello(srv: &Srv) -> (Gw, u64) {
        let mut g = Gw::connect(&srv.url("?v=10&encoding=json")).await;
        let hello = g.recv().await;
        assert_eq!(hello.op, 10);
        (g, hello.d["heartbeat_interval"].as_u64().unwrap())
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn recv(&mut self) -> Payload {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("payload in time")
                .expect("open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("closed while waiting for a payload: {c:?}"),
                _ => {}
            }
        }
    }

    async fn ended(&mut self) -> End {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("end in time")
            {
                Some(Ok(Message::Close(frame))) => {
                    let _ = self.ws.flush().await;
                    return End::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return End::Dropped,
            }
        }
    }

    async fn identify(&mut self, token: &str, intents: u64, shard: Option<[u64; 2]>) {
        let mut d = json!({
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
        });
        if let Some(s) = shard {
            d["shard"] = json!(s);
        }
        self.send(json!({"op": 2, "d": d})).await;
    }

    /// Identify and return READY's `d`.
    async fn ready(srv: &Srv, intents: u64, shard: Option<[u64; 2]>) -> (Gw, Value) {
        let (mut g, _) = Gw::hello(srv).await;
        g.identify(&format!("Bot {TOKEN}"), intents, shard).await;
        let ready = g.recv().await;
        assert_eq!(
            (ready.op, ready.s, ready.t.as_deref()),
            (0, Some(1), Some("READY"))
        );
        (g, ready.d)
    }

    async fn resume(&mut self, session: &str, seq: u64) {
        self.send(json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": seq}}))
            .await;
    }

    /// Next dispatch.
    async fn dispatch(&mut self) -> Payload {
        loop {
            let p = self.recv().await;
            if p.op == 0 {
                return p;
            }
        }
    }
}

async fn closes_with(srv: &Srv, payloads: &[Value], code: u16) {
    let (mut g, _) = Gw::hello(srv).await;
    for p in payloads {
        g.send(p.clone()).await;
    }
    assert_eq!(g.ended().await, End::Closed(code), "after {payloads:?}");
}

#[tokio::test]
async fn hello_identify_ready_and_cloud_dispatches() {
    let srv = Srv::start(gw_config()).await;
    assert!(
        !srv.hub.events.is_active(),
        "no session: rooms build no events"
    );
    let (mut g, interval) = Gw::hello(&srv).await;
    assert_eq!(interval, 30_000);
    // op 1 is answered before Identify too.
    g.send(json!({"op": 1, "d": null})).await;
    assert_eq!(g.recv().await.op, 11);
    g.identify(&format!("Bot {TOKEN}"), 1, Some([0, 1])).await;
    let ready = g.recv().await;
    assert_eq!(ready.t.as_deref(), Some("READY"));
    assert_eq!(ready.s, Some(1));
    assert_eq!(ready.d["v"], 10);
    assert_eq!(ready.d["shard"], json!([0, 1]));
    assert!(ready.d["session_id"].as_str().unwrap().len() >= 16);
    assert_eq!(
        ready.d["resume_gateway_url"].as_str().unwrap(),
        format!("ws://{}/gateway", srv.addr)
    );
    srv.set("42", "☁ score", 7).await;
    srv.set("42", "☁ score", 8).await;
    let a = g.dispatch().await;
    assert_eq!((a.s, a.t.as_deref()), (Some(2), Some("CLOUD_CREATE")));
    assert_eq!(a.d["room"], "42");
    assert_eq!(a.d["name"], "☁ score");
    assert_eq!(a.d["value"], 7);
    let b = g.dispatch().await;
    assert_eq!((b.s, b.t.as_deref()), (Some(3), Some("CLOUD_SET")));
    assert_eq!(b.d["value"], 8);
    // A cloud client's set carries its username.
    let mut c = CloudClient::join(&format!("ws://{}/", srv.addr), "42", "alice").await;
    c.set("score", "9").await;
    let e = g.dispatch().await;
    assert_eq!((e.s, e.t.as_deref()), (Some(4), Some("CLOUD_SET")));
    assert_eq!(e.d["user"], "alice");
    assert_eq!(e.d["value"], 9);
    assert!(srv.hub.events.is_active());
    // Closing with 1000 ends the only session: the bus goes quiet again.
    g.ws.close(Some(CloseFrame {
        code: WsCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    let _ = g.ended().await;
    tokio::time::timeout(WAIT, async {
        while srv.hub.events.is_active() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn every_server_close_code() {
    let srv = Srv::start(gw_config()).await;
    let id = |token: &str, intents: u64, shard: Value| json!({"op": 2, "d": {"token": token, "intents": intents, "properties": {}, "shard": shard}});
    let good = id(TOKEN, 1, json!([0, 1]));
    closes_with(&srv, &[json!({"op": 5, "d": null})], 4001).await;
    closes_with(&srv, &[json!({"op": 42})], 4001).await;
    closes_with(&srv, &[json!({"op": 11})], 4001).await;
    closes_with(&srv, &[json!("not a payload")], 4002).await;
    let (mut g, _) = Gw::hello(&srv).await;
    g.ws.send(Message::text("{nope")).await.unwrap();
    assert_eq!(g.ended().await, End::Closed(4002));
    let big = json!({"op": 1, "d": "x".repeat(5000)});
    assert!(big.to_string().len() > 4096);
    closes_with(&srv, &[big], 4002).await;
    closes_with(&srv, &[json!({"op": 3, "d": {}})], 4003).await;
    closes_with(&srv, &[id("wrong", 1, json!([0, 1]))], 4004).await;
    closes_with(&srv, &[good.clone(), good.clone()], 4005).await;
    closes_with(
        &srv,
        &[json!({"op": 6, "d": {"token": TOKEN, "session_id": "nope"}})],
        4002,
    )
    .await;
    let hb: Vec<Value> = (0..121).map(|_| json!({"op": 1, "d": null})).collect();
    closes_with(&srv, &hb, 4008).await;
    closes_with(&srv, &[id(TOKEN, 1, json!([2, 2]))], 4010).await;
    closes_with(&srv, &[id(TOKEN, 1, json!([0, 0]))], 4010).await;
    closes_with(&srv, &[id(TOKEN, 8, json!([0, 1]))], 4013).await;
    closes_with(&srv, &[id("cloud-only", 4, json!([0, 1]))], 4014).await;
    // Binary frames are not JSON text.
    let (mut g, _) = Gw::hello(&srv).await;
    g.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(g.ended().await, End::Closed(4002));
    // Unsupported encodings and compressions are refused at the upgrade (HTTP 400).
    for q in [
        "?v=10&encoding=etf",
        "?v=10&encoding=json&compress=zstd-stream",
    ] {
        assert!(
            tokio_tungstenite::connect_async(srv.url(q)).await.is_err(),
            "{q}"
        );
    }
    // 4012: only v=10.
    let mut g = Gw::connect(&srv.url("?v=9&encoding=json")).await;
    assert_eq!(g.ended().await, End::Closed(4012));
    srv.stop().await;
}

#[tokio::test]
async fn no_identify_in_time_closes_4009() {
    let mut cfg = gw_config();
    cfg.identify_timeout = Duration::from_millis(200);
    let srv = Srv::start(cfg).await;
    closes_with(&srv, &[], 4009).await;
    // Heartbeats do not count as identifying.
    closes_with(&srv, &[json!({"op": 1, "d": null})], 4009).await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_seq_closes_4007_and_the_session_is_gone() {
    let srv = Srv::start(gw_config()).await;
    let (g, ready) = Gw::ready(&srv, 1, None).await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    drop(g);
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(&session, 99).await;
    assert_eq!(g.ended().await, End::Closed(4007));
    srv.stop().await;
}

#[tokio::test]
async fn missing_heartbeats_get_op1_then_4000_and_stay_resumable() {
    let mut cfg = gw_config();
    cfg.heartbeat_interval = Duration::from_millis(200);
    let srv = Srv::start(cfg).await;
    let (mut g, ready) = Gw::ready(&srv, 1, None).await;
    // No heartbeat: the server asks for one (op 1), then gives up with 4000.
    let p = g.recv().await;
    assert_eq!(p.op, 1, "server requests a heartbeat");
    assert_eq!(g.ended().await, End::Closed(4000));
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(ready["session_id"].as_str().unwrap(), 1).await;
    let r = g.dispatch().await;
    assert_eq!((r.t.as_deref(), r.s), (Some("RESUMED"), Some(2)));
    srv.stop().await;
}

#[tokio::test]
async fn intents_select_event_families() {
    let srv = Srv::start(gw_config()).await;
    let (mut cloud, _) = Gw::ready(&srv, 1, None).await;
    let (mut rooms, _) = Gw::ready(&srv, 2, None).await;
    let mut c = CloudClient::join(&format!("ws://{}/", srv.addr), "7", "bob").await;
    c.set("x", "1").await;
    c.ws.close(None).await.unwrap();
    let j = rooms.dispatch().await;
    assert_eq!((j.s, j.t.as_deref()), (Some(2), Some("ROOM_JOIN")));
    assert_eq!(j.d["user"], "bob");
    assert_eq!(j.d["room"], "7");
    let l = rooms.dispatch().await;
    assert_eq!(
        (l.s, l.t.as_deref()),
        (Some(3), Some("ROOM_LEAVE")),
        "no cloud event in between"
    );
    let x = cloud.dispatch().await;
    assert_eq!((x.s, x.t.as_deref()), (Some(2), Some("CLOUD_CREATE")));
    // The next cloud event is the next one produced: no join/leave was delivered.
    srv.set("7", "☁ y", 2).await;
    let y = cloud.dispatch().await;
    assert_eq!((y.s, y.d["name"].as_str()), (Some(3), Some("☁ y")));
    // A DOC_UPDATE published on the bus reaches doc sessions only.
    let (mut doc, _) = Gw::ready(&srv, 4, None).await;
    srv.hub.events.publish(&nimbus_server::events::RoomEvent {
        room: Arc::from("7"),
        user: None,
        body: nimbus_server::events::EventBody::DocUpdate {
            update: bytes::Bytes::from_static(&[1, 2, 3]),
        },
        gid: None,
    });
    let d = doc.dispatch().await;
    assert_eq!((d.s, d.t.as_deref()), (Some(2), Some("DOC_UPDATE")));
    assert_eq!(d.d, json!({"room": "7", "update": "AQID", "bytes": 3}));
    srv.set("7", "☁ z", 3).await;
    let z = cloud.dispatch().await;
    assert_eq!((z.s, z.d["name"].as_str()), (Some(4), Some("☁ z")));
    srv.stop().await;
}

#[tokio::test]
async fn shards_receive_exactly_their_rooms() {
    let srv = Srv::start(gw_config()).await;
    let (mut s0, r0) = Gw::ready(&srv, 1, Some([0, 2])).await;
    let (mut s1, r1) = Gw::ready(&srv, 1, Some([1, 2])).await;
    assert_eq!(r0["shard"], json!([0, 2]));
    assert_eq!(r1["shard"], json!([1, 2]));
    let rooms: Vec<String> = (0..20)
        .map(|i| format!("room-{i}"))
        .chain(["175928847299117063".to_owned()])
        .collect();
    let mut expected = [Vec::new(), Vec::new()];
    for r in &rooms {
        srv.set(r, "☁ v", 1).await;
        expected[usize::try_from(shard_of(r, 2)).unwrap()].push(r.clone());
    }
    assert!(!expected[0].is_empty() && !expected[1].is_empty());
    for (g, want) in [(&mut s0, &expected[0]), (&mut s1, &expected[1])] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(g.dispatch().await.d["room"].as_str().unwrap().to_owned());
        }
        assert_eq!(&got, want);
    }
    // Nothing else was queued: the next event of each shard is the next of its rooms.
    srv.set(&expected[1][0], "☁ last", 1).await;
    srv.set(&expected[0][0], "☁ last", 1).await;
    assert_eq!(
        s0.dispatch().await.d["room"].as_str(),
        Some(&*expected[0][0])
    );
    assert_eq!(
        s1.dispatch().await.d["room"].as_str(),
        Some(&*expected[1][0])
    );
    srv.stop().await;
}

#[tokio::test]
async fn resume_replays_missed_events_then_resumed() {
    let srv = Srv::start(gw_config()).await;
    let (mut g, ready) = Gw::ready(&srv, 1, None).await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        srv.set("r", "☁ v", i).await;
    }
    let mut last = 1;
    for _ in 0..2 {
        last = g.dispatch().await.s.unwrap();
    }
    drop(g); // a bare TCP drop
    for i in 5..10 {
        srv.set("r", "☁ v", i).await;
    }
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(&session, last).await;
    let mut values = Vec::new();
    loop {
        let p = g.dispatch().await;
        assert_eq!(p.s, Some(last + 1), "consecutive sequence");
        last += 1;
        if p.t.as_deref() == Some("RESUMED") {
            break;
        }
        values.push(p.d["value"].as_i64().unwrap());
    }
    assert_eq!(values, (2..10).collect::<Vec<_>>());
    // Live events continue after RESUMED.
    srv.set("r", "☁ v", 10).await;
    let p = g.dispatch().await;
    assert_eq!((p.s, p.d["value"].as_i64()), (Some(last + 1), Some(10)));
    srv.stop().await;
}

#[tokio::test]
async fn invalid_session_when_the_gap_is_gone() {
    let mut cfg = gw_config();
    cfg.replay_buffer = 4;
    let srv = Srv::start(cfg).await;
    // Unknown session.
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume("no-such-session", 1).await;
    let p = g.recv().await;
    assert_eq!((p.op, p.d.clone()), (9, json!(false)));
    // seq older than the buffer.
    let (g, ready) = Gw::ready(&srv, 1, None).await;
    drop(g);
    for i in 0..10 {
        srv.set("r", "☁ v", i).await;
    }
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(ready["session_id"].as_str().unwrap(), 1).await;
    let p = g.recv().await;
    assert_eq!((p.op, p.d), (9, json!(false)));
    // A client close with 1000 invalidates the session at once.
    let (mut g, ready) = Gw::ready(&srv, 1, None).await;
    g.ws.close(Some(CloseFrame {
        code: WsCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let _ = g.ended().await;
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(ready["session_id"].as_str().unwrap(), 1).await;
    assert_eq!(g.recv().await.op, 9);
    srv.stop().await;
}

#[tokio::test]
async fn expired_sessions_are_invalid() {
    let mut cfg = gw_config();
    cfg.resume_window = Duration::ZERO;
    let srv = Srv::start(cfg).await;
    let (mut g, ready) = Gw::ready(&srv, 1, None).await;
    g.ws.close(Some(CloseFrame {
        code: WsCode::Library(4000),
        reason: "".into(),
    }))
    .await
    .unwrap();
    let _ = g.ended().await;
    let (mut g, _) = Gw::hello(&srv).await;
    g.resume(ready["session_id"].as_str().unwrap(), 1).await;
    let p = g.recv().await;
    assert_eq!((p.op, p.d), (9, json!(false)));
    srv.stop().await;
}

#[tokio::test]
async fn identify_concurrency_answers_op9() {
    let mut cfg = gw_config();
    cfg.identify_window = Duration::from_secs(3600);
    cfg.max_concurrency = 2;
    let srv = Srv::start(cfg).await;
    let _a = Gw::ready(&srv, 1, Some([0, 4])).await;
    let _b = Gw::ready(&srv, 1, Some([1, 4])).await;
    let (mut g, _) = Gw::hello(&srv).await;
    g.identify(TOKEN, 1, Some([2, 4])).await; // bucket 0 again
    let p = g.recv().await;
    assert_eq!((p.op, p.d), (9, json!(false)));
    // GET /gateway/bot reports the limits.
    let (status, body) = http_get(srv.addr, "/gateway/bot", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["url"], format!("ws://{}/gateway", srv.addr));
    assert_eq!(v["session_start_limit"]["max_concurrency"], 2);
    assert_eq!(v["session_start_limit"]["total"], 1000);
    assert_eq!(v["session_start_limit"]["remaining"], 998);
    let (status, _) = http_get(srv.addr, "/gateway/bot", Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = http_get(srv.addr, "/gateway", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("/gateway"));
    let (_, metrics) = http_get(srv.addr, "/metrics", None).await;
    assert!(metrics.contains("nimbus_gateway_sessions 2"), "{metrics}");
    assert!(
        metrics.contains("nimbus_gateway_invalid_sessions_total 1"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn each_bot_token_has_its_own_identify_budget() {
    let mut cfg = gw_config();
    cfg.identify_window = Duration::from_secs(3600);
    let srv = Srv::start(cfg).await;
    // The first bot spends its one bucket...
    let _a = Gw::ready(&srv, 1, None).await;
    let (mut again, _) = Gw::hello(&srv).await;
    again.identify(TOKEN, 1, None).await;
    let p = again.recv().await;
    assert_eq!((p.op, p.d), (9, json!(false)), "its own bucket is spent");
    // ...which leaves the other bot's budget whole.
    let (mut other, _) = Gw::hello(&srv).await;
    other.identify("cloud-only", 1, None).await;
    let p = other.recv().await;
    assert_eq!(p.t.as_deref(), Some("READY"), "{p:?}");
    let remaining = |token: &'static str| {
        let addr = srv.addr;
        async move {
            let (_, body) = http_get(addr, "/gateway/bot", Some(token)).await;
            let v: Value = serde_json::from_str(&body).unwrap();
            v["session_start_limit"]["remaining"].clone()
        }
    };
    assert_eq!(remaining(TOKEN).await, 999);
    assert_eq!(remaining("cloud-only").await, 999);
    srv.stop().await;
}

#[tokio::test]
async fn gateway_is_off_without_tokens() {
    let srv = Srv::start(GatewayConfig::default()).await;
    let (status, _) = http_get(srv.addr, "/gateway/bot", Some(TOKEN)).await;
    assert_eq!(status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_sends_op7_then_closes_4000() {
    let srv = Srv::start(gw_config()).await;
    let (mut g, _) = Gw::ready(&srv, 1, None).await;
    let stopper = tokio::spawn(srv.stop());
    let p = g.recv().await;
    assert_eq!(p.op, 7);
    // This client does not leave on its own: after the grace period, 4000.
    assert_eq!(g.ended().await, End::Closed(4000));
    stopper.await.unwrap();
}

/// 1,000 forced disconnects (bare TCP drops, resumable closes) while cloud sets stream
/// in: the CLOUD_* values received across all resumes are exactly the produced ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_forced_disconnects_lose_nothing() {
    let mut cfg = gw_config();
    cfg.replay_buffer = 1 << 16;
    let srv = Arc::new(Srv::start(cfg).await);
    let (mut g, ready) = Gw::ready(&srv, 1, None).await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (srv, received, done) = (srv.clone(), received.clone(), done.clone());
        tokio::spawn(async move {
            let mut produced: i64 = 0;
            while !done.load(Ordering::Relaxed) {
                // Stay at most 500 ahead of the consumer (the buffer holds far more).
                if produced - i64::try_from(received.load(Ordering::Relaxed)).unwrap() > 500 {
                    tokio::task::yield_now().await;
                    continue;
                }
                srv.set("stream", "☁ n", produced).await;
                produced += 1;
            }
            produced
        })
    };
    let mut values: Vec<i64> = Vec::new();
    let mut last_s = 1;
    let mut rng_state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next_rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for cycle in 0..1000u32 {
        let n = next_rand() % 8;
        take(&mut g, n, &mut values, &mut last_s).await;
        received.store(values.len() as u64, Ordering::Relaxed);
        if cycle % 2 == 0 {
            drop(g); // bare TCP drop
        } else {
            let _ =
                g.ws.close(Some(CloseFrame {
                    code: WsCode::Library(4000),
                    reason: "".into(),
                }))
                .await;
        }
        let (g2, _) = Gw::hello(&srv).await;
        g = g2;
        g.resume(&session, last_s).await;
    }
    done.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();
    while (values.len() as i64) < produced {
        take(&mut g, 1, &mut values, &mut last_s).await;
    }
    assert_eq!(values, (0..produced).collect::<Vec<_>>());
    assert!(produced > 1000, "events streamed during the disconnects");
    drop(g);
    if let Ok(srv) = Arc::try_unwrap(srv) {
        srv.stop().await;
    }
}

/// Read `n` dispatches, checking consecutive sequences; collect CLOUD_* values.
async fn take(g: &mut Gw, n: u64, values: &mut Vec<i64>, last_s: &mut u64) {
    for _ in 0..n {
        let p = g.dispatch().await;
        assert_eq!(p.s, Some(*last_s + 1), "no gap, no duplicate");
        *last_s += 1;
        if p.t.as_deref().is_some_and(|t| t.starts_with("CLOUD_")) {
            values.push(p.d["value"].as_i64().unwrap());
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let header = auth.map(|a| format!("Authorization: Bot {a}"));
    common::http_get(
        addr,
        path,
        header
            .as_slice()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    )
    .await
}

/// A document client of `room` on the test server, without reconnecting.
async fn doc_editor(srv: &Srv, room: &str) -> nimbus_doc::Client {
    nimbus_doc::connect(
        nimbus_doc::ClientWire::WebSocket {
            url: format!("ws://{}/doc", srv.addr),
        },
        room,
        None,
        nimbus_doc::ConnectOptions {
            reconnect: false,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn document_updates_are_dispatched_as_doc_update_with_the_yjs_bytes() {
    use base64::Engine;
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::{GetString, Text, Transact, Update};
    let srv = Srv::start(gw_config()).await;
    // Intent 4 only: document events, no cloud ones.
    let (mut g, _) = Gw::ready(&srv, 4, None).await;
    srv.set("42", "☁ ignored", 1).await;
    let editor = doc_editor(&srv, "notes").await;
    let text = editor.doc().get_or_insert_text("t");
    text.push(&mut editor.doc().transact_mut(), "hi");
    let d = g.dispatch().await;
    assert_eq!((d.s, d.t.as_deref()), (Some(2), Some("DOC_UPDATE")));
    assert_eq!(d.d["room"], "notes");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(d.d["update"].as_str().unwrap())
        .unwrap();
    assert_eq!(d.d["bytes"], bytes.len());
    // The dispatched bytes are the Yjs update itself: applying them rebuilds the edit.
    let replica = nimbus_doc::yrs::Doc::new();
    let t = replica.get_or_insert_text("t");
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(t.get_string(&replica.transact()), "hi");
    editor.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_document_update_larger_than_a_mebibyte_is_dispatched_whole() {
    use base64::Engine;
    use nimbus_doc::yrs::{Text, Transact};
    let srv = Srv::start(gw_config()).await;
    let (mut g, _) = Gw::ready(&srv, 4, None).await;
    let editor = doc_editor(&srv, "big").await;
    // One 1.5 MB insert: its DOC_UPDATE is ~2 MB of base64, over the 1 MiB floor of the
    // gateway's write buffer bound, so the bound must follow the document message limit.
    let text = editor.doc().get_or_insert_text("t");
    text.push(&mut editor.doc().transact_mut(), &"x".repeat(1_500_000));
    let d = g.dispatch().await;
    assert_eq!(d.t.as_deref(), Some("DOC_UPDATE"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(d.d["update"].as_str().unwrap())
        .unwrap();
    assert!(bytes.len() > 1_500_000, "{}", bytes.len());
    editor.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_session_detached_past_the_resume_window_is_dropped_without_another_identify() {
    let mut cfg = gw_config();
    cfg.resume_window = Duration::from_millis(200);
    let srv = Srv::start(cfg).await;
    let (mut g, _) = Gw::ready(&srv, 1, None).await;
    g.ws.close(Some(CloseFrame {
        code: WsCode::Library(4000),
        reason: "".into(),
    }))
    .await
    .unwrap();
    let _ = g.ended().await;
    // Its replay buffer goes with it on the prune timer (before: only when another session
    // started or was looked up).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = http_get(srv.addr, "/metrics", None).await;
        if metrics.contains("nimbus_gateway_sessions 0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}
