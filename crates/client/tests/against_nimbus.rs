//! CloudConnection against a real nimbus server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use nimbus_client::{Backoff, CloudConnection, CloudError, CloudValue, Event, HostProfile};
use nimbus_server::{Config, Server};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

struct Srv {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &std::path::Path, addr: Option<SocketAddr>) -> Srv {
    let config = Config {
        listen: addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        data_dir: dir.into(),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run_until(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Srv { addr, stop, task }
}

impl Srv {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn conn(addr: SocketAddr, user: &str) -> CloudConnection {
    CloudConnection::builder("77")
        .cloud_host(format!("ws://{addr}"))
        .username(user)
        .profile(HostProfile::TURBOWARP)
        .rate_limit(0.0)
        .backoff(Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
        })
        .build()
        .unwrap()
}

async fn next_matching(
    stream: &mut futures_util::stream::BoxStream<'static, Event>,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = stream.next().await.expect("stream open");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test]
async fn set_reaches_others_as_set_and_us_only_as_change() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let a = conn(srv.addr, "alice");
    let b = conn(srv.addr, "bob");
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.connect().await.unwrap();
    b.connect().await.unwrap();

    a.set_cloud_variable("score", 42).await.unwrap();
    let ev = next_matching(&mut b_events, |e| matches!(e, Event::Set(_))).await;
    let v = ev.variable().unwrap();
    assert_eq!(
        (v.name.as_str(), &v.value, v.by_us),
        ("☁ score", &CloudValue::from(42), false)
    );
    assert_eq!(b.get_cloud_variable("☁ score"), Some(CloudValue::from(42)));

    // a saw its own change as `change` (by_us) and never as `set`: b's next set arrives first.
    b.set_cloud_variable("☁️ other", "7").await.unwrap();
    let first = next_matching(&mut a_events, |e| {
        matches!(e, Event::Change(_) | Event::Set(_))
    })
    .await;
    assert!(
        matches!(&first, Event::Change(v) if v.by_us && v.name == "☁ score"),
        "{first:?}"
    );
    let next = next_matching(&mut a_events, |e| matches!(e, Event::Set(_))).await;
    assert_eq!(
        next.variable().unwrap().name,
        "☁ other",
        "emoji prefix normalised"
    );
    a.close().await;
    b.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn joining_fills_the_local_cache_and_fires_create() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let a = conn(srv.addr, "alice");
    a.connect().await.unwrap();
    a.create_cloud_variable("High score", 10).await.unwrap();
    let b = conn(srv.addr, "bob");
    let mut events = b.events();
    // Whether b gets it from the join frame or live, it is new to b: a `create` event.
    b.connect().await.unwrap();
    let ev = next_matching(&mut events, |e| matches!(e, Event::Create(_))).await;
    assert_eq!(ev.variable().unwrap().bare_name(), "High score");
    assert_eq!(
        b.get_cloud_variable("High score"),
        Some(CloudValue::from(10))
    );
    srv.stop().await;
}

#[tokio::test]
async fn reconnects_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let addr = srv.addr;
    let a = conn(addr, "alice");
    let mut events = a.events();
    a.connect().await.unwrap();
    srv.stop().await;
    let ev = next_matching(&mut events, |e| matches!(e, Event::Disconnect { .. })).await;
    assert!(
        matches!(
            ev,
            Event::Disconnect {
                code: Some(1001),
                ..
            }
        ),
        "{ev:?}"
    );
    let srv = start(dir.path(), Some(addr)).await;
    next_matching(&mut events, |e| matches!(e, Event::Connect)).await;
    a.set_cloud_variable("after", 1).await.unwrap();
    let b = conn(addr, "bob");
    let mut b_events = b.events();
    b.connect().await.unwrap();
    next_matching(
        &mut b_events,
        |e| matches!(e, Event::Set(v) if v.name == "☁ after"),
    )
    .await;
    a.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_refused_username_is_fatal_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let a = conn(srv.addr, "bad name!");
    let mut events = a.events();
    let result = tokio::time::timeout(WAIT, a.run()).await.unwrap();
    assert!(
        matches!(result, Err(CloudError::Fatal { code: 4002, .. })),
        "{result:?}"
    );
    let ev = next_matching(&mut events, |e| matches!(e, Event::Disconnect { .. })).await;
    assert!(matches!(
        ev,
        Event::Disconnect {
            code: Some(4002),
            ..
        }
    ));
    srv.stop().await;
}

#[tokio::test]
async fn paced_sends_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let a = CloudConnection::builder("78")
        .cloud_host(format!("ws://{}", srv.addr))
        .username("alice")
        .profile(HostProfile::SCRATCH)
        .build()
        .unwrap();
    let b = CloudConnection::builder("78")
        .cloud_host(format!("ws://{}", srv.addr))
        .username("bob")
        .build()
        .unwrap();
    let mut events = b.events();
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                a.set_cloud_variable("n", i).await.unwrap();
            }
        })
    };
    for i in 0..5 {
        let ev = next_matching(&mut events, |e| matches!(e, Event::Set(_))).await;
        assert_eq!(ev.variable().unwrap().value, CloudValue::from(i));
    }
    sender.await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn wss_to_a_plain_server_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let c = CloudConnection::builder("1")
        .cloud_host(format!("wss://{}", srv.addr))
        .build()
        .unwrap();
    let result = tokio::time::timeout(WAIT, c.connect()).await.unwrap();
    assert!(
        matches!(result, Err(CloudError::WebSocket(_))),
        "{result:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_message_over_the_clients_bound_ends_its_connection_and_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let a = conn(srv.addr, "alice");
    let mut a_events = a.events();
    a.connect().await.unwrap();
    let long = "1".repeat(5_000);
    a.set_cloud_variable("long", long.as_str()).await.unwrap();
    next_matching(&mut a_events, |e| matches!(e, Event::Change(_))).await;
    // b takes messages of up to 1 KiB: the handshake reply holding the 5,000-digit value
    // ends its connection, and b does not hold the value.
    let b = CloudConnection::builder("77")
        .cloud_host(format!("ws://{}", srv.addr))
        .username("bob")
        .profile(HostProfile::TURBOWARP)
        .reconnect(false)
        .max_message_bytes(1024)
        .build()
        .unwrap();
    let mut b_events = b.events();
    b.connect().await.unwrap();
    let ev = next_matching(&mut b_events, |e| matches!(e, Event::Disconnect { .. })).await;
    assert!(
        matches!(&ev, Event::Disconnect { code: None, reason } if reason.contains("too long")),
        "{ev:?}"
    );
    assert_eq!(b.get_cloud_variable("long"), None);
    // With the default bound the same reply arrives whole.
    let c = conn(srv.addr, "carol");
    let mut c_events = c.events();
    c.connect().await.unwrap();
    next_matching(&mut c_events, |e| matches!(e, Event::Create(_))).await;
    assert_eq!(
        c.get_cloud_variable("long"),
        Some(CloudValue::from(long.as_str()))
    );
    a.close().await;
    b.close().await;
    c.close().await;
    srv.stop().await;
}
