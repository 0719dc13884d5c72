//! The nimbus-doc Rust client against `nimbus serve`'s `/doc/{room}`: two clients converge
//! on concurrent edits, and a client that was cut off resyncs both ways after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, TestServer, WAIT};
use nimbus_doc::yrs::{Array, GetString, Map, Text, Transact};
use nimbus_doc::{connect, doc_to_json, Client, ClientWire, ConnectOptions};

async fn client(server: &TestServer, room: &str, reconnect: bool) -> Client {
    let wire = ClientWire::WebSocket {
        url: format!("ws://{}/doc", server.addr),
    };
    let opts = ConnectOptions {
        reconnect,
        backoff: nimbus_doc::Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        ..ConnectOptions::default()
    };
    connect(wire, room, None, opts).await.unwrap()
}

/// Wait (bounded) until every client's JSON is equal and satisfies `done`.
async fn converge(clients: &[&Client], done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let docs: Vec<_> = clients.iter().map(|c| doc_to_json(c.doc())).collect();
        if docs.windows(2).all(|w| w[0] == w[1]) && done(&docs[0]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {docs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_rust_clients_converge_on_concurrent_text_map_and_array_edits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let a = client(&server, "shared", false).await;
    let b = client(&server, "shared", false).await;
    let (ta, ma, aa) = (
        a.doc().get_or_insert_text("t"),
        a.doc().get_or_insert_map("m"),
        a.doc().get_or_insert_array("a"),
    );
    let (tb, mb, ab) = (
        b.doc().get_or_insert_text("t"),
        b.doc().get_or_insert_map("m"),
        b.doc().get_or_insert_array("a"),
    );
    for i in 0..20 {
        {
            let mut txn = a.doc().transact_mut();
            ta.insert(&mut txn, 0, "A");
            ma.insert(&mut txn, format!("a{i}"), i);
            aa.push_back(&mut txn, format!("a{i}"));
        }
        {
            let mut txn = b.doc().transact_mut();
            tb.push(&mut txn, "B");
            mb.insert(&mut txn, "same", i);
            ab.insert(&mut txn, 0, format!("b{i}"));
        }
    }
    converge(&[&a, &b], |j| {
        j["a"].as_array().is_some_and(|a| a.len() == 40)
            && j["m"].as_object().is_some_and(|m| m.len() == 21)
    })
    .await;
    let t = ta.get_string(&a.doc().transact());
    assert_eq!(t.matches('A').count(), 20);
    assert_eq!(t.matches('B').count(), 20);
    a.close().await;
    b.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_resyncs_both_ways_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = TestServer::start(cfg.clone()).await;
    let addr = server.addr;
    let a = client(&server, "phoenix", true).await;
    let text = a.doc().get_or_insert_text("t");
    text.push(&mut a.doc().transact_mut(), "before;");
    // Another client proves the server has it before the restart.
    let witness = client(&server, "phoenix", false).await;
    converge(&[&a, &witness], |j| j["t"] == "before;").await;
    witness.close().await;
    server.stop().await;

    // Offline edit, while the server is down.
    text.push(&mut a.doc().transact_mut(), "offline;");
    let mut cfg = cfg;
    cfg.listen = addr;
    let server = TestServer::start(cfg).await;
    // A client that joins after the restart edits too; both sides must get everything.
    let b = client(&server, "phoenix", false).await;
    let tb = b.doc().get_or_insert_text("t");
    tb.push(&mut b.doc().transact_mut(), "after;");
    converge(&[&a, &b], |j| {
        let t = j["t"].as_str().unwrap_or_default();
        t.contains("before;") && t.contains("offline;") && t.contains("after;")
    })
    .await;
    a.close().await;
    b.close().await;
    server.stop().await;
}
