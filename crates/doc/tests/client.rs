//! Client and server edges: tokens, keepalive, refused connections, statuses, unloading,
//! join/leave churn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nimbus_doc::wire::websocket::WsChannel;
use nimbus_doc::yrs::{Doc, Text, Transact};
use nimbus_doc::{
    connect, ClientWire, ConnectError, ConnectOptions, Room, ServeOptions, ServerOptions, Status,
};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

#[tokio::test]
async fn the_token_goes_in_the_query_and_the_authorization_header() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        #[allow(clippy::result_large_err)]
        let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            *seen2.lock().unwrap() = Some((req.uri().to_string(), auth));
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, cb)
            .await
            .unwrap();
        let room = Room::new("/doc/ROOM");
        room.serve(WsChannel::new(ws, None), ServeOptions::default())
            .await
    });
    let opts = ConnectOptions {
        token: Some("s3cr3t".into()),
        ..fast_opts()
    };
    let c = connect(
        ClientWire::WebSocket {
            url: format!("ws://{addr}/doc"),
        },
        "ROOM",
        None,
        opts,
    )
    .await
    .unwrap();
    let (uri, auth) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(uri, "/doc/ROOM?token=s3cr3t");
    assert_eq!(auth.as_deref(), Some("Bearer s3cr3t"));
    c.close().await;
    assert!(within(server).await.unwrap().is_ok());
}

#[tokio::test]
async fn an_unanswered_ping_closes_the_connection() {
    let options = ServerOptions {
        ping_interval: Some(Duration::from_millis(250)),
        ..ServerOptions::default()
    };
    let s = serve_with(
        Addr::new(Kind::WebSocket),
        |id: &str| Room::new(id),
        options,
    )
    .await;
    // A raw client that does not read does not answer pings.
    let mut raw = Raw::open(&s.addr, "ping").await;
    let room = within(s.guard.manager().get_room("/ping")).await.unwrap();
    eventually("the silent client is closed", || room.client_count() == 0).await;
    match raw.until_close().await {
        Got::Close(code, reason) => {
            assert_eq!(code, 1001);
            assert!(reason.contains("ping"), "{reason}");
        }
        Got::End => {}
        Got::Frame(_) => unreachable!(),
    }
    // A real client answers pings and stays.
    let c = s.client("ping").await;
    let room = s.guard.manager().get("/ping").unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(room.client_count(), 1);
    }
    assert_eq!(c.status(), Status::Synced);
    c.close().await;
}

#[tokio::test]
async fn connecting_to_nothing_fails_at_once() {
    let l = nimbus_doc::wire::memory::Listener::new();
    let err = connect(ClientWire::Memory(l.connector()), "x", None, fast_opts())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err}");
    // A port nobody listens on.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect(
        ClientWire::WebSocket {
            url: format!("ws://{free}"),
        },
        "x",
        None,
        fast_opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err}");
    let err = connect(
        ClientWire::WebSocket {
            url: "http://x".into(),
        },
        "x",
        None,
        fast_opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl { .. }));
}

#[tokio::test]
async fn statuses_follow_a_drop_and_a_reconnect() {
    let s = server(Kind::Memory).await;
    let addr = s.addr.clone();
    let c = s.client("st").await;
    assert_eq!(c.status(), Status::Synced);
    let mut events = c.events();
    s.guard.shutdown().await;
    let s = serve_with(addr, |id: &str| Room::new(id), ServerOptions::default()).await;
    let mut seen = Vec::new();
    within(async {
        loop {
            let e = events.recv().await.unwrap();
            let done = e == Status::Synced;
            seen.push(e);
            if done {
                break;
            }
        }
    })
    .await;
    assert!(
        matches!(
            seen[0],
            Status::Disconnected {
                code: Some(1001),
                ..
            }
        ),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Status::Reconnecting { attempt: 1 }),
        "{seen:?}"
    );
    assert!(seen.contains(&Status::Connected), "{seen:?}");
    c.close().await;
    s.guard.shutdown().await;
}

