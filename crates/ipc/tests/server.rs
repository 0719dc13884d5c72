//! Integration tests over real sockets on 127.0.0.1 (port 0).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nimbus_ipc::{ClientSession, IpcError, IpcEvent, Request, RouteError, Server, ServerError};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

async fn server(secret: Option<&str>) -> Server {
    let mut b = Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast_port(0);
    if let Some(s) = secret {
        b = b.secret_key(s);
    }
    let s = b.route_timeout(Duration::from_secs(5)).build().unwrap();
    s.route("echo", |r: Request| async move {
        Ok(Value::Object(r.data().clone()))
    });
    s.route("/add", |r: Request| async move {
        Ok(json!(
            r.get("a").and_then(Value::as_i64).unwrap_or(0)
                + r.get("b").and_then(Value::as_i64).unwrap_or(0)
        ))
    });
    s.route("fail", |_r: Request| async move {
        Err(RouteError::with_kind("ValueError", "nope"))
    });
    s.route("str", |_r: Request| async move { Ok(json!("text")) });
    s.route("null", |_r: Request| async move { Ok(Value::Null) });
    s.route("slow", |r: Request| async move {
        let ms = r.get("ms").and_then(Value::as_u64).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!("slept"))
    });
    s.start().await.unwrap();
    s
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(port: u16) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .0
}

