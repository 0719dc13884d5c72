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

/// `CLOUD_SCRIPT` of the version before typed events: its rename/delete messages carry no
/// value (a node of that version may still publish during a rolling upgrade).
const PREVIOUS_CLOUD_SCRIPT: &str = r"
local op, name = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[3], name)
local pos = 0
local created = 0
if op == 's' then
  if exists == 0 then
    created = 1
    if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
    pos = redis.call('INCR', KEYS[5]) - 1
    redis.call('HSET', KEYS[4], name, pos)
  else
    pos = redis.call('HGET', KEYS[4], name)
  end
  redis.call('HSET', KEYS[3], name, ARGV[3])
elseif op == 'd' then
  if exists == 0 then return -1 end
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
elseif op == 'r' then
  if exists == 0 or redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return -1 end
  local v = redis.call('HGET', KEYS[3], name)
  pos = redis.call('HGET', KEYS[4], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
  redis.call('HSET', KEYS[3], ARGV[3], v)
  redis.call('HSET', KEYS[4], ARGV[3], pos)
else
  return redis.error_reply('unknown op')
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  redis.call('SET', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[6])
end
local epoch = redis.call('GET', KEYS[2]) or ARGV[5]
local msg = epoch .. ' ' .. seq .. ' ' .. pos .. ' ' .. created .. ' ' .. ARGV[6]
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'm', msg)
local gid = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'm', 'c ' .. msg)
redis.call('PUBLISH', ARGV[8], gid .. ' c ' .. msg)
return seq
";

/// Run one change as a node of the previous version did. `arg` is the value (set, `n`/`s`
/// prefixed) or the new name (rename); `change` is its change JSON.
async fn previous_node_change(
    conn: &mut redis::aio::MultiplexedConnection,
    room: &str,
    op: &str,
    name: &str,
    arg: &str,
    change: Value,
) {
    let k = |what: &str| format!("nimbus:cloud:{{{room}}}:{what}");
    let seq: i64 = redis::cmd("EVAL")
        .arg(PREVIOUS_CLOUD_SCRIPT)
        .arg(7)
        .arg(k("seq"))
        .arg(k("epoch"))
        .arg(k("vars"))
        .arg(k("pos"))
        .arg(k("npos"))
        .arg(k("log"))
        .arg("nimbus:events")
        .arg(op)
        .arg(name)
        .arg(arg)
        .arg(1000)
        .arg("old-1")
        .arg(change.to_string())
        .arg(10_000)
        .arg("nimbus:events")
        .arg(100_000)
        .query_async(conn)
        .await
        .unwrap();
    assert!(seq > 0, "the previous script accepted {op} {name}");
}

#[tokio::test]
async fn changes_and_presence_from_a_previous_version_node_still_dispatch_with_the_value_this_node_knows(
) {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let a = node(&dir.path().join("a"), Some(redis.url())).await;
    let mut gw = Gw::ready(&a).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Room 7 is loaded on this node (a client is in it) and holds ☁ x = 5.
    let mut alice = Client::join(&a.url(), ROOM, "alice").await;
    assert_eq!(gw.dispatch().await.0, "ROOM_JOIN");
    alice.set("x", "5").await;
    assert_eq!(gw.dispatch().await.0, "CLOUD_CREATE");
    let change = |o: &str, n: &str, extra: Value| {
        let mut c = json!({"r": ROOM, "o": o, "n": n, "nd": "previous", "c": 0, "ts": 1});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // A rename and a delete without a value: the loaded room's value fills in.
    previous_node_change(
        &mut conn,
        ROOM,
        "r",
        "☁ x",
        "☁ y",
        change("r", "☁ x", json!({"nn": "☁ y"})),
    )
    .await;
    assert_eq!(
        gw.dispatch().await,
        (
            "CLOUD_RENAME".to_owned(),
            json!({"room": "7", "name": "☁ x", "new_name": "☁ y", "value": 5, "user": null})
        )
    );
    previous_node_change(
        &mut conn,
        ROOM,
        "d",
        "☁ y",
        "",
        change("d", "☁ y", json!({})),
    )
    .await;
    assert_eq!(
        gw.dispatch().await,
        (
            "CLOUD_DELETE".to_owned(),
            json!({"room": "7", "name": "☁ y", "value": 5, "user": null})
        )
    );
    // Room 8 is not loaded here: the value is unknown, so null.
    previous_node_change(&mut conn, "8", "s", "☁ w", "n9", json!({"r": "8", "o": "s", "n": "☁ w", "v": "9", "num": true, "nd": "previous", "c": 0, "ts": 1})).await;
    assert_eq!(
        gw.dispatch().await,
        (
            "CLOUD_CREATE".to_owned(),
            json!({"room": "8", "name": "☁ w", "value": 9, "user": null})
        )
    );
    previous_node_change(
        &mut conn,
        "8",
        "d",
        "☁ w",
        "",
        json!({"r": "8", "o": "d", "n": "☁ w", "nd": "previous", "c": 0, "ts": 1}),
    )
    .await;
    assert_eq!(
        gw.dispatch().await,
        (
            "CLOUD_DELETE".to_owned(),
            json!({"room": "8", "name": "☁ w", "value": null, "user": null})
        )
    );
    // The previous presence shape (a prebuilt `d`) dispatches the same body.
    let body = r#"{"r":"7","k":"ROOM_LEAVE","d":{"room":"7","user":"bob","conn":77},"u":"bob"}"#;
    let gid: String = redis::cmd("XADD")
        .arg("nimbus:events")
        .arg("*")
        .arg("m")
        .arg(format!("p {body}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("nimbus:events")
        .arg(format!("{gid} p {body}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        gw.dispatch().await,
        (
            "ROOM_LEAVE".to_owned(),
            json!({"room": "7", "user": "bob", "conn": 77})
        )
    );
    // The room goes on applying changes after them.
    alice.set("v", "1").await;
    assert_eq!(
        gw.dispatch().await,
        (
            "CLOUD_CREATE".to_owned(),
            json!({"room": "7", "name": "☁ v", "value": 1, "user": "alice"})
        )
    );
    drop(alice);
    a.stop().await;
}
