//! Three real `nimbus serve --redis` processes and a real `redis-server` on loopback:
//! a node killed with `kill -9` mid-stream loses nothing another client already saw (cloud
//! rooms, document rooms), a gateway session of the killed node resumes on another one, and
//! the webhook events the killed lease holder had queued are delivered by the next holder.
//!
//! Needs `redis-server` (Debian: `apt-get install redis-server`; `.ci/run` installs it).
//! Without it the test prints `SKIPPED` and returns, unless `NIMBUS_REQUIRE_REDIS=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{doc_client, free_port, text_of, WAIT};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const GATEWAY_TOKEN: &str = "crash-test-token";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_REDIS").is_none(),
            "redis-server is required (NIMBUS_REQUIRE_REDIS) but not installed"
        );
        eprintln!("SKIPPED: redis-server not installed (apt-get install redis-server)");
    }
    found
}

fn start_redis(dir: &std::path::Path, port: u16) -> Killed {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed (and waited for) on every path, a failed start included.
    let child = Killed(child);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_node(dir: &std::path::Path, port: u16, redis: u16) -> Killed {
    start_node_with(dir, port, redis, &[])
}

fn start_node_with(dir: &std::path::Path, port: u16, redis: u16, extra: &[&str]) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--redis", &format!("redis://127.0.0.1:{redis}/")])
        .args(["--gateway-token", GATEWAY_TOKEN])
        // Sets go back to back: lift the per-connection set rate (tested in hostile_edge),
        // so no set is dropped as over the rate.
        .args(["--sets-per-sec", "1000000", "--sets-burst", "1000000"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

async fn join(port: u16, user: &str) -> Ws {
    let deadline = Instant::now() + WAIT;
    let mut ws = loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await {
            Ok((ws, _)) => break ws,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node never came up: {e}"),
        }
    };
    ws.send(Message::text(format!(
        r#"{{"method":"handshake","user":"{user}","project_id":"42"}}"#
    )))
    .await
    .unwrap();
    ws
}

/// The values of `x` in the next text frame (a frame may hold several lines).
async fn next_values(ws: &mut Ws) -> Vec<u64> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return t
                .as_str()
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["value"].as_u64().unwrap()
                })
                .collect();
        }
    }
}

#[tokio::test]
async fn a_node_killed_with_kill_9_mid_stream_loses_nothing_that_was_seen() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let _redis = start_redis(dir.path(), redis_port);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Option<Killed>> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let d = dir.path().join(format!("node{i}"));
            Some(start_node(&d, p, redis_port))
        })
        .collect();
    let mut observer = join(ports[1], "obs").await;
    let mut writer = join(ports[0], "w").await;
    // The observer is in the room once it sees the writer's first value.
    writer
        .send(Message::text(r#"{"method":"set","name":"☁ x","value":1}"#))
        .await
        .unwrap();
    let mut seen = next_values(&mut observer).await;
    assert_eq!(seen, vec![1]);
    let stream = tokio::spawn(async move {
        for i in 2..=100_000u64 {
            let line = format!(r#"{{"method":"set","name":"☁ x","value":{i}}}"#);
            if writer.send(Message::text(line)).await.is_err() {
                break;
            }
        }
    });
    // Mid-stream: once the observer on node B has seen 500, kill node A with SIGKILL.
    while seen.last().copied().unwrap_or(0) < 500 {
        seen.extend(next_values(&mut observer).await);
    }
    drop(nodes[0].take());
    let _ = stream.await;
    let before_kill = *seen.last().unwrap();
    // What Redis holds, read through node C by a client that joins now.
    let mut late = join(ports[2], "late").await;
    let state = next_values(&mut late).await;
    assert_eq!(state.len(), 1);
    let final_value = state[0];
    assert!(
        final_value >= before_kill,
        "Redis holds {final_value}, the observer had already seen {before_kill}"
    );
    // The observer on node B gets everything up to that final value, in order.
    while *seen.last().unwrap() < final_value {
        seen.extend(next_values(&mut observer).await);
    }
    assert_eq!(*seen.last().unwrap(), final_value);
    eprintln!(
        "observer saw {} values; {before_kill} when node A was killed, {final_value} in Redis",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "values arrive in the room's order"
    );
    drop(nodes);
}

/// Redis, and three nodes (some may be killed), each on its own port.
struct Cluster {
    _dir: tempfile::TempDir,
    _redis: Killed,
    ports: Vec<u16>,
    nodes: Vec<Option<Killed>>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let redis_port = free_port();
        let redis = start_redis(dir.path(), redis_port);
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let d = dir.path().join(format!("node{i}"));
                Some(start_node(&d, p, redis_port))
            })
            .collect();
        Cluster {
            _dir: dir,
            _redis: redis,
            ports,
            nodes,
        }
    }

    /// `kill -9` node `i`.
    fn kill(&mut self, i: usize) {
        drop(self.nodes[i].take());
    }
}