async fn ask(ws: &mut Ws, text: &str) -> Value {
    ws.send(Message::text(text.to_owned())).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn reply_codes() {
    let s = server(Some("k")).await;
    let p = s.local_addr().unwrap().port();
    let mut ws = raw(p).await;
    let h = r#""headers":{"Authorization":"k"}"#;
    assert_eq!(
        ask(
            &mut ws,
            &format!(r#"{{"endpoint":"add","data":{{"a":2,"b":3}},{h}}}"#)
        )
        .await,
        json!(5)
    );
    assert_eq!(
        ask(
            &mut ws,
            &format!(r#"{{"endpoint":"/echo","data":{{"x":[1]}},{h}}}"#)
        )
        .await,
        json!({"x":[1]})
    );
    assert_eq!(
        ask(&mut ws, &format!(r#"{{"endpoint":"str",{h}}}"#)).await,
        json!("text")
    );
    assert_eq!(
        ask(&mut ws, &format!(r#"{{"endpoint":"null",{h}}}"#)).await,
        Value::Null
    );
    assert_eq!(
        ask(&mut ws, "not json").await,
        json!({"error":"Invalid request","code":400})
    );
    assert_eq!(
        ask(&mut ws, "[1,2]").await,
        json!({"error":"Invalid request","code":400})
    );
    assert_eq!(
        ask(&mut ws, &format!(r#"{{{h}}}"#)).await,
        json!({"error":"No endpoint was set","code":400})
    );
    assert_eq!(
        ask(&mut ws, &format!(r#"{{"endpoint":"nope",{h}}}"#)).await,
        json!({"error":"Invalid endpoint provided","code":400})
    );
    assert_eq!(ask(&mut ws, r#"{"endpoint":"add"}"#).await["code"], 401);
    assert_eq!(
        ask(
            &mut ws,
            r#"{"endpoint":"add","headers":{"Authorization":null}}"#
        )
        .await["code"],
        401
    );
    assert_eq!(
        ask(
            &mut ws,
            r#"{"endpoint":"add","headers":{"Authorization":"bad"}}"#
        )
        .await["code"],
        403
    );
    assert_eq!(
        ask(&mut ws, &format!(r#"{{"endpoint":"fail",{h}}}"#)).await,
        json!({"error":"IPC route raised error of type ValueError","code":500})
    );
    // The socket stays usable after errors.
    assert_eq!(
        ask(
            &mut ws,
            &format!(r#"{{"endpoint":"add","data":{{"a":1}},{h}}}"#)
        )
        .await,
        json!(1)
    );
    ws.send(Message::binary(vec![1u8, 2])).await.unwrap();
    assert_eq!(
        ask(&mut ws, &format!(r#"{{"endpoint":"add",{h}}}"#)).await,
        json!({"error":"Invalid request","code":400})
    );
    s.terminate_server().await;
}

#[tokio::test]
async fn client_typed_errors() {
    let s = server(Some("k")).await;
    let p = s.local_addr().unwrap().port();
    let mut c = ClientSession::connect("127.0.0.1", Some(p), 1, Some("k".into()))
        .await
        .unwrap();
    assert_eq!(
        c.request("add", json!({"a": 40, "b": 2})).await.unwrap(),
        json!(42)
    );
    assert!(matches!(
        c.request("nope", json!({})).await,
        Err(IpcError::BadRequest { .. })
    ));
    assert!(matches!(
        c.request("fail", json!({})).await,
        Err(IpcError::RouteFailed { .. })
    ));
    c.close().await;
    let mut c = ClientSession::new("127.0.0.1", Some(p), 1, None);
    assert!(matches!(
        c.request("add", json!({})).await,
        Err(IpcError::Unauthorized)
    ));
    let mut c = ClientSession::new("127.0.0.1", Some(p), 1, Some("bad".into()));
    assert!(matches!(
        c.request("add", json!({})).await,
        Err(IpcError::Forbidden)
    ));
    s.terminate_server().await;
}

#[tokio::test]
async fn event_order() {
    let s = server(Some("k")).await;
    let mut ev = s.subscribe();
    let p = s.local_addr().unwrap().port();
    let mut c = ClientSession::connect("127.0.0.1", Some(p), 1, Some("k".into()))
        .await
        .unwrap();
    // Unauthenticated: no events.
    let mut bad = ClientSession::new("127.0.0.1", Some(p), 1, Some("x".into()));
    assert!(bad.request("add", json!({})).await.is_err());
    c.request("add", json!({"a": 1})).await.unwrap();
    c.request("nope", json!({})).await.unwrap_err();
    c.request("fail", json!({})).await.unwrap_err();
    c.request("echo", json!({})).await.unwrap(); // marker
    let mut names = Vec::new();
    loop {
        let e = tokio::time::timeout(WAIT, ev.recv())
            .await
            .unwrap()
            .unwrap();
        let n = match &e {
            IpcEvent::RawRequest(r) => format!("raw:{}", r.endpoint()),
            IpcEvent::RequestCompletion(r) => format!("done:{}", r.endpoint()),
            IpcEvent::Error { endpoint, .. } => {
                format!("err:{}", endpoint.clone().unwrap_or_default())
            }
            IpcEvent::Ready => "ready".into(),
        };
        let end = n == "done:echo";
        names.push(n);
        if end {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "raw:add",
            "done:add",
            "raw:nope",
            "raw:fail",
            "err:fail",
            "raw:echo",
            "done:echo"
        ]
    );
    s.terminate_server().await;
}

#[tokio::test]
async fn ready_callback_after_bind() {
    let s = Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast_port(0)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    s.on_ipc_ready(move || {
        let _ = tx.send(s2.local_addr().is_some());
    });
    s.start().await.unwrap();
    assert!(rx.recv_timeout(WAIT).unwrap_or(false) || s.local_addr().is_some());
    s.terminate_server().await;
}

#[tokio::test]
async fn insecure_bind_refused() {
    assert!(matches!(
        Server::new("0.0.0.0", 0, None, true, 0),
        Err(ServerError::InsecureBind(_))
    ));
    assert!(Server::new("0.0.0.0", 0, Some("k".into()), true, 0).is_ok());
    assert!(Server::new("::1", 0, None, false, 0).is_ok());
}

#[tokio::test]
async fn discovery_and_multicast_requests() {
    let s = server(Some("k")).await;
    let p = s.local_addr().unwrap().port();
    let m = s.multicast_addr().unwrap().port();
    let mut ws = raw(m).await;
    assert_eq!(
        ask(
            &mut ws,
            r#"{"connect":true,"headers":{"Authorization":"k"}}"#
        )
        .await,
        json!({"message":"Connection success","port":p,"code":200})
    );
    assert_eq!(
        ask(
            &mut ws,
            r#"{"connect":true,"headers":{"Authorization":"z"}}"#
        )
        .await["code"],
        403
    );
    assert_eq!(ask(&mut ws, r#"{"connect":true}"#).await["code"], 401);
    // Requests straight to the multicast port are served (on the same socket, too).
    assert_eq!(
        ask(
            &mut ws,
            r#"{"endpoint":"add","data":{"a":7},"headers":{"Authorization":"k"}}"#
        )
        .await,
        json!(7)
    );
    let mut c = ClientSession::new("127.0.0.1", None, m, Some("k".into()));
    assert_eq!(c.resolved_port(), None);
    assert_eq!(c.request("add", json!({"b": 3})).await.unwrap(), json!(3));
    assert_eq!(c.resolved_port(), Some(p));
    c.close().await;
    let v = ClientSession::scope(
        ClientSession::new("127.0.0.1", None, m, Some("k".into())),
        |s| Box::pin(async move { s.request("echo", json!({"z": 1})).await }),
    )
    .await
    .unwrap();
    assert_eq!(v, json!({"z": 1}));
    s.terminate_server().await;
}

#[tokio::test]
async fn better_ipc_dialect() {
    let s = server(Some("k")).await;
    let m = s.multicast_addr().unwrap().port();
    let mut ws = raw(m).await;
    assert_eq!(
        ask(
            &mut ws,
            r#"{"endpoint":"echo","secret":"k","kwargs":{"a":1}}"#
        )
        .await,
        json!({"decoding":"JSON","code":200,"response":"{\"a\":1}"})
    );
    assert_eq!(
        ask(&mut ws, r#"{"endpoint":"str","secret":"k","kwargs":{}}"#).await,
        json!({"decoding":null,"code":200,"response":"text"})
    );
    assert_eq!(
        ask(
            &mut ws,
            r#"{"endpoint":"echo","secret":"None","kwargs":{}}"#
        )
        .await["code"],
        403
    );
    let r = ask(&mut ws, r#"{"endpoint":"nope","secret":"k","kwargs":{}}"#).await;
    assert_eq!(
        (r["code"].clone(), r["error"].clone()),
        (json!(404), json!("Unknown endpoint!"))
    );
    let r = ask(&mut ws, r#"{"endpoint":"fail","secret":"k","kwargs":{}}"#).await;
    assert_eq!(r["code"], 500);
    assert!(r["error_details"].as_str().unwrap().contains("nope"));
    s.terminate_server().await;
}

#[tokio::test]
async fn reconnect_after_restart() {
    let s = server(Some("k")).await;
    let p = s.local_addr().unwrap().port();
    let mut c = ClientSession::connect("127.0.0.1", Some(p), 1, Some("k".into()))
        .await
        .unwrap();
    assert_eq!(c.request("add", json!({"a": 1})).await.unwrap(), json!(1));
    s.terminate_server().await;
    let s2 = Server::builder()
        .host("127.0.0.1")
        .port(p)
        .multicast(false)
        .secret_key("k")
        .build()
        .unwrap();
    s2.route("add", |_r: Request| async move { Ok(json!("restarted")) });
    // The port may linger briefly; bounded retries.
    let mut ok = false;
    for _ in 0..100 {
        if s2.start().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
    assert_eq!(
        c.request("add", json!({})).await.unwrap(),
        json!("restarted")
    );
    s2.terminate_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_route_does_not_block_other_connections_and_times_out() {
    let s = Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast(false)
        .route_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    // Set when the route's future is dropped (it stopped running).
    struct Running(Arc<AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    s.route("block", move |_r: Request| {
        let mut g = gate_rx.clone();
        let running = Running(flag.clone());
        async move {
            let _running = running;
            let _ = g.wait_for(|v| *v).await;
            Ok(json!("unblocked"))
        }
    });
    s.route("ping", |_r: Request| async move { Ok(json!("pong")) });
    s.start().await.unwrap();
    let p = s.local_addr().unwrap().port();
    let mut slow = raw(p).await;
    slow.send(Message::text(r#"{"endpoint":"block"}"#))
        .await
        .unwrap();
    // While "block" hangs, another connection is served.
    let mut c = ClientSession::new("127.0.0.1", Some(p), 1, None);
    assert_eq!(c.request("ping", json!({})).await.unwrap(), json!("pong"));
    // The hung route hits its timeout: 500 on its own socket, which stays usable.
    let r: Value = match tokio::time::timeout(WAIT, slow.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(
        r,
        json!({"error":"IPC route raised error of type Timeout","code":500})
    );
    // The timed-out route was stopped, not left running (the gate is still shut).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stopped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route still runs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = gate_tx.send(true);
    assert_eq!(
        ask(&mut slow, r#"{"endpoint":"ping"}"#).await,
        json!("pong")
    );
    s.terminate_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_in_flight_on_several_connections() {
    let s = server(None).await;
    let p = s.local_addr().unwrap().port();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8i64 {
        tasks.spawn(async move {
            let mut ws = raw(p).await;
            // Pipeline 50 requests, then read 50 replies in order.
            for i in 0..50i64 {
                let f = json!({"endpoint":"add","data":{"a":c*1000,"b":i}}).to_string();
                ws.send(Message::text(f)).await.unwrap();
            }
            for i in 0..50i64 {
                let m = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                assert_eq!(v, json!(c * 1000 + i));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    s.terminate_server().await;
}

/// Start `s` with an `echo` route; a client of it.
/// A server on an ephemeral loopback port, without the multicast port.
fn loopback_server() -> Server {
    Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast(false)
        .build()
        .unwrap()
}

async fn start_echo(s: &Server) -> ClientSession {
    s.route("echo", |r: Request| async move {
        Ok(Value::Object(r.data().clone()))
    });
    s.start().await.unwrap();
    ClientSession::new("127.0.0.1", s.local_addr().map(|a| a.port()), 1, None).with_timeout(WAIT)
}

#[tokio::test]
async fn a_reply_many_times_the_client_read_buffer_arrives_whole() {
    // The client reads `CLIENT_READ_BUFFER` bytes at a time; a longer reply must still
    // arrive whole.
    let s = loopback_server();
    let mut c = start_echo(&s).await;
    let big = "x".repeat(20 * nimbus_proto::CLIENT_READ_BUFFER + 3);
    assert_eq!(
        c.request("echo", json!({ "s": big })).await.unwrap(),
        json!({ "s": big })
    );
    s.terminate_server().await;
}

#[tokio::test]
async fn a_reply_over_the_clients_bound_fails_its_request_and_the_next_one_reconnects() {
    let s = loopback_server();
    let max = 64 << 10;
    let mut c = start_echo(&s).await.with_max_message_bytes(max);
    // A reply of the bound arrives (the JSON around the string takes 8 bytes).
    let fits = "x".repeat(max - 8);
    assert_eq!(
        c.request("echo", json!({ "s": fits })).await.unwrap(),
        json!({ "s": fits })
    );
    let over = "x".repeat(max - 7);
    let err = c.request("echo", json!({ "s": over })).await.unwrap_err();
    assert!(matches!(err, IpcError::Io(_)), "{err:?}");
    assert_eq!(
        c.request("echo", json!({"s": 1})).await.unwrap(),
        json!({"s": 1})
    );
    s.terminate_server().await;
}

#[tokio::test]
async fn frame_size_limit() {
    let s = Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast(false)
        .max_frame(1024)
        .build()
        .unwrap();
    let mut c = start_echo(&s).await;
    let big = "x".repeat(4096);
    assert!(c.request("echo", json!({ "s": big })).await.is_err());
    assert_eq!(
        c.request("echo", json!({"s": 1})).await.unwrap(),
        json!({"s": 1})
    );
    s.terminate_server().await;
}

#[tokio::test]
async fn connections_per_peer_limited() {
    let s = Server::builder()
        .host("127.0.0.1")
        .port(0)
        .multicast(false)
        .max_connections_per_peer(2)
        .build()
        .unwrap();
    s.route("ping", |_r: Request| async move { Ok(json!("pong")) });
    s.start().await.unwrap();
    let p = s.local_addr().unwrap().port();
    let mut a = raw(p).await;
    let mut b = raw(p).await;
    assert_eq!(ask(&mut a, r#"{"endpoint":"ping"}"#).await, json!("pong"));
    assert_eq!(ask(&mut b, r#"{"endpoint":"ping"}"#).await, json!("pong"));
    // A third connection from the same IP is closed before the upgrade.
    let third = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{p}/")),
    )
    .await
    .unwrap();
    assert!(third.is_err());
    // Closing one frees a slot (bounded retries: the server notices the close asynchronously).
    a.close(None).await.unwrap();
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        if let Ok((mut c, _)) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{p}/")).await
        {
            ok = ask(&mut c, r#"{"endpoint":"ping"}"#).await == json!("pong");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    drop(b);
    s.terminate_server().await;
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let s = server(None).await;
    let p = s.local_addr().unwrap().port();
    let s2 = s.clone();
    drop(s);
    // A clone keeps it running.
    let mut c = ClientSession::new("127.0.0.1", Some(p), 1, None).with_timeout(WAIT);
    assert_eq!(c.request("add", json!({"a": 1})).await.unwrap(), json!(1));
    drop(s2);
    // The last handle gone: the listener closes (bounded retries while the tasks end).
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed);
}
