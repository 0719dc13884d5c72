//! GatewayClient against a real `nimbus_server::Server` on 127.0.0.1, through a TCP
//! proxy that cuts the connection 1,000 times while cloud sets stream in: the
//! CLOUD_* values the client hands out are exactly the produced ones, in order.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_client::gateway::{GatewayClient, GatewayError, GatewayOptions, ShardState};
use nimbus_proto::cloud::CloudValue;
use nimbus_server::store::{MemoryBackend, Store};
use nimbus_server::{Config, GatewayConfig, GatewayToken, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);
const CUTS: u64 = 1000;

/// A gateway that takes token `tok` and identifies without a window.
fn open_gateway() -> GatewayConfig {
    GatewayConfig {
        tokens: vec![GatewayToken::parse("tok").unwrap()],
        identify_window: Duration::ZERO,
        ..GatewayConfig::default()
    }
}

async fn start_server(
    gateway: GatewayConfig,
) -> (
    SocketAddr,
    Arc<nimbus_server::hub::Hub>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway,
        ..Config::default()
    };
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
    (addr, hub, stop, task)
}

/// A client started with `token` (intents 1) that got its READY, and the READY's data.
async fn ready_client(options: GatewayOptions, token: &str) -> (GatewayClient, serde_json::Value) {
    let client = GatewayClient::new(options);
    client.start(token, 1).unwrap();
    let (t, ready) = tokio::time::timeout(WAIT, client.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, "READY");
    (client, ready)
}

