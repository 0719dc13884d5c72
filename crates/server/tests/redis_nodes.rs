//! Cloud and document rooms and gateway events shared by 3 nodes through a real
//! `redis-server` on loopback.
//!
//! Needs `redis-server` on the PATH (Debian: `apt-get install redis-server`; `.ci/run`
//! installs it). Without it each test prints `SKIPPED` and returns, unless
//! `NIMBUS_REQUIRE_REDIS=1`, which turns a missing `redis-server` into a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::redis::{redis_in_tempdir, RedisProc};
use common::{config, Client, Ended, TestServer, WAIT};

async fn stop_all(nodes: Vec<TestServer>) {
    for s in nodes {
        s.stop().await;
    }
}

async fn node(dir: &Path, i: usize, redis: &RedisProc) -> TestServer {
    let mut cfg = config(&dir.join(format!("node{i}")));
    cfg.redis = Some(redis.url());
    TestServer::start(cfg).await
}

async fn nodes(dir: &Path, redis: &RedisProc) -> Vec<TestServer> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(node(dir, i, redis).await);
    }
    out
}

fn set_of(line: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["method"], "set", "{line}");
    (
        v["name"].as_str().unwrap().to_owned(),
        v["value"].to_string(),
    )
}

#[tokio::test]
async fn sets_on_two_nodes_reach_every_node_in_one_order() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = nodes(dir.path(), &redis).await;
    let mut a = Client::join(&n[0].url(), "7", "alice").await;
    let mut b = Client::join(&n[1].url(), "7", "bob").await;
    let mut c = Client::join(&n[2].url(), "7", "carol").await;
    const N: usize = 50;
    // Interleave writers on two nodes: Redis decides one order for the room.
    let wa = async {
        for i in 1..=N {
            a.set("x", &i.to_string()).await;
        }
        a
    };
    let wb = async {
        for i in 1..=N {
            b.set("y", &i.to_string()).await;
        }
        b
    };
    let (mut a, mut b) = tokio::join!(wa, wb);
    let seen_c = c.lines(2 * N).await;
    let seen_a = a.lines(N).await;
    let seen_b = b.lines(N).await;
    let order: Vec<(String, String)> = seen_c.iter().map(|l| set_of(l)).collect();
    // Each writer's own values arrive in its order...
    for (name, _) in [("☁ x", 0), ("☁ y", 0)] {
        let vals: Vec<String> = order
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect();
        let want: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
        assert_eq!(vals, want, "{name} on node C");
    }
    // ...and every node sees the one room order (minus the client's own sets).
    let on_a: Vec<(String, String)> = order.iter().filter(|(n, _)| n != "☁ x").cloned().collect();
    let on_b: Vec<(String, String)> = order.iter().filter(|(n, _)| n != "☁ y").cloned().collect();
    assert_eq!(seen_a.iter().map(|l| set_of(l)).collect::<Vec<_>>(), on_a);
    assert_eq!(seen_b.iter().map(|l| set_of(l)).collect::<Vec<_>>(), on_b);
    // A client joining any node later gets the state Redis holds, in creation order.
    let mut late = Client::join(&n[2].url(), "7", "dave").await;
    let join = late.lines(2).await;
    let mut created: Vec<(String, String)> = Vec::new();
    for (name, _) in &order {
        if !created.iter().any(|(n, _)| n == name) {
            created.push((name.clone(), N.to_string()));
        }
    }
    assert_eq!(join.iter().map(|l| set_of(l)).collect::<Vec<_>>(), created);
    let (_, metrics) = n[1].http_get("/metrics").await;
    assert!(metrics.contains("nimbus_redis_up 1"), "{metrics}");
    stop_all(n).await;
}

