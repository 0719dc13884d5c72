//! Delivery over real sockets on 127.0.0.1, to the receiver in `common`. Waits are bounded
//! (30 s) and only for correctness; nothing here asserts speed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{bounded, event, metric, receiver, wait_for, Mode};
use nimbus_webhook::{EndpointConfig, Secret, WebhookMetrics, Webhooks};
use prometheus_client::registry::Registry;

fn secrets() -> Vec<Secret> {
    vec![
        Secret::from_bytes(&[0x11; 24]).expect("secret"),
        Secret::from_bytes(&[0x22; 32]).expect("secret"),
    ]
}

/// Quick retries for tests.
fn config(url: &str) -> EndpointConfig {
    let mut cfg = EndpointConfig::new(url, secrets());
    cfg.backoff_base = Duration::from_millis(5);
    cfg.backoff_cap = Duration::from_millis(50);
    cfg.linger = Duration::from_millis(5);
    cfg.timeout = Duration::from_secs(5);
    cfg
}

fn start(cfgs: Vec<EndpointConfig>) -> (Webhooks, Registry) {
    let mut registry = Registry::with_prefix("nimbus");
    let metrics = WebhookMetrics::register(&mut registry);
    (Webhooks::start(cfgs, &metrics).expect("start"), registry)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Per room, the sequence numbers in the order received.
fn per_room(events: &[(String, String, String, serde_json::Value)]) -> HashMap<String, Vec<u64>> {
    let mut rooms: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, _, room, data) in events {
        rooms
            .entry(room.clone())
            .or_default()
            .push(data["seq"].as_u64().expect("seq"));
    }
    rooms
}

#[tokio::test]
async fn every_event_arrives_once_in_room_order_when_the_first_attempts_fail_with_500() {
    let (rx, url) = receiver(Mode::FailFirst(3, 500), &secrets()).await;
    let mut cfg = config(&format!("{url}/hook"));
    cfg.max_batch_events = 7;
    let (hooks, registry) = start(vec![cfg]);
    let rooms = ["a", "b", "c"];
    for seq in 0..300u64 {
        let room = rooms[(seq % 3) as usize];
        hooks.publish(event(
            format!("ev-{seq}"),
            room,
            "CLOUD_SET",
            &format!(r#"{{"seq":{seq}}}"#),
        ));
    }
    wait_for("300 events", || rx.events().len() == 300).await;
    rx.assert_signatures_valid();
    let events = rx.events();
    for (room, seqs) in per_room(&events) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "room {room} out of order");
        assert_eq!(seqs.len(), 100, "room {room}");
    }
    // The failed attempts were one batch, retried under the same webhook-id.
    let reqs = rx.requests();
    assert!(reqs.iter().take(3).all(|r| !r.accepted));
    assert!(reqs.iter().take(4).all(|r| r.msg_id == reqs[0].msg_id));
    assert_eq!(reqs[0].events, reqs[3].events);
    // Accepted requests carry distinct ids.
    let accepted: Vec<_> = reqs.iter().filter(|r| r.accepted).collect();
    let ids: std::collections::HashSet<_> = accepted.iter().map(|r| &r.msg_id).collect();
    assert_eq!(ids.len(), accepted.len());
    wait_for("metrics", || {
        metric(
            &registry,
            r#"nimbus_webhook_delivered_events_total{endpoint="0"}"#,
        ) == 300.0
    })
    .await;
    assert_eq!(
        metric(
            &registry,
            r#"nimbus_webhook_retried_requests_total{endpoint="0"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &registry,
            r#"nimbus_webhook_delivery_latency_seconds_count{endpoint="0"}"#
        ),
        300.0
    );
    let report = bounded("shutdown", hooks.shutdown(soon())).await;
    assert_eq!(report.undelivered, 0);
}

#[tokio::test]
async fn a_429_is_retried_like_a_5xx() {
    let (rx, url) = receiver(Mode::FailFirst(2, 429), &secrets()).await;
    let (hooks, _registry) = start(vec![config(&url)]);
    hooks.publish(event("only", "r", "CLOUD_SET", "1"));
    wait_for("the event", || rx.events().len() == 1).await;
    assert_eq!(rx.requests().len(), 3);
    rx.assert_signatures_valid();
}

#[tokio::test]
async fn a_batch_refused_with_400_is_dropped_and_counted_without_retries() {
    let (rx, url) = receiver(Mode::Always(400), &secrets()).await;
    let mut cfg = config(&url);
    cfg.max_batch_events = 2;
    let (hooks, registry) = start(vec![cfg]);
    for i in 0..5 {
        hooks.publish(event(format!("e{i}"), "r", "CLOUD_SET", "{}"));
    }
    let dropped = r#"nimbus_webhook_dropped_events_total{endpoint="0",reason="permanent"}"#;
    wait_for("5 dropped", || metric(&registry, dropped) == 5.0).await;
    // One request per batch: nothing retried.
    let reqs = rx.requests();
    assert_eq!(reqs.iter().map(|r| r.events.len()).sum::<usize>(), 5);
    assert_eq!(
        metric(
            &registry,
            r#"nimbus_webhook_retried_requests_total{endpoint="0"}"#
        ),
        0.0
    );
    assert_eq!(hooks.queue_depth(0), Some((0, 0)));
    rx.assert_signatures_valid();
}