/// A loopback TCP proxy; `cut()` aborts the current connection (both directions).
struct Proxy {
    addr: SocketAddr,
    current: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
        let cur = current.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                *cur.lock().unwrap() = Some(task.abort_handle());
            }
        });
        Proxy { addr, current }
    }

    fn cut(&self) {
        if let Some(h) = self.current.lock().unwrap().take() {
            h.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_forced_disconnects_lose_duplicate_or_reorder_nothing() {
    let (addr, hub, stop, task) = start_server(GatewayConfig {
        replay_buffer: 1 << 16,
        ..open_gateway()
    })
    .await;
    let proxy = Proxy::start(addr).await;
    let (client, ready) = ready_client(
        GatewayOptions {
            url: format!("ws://{}/gateway", proxy.addr),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
            ..GatewayOptions::default()
        },
        "Bot tok",
    )
    .await;
    let client = Arc::new(client);
    assert!(ready["resume_gateway_url"]
        .as_str()
        .unwrap()
        .contains(&proxy.addr.to_string()));

    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (hub, received, done) = (hub.clone(), received.clone(), done.clone());
        tokio::spawn(async move {
            let mut produced: u64 = 0;
            while !done.load(Ordering::Relaxed) {
                if produced.saturating_sub(received.load(Ordering::Relaxed)) > 500 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                hub.set_variable("stream", "☁ n", CloudValue::Number(produced.to_string()))
                    .await
                    .unwrap();
                produced += 1;
                if produced.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            produced
        })
    };
    let consumer = {
        let (client, received) = (client.clone(), received.clone());
        tokio::spawn(async move {
            let mut values = Vec::new();
            let mut resumed = 0u64;
            loop {
                let Some((t, d)) = client.next_event().await else {
                    break;
                };
                match t.as_str() {
                    "CLOUD_SET" | "CLOUD_CREATE" => {
                        values.push(d["value"].as_u64().unwrap());
                        received.store(values.len() as u64, Ordering::Relaxed);
                    }
                    "RESUMED" => resumed += 1,
                    "READY" => panic!("a new session: the old one was lost"),
                    _ => {}
                }
            }
            (values, resumed)
        })
    };
    // 1,000 cuts, each once the client is active again after the previous one.
    for i in 0..CUTS {
        tokio::time::timeout(WAIT, async {
            while client.metrics().resumes < i || client.state() != ShardState::Active {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("client resumes after every cut");
        proxy.cut();
    }
    tokio::time::timeout(WAIT, async {
        while client.metrics().resumes < CUTS || client.state() != ShardState::Active {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();
    tokio::time::timeout(WAIT, async {
        while received.load(Ordering::Relaxed) < produced {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every produced event arrives");
    client.close().await;
    assert!(matches!(
        client.wait().await,
        Ok(()) | Err(GatewayError::Closed)
    ));
    drop(client);
    let (values, resumed) = consumer.await.unwrap();
    assert_eq!(
        values,
        (0..produced).collect::<Vec<_>>(),
        "no loss, duplicate or reordering"
    );
    assert_eq!(resumed, CUTS);
    assert!(
        produced > 1000,
        "events streamed during the cuts ({produced})"
    );
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn shard_manager_starts_buckets_and_splits_rooms() {
    use nimbus_client::gateway::{fetch_gateway_bot, ShardManager, ShardManagerConfig};
    let (addr, hub, stop, task) = start_server(GatewayConfig {
        max_concurrency: 2,
        identify_window: Duration::from_millis(50),
        ..open_gateway()
    })
    .await;
    // GET /gateway/bot from nimbus gives the URL and the buckets.
    let bot = fetch_gateway_bot(&format!("http://{addr}"), "Bot tok")
        .await
        .unwrap();
    assert_eq!(bot.url, format!("ws://{addr}/gateway"));
    assert_eq!(bot.session_start_limit.max_concurrency, 2);
    assert!(fetch_gateway_bot(&format!("http://{addr}"), "wrong")
        .await
        .is_err());
    let mut config = ShardManagerConfig::from_gateway_bot(GatewayOptions::default(), &bot);
    config.total_shards = 3;
    config.identify_window = Duration::from_millis(50);
    let manager = ShardManager::start(config, "tok", 1).await.unwrap();
    assert_eq!(manager.shards().len(), 3);
    let mut ready = [false; 3];
    while ready.iter().any(|r| !r) {
        let (id, t, d) = tokio::time::timeout(WAIT, manager.next_event())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t, "READY");
        assert_eq!(d["shard"][0], id);
        assert_eq!(d["shard"][1], 3);
        ready[usize::try_from(id).unwrap()] = true;
    }
    let rooms: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    for r in &rooms {
        hub.set_variable(r, "☁ v", CloudValue::Number("1".into()))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..rooms.len() {
        let (id, t, d) = tokio::time::timeout(WAIT, manager.next_event())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t, "CLOUD_CREATE");
        let room = d["room"].as_str().unwrap().to_owned();
        assert_eq!(
            nimbus_proto::gateway::shard_of(&room, 3),
            id,
            "{room} on shard {id}"
        );
        seen.push(room);
    }
    seen.sort();
    let mut want = rooms.clone();
    want.sort();
    assert_eq!(seen, want, "every room's event once");
    manager.close().await;
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn zlib_stream_against_nimbus_including_a_resume() {
    let (addr, hub, stop, task) = start_server(open_gateway()).await;
    let proxy = Proxy::start(addr).await;
    let (client, _) = ready_client(
        GatewayOptions {
            url: format!("ws://{}/gateway", proxy.addr),
            compress: true,
            backoff_base: Duration::from_millis(10),
            ..GatewayOptions::default()
        },
        "tok",
    )
    .await;
    let big = "7".repeat(50_000);
    hub.set_variable("z", "☁ big", CloudValue::String(big.clone()))
        .await
        .unwrap();
    let (t, d) = tokio::time::timeout(WAIT, client.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.as_str(), d["value"].as_str()),
        ("CLOUD_CREATE", Some(big.as_str()))
    );
    proxy.cut();
    hub.set_variable("z", "☁ big", CloudValue::String("8".into()))
        .await
        .unwrap();
    let mut names = Vec::new();
    while names.len() < 2 {
        let (t, d) = tokio::time::timeout(WAIT, client.next_event())
            .await
            .unwrap()
            .unwrap();
        names.push((t, d["value"].clone()));
    }
    let names: Vec<&str> = names.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        names == ["CLOUD_SET", "RESUMED"] || names == ["RESUMED", "CLOUD_SET"],
        "{names:?}"
    );
    assert!(client
        .connection_urls()
        .iter()
        .all(|u| u.contains("compress=zlib-stream")));
    client.close().await;
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_holds_a_bounded_queue_and_later_gets_every_event_in_order() {
    let (addr, hub, stop, task) = start_server(open_gateway()).await;
    let (client, _) = ready_client(
        GatewayOptions {
            url: format!("ws://{addr}/gateway"),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
            max_pending_events: 8,
            ..GatewayOptions::default()
        },
        "tok",
    )
    .await;
    // 200 changes while nobody reads: at most 8 wait in the client, the rest stay with the
    // server (the shard closed its connection and waits for the consumer).
    for i in 0..200u32 {
        hub.set_variable("q", "☁ n", CloudValue::Number(i.to_string()))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(client.state(), ShardState::Disconnected { .. }) {
        assert!(tokio::time::Instant::now() < deadline, "never backed off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Now the consumer reads: every change, once, in order (resumes in between).
    let mut values = Vec::new();
    let mut resumed = 0;
    while values.len() < 200 {
        let (t, d) = tokio::time::timeout(WAIT, client.next_event())
            .await
            .unwrap()
            .unwrap();
        match t.as_str() {
            "CLOUD_CREATE" | "CLOUD_SET" => values.push(d["value"].as_u64().unwrap()),
            "RESUMED" => resumed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(values, (0..200).collect::<Vec<u64>>());
    // The server appends RESUMED after what it replays: the last resume's comes after the
    // 200 changes (and nothing else does: no change twice).
    while resumed == 0 {
        let (t, _) = tokio::time::timeout(WAIT, client.next_event())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t, "RESUMED", "only RESUMED after the last change");
        resumed += 1;
    }
    assert_eq!(client.metrics().identifies, 1, "never a new session");
    client.close().await;
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
