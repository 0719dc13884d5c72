//! Every limit and bad input gets its documented close code.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, set_line, Client, Ended, TestServer};

async fn closed_with(client: &mut Client) -> u16 {
    match client.ended().await {
        (Ended::Closed(code), _) => code,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn protocol_violations_close_with_4000() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = srv.url();
    for first in [
        set_line("a", "1"),
        "not json".to_owned(),
        "[1,2]".to_owned(),
        r#"{"method":"handshake","user":"ok","project_id":""}"#.to_owned(),
        r#"{"method":"handshake","user":"ok","project_id":[1]}"#.to_owned(),
        r#"{"method":"handshake","user":"ok"}"#.to_owned(),
    ] {
        let mut c = Client::connect(&url).await;
        c.send(&first).await;
        assert_eq!(closed_with(&mut c).await, 4000, "{first}");
    }
    for after in [
        r#"{"method":"get","name":"☁ a"}"#,
        r#"{"method":"handshake","user":"again","project_id":"1"}"#,
    ] {
        let mut c = Client::join(&url, "1", "ok").await;
        c.send(after).await;
        assert_eq!(closed_with(&mut c).await, 4000, "{after}");
    }
    let (_, metrics) = srv.http_get("/metrics").await;
    assert!(
        metrics.contains(r#"nimbus_cloud_closes_total{code="4000"} 8"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_usernames_close_with_4002() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    for user in ["", "has space", "ünïcode", "abcdefghijklmnopqrstu"] {
        let mut c = Client::join(&srv.url(), "1", user).await;
        assert_eq!(closed_with(&mut c).await, 4002, "{user:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn taken_usernames_close_with_4002_when_unique_names_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.unique_usernames = true;
    let srv = TestServer::start(cfg).await;
    let mut a = Client::join(&srv.url(), "1", "Sam").await;
    a.set("x", "1").await;
    let mut b = Client::join(&srv.url(), "1", "sam").await;
    assert_eq!(closed_with(&mut b).await, 4002);
    srv.stop().await;
}

#[tokio::test]
async fn a_full_room_and_a_full_server_close_with_4003() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.max_clients_per_room = 2;
    cfg.cloud.max_rooms = 1;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut a = Client::join(&url, "1", "a").await;
    let _b = Client::join(&url, "1", "b").await;
    a.set("x", "1").await;
    let mut c = Client::join(&url, "1", "c").await;
    assert_eq!(closed_with(&mut c).await, 4003, "room full");
    let mut d = Client::join(&url, "2", "d").await;
    assert_eq!(closed_with(&mut d).await, 4003, "too many rooms");
    srv.stop().await;
}

#[tokio::test]
async fn blocked_rooms_close_with_4004() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.blocked_rooms = vec!["666".into()];
    let srv = TestServer::start(cfg).await;
    let mut c = Client::join(&srv.url(), "666", "a").await;
    assert_eq!(closed_with(&mut c).await, 4004);
    srv.stop().await;
}

#[tokio::test]
async fn a_scratch_session_cookie_closes_with_4005_after_an_explanation() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let mut c =
        Client::connect_with(&srv.url(), &[("Cookie", "a=b; scratchsessionsid=secret")]).await;
    // Unread input at close time must not turn the close into a reset: the server drains it.
    for i in 0..200 {
        c.set("x", &i.to_string()).await;
    }
    let (end, texts) = c.ended().await;
    assert_eq!(end, Ended::Closed(4005));
    assert_eq!(texts.len(), 1, "one explanation frame first");
    srv.stop().await;
}

#[tokio::test]
async fn a_missing_user_agent_closes_with_4006_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.require_user_agent = true;
    let srv = TestServer::start(cfg).await;
    // tungstenite sends no User-Agent by default.
    let mut c = Client::connect(&srv.url()).await;
    let (end, texts) = c.ended().await;
    assert_eq!(end, Ended::Closed(4006));
    assert_eq!(texts.len(), 1);
    let mut ok = Client::connect_with(&srv.url(), &[("User-Agent", "test/1")]).await;
    ok.send(r#"{"method":"handshake","user":"u","project_id":"1"}"#)
        .await;
    ok.set("x", "1").await;
    let (status, _) = srv.http_get("/api/rooms/1/variables").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.max_frame_bytes = 1024;
    let srv = TestServer::start(cfg).await;
    let mut c = Client::join(&srv.url(), "1", "a").await;
    c.set("x", &format!("\"{}\"", "1".repeat(2000))).await;
    assert_eq!(closed_with(&mut c).await, 1009);
    srv.stop().await;
}

#[tokio::test]
async fn rename_or_delete_of_unknown_variables_close_with_4000_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.allow_rename = true;
    cfg.cloud.allow_delete = true;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    for msg in [
        r#"{"method":"rename","name":"☁ nope","new_name":"☁ b"}"#,
        r#"{"method":"delete","name":"☁ nope"}"#,
    ] {
        let mut c = Client::join(&url, "1", "a").await;
        c.send(msg).await;
        assert_eq!(closed_with(&mut c).await, 4000, "{msg}");
    }
    let mut c = Client::join(&url, "1", "a").await;
    c.set("a", "1").await;
    c.send(r#"{"method":"rename","name":"☁ a","new_name":"no prefix"}"#)
        .await;
    assert_eq!(closed_with(&mut c).await, 4000, "invalid new name");
    srv.stop().await;
}

#[tokio::test]
async fn no_handshake_in_time_drops_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.handshake_timeout = Duration::from_millis(200);
    let srv = TestServer::start(cfg).await;
    let mut c = Client::connect(&srv.url()).await;
    assert_eq!(c.ended().await.0, Ended::Dropped);
    srv.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.ping_interval = Duration::from_millis(100);
    let srv = TestServer::start(cfg).await;
    // Handshake, then never read: tungstenite answers pings only while reading.
    let _silent = Client::join(&srv.url(), "1", "a").await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, m) = srv.http_get("/metrics").await;
        if m.contains("nimbus_cloud_keepalive_timeouts_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer never dropped: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_with_1008_while_others_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.outbox_capacity = 8;
    cfg.cloud.coalesce_after = 8;
    cfg.cloud.max_variables_per_room = 10_000;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut publisher = Client::join(&url, "1", "pub").await;
    let mut healthy = Client::join(&url, "1", "healthy").await;
    let mut slow = Client::join(&url, "1", "slow").await;
    // 400 distinct variables of 50 kB each: far more than the socket buffers hold,
    // and nothing to coalesce, so the slow reader's queue must overflow.
    let big = format!("\"{}\"", "7".repeat(50_000));
    let mut received = 0;
    for i in 0..400 {
        publisher.set(&format!("v{i}"), &big).await;
        // The healthy reader keeps up.
        received += healthy.lines(1).await.len();
    }
    assert_eq!(received, 400, "the healthy consumer got every update");
    let (end, _) = slow.ended().await;
    assert_eq!(end, Ended::Closed(1008));
    let (_, m) = srv.http_get("/metrics").await;
    assert!(m.contains("nimbus_cloud_slow_consumers_total 1"), "{m}");
    srv.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let mut c = Client::join(&srv.url(), "1", "a").await;
    c.set("x", "1").await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(closed_with(&mut c).await, 1001);
    stopping.await.unwrap();
}