async fn open_ws(url: &str) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => return ws,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node never came up: {e}"),
        }
    }
}

/// The next JSON payload of a gateway connection.
async fn gw_recv(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a payload in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Connect to a node's gateway and read its Hello.
async fn gw_open(port: u16) -> Ws {
    let mut ws = open_ws(&format!("ws://127.0.0.1:{port}/gateway?v=10&encoding=json")).await;
    let hello = gw_recv(&mut ws).await;
    assert_eq!(hello["op"], 10, "{hello}");
    ws
}

async fn gw_send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// A dispatch seen by the gateway client: its `s`, `t` and, for cloud events, the value.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    s: u64,
    t: String,
    value: Option<u64>,
}

async fn gw_dispatch(ws: &mut Ws) -> Seen {
    loop {
        let p = gw_recv(ws).await;
        if p["op"] == 0 {
            return Seen {
                s: p["s"].as_u64().unwrap(),
                t: p["t"].as_str().unwrap().to_owned(),
                value: p["d"]["value"].as_u64(),
            };
        }
    }
}

#[tokio::test]
async fn a_gateway_session_of_a_killed_node_resumes_on_another_node_without_a_gap() {
    if !have_redis() {
        return;
    }
    let mut cluster = Cluster::start();
    // The writer is on node C; the gateway session starts on node A.
    let mut writer = join(cluster.ports[2], "w").await;
    let mut gw = gw_open(cluster.ports[0]).await;
    gw_send(
        &mut gw,
        serde_json::json!({"op": 2, "d": {"token": GATEWAY_TOKEN, "intents": 1, "properties": {}}}),
    )
    .await;
    let ready = gw_recv(&mut gw).await;
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1)),
        "{ready}"
    );
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    const LAST: u64 = 3000;
    let stream = tokio::spawn(async move {
        for i in 1..=LAST {
            let line = format!(r#"{{"method":"set","name":"☁ x","value":{i}}}"#);
            writer.send(Message::text(line)).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        writer
    });
    let mut seen: Vec<Seen> = Vec::new();
    while seen.last().and_then(|d| d.value).unwrap_or(0) < 500 {
        seen.push(gw_dispatch(&mut gw).await);
    }
    // Mid-stream: node A dies with the session attached.
    cluster.kill(0);
    let last_seq = seen.last().unwrap().s;
    let mut gw = gw_open(cluster.ports[1]).await;
    gw_send(
        &mut gw,
        serde_json::json!({"op": 6, "d": {"token": GATEWAY_TOKEN, "session_id": session_id, "seq": last_seq}}),
    )
    .await;
    // Until the last value and RESUMED (which follows the replay: when the writer finished
    // before node B took the session over, the replay holds every value up to LAST).
    let (mut resumed, mut at_last) = (false, false);
    while !(resumed && at_last) {
        let d = gw_dispatch(&mut gw).await;
        assert_ne!(d.t, "READY", "the session was resumed, not restarted");
        resumed |= d.t == "RESUMED";
        at_last |= d.value == Some(LAST);
        seen.push(d);
    }
    let _writer = stream.await.unwrap();
    if let Some(i) = seen
        .windows(2)
        .position(|w| matches!((w[0].value, w[1].value), (Some(a), Some(b)) if b <= a))
    {
        let first = seen
            .iter()
            .position(|d| d.value == seen[i + 1].value)
            .unwrap();
        panic!(
            "value goes back after seq {last_seq}: {:?} ... first seen at {:?}",
            &seen[i.saturating_sub(2)..(i + 3).min(seen.len())],
            &seen[first.saturating_sub(1)..first + 2]
        );
    }
    // Every dispatch once, under consecutive sequence numbers, READY first...
    let seqs: Vec<u64> = seen.iter().map(|d| d.s).collect();
    assert_eq!(seqs, (2..2 + seqs.len() as u64).collect::<Vec<_>>());
    // ...and every value the room took, once and in order, across the kill.
    let values: Vec<u64> = seen.iter().filter_map(|d| d.value).collect();
    assert_eq!(values, (1..=LAST).collect::<Vec<_>>());
    let resumed = seen.iter().filter(|d| d.t == "RESUMED").count();
    assert_eq!(resumed, 1, "one RESUMED");
    eprintln!(
        "resumed on node B after seq {last_seq}; {} dispatches in all",
        seen.len()
    );
}

#[tokio::test]
async fn a_node_killed_with_kill_9_mid_edit_loses_no_document_edit_another_node_saw() {
    use nimbus_doc::yrs::{Text, Transact};
    if !have_redis() {
        return;
    }
    let mut cluster = Cluster::start();
    let writer = doc_client(cluster.ports[0], "crash").await;
    let observer = doc_client(cluster.ports[1], "crash").await;
    let text = writer.doc().get_or_insert_text("t");
    let mut written = String::new();
    for i in 0..2000 {
        let piece = format!("{i};");
        text.push(&mut writer.doc().transact_mut(), &piece);
        written.push_str(&piece);
        if i == 1000 {
            // Mid-stream, once the observer on node B has a part of the edits: kill A.
            let deadline = Instant::now() + WAIT;
            while text_of(&observer).len() < 500 {
                assert!(Instant::now() < deadline, "observer saw nothing");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cluster.kill(0);
        }
    }
    let seen = text_of(&observer);
    assert!(
        !seen.is_empty() && written.starts_with(&seen),
        "a prefix of the edits"
    );
    // What Redis holds, read by a client of node C that joins now.
    let late = doc_client(cluster.ports[2], "crash").await;
    let stored = text_of(&late);
    assert!(
        stored.starts_with(&seen),
        "Redis lost edits the observer had seen: {} stored, {} seen",
        stored.len(),
        seen.len()
    );
    // The writer's client still holds every edit: reconnecting to node C sends the rest.
    let wire = nimbus_doc::ClientWire::WebSocket {
        url: format!("ws://127.0.0.1:{}/doc", cluster.ports[2]),
    };
    let opts = nimbus_doc::ConnectOptions {
        reconnect: false,
        ..Default::default()
    };
    let again = nimbus_doc::connect(wire, "crash", Some(writer.doc().clone()), opts)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while text_of(&late) != written || text_of(&observer) != written {
        assert!(
            Instant::now() < deadline,
            "the edits never reached every node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "observer had {} of {} bytes when node A died; Redis had {}",
        seen.len(),
        written.len(),
        stored.len()
    );
    for c in [again, late, observer] {
        c.close().await;
    }
}

/// A loopback webhook receiver that answers 503 while `failing`, else 204, and keeps the
/// values of the `CLOUD_*` events it accepted, de-duplicated by event id.
#[derive(Clone, Default)]
struct Hooked {
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<(std::collections::HashSet<String>, Vec<u64>)>>,
}

impl Hooked {
    async fn start(&self) -> u16 {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                let status = me.take(&body);
                                let reply = hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                                    .unwrap();
                                Ok::<_, hyper::Error>(reply)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        port
    }

    fn take(&self, body: &[u8]) -> u16 {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return 503;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let mut seen = self.seen.lock().unwrap();
        for ev in v["data"]["events"].as_array().unwrap() {
            if seen.0.insert(ev["id"].as_str().unwrap().to_owned()) {
                if let Some(x) = ev["data"]["value"].as_u64() {
                    seen.1.push(x);
                }
            }
        }
        204
    }

    fn values(&self) -> Vec<u64> {
        let mut v = self.seen.lock().unwrap().1.clone();
        v.sort_unstable();
        v
    }

    async fn until_values(&self, what: &str, want: &[u64]) {
        let deadline = Instant::now() + WAIT;
        while self.values() != want {
            assert!(
                Instant::now() < deadline,
                "{what}: the receiver has {} of {} values; missing {:?}",
                self.values().len(),
                want.len(),
                want.iter()
                    .filter(|v| !self.values().contains(v))
                    .take(20)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn set_x(ws: &mut Ws, value: u64) {
    let line = format!(r#"{{"method":"set","name":"☁ x","value":{value}}}"#);
    ws.send(Message::text(line)).await.unwrap();
}

#[tokio::test]
async fn webhook_events_the_killed_lease_holder_had_queued_are_delivered_by_the_next_holder() {
    if !have_redis() {
        return;
    }
    let receiver = Hooked::default();
    let hook_port = receiver.start().await;
    let hook = format!(
        "http://127.0.0.1:{hook_port}/hooks#secret=whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=&events=CLOUD_SET,CLOUD_CREATE"
    );
    let extra = ["--webhook", hook.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let _redis = start_redis(dir.path(), redis_port);
    let ports = [free_port(), free_port()];
    // Node A alone first: it takes the lease and delivers the first set.
    let mut a = Some(start_node_with(
        &dir.path().join("a"),
        ports[0],
        redis_port,
        &extra,
    ));
    let mut first = join(ports[0], "first").await;
    set_x(&mut first, 1).await;
    receiver.until_values("node A delivers", &[1]).await;
    let _b = start_node_with(&dir.path().join("b"), ports[1], redis_port, &extra);
    let mut writer = join(ports[1], "w").await;
    // The receiver fails: node A queues the events (retrying), and with its renewals it
    // records how far it got, while the writer on node B goes on.
    receiver
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    const QUEUED: u64 = 150;
    for i in 2..=QUEUED {
        set_x(&mut writer, i).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More than one renewal after the last of them (the lease records progress each second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(a.take());
    receiver
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Sets after the kill: node B delivers them once it holds the lease (≤ 6 s).
    const LAST: u64 = 200;
    for i in QUEUED + 1..=LAST {
        set_x(&mut writer, i).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want: Vec<u64> = (1..=LAST).collect();
    receiver
        .until_values("every set, those node A had queued included", &want)
        .await;
}
