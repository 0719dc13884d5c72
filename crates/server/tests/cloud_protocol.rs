//! The cloud protocol over real sockets: fan-out, join frame, persistence.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, set_line, Client, TestServer};

#[tokio::test]
async fn clients_see_each_others_sets_in_order_and_never_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = srv.url();
    let mut a = Client::join(&url, "1", "alice").await;
    let mut b = Client::join(&url, "1", "bob").await;
    let mut c = Client::join(&url, "1", "carol").await;
    // Make sure all three joined before publishing (joins are ordered in the room).
    c.set("sync", "0").await;
    a.lines(1).await;
    b.lines(1).await;

    for i in 0..50 {
        a.set("a", &i.to_string()).await;
    }
    let expected: Vec<String> = (0..50).map(|i| set_line("a", &i.to_string())).collect();
    assert_eq!(b.lines(50).await, expected);
    // b saw all of a's sets, so the room processed them before this one. If a's own
    // sets were echoed to a, they would reach a before this line.
    b.set("b", "1").await;
    let mut c_lines = c.lines(51).await;
    assert_eq!(c_lines.pop().unwrap(), set_line("b", "1"));
    assert_eq!(c_lines, expected);
    assert_eq!(a.lines(1).await, vec![set_line("b", "1")]);
    srv.stop().await;
}

#[tokio::test]
async fn join_gets_current_values_in_one_frame_in_insertion_order() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = srv.url();
    let mut a = Client::join(&url, "2", "alice").await;
    let mut observer = Client::join(&url, "2", "observer").await;
    observer.set("sync", "0").await;
    a.lines(1).await;
    a.send(
        &[
            set_line("z", "1"),
            set_line("y", "\"2\""),
            set_line("z", "3"),
        ]
        .join("\n"),
    )
    .await;
    // Ordering point: once the observer saw the frame, the room has processed it.
    observer.lines(3).await;
    let mut b = Client::join(&url, "2", "bob").await;
    let join = b.frame().await;
    assert_eq!(
        join,
        format!(
            "{}\n{}\n{}\n",
            set_line("sync", "0"),
            set_line("z", "3"),
            set_line("y", "\"2\"")
        ),
        "one frame, insertion order, newest values, types kept"
    );
    srv.stop().await;
}

#[tokio::test]
async fn several_lines_per_frame_crlf_and_blank_lines_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = srv.url();
    let mut b = Client::join(&url, "3", "bob").await;
    let mut a = Client::connect(&url).await;
    a.send(&format!(
        "{{\"method\":\"handshake\",\"user\":\"alice\",\"project_id\":3}}\r\n\r\n{}\r\n{}",
        set_line("x", "1.50"),
        set_line("x", "\"-.\"")
    ))
    .await;
    assert_eq!(
        b.lines(2).await,
        vec![set_line("x", "1.50"), set_line("x", "\"-.\"")],
        "number literals are forwarded as received"
    );
    srv.stop().await;
}

