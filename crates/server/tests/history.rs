//! `GET /logs` of a running server: cloud history in Scratch's clouddata log format, from
//! real cloud clients; with `--redis` (needs `redis-server`; skips without it unless
//! `NIMBUS_REQUIRE_REDIS=1`) every node answers the same history.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::redis_in_tempdir;
use common::{config, Client, TestServer, WAIT};
use serde_json::Value;

async fn logs(srv: &TestServer, query: &str) -> (u16, Value) {
    let (status, body) = srv.http_get(&format!("/logs?{query}")).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Poll until the room's history has `n` entries.
async fn history_of(srv: &TestServer, room: &str, n: usize) -> Vec<Value> {
    let end = Instant::now() + WAIT;
    loop {
        let (status, v) = logs(srv, &format!("projectid={room}&limit=1000")).await;
        assert_eq!(status, 200, "{v}");
        let entries = v.as_array().unwrap().clone();
        if entries.len() >= n {
            return entries;
        }
        assert!(Instant::now() < end, "{n} entries: {entries:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cfg(dir: &std::path::Path) -> nimbus_server::Config {
    let mut c = config(dir);
    c.history.max_entries = 1000;
    c.cloud.allow_rename = true;
    c.cloud.allow_delete = true;
    c
}

/// bob creates `ready`, alice creates `x`, bob sets it, alice renames it, bob deletes it;
/// each waits for the other's change, so the order is known.
async fn script(url: &str, room: &str) {
    let mut alice = Client::join(url, room, "alice").await;
    let mut bob = Client::join(url, room, "bob").await;
    bob.set("ready", "0").await;
    alice.lines(1).await;
    alice.set("x", "1").await;
    bob.lines(1).await;
    bob.set("x", "\"2\"").await;
    alice.lines(1).await;
    alice
        .send(r#"{"method":"rename","name":"☁ x","new_name":"☁ y"}"#)
        .await;
    // A rename is not sent to clients: give it time to be ordered before the delete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send(r#"{"method":"delete","name":"☁ y"}"#).await;
}

fn summary(entries: &[Value]) -> Vec<(String, String, String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_owned(),
                e["user"].as_str().unwrap().to_owned(),
                e["name"].as_str().unwrap().to_owned(),
                e["value"].to_string(),
            )
        })
        .collect()
}

fn expected() -> Vec<(String, String, String, String)> {
    [
        ("del_var", "bob", "☁ y", "\"2\""),
        ("rename_var", "alice", "☁ x", "\"☁ y\""),
        ("set_var", "bob", "☁ x", "\"2\""),
        ("create_var", "alice", "☁ x", "1"),
        ("create_var", "bob", "☁ ready", "0"),
    ]
    .iter()
    .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
    .collect()
}

#[tokio::test]
async fn logs_answer_scratchs_format_newest_first_with_limit_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(cfg(dir.path())).await;
    script(&srv.url(), "42").await;
    let entries = history_of(&srv, "42", 5).await;
    // The delete's value is the value it had (the string "2").
    let want = expected();
    assert_eq!(summary(&entries), want);
    for e in &entries {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{e}");
        for k in ["user", "verb", "name", "value", "timestamp"] {
            assert!(e.get(k).is_some(), "{k} in {e}");
        }
    }
    let ts: Vec<u64> = entries
        .iter()
        .map(|e| e["timestamp"].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first: {ts:?}");
    let (_, page) = logs(&srv, "projectid=42&limit=2&offset=1").await;
    assert_eq!(summary(page.as_array().unwrap()), want[1..3]);
    let (status, empty) = logs(&srv, "projectid=unknown").await;
    assert_eq!((status, empty), (200, Value::Array(vec![])));
    for bad in [
        "limit=5",
        "projectid=42&limit=1001",
        "projectid=42&offset=-1",
        // The wire's rule for a room key: 1 to 999 characters, no control characters.
        "projectid=4%0A2",
        &format!("projectid={}", "1".repeat(1000)),
    ] {
        assert_eq!(logs(&srv, bad).await.0, 400, "{bad}");
    }
    let long = format!("projectid={}", "1".repeat(999));
    assert_eq!(
        logs(&srv, &long).await.0,
        200,
        "999 characters is a room key"
    );
    srv.stop().await;
}

#[tokio::test]
async fn history_is_kept_across_a_restart_and_trimmed_to_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.history.max_entries = 3;
    let srv = TestServer::start(c.clone()).await;
    let mut a = Client::join(&srv.url(), "9", "alice").await;
    let mut b = Client::join(&srv.url(), "9", "bob").await;
    b.set("ready", "0").await;
    a.lines(1).await;
    for i in 1..=10 {
        a.set("x", &i.to_string()).await;
    }
    let entries = history_of(&srv, "9", 3).await;
    let end = Instant::now() + WAIT;
    let mut entries = entries;
    while entries[0]["value"] != 10 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
        entries = history_of(&srv, "9", 3).await;
    }
    drop((a, b));
    srv.stop().await;
    let srv = TestServer::start(c).await;
    let entries = history_of(&srv, "9", 3).await;
    let values: Vec<&Value> = entries.iter().map(|e| &e["value"]).collect();
    assert_eq!(values, [10, 9, 8]);
    srv.stop().await;
}

#[tokio::test]
async fn with_redis_every_node_answers_the_same_history() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut c = cfg(&dir.path().join(format!("node{i}")));
        c.redis = Some(redis.url());
        nodes.push(TestServer::start(c).await);
    }
    script(&nodes[0].url(), "77").await;
    let want = expected();
    for n in &nodes {
        let entries = history_of(n, "77", 5).await;
        assert_eq!(summary(&entries), want);
    }
    for n in nodes {
        n.stop().await;
    }
}
