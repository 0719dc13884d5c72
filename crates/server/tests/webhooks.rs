//! Webhooks of a running server, to a loopback receiver (hyper) that checks every
//! request's Standard Webhooks signature (HMAC-SHA256) and de-duplicates by event id.
//!
//! The Redis test needs `redis-server` (skips without it unless `NIMBUS_REQUIRE_REDIS=1`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::redis::redis_in_tempdir;
use common::{config, Client, TestServer, WAIT};
use futures_util::SinkExt;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use nimbus_core::events::{EventBody, RoomEvent};
use nimbus_proto::cloud::CloudValue;
use nimbus_server::Config;
use nimbus_webhook::EndpointConfig;
use serde_json::Value;
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Default)]
struct Seen {
    /// Answer the first requests with 500.
    fail_first: usize,
    /// Never answer.
    hang: bool,
    requests: usize,
    bad_signatures: usize,
    ids: HashSet<String>,
    duplicates: usize,
    /// Events after de-duplication, in arrival order.
    events: Vec<Value>,
}

/// A loopback webhook receiver.
struct Receiver {
    addr: SocketAddr,
    secret: String,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    async fn start(fail_first: usize, hang: bool) -> Receiver {
        let key: [u8; 32] = rand::random();
        let secret = format!("whsec_{}", B64.encode(key));
        let seen = Arc::new(Mutex::new(Seen {
            fail_first,
            hang,
            ..Seen::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, hyper::Error>(handle(&s, &key, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, secret, seen }
    }

    fn endpoint(&self) -> EndpointConfig {
        let mut e = EndpointConfig::new(
            format!("http://{}/hooks", self.addr),
            vec![self.secret.parse().unwrap()],
        );
        e.linger = Duration::from_millis(10);
        e.backoff_base = Duration::from_millis(50);
        e.backoff_cap = Duration::from_millis(200);
        e.timeout = Duration::from_secs(2);
        e
    }

    fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap().events.clone()
    }

    /// Wait until `pred` holds of the received events.
    async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + WAIT;
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            assert!(Instant::now() < end, "{what}: got {ev:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    seen: &Mutex<Seen>,
    key: &[u8],
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sigs) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&body);
    let want = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    let (hang, fail) = {
        let mut s = seen.lock().unwrap();
        s.requests += 1;
        if !sigs.split(' ').any(|x| x == want) {
            s.bad_signatures += 1;
        }
        let fail = s.fail_first > 0;
        if fail {
            s.fail_first -= 1;
        }
        (s.hang, fail)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let status = if fail {
        500
    } else {
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "nimbus.events");
        let mut s = seen.lock().unwrap();
        for ev in v["data"]["events"].as_array().unwrap() {
            let eid = ev["id"].as_str().unwrap().to_owned();
            if s.ids.insert(eid) {
                s.events.push(ev.clone());
            } else {
                s.duplicates += 1;
            }
        }
        204
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn with_hooks(dir: &std::path::Path, rx: &Receiver) -> Config {
    let mut c = config(dir);
    c.cloud.allow_rename = true;
    c.cloud.allow_delete = true;
    c.hooks.endpoints = vec![rx.endpoint()];
    c.hooks.doc_interval = Duration::from_millis(300);
    c
}

fn ev(room: &str, user: Option<&str>, body: EventBody) -> Value {
    let e = RoomEvent {
        room: room.into(),
        user: user.map(Into::into),
        body,
        gid: None,
    };
    serde_json::from_str(&e.to_json()).unwrap()
}

fn num(n: &str) -> CloudValue {
    CloudValue::Number(n.into())
}

fn of_room<'a>(events: &'a [Value], room: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["room"] == room).collect()
}

#[tokio::test]
async fn cloud_events_reach_the_receiver_once_with_the_gateway_bodies_in_room_order() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(2, false).await;
    let srv = TestServer::start(with_hooks(dir.path(), &rx)).await;
    let mut alice = Client::join(&srv.url(), "7", "alice").await;
    let mut bob = Client::join(&srv.url(), "8", "bob").await;
    for i in 1..=3 {
        alice.set("x", &i.to_string()).await;
        bob.set("z", &format!("\"1{i}\"")).await;
    }
    alice
        .send(r#"{"method":"rename","name":"☁ x","new_name":"☁ y"}"#)
        .await;
    alice.send(r#"{"method":"delete","name":"☁ y"}"#).await;
    let events = rx
        .until("room 7's cloud events", |e| {
            e.iter().any(|e| e["type"] == "CLOUD_DELETE") && of_room(e, "8").len() >= 4
        })
        .await;
    drop(alice);
    let events_7 = of_room(&events, "7");
    let kinds: Vec<&str> = events_7
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ROOM_JOIN",
            "CLOUD_CREATE",
            "CLOUD_SET",
            "CLOUD_SET",
            "CLOUD_RENAME",
            "CLOUD_DELETE"
        ]
    );
    assert_eq!(events_7[0]["data"]["user"], "alice");
    // The same bodies the gateway dispatches (RoomEvent::to_json).
    let alice_ = Some("alice");
    let want = [
        ev(
            "7",
            alice_,
            EventBody::CloudCreate {
                name: "☁ x".into(),
                value: num("1"),
            },
        ),
        ev(
            "7",
            alice_,
            EventBody::CloudSet {
                name: "☁ x".into(),
                value: num("2"),
            },
        ),
        ev(
            "7",
            alice_,
            EventBody::CloudSet {
                name: "☁ x".into(),
                value: num("3"),
            },
        ),
        ev(
            "7",
            alice_,
            EventBody::CloudRename {
                name: "☁ x".into(),
                new_name: "☁ y".into(),
                value: Some(num("3")),
            },
        ),
        ev(
            "7",
            alice_,
            EventBody::CloudDelete {
                name: "☁ y".into(),
                value: Some(num("3")),
            },
        ),
    ];
    for (got, want) in events_7[1..].iter().zip(&want) {
        assert_eq!(&got["data"], want);
    }
    let values_8: Vec<&Value> = of_room(&events, "8")
        .iter()
        .filter(|e| e["type"] != "ROOM_JOIN")
        .map(|e| &e["data"]["value"])
        .collect();
    assert_eq!(values_8, ["11", "12", "13"]);
    // The leave, then nothing twice; the failed requests were retried.
    rx.until("alice's leave", |e| {
        e.iter()
            .any(|e| e["type"] == "ROOM_LEAVE" && e["room"] == "7")
    })
    .await;
    {
        let s = rx.seen.lock().unwrap();
        assert_eq!(s.bad_signatures, 0);
        assert!(s.requests >= 3, "{} requests", s.requests);
        assert!(s
            .events
            .iter()
            .all(|e| e["id"].as_str().unwrap().starts_with("evt_")));
    }
    drop(bob);
    srv.stop().await;
}

#[tokio::test]
async fn document_updates_are_debounced_into_few_doc_changed_events() {
    use yrs::updates::encoder::Encode;
    use yrs::{ReadTxn, Text, Transact};
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(0, false).await;
    let mut cfg = with_hooks(dir.path(), &rx);
    cfg.hooks.doc_snapshot = true;
    let srv = TestServer::start(cfg).await;
    let url = format!("ws://{}/doc/notes", srv.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    const UPDATES: usize = 60;
    let started = Instant::now();
    for i in 0..UPDATES {
        let before = doc.transact().state_vector();
        text.push(&mut doc.transact_mut(), &format!("{i},"));
        let update = doc.transact().encode_state_as_update_v1(&before);
        let msg = nimbus_proto::doc::Message::Update(update.into()).encode();
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(msg))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let elapsed = started.elapsed();
    let final_sv = B64.encode(doc.transact().state_vector().encode_v1());
    let events = rx
        .until("a DOC_CHANGED with the final state vector", |e| {
            e.last()
                .is_some_and(|e| e["data"]["state_vector"] == final_sv.as_str())
        })
        .await;
    assert!(
        events.iter().all(|e| e["type"] == "DOC_CHANGED"),
        "{events:#?}"
    );
    // One per 300 ms interval (plus the last one), not one per update.
    let most = elapsed.as_millis() as usize / 300 + 2;
    assert!(
        events.len() <= most && events.len() < UPDATES / 4,
        "{} DOC_CHANGED for {UPDATES} updates in {elapsed:?}",
        events.len()
    );
    let last = &events.last().unwrap()["data"];
    assert_eq!(last["room"], "notes");
    let want: String = (0..UPDATES).map(|i| format!("{i},")).collect();
    assert_eq!(last["doc"]["t"], want.as_str(), "{last}");
    srv.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_leaves_the_room_serving_with_a_bounded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(0, true).await;
    let mut cfg = with_hooks(dir.path(), &rx);
    let e = &mut cfg.hooks.endpoints[0];
    e.max_batch_events = 10;
    e.queue_events = 50;
    e.timeout = Duration::from_secs(60);
    let srv = TestServer::start(cfg).await;
    let mut b = Client::join(&srv.url(), "7", "bob").await;
    let mut a = Client::join(&srv.url(), "7", "alice").await;
    // Both are in the room once alice sees bob's set.
    b.set("ready", "1").await;
    a.lines(1).await;
    const SETS: usize = 400;
    for i in 0..SETS {
        a.set("x", &i.to_string()).await;
    }
    // Every set fans out (under backlog a newer value may replace a queued one: wait for
    // the last).
    let last = format!(r#""value":{}"#, SETS - 1);
    while !b.frame().await.contains(&last) {}
    let (_, metrics) = srv.http_get("/metrics").await;
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(gauge("nimbus_webhook_queue_events{endpoint=\"0\"}") <= 50.0);
    assert!(
        gauge("nimbus_webhook_dropped_events_total{endpoint=\"0\",reason=\"queue_full\"}") > 0.0
    );
    drop((a, b));
    srv.stop().await;
}

#[tokio::test]
async fn with_redis_two_nodes_deliver_each_event_once() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let rx = Receiver::start(1, false).await;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut cfg = with_hooks(&dir.path().join(format!("node{i}")), &rx);
        cfg.redis = Some(redis.url());
        nodes.push(TestServer::start(cfg).await);
    }
    // One node takes the lease within a renewal period (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut a = Client::join(&nodes[0].url(), "r1", "alice").await;
    let mut b = Client::join(&nodes[1].url(), "r2", "bob").await;
    const N: usize = 20;
    for i in 1..=N {
        a.set("x", &i.to_string()).await;
        b.set("y", &i.to_string()).await;
    }
    let events = rx
        .until("every set", |e| {
            e.iter()
                .filter(|e| e["type"] == "CLOUD_SET" || e["type"] == "CLOUD_CREATE")
                .count()
                >= 2 * N
        })
        .await;
    // A moment for any second copy to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (duplicates, bad_signatures) = {
        let s = rx.seen.lock().unwrap();
        (s.duplicates, s.bad_signatures)
    };
    assert_eq!(duplicates, 0, "each event once per cluster");
    assert_eq!(bad_signatures, 0);
    let mut per_room: HashMap<String, Vec<i64>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("CLOUD_"))
    {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        per_room
            .entry(e["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["data"]["value"].as_i64().unwrap());
    }
    let want: Vec<i64> = (1..=N as i64).collect();
    assert_eq!(per_room["r1"], want);
    assert_eq!(per_room["r2"], want);
    drop((a, b));
    for n in nodes {
        n.stop().await;
    }
}
