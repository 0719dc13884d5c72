//! `nimbus serve --ipc`: the built-in routes, called with the IPC ClientSession,
//! acting on a room that real cloud clients are in.
#![allow(clippy::unwrap_used)]

mod common;

use common::{set_line, Client, Ended};
use nimbus_ipc::{ClientSession, IpcError};
use nimbus_server::{IpcConfig, Server};
use serde_json::json;
use tokio::sync::oneshot;

#[tokio::test]
async fn ipc_routes_read_write_and_kick_in_live_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.cloud.max_variables_per_room = 5;
    cfg.ipc = Some(IpcConfig {
        host: "127.0.0.1".into(),
        port: 0,
        multicast_port: 0,
        secret: Some("s3cret".into()),
    });
    let server = Server::bind(cfg).await.unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let ipc_port = server.ipc_addr().unwrap().port();
    let multicast_port = server.ipc_multicast_addr().unwrap().port();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));

    let mut alice = Client::join(&url, "42", "alice").await;
    let mut bob = Client::join(&url, "42", "bob").await;
    alice.set("score", "1").await;
    bob.lines(1).await;

    // Discovery through the multicast port, with the secret.
    let mut s = ClientSession::connect("127.0.0.1", None, multicast_port, Some("s3cret".into()))
        .await
        .unwrap();
    assert_eq!(s.resolved_port(), Some(ipc_port));

    assert_eq!(
        s.request("cloud.get", json!({"room": 42})).await.unwrap(),
        json!({"☁ score": 1})
    );
    assert_eq!(s.request("rooms", json!({})).await.unwrap(), json!(["42"]));
    let stats = s.request("stats", json!({})).await.unwrap();
    assert_eq!(
        (stats["rooms"].clone(), stats["clients"].clone()),
        (json!(1), json!(2))
    );

    // A set through IPC reaches every client of the room (no sender to skip).
    assert_eq!(
        s.request(
            "cloud.set",
            json!({"room": "42", "name": "level", "value": 7})
        )
        .await
        .unwrap(),
        json!(true)
    );
    assert_eq!(alice.lines(1).await, vec![set_line("level", "7")]);
    assert_eq!(bob.lines(1).await, vec![set_line("level", "7")]);

    // A new name beyond the room's variable limit: refused, not `true` (nothing stored).
    for i in 0..3 {
        let _ = s
            .request(
                "cloud.set",
                json!({"room": "42", "name": format!("v{i}"), "value": i}),
            )
            .await;
    }
    let err = s
        .request(
            "cloud.set",
            json!({"room": "42", "name": "one-too-many", "value": 1}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpcError::RouteFailed { message, .. } if message.contains("TooManyVariables")),
        "{err:?}"
    );
    let vars = s.request("cloud.get", json!({"room": "42"})).await.unwrap();
    assert!(vars.get("☁ one-too-many").is_none(), "{vars}");
    for i in 0..3 {
        let _ = s
            .request(
                "cloud.delete",
                json!({"room": "42", "name": format!("v{i}")}),
            )
            .await;
    }

    // Invalid values are refused like a client's (500 with the error kind), nothing sent.
    let err = s
        .request(
            "cloud.set",
            json!({"room": "42", "name": "level", "value": "abc"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IpcError::RouteFailed { .. }), "{err:?}");
    assert!(matches!(
        s.request("cloud.get", json!({})).await.unwrap_err(),
        IpcError::RouteFailed { .. }
    ));

    assert_eq!(
        s.request("cloud.delete", json!({"room": "42", "name": "☁ score"}))
            .await
            .unwrap(),
        json!(true)
    );
    assert_eq!(
        s.request("cloud.delete", json!({"room": "42", "name": "score"}))
            .await
            .unwrap(),
        json!(false)
    );
    assert_eq!(
        s.request("cloud.get", json!({"room": "42"})).await.unwrap(),
        json!({"☁ level": 7})
    );

    assert_eq!(
        s.request("kick", json!({"room": "42", "user": "BOB"}))
            .await
            .unwrap(),
        json!(1)
    );
    assert_eq!(bob.ended().await.0, Ended::Closed(4002));

    // A wrong secret is refused.
    let mut wrong = ClientSession::connect(
        "127.0.0.1",
        Some(ipc_port),
        multicast_port,
        Some("nope".into()),
    )
    .await
    .unwrap();
    assert!(matches!(
        wrong.request("stats", json!({})).await.unwrap_err(),
        IpcError::Forbidden
    ));

    s.close().await;
    wrong.close().await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn ipc_doc_get_returns_the_live_and_the_stored_document_as_json() {
    use nimbus_doc::yrs::{Map, Text, Transact};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.ipc = Some(IpcConfig {
        host: "127.0.0.1".into(),
        port: 0,
        multicast_port: 0,
        secret: None,
    });
    let server = Server::bind(cfg).await.unwrap();
    let base = format!("ws://{}/doc", server.local_addr());
    let ipc_port = server.ipc_addr().unwrap().port();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    let wire = || nimbus_doc::ClientWire::WebSocket { url: base.clone() };
    let opts = || nimbus_doc::ConnectOptions {
        reconnect: false,
        ..Default::default()
    };
    let editor = nimbus_doc::connect(wire(), "notes", None, opts())
        .await
        .unwrap();
    let text = editor.doc().get_or_insert_text("t");
    let map = editor.doc().get_or_insert_map("m");
    {
        let mut txn = editor.doc().transact_mut();
        text.push(&mut txn, "hello");
        map.insert(&mut txn, "n", 3);
    }
    let mut s = ClientSession::connect("127.0.0.1", Some(ipc_port), 0, None)
        .await
        .unwrap();
    let expected = json!({"m": {"n": 3}, "t": "hello"});
    // Live: poll (bounded) until the room has applied the edit.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let got = s
            .request("doc.get", json!({"room": "notes"}))
            .await
            .unwrap();
        if got == expected {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.request("doc.rooms", json!({})).await.unwrap(),
        json!(["notes"])
    );
    editor.close().await;
    // Stored: after the room unloads, the same JSON comes from the store.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while s.request("doc.rooms", json!({})).await.unwrap() != json!([]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room never unloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.request("doc.get", json!({"room": "notes"}))
            .await
            .unwrap(),
        expected
    );
    assert_eq!(
        s.request("doc.get", json!({"room": "nothing here"}))
            .await
            .unwrap(),
        json!(null)
    );
    assert!(matches!(
        s.request("doc.get", json!({"room": 5})).await.unwrap_err(),
        IpcError::RouteFailed { .. }
    ));
    s.close().await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
