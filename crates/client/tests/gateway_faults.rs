//! GatewayClient against a fault-injecting gateway written here, on 127.0.0.1: each
//! test scripts the server side connection by connection (drops, op 7 before/after
//! Hello, op 9 true/false, missing ACKs, every close code) and checks what the client
//! does next: Resume on the resume URL, Identify on the original URL, or stop with a
//! typed error.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use futures_util::{SinkExt, StreamExt};
use nimbus_client::gateway::{CloseCode, GatewayClient, GatewayError, GatewayOptions, ShardState};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

struct FaultServer {
    listener: TcpListener,
    addr: SocketAddr,
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
    /// Path and query the client connected to.
    path: String,
    zlib: Option<Compress>,
}

impl FaultServer {
    async fn bind() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        FaultServer { listener, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/gateway", self.addr)
    }

    fn resume_url(&self) -> String {
        format!("ws://{}/resume", self.addr)
    }

    async fn accept(&self) -> Conn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection in time")
            .unwrap();
        let path = Arc::new(Mutex::new(String::new()));
        let p = path.clone();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
            *p.lock().unwrap() = req.uri().to_string();
            Ok(resp)
        })
        .await
        .unwrap();
        let path = path.lock().unwrap().clone();
        let zlib = path
            .contains("compress=zlib-stream")
            .then(|| Compress::new(Compression::default(), true));
        Conn { ws, path, zlib }
    }
}

impl Conn {
    async fn send(&mut self, v: Value) {
        let text = v.to_string();
        let msg = match self.zlib.as_mut() {
            Some(z) => {
                let mut out = Vec::with_capacity(text.len() + 64);
                z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                    .unwrap();
                Message::binary(out)
            }
            None => Message::text(text),
        };
        self.ws.send(msg).await.unwrap();
    }

    async fn hello(&mut self, interval_ms: u64) {
        self.send(
            json!({"op": 10, "d": {"heartbeat_interval": interval_ms}, "s": null, "t": null}),
        )
        .await;
    }

    async fn dispatch(&mut self, s: u64, t: &str, d: Value) {
        self.send(json!({"op": 0, "d": d, "s": s, "t": t})).await;
    }

    /// The next payload from the client; heartbeats are ACKed and skipped unless `keep_hb`.
    async fn recv_inner(&mut self, keep_hb: bool) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a payload in time")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["op"] == 1 && !keep_hb {
                    self.send(json!({"op": 11})).await;
                    continue;
                }
                return v;
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_inner(false).await
    }

    /// Read until the client closes; its close code (None: dropped without a frame).
    async fn client_close(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("client closes in time")
            {
                Some(Ok(Message::Close(f))) => {
                    // Send the queued close reply, so the client need not wait for it.
                    let _ = self.ws.flush().await;
                    return f.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn close(mut self, code: u16) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: WsCode::from(code),
                reason: "fault".into(),
            }))
            .await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Hello, expect Identify, send READY (s=1) pointing Resume at `/resume`.
    async fn identify(&mut self, srv: &FaultServer, session: &str) -> Value {
        self.hello(60_000).await;
        let id = self.recv().await;
        assert_eq!(id["op"], 2, "identify expected, got {id}");
        assert!(
            self.path.starts_with("/gateway?v=10&encoding=json"),
            "identify on the original url: {}",
            self.path
        );
        self.dispatch(
            1,
            "READY",
            json!({"v": 10, "session_id": session, "resume_gateway_url": srv.resume_url(), "user": {}, "guilds": []}),
        )
        .await;
        id
    }

    /// Hello, expect Resume on `/resume`, return its `d`.
    async fn expect_resume(&mut self) -> Value {
        self.hello(60_000).await;
        let r = self.recv().await;
        assert_eq!(r["op"], 6, "resume expected, got {r}");
        assert!(
            self.path.starts_with("/resume?v=10&encoding=json"),
            "resume on the resume url: {}",
            self.path
        );
        r["d"].clone()
    }
}

fn options(srv: &FaultServer) -> GatewayOptions {
    GatewayOptions {
        url: srv.url(),
        shard_id: 1,
        total_shards: 3,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        ..GatewayOptions::default()
    }
}