#[tokio::test]
async fn a_node_that_starts_later_loads_the_room_from_redis() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let first = node(dir.path(), 0, &redis).await;
    let mut w = Client::join(&first.url(), "8", "w").await;
    let mut watch = Client::join(&first.url(), "8", "watch").await;
    w.set("a", "\"12\"").await;
    w.set("b", "1.50").await;
    w.set("a", "\"34\"").await;
    // The watcher may have joined before or after the sets: either way it ends with a = "34".
    let mut seen = Vec::new();
    until_line(
        &mut watch,
        r#"{"method":"set","name":"☁ a","value":"34"}"#,
        &mut seen,
    )
    .await;
    first.stop().await;
    let second = node(dir.path(), 1, &redis).await;
    let mut late = Client::join(&second.url(), "8", "late").await;
    let join = late.lines(2).await;
    assert_eq!(
        join,
        vec![
            r#"{"method":"set","name":"☁ a","value":"34"}"#.to_owned(),
            r#"{"method":"set","name":"☁ b","value":1.50}"#.to_owned(),
        ]
    );
    second.stop().await;
}

/// Read frames from `c` into `seen` until a line equals `want`.
async fn until_line(c: &mut Client, want: &str, seen: &mut Vec<String>) {
    loop {
        let f = c.frame().await;
        seen.extend(f.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        if seen.iter().any(|l| l == want) {
            return;
        }
    }
}

#[tokio::test]
async fn a_redis_restart_mid_stream_closes_writers_with_1011_and_recovers() {
    let Some((dir, mut redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = nodes(dir.path(), &redis).await;
    let mut w = Client::join(&n[0].url(), "9", "w").await;
    let mut watch = Client::join(&n[1].url(), "9", "watch").await;
    for i in 1..=20 {
        w.set("x", &i.to_string()).await;
    }
    let before = watch.lines(20).await;
    assert_eq!(set_of(&before[19]).1, "20");

    redis.kill();
    // Writing while Redis is away: the writer is closed with 1011, nothing is applied.
    w.set("x", "999").await;
    let (end, _) = w.ended().await;
    assert_eq!(end, Ended::Closed(1011));
    // A room that is not loaded cannot be joined either.
    let mut other = Client::join(&n[2].url(), "other", "o").await;
    assert_eq!(other.ended().await.0, Ended::Closed(1011));

    redis.spawn().await;
    // Until node A's connection to Redis is back a writer may be closed again: retry
    // (bounded) with a fresh client. The watcher on node B stays connected throughout.
    let want = r#"{"method":"set","name":"☁ x","value":21}"#;
    let mut attempts = 0;
    let mut seen = Vec::new();
    loop {
        attempts += 1;
        assert!(attempts <= 50, "node A never wrote to the restarted Redis");
        let mut w2 = Client::join(&n[0].url(), "9", "w2").await;
        w2.set("x", "21").await;
        let got = until_line(&mut watch, want, &mut seen);
        if tokio::time::timeout(Duration::from_millis(500), got)
            .await
            .is_ok()
        {
            break;
        }
    }
    assert!(
        seen.iter().all(|l| l == want),
        "only the new value after the restart, never 999: {seen:?}"
    );
    // Every node agrees on the state, the pre-restart history included.
    for s in &n {
        let mut late = Client::join(&s.url(), "9", "late").await;
        assert_eq!(late.lines(1).await, vec![want.to_owned()]);
    }
    let (_, metrics) = n[1].http_get("/metrics").await;
    assert!(
        metrics.contains("nimbus_redis_subscriptions_total 2"),
        "{metrics}"
    );
    stop_all(n).await;
}

/// A minimal gateway client: Hello, Identify (cloud intent), READY, then dispatches.
struct Gw {
    ws: common::Ws,
    session: String,
}

impl Gw {
    async fn ready(srv: &TestServer) -> Gw {
        let (mut g, ready) = Gw::identify(srv).await;
        assert_eq!(ready["t"], "READY", "{ready}");
        g.session = ready["d"]["session_id"].as_str().unwrap().to_owned();
        g
    }

    /// Connect to `srv`, Identify, and return the answer (READY, or op 9 when refused).
    async fn identify(srv: &TestServer) -> (Gw, serde_json::Value) {
        use futures_util::SinkExt;
        let url = format!("ws://{}/gateway?v=10&encoding=json", srv.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut g = Gw {
            ws,
            session: String::new(),
        };
        assert_eq!(g.recv().await["op"], 10);
        let identify = serde_json::json!({"op": 2, "d": {"token": "Bot t", "intents": 1,
            "properties": {"os": "linux", "browser": "test", "device": "test"}}});
        g.ws.send(tokio_tungstenite::tungstenite::Message::text(
            identify.to_string(),
        ))
        .await
        .unwrap();
        let answer = g.recv().await;
        (g, answer)
    }

    /// Connect to `srv` and send a Resume of `session` from `seq`.
    async fn resume(srv: &TestServer, session: &str, seq: u64) -> Gw {
        use futures_util::SinkExt;
        let url = format!("ws://{}/gateway?v=10&encoding=json", srv.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut g = Gw {
            ws,
            session: session.to_owned(),
        };
        assert_eq!(g.recv().await["op"], 10);
        let resume = serde_json::json!({"op": 6, "d": {"token": "Bot t", "session_id": session, "seq": seq}});
        g.ws.send(tokio_tungstenite::tungstenite::Message::text(
            resume.to_string(),
        ))
        .await
        .unwrap();
        g
    }

    async fn recv(&mut self) -> serde_json::Value {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("payload in time")
                .expect("open")
                .expect("frame");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Next dispatch as (type, name, value, user).
    async fn dispatch(&mut self) -> (String, String, String, String) {
        loop {
            let p = self.recv().await;
            if p["op"] == 0 {
                let d = &p["d"];
                return (
                    p["t"].as_str().unwrap().to_owned(),
                    d["name"].as_str().unwrap_or_default().to_owned(),
                    d["value"].to_string(),
                    d["user"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
    }
}

/// The gateway of [`gateway_nodes`]: token `t`, no identify window.
fn gateway_config() -> nimbus_server::GatewayConfig {
    nimbus_server::GatewayConfig {
        tokens: vec![nimbus_server::GatewayToken::parse("t").unwrap()],
        identify_window: Duration::ZERO,
        drain_grace: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Three nodes with a gateway (token `t`).
async fn gateway_nodes(dir: &Path, redis: &RedisProc) -> Vec<TestServer> {
    gateway_nodes_with(dir, redis, gateway_config()).await
}

/// Three nodes with the gateway `gateway`.
async fn gateway_nodes_with(
    dir: &Path,
    redis: &RedisProc,
    gateway: nimbus_server::GatewayConfig,
) -> Vec<TestServer> {
    let mut n = Vec::new();
    for i in 0..3 {
        let mut cfg = config(&dir.join(format!("node{i}")));
        cfg.redis = Some(redis.url());
        cfg.gateway = gateway.clone();
        n.push(TestServer::start(cfg).await);
    }
    n
}

#[tokio::test]
async fn a_bots_daily_identify_limit_is_one_budget_across_the_nodes() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = gateway_nodes_with(
        dir.path(),
        &redis,
        nimbus_server::GatewayConfig {
            session_start_limit: 2,
            ..gateway_config()
        },
    )
    .await;
    let first = Gw::ready(&n[0]).await;
    let second = Gw::ready(&n[1]).await;
    // A third node has not seen this bot, but its budget is the one in Redis: spent.
    let (_third, answer) = Gw::identify(&n[2]).await;
    assert_eq!(
        (answer["op"].clone(), answer["d"].clone()),
        (9.into(), false.into()),
        "{answer}"
    );
    for node in &n {
        let (status, body) =
            common::http_get(node.addr, "/gateway/bot", &["Authorization: Bot t"]).await;
        assert_eq!(status, 200, "{body}");
        let limit: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(limit["session_start_limit"]["total"], 2, "{body}");
        assert_eq!(limit["session_start_limit"]["remaining"], 0, "{body}");
    }
    drop((first, second));
    stop_all(n).await;
}

#[tokio::test]
async fn a_session_resumed_on_another_live_node_moves_there_and_its_old_connection_ends() {
    use futures_util::StreamExt;
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = gateway_nodes(dir.path(), &redis).await;
    let mut old = Gw::ready(&n[0]).await;
    let mut alice = Client::join(&n[1].url(), "6", "alice").await;
    alice.set("x", "1").await;
    assert_eq!(old.dispatch().await.0, "CLOUD_CREATE");
    // The client moves to node B while node A still holds its connection.
    let mut moved = Gw::resume(&n[1], &old.session, 2).await;
    let resumed = moved.recv().await;
    assert_eq!(
        (resumed["t"].as_str(), resumed["s"].as_u64()),
        (Some("RESUMED"), Some(3)),
        "{resumed}"
    );
    alice.set("x", "2").await;
    let next = moved.recv().await;
    assert_eq!(
        (next["t"].as_str(), next["s"].as_u64()),
        (Some("CLOUD_SET"), Some(4)),
        "{next}"
    );
    assert_eq!(next["d"]["value"], 2);
    // Node A lost the session to node B: its connection ends instead of extending it.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match old.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    panic!("the old connection got {t} after the session moved")
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the old connection never ended");
    // A session no node ever had, and a seq beyond what was sent, are refused.
    let mut unknown = Gw::resume(&n[2], "0123456789abcdef0123456789abcdef", 1).await;
    let p = unknown.recv().await;
    assert_eq!(
        (p["op"].as_u64(), p["d"].as_bool()),
        (Some(9), Some(false)),
        "{p}"
    );
    let mut future = Gw::resume(&n[2], &moved.session, 99).await;
    let end = tokio::time::timeout(WAIT, future.ws.next()).await.unwrap();
    match end {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4007);
        }
        other => panic!("expected close 4007, got {other:?}"),
    }
    stop_all(n).await;
}

#[tokio::test]
async fn the_gateway_of_every_node_dispatches_every_rooms_cloud_changes_once() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = gateway_nodes(dir.path(), &redis).await;
    // Node C never loads the room; node A holds the writer's room.
    let mut on_c = Gw::ready(&n[2]).await;
    let mut on_a = Gw::ready(&n[0]).await;
    let mut alice = Client::join(&n[0].url(), "5", "alice").await;
    let mut bob = Client::join(&n[1].url(), "5", "bob").await;
    alice.set("x", "1").await;
    alice.set("x", "2").await;
    bob.lines(2).await;
    bob.set("y", "5").await;
    let want = vec![
        ("CLOUD_CREATE", "☁ x", "1", "alice"),
        ("CLOUD_SET", "☁ x", "2", "alice"),
        ("CLOUD_CREATE", "☁ y", "5", "bob"),
    ];
    for g in [&mut on_c, &mut on_a] {
        for w in &want {
            let got = g.dispatch().await;
            assert_eq!(
                (
                    got.0.as_str(),
                    got.1.as_str(),
                    got.2.as_str(),
                    got.3.as_str()
                ),
                *w
            );
        }
    }
    // Exactly once: the next dispatch on each is the next change, no duplicate in between.
    alice.set("x", "3").await;
    for g in [&mut on_c, &mut on_a] {
        assert_eq!(g.dispatch().await.2, "3");
    }
    stop_all(n).await;
}

// ---------------------------------------------------------------- document rooms

async fn doc_client(srv: &TestServer, room: &str) -> nimbus_doc::Client {
    let wire = nimbus_doc::ClientWire::WebSocket {
        url: format!("ws://{}/doc", srv.addr),
    };
    let opts = nimbus_doc::ConnectOptions {
        backoff: nimbus_proto::backoff::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ),
        ..Default::default()
    };
    tokio::time::timeout(WAIT, nimbus_doc::connect(wire, room, None, opts))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn text_of(c: &nimbus_doc::Client) -> String {
    use nimbus_doc::yrs::{GetString, Transact};
    let t = c.doc().get_or_insert_text("t");
    let s = t.get_string(&c.doc().transact());
    s
}

fn push(c: &nimbus_doc::Client, piece: &str) {
    use nimbus_doc::yrs::{Text, Transact};
    let t = c.doc().get_or_insert_text("t");
    let mut txn = c.doc().transact_mut();
    let end = t.len(&txn);
    t.insert(&mut txn, end, piece);
}

/// Wait until every client's text has `len` characters and all are equal.
async fn converged(clients: &[&nimbus_doc::Client], len: usize) -> String {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let texts: Vec<String> = clients.iter().map(|c| text_of(c)).collect();
        if texts.iter().all(|t| t.len() == len && *t == texts[0]) {
            return texts[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: lengths {:?}, want {len}",
            texts.iter().map(String::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pieces(tag: char, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i:04};")).collect()
}

#[tokio::test]
async fn a_document_edited_through_two_nodes_converges_on_every_node_and_in_redis() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = nodes(dir.path(), &redis).await;
    let a = doc_client(&n[0], "shared").await;
    let b = doc_client(&n[1], "shared").await;
    let c = doc_client(&n[2], "shared").await;
    // 2 × 700 single-edit updates: more than the compaction threshold (1000).
    let (pa, pb) = (pieces('a', 700), pieces('b', 700));
    let total: usize = pa.iter().chain(&pb).map(String::len).sum();
    for (x, y) in pa.iter().zip(&pb) {
        push(&a, x);
        push(&b, y);
        tokio::task::yield_now().await;
    }
    let text = converged(&[&a, &b, &c], total).await;
    for p in pa.iter().chain(&pb) {
        assert!(text.contains(p.as_str()), "{p} missing");
    }
    // A node that joins now loads the room from Redis alone.
    let late_node = node(dir.path(), 3, &redis).await;
    let late = doc_client(&late_node, "shared").await;
    assert_eq!(converged(&[&late], total).await, text);
    // Some node compacted the log: a snapshot exists and the stream is shorter.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (len, snap): (u64, Option<Vec<u8>>) = redis::pipe()
            .cmd("XLEN")
            .arg("nimbus:doc:{shared}:log")
            .cmd("GET")
            .arg("nimbus:doc:{shared}:snap")
            .query_async(&mut conn)
            .await
            .unwrap();
        if snap.is_some() && len < 1400 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never compacted (len {len})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in [a, b, c, late] {
        c.close().await;
    }
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_no_document_edit() {
    let Some((dir, mut redis)) = redis_in_tempdir().await else {
        return;
    };
    let n = nodes(dir.path(), &redis).await;
    let a = doc_client(&n[0], "r").await;
    let b = doc_client(&n[1], "r").await;
    let (pa, pb) = (pieces('a', 200), pieces('b', 200));
    let total: usize = pa.iter().chain(&pb).map(String::len).sum();
    for (i, (x, y)) in pa.iter().zip(&pb).enumerate() {
        if i == 100 {
            // Mid-stream: Redis goes away and comes back (its append-only file kept what
            // it had accepted). Edits go on meanwhile.
            redis.kill();
        }
        if i == 150 {
            redis.spawn().await;
        }
        push(&a, x);
        push(&b, y);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Clients closed with 1011 reconnect and re-send what the room had not stored.
    let text = converged(&[&a, &b], total).await;
    let late_node = node(dir.path(), 3, &redis).await;
    let late = doc_client(&late_node, "r").await;
    assert_eq!(converged(&[&late], total).await, text);
    for c in [a, b, late] {
        c.close().await;
    }
}