#[tokio::test]
async fn a_batch_is_given_up_after_max_attempts_with_one_webhook_id() {
    let (rx, url) = receiver(Mode::Always(503), &secrets()).await;
    let mut cfg = config(&url);
    cfg.max_attempts = 3;
    let (hooks, registry) = start(vec![cfg]);
    hooks.publish(event("e1", "r", "CLOUD_SET", "{}"));
    let gave_up = r#"nimbus_webhook_dropped_events_total{endpoint="0",reason="gave_up"}"#;
    wait_for("gave up", || metric(&registry, gave_up) == 1.0).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.msg_id == reqs[0].msg_id));
    assert_eq!(hooks.queue_depth(0), Some((0, 0)));
}

#[tokio::test]
async fn a_receiver_that_never_answers_costs_bounded_memory_and_publish_still_returns() {
    let (rx, url) = receiver(Mode::Hang, &secrets()).await;
    let mut cfg = config(&url);
    cfg.max_batch_events = 10;
    cfg.max_batch_bytes = 2048;
    cfg.queue_events = 50;
    cfg.queue_bytes = 8192;
    cfg.timeout = Duration::from_millis(200);
    let (hooks, registry) = start(vec![cfg]);
    let gauge = r#"nimbus_webhook_queue_bytes{endpoint="0"}"#;
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(150));
    for i in 0..5000 {
        hooks.publish(event(format!("e{i}"), "r", "CLOUD_SET", &body));
        if i % 100 == 0 {
            // Let the delivery task run (it must get a batch in flight and hang).
            tokio::task::yield_now().await;
        }
        assert!(metric(&registry, gauge) <= 8192.0);
        let (n, bytes) = hooks.queue_depth(0).expect("endpoint");
        assert!(n <= 50 && bytes <= 8192, "{n} events, {bytes} bytes");
    }
    wait_for("a request to hang", || !rx.requests().is_empty()).await;
    let full = r#"nimbus_webhook_dropped_events_total{endpoint="0",reason="queue_full"}"#;
    assert!(metric(&registry, full) > 0.0);
    let report = bounded(
        "shutdown",
        hooks.shutdown(Instant::now() + Duration::from_millis(300)),
    )
    .await;
    assert!(
        report.undelivered > 0 && report.undelivered <= 50,
        "{report:?}"
    );
    assert_eq!(metric(&registry, gauge), 0.0);
    // Publishing after shutdown is a counted drop, not an error.
    hooks.publish(event("late", "r", "CLOUD_SET", "{}"));
    assert!(
        metric(
            &registry,
            r#"nimbus_webhook_dropped_events_total{endpoint="0",reason="shutdown"}"#
        ) > report.undelivered as f64
    );
}

#[tokio::test]
async fn batches_respect_max_events_and_max_bytes() {
    let (rx, url) = receiver(Mode::FailFirst(0, 200), &secrets()).await;
    let mut by_events = config(&format!("{url}/events"));
    by_events.max_batch_events = 5;
    by_events.linger = Duration::from_secs(3600);
    let mut by_bytes = config(&format!("{url}/bytes"));
    by_bytes.max_batch_bytes = 1024;
    by_bytes.linger = Duration::from_secs(3600);
    let (hooks, _registry) = start(vec![by_events, by_bytes]);
    let body = format!(r#"{{"pad":"{}"}}"#, "y".repeat(250));
    for i in 0..23 {
        hooks.publish(event(format!("e{i}"), "r", "CLOUD_SET", &body));
    }
    // Full batches go at once; the rest waits for the linger, which shutdown cuts short.
    let report = bounded("shutdown", hooks.shutdown(soon())).await;
    assert_eq!(report.undelivered, 0);
    let reqs = rx.requests();
    for path in ["/events", "/bytes"] {
        let mine: Vec<_> = reqs.iter().filter(|r| r.path == path).collect();
        let ids: Vec<String> = mine
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.0.clone()))
            .collect();
        let want: Vec<String> = (0..23).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want, "{path}");
        for r in &mine {
            if path == "/events" {
                assert!(r.events.len() <= 5, "{} events", r.events.len());
            } else {
                assert!(r.body_len <= 1024, "{} bytes", r.body_len);
            }
        }
    }
    // Full batches were full: 5 per request, and as many ~330-byte events as fit in a
    // 1 KiB body (two: three would need ~1,080 bytes with the envelope).
    let sizes: Vec<usize> = reqs
        .iter()
        .filter(|r| r.path == "/events")
        .map(|r| r.events.len())
        .collect();
    assert_eq!(sizes, [5, 5, 5, 5, 3]);
    let sizes: Vec<usize> = reqs
        .iter()
        .filter(|r| r.path == "/bytes")
        .map(|r| r.events.len())
        .collect();
    assert_eq!(sizes, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]);
    rx.assert_signatures_valid();
}