async fn event(c: &GatewayClient) -> (String, Value) {
    tokio::time::timeout(WAIT, c.next_event())
        .await
        .expect("an event in time")
        .expect("stream open")
}

/// Start a client and bring it to READY with one CLOUD_SET (s=2) delivered.
async fn ready_client(srv: &FaultServer) -> (GatewayClient, Conn) {
    let client = GatewayClient::new(options(srv));
    client.start("Bot tok", 1).unwrap();
    let mut c = srv.accept().await;
    c.identify(srv, "sess-1").await;
    assert_eq!(event(&client).await.0, "READY");
    c.dispatch(
        2,
        "CLOUD_SET",
        json!({"room": "1", "name": "a", "value": 1}),
    )
    .await;
    assert_eq!(event(&client).await.0, "CLOUD_SET");
    (client, c)
}

#[tokio::test]
async fn identify_sends_shard_and_events_arrive_in_order() {
    let srv = FaultServer::bind().await;
    let client = GatewayClient::new(options(&srv));
    client.start("Bot tok", 5).unwrap();
    assert!(matches!(
        client.start("x", 1),
        Err(GatewayError::AlreadyStarted)
    ));
    let mut c = srv.accept().await;
    let id = c.identify(&srv, "s1").await;
    assert_eq!(id["d"]["shard"], json!([1, 3]), "`shard`, not `shards`");
    assert!(id["d"].get("shards").is_none());
    assert_eq!(id["d"]["intents"], 5);
    assert_eq!(id["d"]["token"], "tok", "the bare token, as Discord wants");
    assert_eq!(id["d"]["properties"]["browser"], "nimbus");
    let (t, d) = event(&client).await;
    assert_eq!(
        (t.as_str(), d["session_id"].as_str()),
        ("READY", Some("s1"))
    );
    for s in 2..12 {
        c.dispatch(s, "CLOUD_SET", json!({"value": s})).await;
    }
    for s in 2..7 {
        let (t, d) = event(&client).await;
        assert_eq!((t.as_str(), d["value"].as_u64()), ("CLOUD_SET", Some(s)));
    }
    // The same events as a stream.
    let rest: Vec<(String, Value)> = tokio::time::timeout(WAIT, client.events().take(5).collect())
        .await
        .unwrap();
    let values: Vec<u64> = rest
        .iter()
        .map(|(_, d)| d["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, (7..12).collect::<Vec<_>>());
    assert_eq!(client.seq(), Some(11));
    assert_eq!(client.session_id().as_deref(), Some("s1"));
    assert_eq!(client.resume_url(), Some(srv.resume_url()));
    assert_eq!(client.state(), ShardState::Active);
    assert_eq!((client.shard_id(), client.total_shards()), (1, 3));
    // Commands go out through the limiter (heartbeats keep their reserve).
    assert!(client.send_permits().unwrap() <= 117);
    client
        .send(json!({"op": 3, "d": {"status": "online"}}))
        .await
        .unwrap();
    assert_eq!(c.recv().await["op"], 3);
    client.close().await;
    assert_eq!(
        c.client_close().await,
        Some(1000),
        "close() ends the session with 1000"
    );
    assert_eq!(client.state(), ShardState::Closed);
    assert!(matches!(
        client.send(json!({"op": 3})).await,
        Err(GatewayError::Closed)
    ));
}

#[tokio::test]
async fn op1_is_answered_at_once_with_the_last_seq() {
    let srv = FaultServer::bind().await;
    let (client, mut c) = ready_client(&srv).await;
    c.send(json!({"op": 1, "d": null})).await;
    let hb = c.recv_inner(true).await;
    assert_eq!(hb, json!({"op": 1, "d": 2}));
    c.send(json!({"op": 11})).await;
    // The ACK is measured.
    while client.metrics().latest.is_none() {
        tokio::task::yield_now().await;
    }
    let m = client.metrics();
    assert!(m.average.is_some());
    assert!(m.heartbeats_sent >= 1);
    client.close().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_on_the_resume_url() {
    let srv = FaultServer::bind().await;
    let (client, c) = ready_client(&srv).await;
    drop(c); // bare TCP drop
    let mut c = srv.accept().await;
    let d = c.expect_resume().await;
    assert_eq!(d, json!({"token": "tok", "session_id": "sess-1", "seq": 2}));
    c.dispatch(3, "CLOUD_SET", json!({"value": 3})).await;
    c.dispatch(4, "RESUMED", json!({})).await;
    assert_eq!(event(&client).await.1["value"], 3);
    assert_eq!(event(&client).await.0, "RESUMED");
    assert_eq!(client.metrics().resumes, 1);
    client.close().await;
}

#[tokio::test]
async fn op7_before_hello_and_after_ready() {
    let srv = FaultServer::bind().await;
    let client = GatewayClient::new(options(&srv));
    client.start("tok", 1).unwrap();
    // Op 7 as the very first frame: no session yet, so the client identifies again.
    let mut c = srv.accept().await;
    c.send(json!({"op": 7, "d": null})).await;
    assert_eq!(
        c.client_close().await,
        Some(4000),
        "op 7: close with a non-1000 code"
    );
    // Op 7 after Hello, before READY: still no session, identify again on the original URL.
    let mut c = srv.accept().await;
    c.hello(60_000).await;
    assert_eq!(c.recv().await["op"], 2);
    c.send(json!({"op": 7, "d": null})).await;
    assert_eq!(c.client_close().await, Some(4000));
    let mut c = srv.accept().await;
    c.identify(&srv, "s7").await;
    assert_eq!(event(&client).await.0, "READY");
    // Op 7 after READY: immediate Resume on the resume URL.
    c.send(json!({"op": 7, "d": null})).await;
    assert_eq!(c.client_close().await, Some(4000));
    let mut c = srv.accept().await;
    assert_eq!(c.expect_resume().await["session_id"], "s7");
    client.close().await;
}

#[tokio::test]
async fn op9_true_resumes_and_op9_false_identifies_on_the_original_url() {
    let srv = FaultServer::bind().await;
    let (client, mut c) = ready_client(&srv).await;
    c.send(json!({"op": 9, "d": true})).await;
    let _ = c.client_close().await;
    let mut c = srv.accept().await;
    assert_eq!(c.expect_resume().await["seq"], 2);
    c.send(json!({"op": 9, "d": false})).await;
    assert_eq!(c.client_close().await, Some(1000));
    let mut c = srv.accept().await;
    c.identify(&srv, "sess-2").await;
    assert_eq!(event(&client).await.1["session_id"], "sess-2");
    assert_eq!(client.session_id().as_deref(), Some("sess-2"));
    client.close().await;
}

#[tokio::test]
async fn missing_acks_make_a_zombie_that_closes_4000_and_resumes() {
    let srv = FaultServer::bind().await;
    let client = GatewayClient::new(options(&srv));
    client.start("tok", 1).unwrap();
    let mut c = srv.accept().await;
    c.hello(50).await;
    assert_eq!(c.recv().await["op"], 2);
    c.dispatch(
        1,
        "READY",
        json!({"session_id": "z", "resume_gateway_url": srv.resume_url()}),
    )
    .await;
    // Stop ACKing: read heartbeats and say nothing.
    let hb = c.recv_inner(true).await;
    assert_eq!(hb["op"], 1);
    assert_eq!(
        c.client_close().await,
        Some(4000),
        "zombie close is not 1000/1001"
    );
    let mut c = srv.accept().await;
    assert_eq!(c.expect_resume().await["session_id"], "z");
    client.close().await;
}

#[tokio::test]
async fn every_close_code_leads_to_the_right_action() {
    let resume = [4000u16, 4001, 4002, 4005, 4008, 1000, 1001, 1011];
    let reidentify = [4003u16, 4007, 4009];
    let fatal = [4004u16, 4010, 4011, 4012, 4013, 4014];
    for code in resume.iter().chain(&reidentify).chain(&fatal).copied() {
        let srv = FaultServer::bind().await;
        let (client, c) = ready_client(&srv).await;
        c.close(code).await;
        if fatal.contains(&code) {
            let err = tokio::time::timeout(WAIT, client.wait()).await.unwrap();
            let expected = CloseCode::from_code(code).unwrap();
            assert!(
                matches!(err, Err(GatewayError::Fatal(c)) if c == expected),
                "{code}: {err:?}"
            );
            assert_eq!(client.state(), ShardState::FatallyClosed(expected));
            assert_eq!(
                client.connection_urls().len(),
                1,
                "{code}: never reconnects"
            );
            continue;
        }
        let mut c = srv.accept().await;
        if resume.contains(&code) {
            assert_eq!(c.expect_resume().await["seq"], 2, "{code}: resume");
        } else {
            c.identify(&srv, "again").await;
            assert_eq!(
                event(&client).await.1["session_id"],
                "again",
                "{code}: identify"
            );
        }
        drop(c);
        client.close().await;
    }
}

#[tokio::test]
async fn connect_failures_back_off_and_then_reconnect() {
    // A port with nothing listening (bound, then dropped).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = GatewayClient::new(GatewayOptions {
        url: format!("ws://{addr}/gateway"),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        ..GatewayOptions::default()
    });
    client.start("tok", 1).unwrap();
    tokio::time::timeout(WAIT, async {
        while !matches!(client.state(), ShardState::Disconnected { attempts } if attempts >= 3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("retries with backoff");
    client.close().await;
    assert_eq!(client.state(), ShardState::Closed);
}

#[tokio::test]
async fn zlib_stream_transport_compression() {
    let srv = FaultServer::bind().await;
    let client = GatewayClient::new(GatewayOptions {
        compress: true,
        ..options(&srv)
    });
    client.start("tok", 1).unwrap();
    let mut c = srv.accept().await;
    assert!(c.path.contains("compress=zlib-stream"), "{}", c.path);
    c.identify(&srv, "zs").await;
    assert_eq!(event(&client).await.0, "READY");
    let big = "v".repeat(20_000);
    c.dispatch(2, "CLOUD_SET", json!({"value": big})).await;
    c.dispatch(3, "CLOUD_SET", json!({"value": 3})).await;
    assert_eq!(event(&client).await.1["value"], big);
    assert_eq!(event(&client).await.1["value"], 3);
    // Resume keeps compression.
    drop(c);
    let mut c = srv.accept().await;
    assert!(c.path.contains("compress=zlib-stream"));
    assert_eq!(c.expect_resume().await["seq"], 3);
    client.close().await;
}

#[tokio::test]
async fn a_message_over_the_bound_ends_the_connection_and_the_client_resumes_after_it() {
    for compress in [false, true] {
        let srv = FaultServer::bind().await;
        let max = 64 << 10;
        let client = GatewayClient::new(GatewayOptions {
            compress,
            max_message_bytes: max,
            ..options(&srv)
        });
        client.start("tok", 1).unwrap();
        let mut c = srv.accept().await;
        c.identify(&srv, "big").await;
        assert_eq!(event(&client).await.0, "READY");
        // Under the bound: delivered.
        let fits = "v".repeat(max - 100);
        c.dispatch(2, "CLOUD_SET", json!({ "value": fits })).await;
        assert_eq!(event(&client).await.1["value"], fits, "compress {compress}");
        // Over it (inflated, when compressed: 1 MiB of one letter is a few KiB on the wire):
        // the client drops the connection without taking it, and resumes from seq 2.
        let big = json!({"op": 0, "s": 3, "t": "CLOUD_SET", "d": { "value": "w".repeat(1 << 20) }});
        let msg = match c.zlib.as_mut() {
            Some(z) => {
                let mut out = Vec::with_capacity(64 << 10);
                z.compress_vec(big.to_string().as_bytes(), &mut out, FlushCompress::Sync)
                    .unwrap();
                Message::binary(out)
            }
            None => Message::text(big.to_string()),
        };
        // The client may drop the connection before it has all of it.
        let _ = c.ws.send(msg).await;
        let mut c = srv.accept().await;
        assert_eq!(c.expect_resume().await["seq"], 2, "compress {compress}");
        c.dispatch(3, "CLOUD_SET", json!({ "value": 3 })).await;
        assert_eq!(event(&client).await.1["value"], 3, "compress {compress}");
        client.close().await;
    }
}