#[tokio::test]
async fn without_reconnect_a_drop_closes_the_client() {
    let s = server(Kind::Memory).await;
    let c = s
        .client_with(
            "nr",
            None,
            ConnectOptions {
                reconnect: false,
                ..fast_opts()
            },
        )
        .await;
    s.guard.shutdown().await;
    assert!(!within(c.synced()).await);
    assert_eq!(c.status(), Status::Closed);
}

#[tokio::test]
async fn the_manager_unloads_rooms_when_their_last_client_leaves() {
    for kind in KINDS {
        let s = server(kind).await;
        let a = s.client("u1").await;
        let b = s.client("u2").await;
        assert_eq!(s.guard.manager().room_ids(), ["/u1", "/u2"]);
        a.close().await;
        eventually("u1 unloaded", || s.guard.manager().room_ids() == ["/u2"]).await;
        b.close().await;
        eventually("all unloaded", || s.guard.manager().room_ids().is_empty()).await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn clients_joining_and_leaving_at_once_never_lose_edits() {
    // Persist through the hooks so that each fresh room reloads what the last one had.
    use bytes::Bytes;
    use futures_util::future::BoxFuture;
    use nimbus_doc::{HookError, RoomHooks};
    #[derive(Default)]
    struct Log(Mutex<Vec<Bytes>>);
    struct Hooks(Arc<Log>);
    impl RoomHooks for Hooks {
        fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
            Box::pin(async move {
                for u in self.0 .0.lock().unwrap().iter() {
                    room.apply_update(u)
                        .map_err(|e| HookError::new(e.to_string()))?;
                }
                Ok(())
            })
        }
        fn updated(&self, _room: &Room, update: &Bytes) {
            self.0 .0.lock().unwrap().push(update.clone());
        }
    }
    let log = Arc::new(Log::default());
    let l2 = log.clone();
    let s = serve_with(
        Addr::new(Kind::Memory),
        move |id: &str| Room::with_hooks(id, Arc::new(Hooks(l2.clone()))),
        ServerOptions::default(),
    )
    .await;
    let mut joins = Vec::new();
    for i in 0..12 {
        let wire = s.addr.client_wire();
        joins.push(tokio::spawn(async move {
            let c = connect(wire, "churn", None, fast_opts()).await.unwrap();
            c.doc()
                .get_or_insert_text("t")
                .push(&mut c.doc().transact_mut(), &format!("[{i}]"));
            // Close right away or a little later: the edit must survive either way.
            tokio::time::sleep(Duration::from_millis(5 * (i % 3))).await;
            c.close().await;
        }));
    }
    for j in joins {
        within(j).await.unwrap();
    }
    eventually("every room unloaded", || {
        s.guard.manager().room_ids().is_empty()
    })
    .await;
    let last = s.client("churn").await;
    let text = json_of(last.doc())["t"].as_str().unwrap().to_owned();
    for i in 0..12 {
        assert!(text.contains(&format!("[{i}]")), "edit {i} lost: {text}");
    }
    last.close().await;
}

#[tokio::test]
async fn two_clients_can_share_one_document() {
    // One doc bridged between two servers by two clients.
    let s1 = server(Kind::Memory).await;
    let s2 = server(Kind::WebSocket).await;
    let doc = Doc::new();
    let c1 = s1
        .client_with("bridge", Some(doc.clone()), fast_opts())
        .await;
    let c2 = s2
        .client_with("bridge", Some(doc.clone()), fast_opts())
        .await;
    let far = s2.client("bridge").await;
    doc.get_or_insert_text("t")
        .push(&mut doc.transact_mut(), "via both");
    eventually("the far side sees it", || {
        json_of(far.doc())["t"] == "via both"
    })
    .await;
    let r1 = s1.guard.manager().get("/bridge").unwrap();
    eventually("server 1 has it", || json_of(r1.doc())["t"] == "via both").await;
    c1.close().await;
    c2.close().await;
    far.close().await;
}

#[tokio::test]
async fn messages_many_times_the_read_buffer_arrive_whole_both_ways() {
    // Client and server sockets read `CLIENT_READ_BUFFER` bytes at a time; a frame longer than
    // that must still arrive whole (the buffer grows to the frame's declared length).
    let big = "y".repeat(20 * nimbus_proto::CLIENT_READ_BUFFER + 17);
    let s = server(Kind::WebSocket).await;
    let writer = s.client("big").await;
    writer
        .doc()
        .get_or_insert_text("t")
        .push(&mut writer.doc().transact_mut(), &big);
    let room = within(s.guard.manager().get_room("/big")).await.unwrap();
    eventually("the server has the big update", || {
        json_of(room.doc())["t"] == big.as_str()
    })
    .await;
    // A late joiner gets it in the server's one SyncStep2.
    let reader = s.client("big").await;
    eventually("the late joiner has it", || {
        json_of(reader.doc())["t"] == big.as_str()
    })
    .await;
    writer.close().await;
    reader.close().await;
}

#[tokio::test]
async fn wss_uses_rustls_and_a_failed_tls_handshake_is_an_error() {
    // A TCP server that is no TLS server: the handshake fails cleanly (no panic about a
    // missing crypto provider).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let err = connect(
        ClientWire::WebSocket {
            url: format!("wss://{addr}"),
        },
        "x",
        None,
        fast_opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err}");
}