#[tokio::test]
async fn endpoints_receive_only_the_kinds_and_rooms_they_filter_for() {
    let (rx, url) = receiver(Mode::FailFirst(0, 200), &secrets()).await;
    let mut cloud = config(&format!("{url}/cloud"));
    cloud.events = vec!["CLOUD_SET".into()];
    let mut games = config(&format!("{url}/games"));
    games.rooms = vec!["game-*".into(), "lobby".into()];
    let all = config(&format!("{url}/all"));
    let (hooks, _registry) = start(vec![cloud, games, all]);
    assert!(hooks.wants("DOC_CHANGED", "lobby"));
    let sent = [
        ("1", "lobby", "CLOUD_SET"),
        ("2", "game-7", "ROOM_JOIN"),
        ("3", "other", "CLOUD_SET"),
        ("4", "lobby2", "DOC_CHANGED"),
        ("5", "game-", "DOC_CHANGED"),
    ];
    for (id, room, kind) in sent {
        hooks.publish(event(id, room, kind, "{}"));
    }
    let report = bounded("shutdown", hooks.shutdown(soon())).await;
    assert_eq!(report.undelivered, 0);
    let got = |path: &str| -> Vec<String> {
        rx.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.events.into_iter().map(|e| e.0))
            .collect()
    };
    assert_eq!(got("/cloud"), ["1", "3"]);
    assert_eq!(got("/games"), ["1", "2", "5"]);
    assert_eq!(got("/all"), ["1", "2", "3", "4", "5"]);
    rx.assert_signatures_valid();
}

#[tokio::test]
async fn the_payload_carries_id_type_room_time_and_the_body_verbatim() {
    let (rx, url) = receiver(Mode::FailFirst(0, 200), &secrets()).await;
    let (hooks, _registry) = start(vec![config(&url)]);
    let mut ev = event(
        "ev-1",
        "lobby",
        "CLOUD_SET",
        r#"{"room":"lobby","value":1.5}"#,
    );
    ev.at = std::time::UNIX_EPOCH + Duration::from_millis(1_777_636_800_120);
    hooks.publish(ev);
    bounded("shutdown", hooks.shutdown(soon())).await;
    let events = rx.events();
    assert_eq!(
        events,
        [(
            "ev-1".to_owned(),
            "CLOUD_SET".to_owned(),
            "lobby".to_owned(),
            serde_json::json!({"room": "lobby", "value": 1.5})
        )]
    );
    rx.assert_signatures_valid();
}

#[tokio::test]
async fn start_refuses_an_invalid_endpoint_naming_its_index_and_field() {
    let metrics = WebhookMetrics::default();
    let ok = config("http://127.0.0.1:9/");
    let bad = EndpointConfig::new("ftp://127.0.0.1/", secrets());
    let err = Webhooks::start(vec![ok, bad], &metrics).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("endpoint 1") && text.contains("`url`"),
        "{text}"
    );
}

#[tokio::test]
async fn a_408_is_retried_and_a_redirect_is_a_permanent_failure() {
    let (rx, url) = receiver(Mode::FailFirst(1, 408), &secrets()).await;
    let (hooks, _registry) = start(vec![config(&url)]);
    hooks.publish(event("e1", "r", "CLOUD_SET", "{}"));
    wait_for("the event", || rx.events().len() == 1).await;
    assert_eq!(rx.requests().len(), 2);

    let (rx, url) = receiver(Mode::Always(302), &secrets()).await;
    let (hooks, registry) = start(vec![config(&url)]);
    hooks.publish(event("e1", "r", "CLOUD_SET", "{}"));
    let dropped = r#"nimbus_webhook_dropped_events_total{endpoint="0",reason="permanent"}"#;
    wait_for("dropped", || metric(&registry, dropped) == 1.0).await;
    assert_eq!(rx.requests().len(), 1);
}

#[tokio::test]
async fn shutdown_sends_lingering_events_at_once_and_reports_nothing_left() {
    let (rx, url) = receiver(Mode::FailFirst(0, 200), &secrets()).await;
    let mut cfg = config(&url);
    cfg.linger = Duration::from_secs(3600);
    let (hooks, _registry) = start(vec![cfg]);
    for i in 0..3 {
        hooks.publish(event(format!("e{i}"), "r", "CLOUD_SET", "{}"));
    }
    // Nothing is sent yet: the first event lingers for an hour.
    assert_eq!(hooks.queue_depth(0).map(|(n, _)| n), Some(3));
    let report = bounded("shutdown", hooks.shutdown(soon())).await;
    assert_eq!(report.undelivered, 0);
    assert_eq!(rx.events().len(), 3);
    assert_eq!(rx.requests().len(), 1);
}