#[tokio::test]
async fn invalid_sets_are_dropped_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = srv.url();
    let mut a = Client::join(&url, "4", "alice").await;
    let mut b = Client::join(&url, "4", "bob").await;
    a.send(
        &[
            r#"{"method":"set","name":"no prefix","value":1}"#,
            r#"{"method":"set","name":"☁ v","value":"1e5"}"#,
            r#"{"method":"set","name":"☁ v","value":true}"#,
            r#"{"method":"set","name":"☁ v"}"#,
            r#"{"method":"set","name":"☁ v","value":Infinity}"#,
            "not json at all",
            r#"{"method":"set","name":"☁ v","value":7}"#,
        ]
        .join("\n"),
    )
    .await;
    assert_eq!(b.lines(1).await, vec![set_line("v", "7")]);
    let (_, metrics) = srv.http_get("/metrics").await;
    assert!(
        metrics.contains("nimbus_cloud_malformed_lines_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nimbus_cloud_dropped_sets_total{reason="invalid_name"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nimbus_cloud_dropped_sets_total{reason="invalid_value"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nimbus_cloud_dropped_sets_total{reason="bad_field"} 2"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn variables_beyond_the_room_limit_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.max_variables_per_room = 2;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut a = Client::join(&url, "5", "alice").await;
    let mut b = Client::join(&url, "5", "bob").await;
    a.send(
        &[
            set_line("a", "1"),
            set_line("b", "1"),
            set_line("c", "1"),
            set_line("a", "2"),
        ]
        .join("\n"),
    )
    .await;
    assert_eq!(
        b.lines(3).await,
        vec![set_line("a", "1"), set_line("b", "1"), set_line("a", "2")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn scratch_profile_accepts_only_digits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.profile = nimbus_proto::cloud::ValueProfile::Scratch;
    cfg.cloud.max_value_len = 256;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut a = Client::join(&url, "6", "alice").await;
    let mut b = Client::join(&url, "6", "bob").await;
    a.send(
        &[
            set_line("v", "-1"),
            set_line("v", "1.5"),
            set_line("v", "\"12\""),
            set_line("v", "3"),
        ]
        .join("\n"),
    )
    .await;
    assert_eq!(
        b.lines(2).await,
        vec![set_line("v", "\"12\""), set_line("v", "3")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn values_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let mut observer = Client::join(&srv.url(), "7", "observer").await;
    let mut a = Client::join(&srv.url(), "7", "alice").await;
    a.send(&[set_line("first", "1"), set_line("second", "\"22\"")].join("\n"))
        .await;
    observer.lines(2).await;
    let (status, body) = srv.http_get("/api/rooms/7/variables").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"☁ first":1,"☁ second":"22"}"#)
    );
    drop(a);
    srv.stop().await;

    let srv = TestServer::start(config(dir.path())).await;
    let mut b = Client::join(&srv.url(), "7", "bob").await;
    assert_eq!(
        b.frame().await,
        format!(
            "{}\n{}\n",
            set_line("first", "1"),
            set_line("second", "\"22\"")
        )
    );
    srv.stop().await;
}

#[tokio::test]
async fn variables_api_answers_404_for_unknown_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    assert_eq!(srv.http_get("/api/rooms/nope/variables").await.0, 404);
    assert_eq!(srv.http_get("/healthz").await, (200, "ok\n".into()));
    srv.stop().await;
}

#[tokio::test]
async fn empty_join_frame_policy_sends_a_lone_newline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.empty_join_frame = true;
    let srv = TestServer::start(cfg).await;
    let mut a = Client::join(&srv.url(), "8", "alice").await;
    assert_eq!(a.frame().await, "\n");
    srv.stop().await;
}

#[tokio::test]
async fn one_message_per_frame_policy_never_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.one_message_per_frame = true;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut a = Client::join(&url, "9", "alice").await;
    let mut b = Client::join(&url, "9", "bob").await;
    a.send(
        &(0..20)
            .map(|i| set_line("v", &i.to_string()))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            b.frame().await,
            format!("{}\n", set_line("v", &i.to_string()))
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn rename_and_delete_when_enabled_change_state_without_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.allow_rename = true;
    cfg.cloud.allow_delete = true;
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut a = Client::join(&url, "10", "alice").await;
    let mut b = Client::join(&url, "10", "bob").await;
    a.send(
        &[
            set_line("a", "1"),
            set_line("b", "2"),
            r#"{"method":"rename","name":"☁ a","new_name":"☁ c"}"#.into(),
            r#"{"method":"delete","name":"☁ b"}"#.into(),
            set_line("d", "4"),
        ]
        .join("\n"),
    )
    .await;
    assert_eq!(
        b.lines(3).await,
        vec![set_line("a", "1"), set_line("b", "2"), set_line("d", "4")]
    );
    let (_, body) = srv.http_get("/api/rooms/10/variables").await;
    assert_eq!(body, r#"{"☁ c":1,"☁ d":4}"#);
    srv.stop().await;
}

#[tokio::test]
async fn rename_and_delete_are_ignored_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let mut observer = Client::join(&srv.url(), "11", "observer").await;
    let mut a = Client::join(&srv.url(), "11", "alice").await;
    a.send(
        &[
            set_line("a", "1"),
            r#"{"method":"rename","name":"☁ a","new_name":"☁ c"}"#.into(),
            r#"{"method":"delete","name":"☁ a"}"#.into(),
            r#"{"method":"delete","name":"☁ unknown"}"#.into(),
            set_line("done", "1"),
        ]
        .join("\n"),
    )
    .await;
    observer.lines(2).await;
    let (_, body) = srv.http_get("/api/rooms/11/variables").await;
    assert_eq!(body, r#"{"☁ a":1,"☁ done":1}"#);
    srv.stop().await;
}

#[tokio::test]
async fn the_first_offered_subprotocol_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = srv.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "bearer=abc, other".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bearer=abc");
    srv.stop().await;
}

#[tokio::test]
async fn an_idle_room_unloads_and_reloads_its_values_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.room_idle = std::time::Duration::from_millis(50);
    let srv = TestServer::start(cfg).await;
    let mut observer = Client::join(&srv.url(), "12", "observer").await;
    let mut a = Client::join(&srv.url(), "12", "alice").await;
    a.set("kept", "5").await;
    observer.lines(1).await;
    drop(a);
    drop(observer);
    // Wait (bounded) until the room has unloaded.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, m) = srv.http_get("/metrics").await;
        if m.contains("nimbus_cloud_rooms 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room never unloaded: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut b = Client::join(&srv.url(), "12", "bob").await;
    assert_eq!(b.frame().await, format!("{}\n", set_line("kept", "5")));
    srv.stop().await;
}

#[tokio::test]
async fn joins_racing_a_room_that_unloads_land_on_a_fresh_room_with_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // The room unloads as soon as it is empty: every join below races an unload.
    cfg.cloud.room_idle = std::time::Duration::from_millis(1);
    let srv = TestServer::start(cfg).await;
    for i in 0..40u32 {
        let mut c = Client::join(&srv.url(), "13", "racer").await;
        if i > 0 {
            // The value written by the previous (now unloaded) room instance.
            let want = format!("{}\n", set_line("n", &(i - 1).to_string()));
            assert_eq!(c.frame().await, want, "join {i}");
        }
        c.set("n", &i.to_string()).await;
        drop(c);
        tokio::time::sleep(std::time::Duration::from_millis(i as u64 % 3)).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_send_interval_keeps_every_update_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.send_interval = std::time::Duration::from_millis(200);
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut b = Client::join(&url, "13", "bob").await;
    let mut a = Client::join(&url, "13", "alice").await;
    // Three frames from a: b still receives all three updates, in order, in at most
    // three frames (usually one, when they land in one interval).
    for i in 0..3 {
        a.set("v", &i.to_string()).await;
    }
    let expected: Vec<String> = (0..3).map(|i| set_line("v", &i.to_string())).collect();
    assert_eq!(b.lines(3).await, expected);
    srv.stop().await;
}

#[tokio::test]
async fn a_busy_connection_gathers_updates_into_fewer_frames_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.edge.max_batch_delay = std::time::Duration::from_millis(100);
    let srv = TestServer::start(cfg).await;
    let url = srv.url();
    let mut b = Client::join(&url, "14", "bob").await;
    let mut a = Client::join(&url, "14", "alice").await;
    // Idle: the first update is written on its own.
    a.set("v", "0").await;
    assert_eq!(b.frame().await, format!("{}\n", set_line("v", "0")));
    // Busy: updates sent right after b's last write wait for the budget and leave
    // together. Ten sets, each in its own frame from a.
    for i in 1..=10 {
        a.set("v", &i.to_string()).await;
    }
    let mut lines = Vec::new();
    let mut frames = 0;
    while lines.len() < 10 {
        let f = b.frame().await;
        frames += 1;
        lines.extend(f.lines().map(str::to_owned));
    }
    let expected: Vec<String> = (1..=10).map(|i| set_line("v", &i.to_string())).collect();
    assert_eq!(lines, expected, "every update, in order");
    assert!(
        frames < 10,
        "updates shared frames ({frames} frames for 10)"
    );
    // The room wrote them itself: the idle update at once, the held ones when b's budget
    // ended (the connection task was not woken for them).
    let (_, m) = srv.http_get("/metrics").await;
    let direct: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("nimbus_cloud_direct_writes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no direct-write counter: {m}"));
    assert!(direct >= 2, "{direct} frames written by the room");
    srv.stop().await;
}