#[tokio::test]
async fn renewed_awareness_outlives_the_server_timeout() {
    let options = ServerOptions {
        serve: ServeOptions {
            awareness_timeout: Duration::from_millis(600),
            ..ServeOptions::default()
        },
        ..ServerOptions::default()
    };
    let s = serve_with(Addr::new(Kind::Memory), |id: &str| Room::new(id), options).await;
    let opts = ConnectOptions {
        awareness_renew: Duration::from_millis(50),
        ..fast_opts()
    };
    let a = s.client_with("renew", None, opts).await;
    let b = s.client("renew").await;
    a.set_local_state(serde_json::json!({"cursor": 1}));
    let id = a.client_id();
    eventually("b sees a", || b.states().contains_key(&id)).await;
    let room = s.guard.manager().get("/renew").unwrap();
    // Several server timeouts later the state is still there, renewed by a's clock.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            room.awareness().contains_key(&id),
            "a's renewed state expired"
        );
    }
    assert!(room.awareness()[&id].clock > 1);
    // Clearing the state removes it everywhere.
    a.set_local_state(serde_json::Value::Null);
    eventually("b sees a's state go", || !b.states().contains_key(&id)).await;
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn awareness_comes_back_at_once_after_a_reconnect() {
    let s = server(Kind::Memory).await;
    let addr = s.addr.clone();
    let a = s.client("back").await;
    a.set_local_state(serde_json::json!({"name": "a"}));
    let id = a.client_id();
    let room = s.guard.manager().get("/back").unwrap();
    eventually("the room has a's state", || {
        room.awareness().contains_key(&id)
    })
    .await;
    s.guard.shutdown().await;
    let s = serve_with(addr, |id: &str| Room::new(id), ServerOptions::default()).await;
    let b = s.client("back").await;
    within(a.synced()).await;
    // Without waiting for a renewal (15 s by default).
    eventually("b sees a's state again", || b.states().contains_key(&id)).await;
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn close_returns_while_the_server_is_down() {
    let s = server(Kind::WebSocket).await;
    let c = s.client("down").await;
    s.guard.shutdown().await;
    eventually("c is reconnecting", || {
        matches!(c.status(), Status::Reconnecting { .. } | Status::Connecting)
    })
    .await;
    within(c.close()).await;
}
