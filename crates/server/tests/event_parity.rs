//! Every room event's gateway dispatch is the same on a single node and through Redis, and is
//! what `docs/gateway.md` ("Events and intents") documents.
//!
//! One script of actions (a cloud client joins, creates, sets, renames, deletes; IPC creates
//! and deletes; a document client edits; the cloud client leaves) runs against a single
//! node and against two nodes sharing a real `redis-server` (clients on one node, IPC on the
//! other), with a gateway session (every intent) on each node. The `(t, d)` sequences are
//! compared exactly; only the connection id (a per-node counter) and the Yjs update (a
//! random client id per run) are normalised, after checking them.
//!
//! Needs `redis-server` (see `common/redis.rs`): without it the test skips unless
//! `NIMBUS_REQUIRE_REDIS=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::redis::redis_in_tempdir;
use common::{config, Client, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_ipc::ClientSession;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "7";
const DOC_ROOM: &str = "notes";

/// A node with a gateway (token `t`), IPC (secret `s`), renames and deletes allowed.
async fn node(dir: &Path, redis: Option<String>) -> TestServer {
    let mut cfg = config(dir);
    cfg.redis = redis;
    cfg.cloud.allow_rename = true;
    cfg.cloud.allow_delete = true;
    cfg.gateway = nimbus_server::GatewayConfig {
        tokens: vec![nimbus_server::GatewayToken::parse("t").unwrap()],
        identify_window: Duration::ZERO,
        drain_grace: Duration::from_millis(100),
        ..Default::default()
    };
    cfg.ipc = Some(nimbus_server::IpcConfig {
        host: "127.0.0.1".into(),
        port: 0,
        multicast_port: 0,
        secret: Some("s".into()),
    });
    TestServer::start(cfg).await
}

/// A gateway session with every intent (cloud, rooms, doc).
struct Gw {
    ws: common::Ws,
}

impl Gw {
    async fn ready(srv: &TestServer) -> Gw {
        let url = format!("ws://{}/gateway?v=10&encoding=json", srv.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut g = Gw { ws };
        assert_eq!(g.recv().await["op"], 10);
        let identify = json!({"op": 2, "d": {"token": "Bot t", "intents": 7,
            "properties": {"os": "linux", "browser": "test", "device": "test"}}});
        g.ws.send(Message::text(identify.to_string()))
            .await
            .unwrap();
        assert_eq!(g.recv().await["t"], "READY");
        g
    }

    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("payload in time")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Assert no dispatch arrives for `for_`.
    async fn assert_no_dispatch(&mut self, for_: Duration) {
        let deadline = tokio::time::Instant::now() + for_;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = msg {
                let p: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_ne!(p["op"], 0, "unexpected dispatch {p}");
            }
        }
    }

    /// The next dispatch as `(t, d)`.
    async fn dispatch(&mut self) -> (String, Value) {
        loop {
            let p = self.recv().await;
            if p["op"] == 0 {
                return (p["t"].as_str().unwrap().to_owned(), p["d"].clone());
            }
        }
    }
}

async fn doc_client(srv: &TestServer) -> nimbus_doc::Client {
    let wire = nimbus_doc::ClientWire::WebSocket {
        url: format!("ws://{}/doc", srv.addr),
    };
    tokio::time::timeout(
        WAIT,
        nimbus_doc::connect(wire, DOC_ROOM, None, nimbus_doc::ConnectOptions::default()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// The text `t` of the document a Yjs v1 update makes from nothing.
fn text_of_update(update: &[u8]) -> String {
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::{Doc, GetString, Transact, Update};
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    txn.apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
    text.get_string(&txn)
}

/// Run the script with the cloud and document clients on `clients`, IPC on `admin`; every
/// gateway in `gws` must see each step's dispatches. Returns each gateway's `(t, d)`s.
async fn run_script(
    clients: &TestServer,
    admin: &TestServer,
    gws: &mut [Gw],
) -> Vec<Vec<(String, Value)>> {
    let mut seen: Vec<Vec<(String, Value)>> = vec![Vec::new(); gws.len()];
    // One step = its action, then one dispatch on every gateway (so the order is the
    // script's, whatever the transport).
    async fn step(gws: &mut [Gw], seen: &mut [Vec<(String, Value)>]) {
        for (g, s) in gws.iter_mut().zip(seen.iter_mut()) {
            s.push(g.dispatch().await);
        }
    }
    let (ipc_port, multicast) = admin.ipc.unwrap();
    let mut ipc = ClientSession::connect("127.0.0.1", Some(ipc_port), multicast, Some("s".into()))
        .await
        .unwrap();

    let mut alice = Client::join(&clients.url(), ROOM, "alice").await;
    step(gws, &mut seen).await;
    alice.set("x", "1.50").await;
    step(gws, &mut seen).await;
    alice.set("x", r#""22""#).await;
    step(gws, &mut seen).await;
    alice
        .send(r#"{"method":"rename","name":"☁ x","new_name":"☁ y"}"#)
        .await;
    step(gws, &mut seen).await;
    let set = ipc
        .request(
            "cloud.set",
            json!({"room": ROOM, "name": "☁ z", "value": 3}),
        )
        .await
        .unwrap();
    assert_eq!(set, json!(true));
    step(gws, &mut seen).await;
    alice.send(r#"{"method":"delete","name":"☁ y"}"#).await;
    step(gws, &mut seen).await;
    let deleted = ipc
        .request("cloud.delete", json!({"room": ROOM, "name": "☁ z"}))
        .await
        .unwrap();
    assert_eq!(deleted, json!(true));
    step(gws, &mut seen).await;

    let doc = doc_client(clients).await;
    {
        use nimbus_doc::yrs::{Text, Transact};
        let t = doc.doc().get_or_insert_text("t");
        let mut txn = doc.doc().transact_mut();
        t.insert(&mut txn, 0, "hello");
    }
    step(gws, &mut seen).await;

    alice.ws.close(None).await.unwrap();
    step(gws, &mut seen).await;
    drop(doc);
    // Nothing more (no duplicate through Redis, no event built twice).
    for g in gws.iter_mut() {
        g.assert_no_dispatch(Duration::from_millis(300)).await;
    }
    seen
}

/// Replace what legitimately differs between runs, after checking it: the connection id
/// (the same in ROOM_JOIN and ROOM_LEAVE) and the Yjs update (its text and its length).
fn normalise(mut events: Vec<(String, Value)>) -> Vec<(String, Value)> {
    use base64::Engine;
    let mut conn: Option<Value> = None;
    for (t, d) in &mut events {
        match t.as_str() {
            "ROOM_JOIN" | "ROOM_LEAVE" => {
                assert!(d["conn"].is_u64(), "{d}");
                match &conn {
                    None => conn = Some(d["conn"].clone()),
                    Some(c) => assert_eq!(&d["conn"], c, "join and leave name one connection"),
                }
                d["conn"] = json!("<conn>");
            }
            "DOC_UPDATE" => {
                let update = base64::engine::general_purpose::STANDARD
                    .decode(d["update"].as_str().unwrap())
                    .unwrap();
                assert_eq!(d["bytes"], json!(update.len()), "{d}");
                assert_eq!(text_of_update(&update), "hello");
                d["update"] = json!("<update: t = hello>");
                d["bytes"] = json!("<its length>");
            }
            _ => {}
        }
    }
    events
}

/// What docs/gateway.md says the script dispatches (after [`normalise`]).
fn documented() -> Vec<(String, Value)> {
    [
        (
            "ROOM_JOIN",
            json!({"room": "7", "user": "alice", "conn": "<conn>"}),
        ),
        (
            "CLOUD_CREATE",
            json!({"room": "7", "name": "☁ x", "value": 1.5, "user": "alice"}),
        ),
        (
            "CLOUD_SET",
            json!({"room": "7", "name": "☁ x", "value": "22", "user": "alice"}),
        ),
        (
            "CLOUD_RENAME",
            json!({"room": "7", "name": "☁ x", "new_name": "☁ y", "value": "22", "user": "alice"}),
        ),
        (
            "CLOUD_CREATE",
            json!({"room": "7", "name": "☁ z", "value": 3, "user": null}),
        ),
        (
            "CLOUD_DELETE",
            json!({"room": "7", "name": "☁ y", "value": "22", "user": "alice"}),
        ),
        (
            "CLOUD_DELETE",
            json!({"room": "7", "name": "☁ z", "value": 3, "user": null}),
        ),
        (
            "DOC_UPDATE",
            json!({"room": "notes", "update": "<update: t = hello>", "bytes": "<its length>"}),
        ),
        (
            "ROOM_LEAVE",
            json!({"room": "7", "user": "alice", "conn": "<conn>"}),
        ),
    ]
    .into_iter()
    .map(|(t, d)| (t.to_owned(), d))
    .collect()
}

/// The keys of every `d`, in order: the wire text, not only the JSON value, is the same.
fn key_orders(events: &[(String, Value)]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|(_, d)| d.as_object().unwrap().keys().cloned().collect())
        .collect()
}

#[tokio::test]
async fn every_event_kind_dispatches_the_same_documented_body_on_a_single_node_and_through_redis() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };

    // A single node.
    let single = node(&dir.path().join("single"), None).await;
    let mut gw = [Gw::ready(&single).await];
    let mut alone = run_script(&single, &single, &mut gw).await;
    single.stop().await;
    let alone = normalise(alone.remove(0));
    assert_eq!(alone, documented(), "single node");
    let order = key_orders(&alone);
    assert_eq!(
        order[3],
        ["room", "name", "new_name", "value", "user"],
        "rename keys in the documented order"
    );

    // Two nodes sharing Redis: clients on B, IPC on A, a gateway session on each.
    let a = node(&dir.path().join("a"), Some(redis.url())).await;
    let b = node(&dir.path().join("b"), Some(redis.url())).await;
    let mut gws = [Gw::ready(&a).await, Gw::ready(&b).await];
    let shared = run_script(&b, &a, &mut gws).await;
    a.stop().await;
    b.stop().await;
    for (events, which) in shared.into_iter().zip(["node A (IPC)", "node B (clients)"]) {
        let events = normalise(events);
        assert_eq!(events, alone, "through Redis, gateway on {which}");
        assert_eq!(key_orders(&events), order, "key order on {which}");
    }
}
