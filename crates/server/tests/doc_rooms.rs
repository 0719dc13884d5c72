//! Document rooms at `/doc/{room}` over real loopback sockets, driven byte by byte with a
//! raw y-sync client (the codec of `nimbus_proto::doc` + a yrs document), so the server is
//! tested independently of the nimbus-doc client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::doc::{decode_frame, AuthMessage, AwarenessEntry, AwarenessUpdate, Message};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

type Socket = common::Ws;

/// The root types every test uses (created up front: creating one needs a write
/// transaction, so it cannot happen inside an edit).
struct Roots {
    t: yrs::TextRef,
    m: yrs::MapRef,
    arr: yrs::ArrayRef,
}

/// A raw y-websocket client with its own yrs document.
struct Peer {
    ws: Socket,
    doc: yrs::Doc,
    roots: Roots,
    /// Auth refusals received.
    denied: Vec<String>,
    /// Awareness updates received.
    awareness: Vec<AwarenessUpdate>,
}

fn doc_url(server: &TestServer, room: &str) -> String {
    format!("ws://{}/doc/{room}", server.addr)
}

impl Peer {
    /// Connect without syncing.
    async fn open(url: &str) -> Peer {
        let req = url.into_client_request().unwrap();
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        let doc = yrs::Doc::new();
        let roots = Roots {
            t: doc.get_or_insert_text("t"),
            m: doc.get_or_insert_map("m"),
            arr: doc.get_or_insert_array("arr"),
        };
        Peer {
            ws,
            doc,
            roots,
            denied: Vec::new(),
            awareness: Vec::new(),
        }
    }

    /// Connect, send our step1 and wait for the server's step2.
    async fn join(url: &str) -> Peer {
        let mut p = Peer::open(url).await;
        p.sync().await;
        p
    }

    async fn send(&mut self, msg: Message) {
        self.ws.send(Ws::Binary(msg.encode())).await.unwrap();
    }

    async fn sync(&mut self) {
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(Message::SyncStep1(sv.into())).await;
        self.until(|m| matches!(m, Message::SyncStep2(_))).await;
    }

    /// Handle one incoming message the way a y-websocket client does.
    async fn handle(&mut self, msg: &Message) {
        match msg {
            Message::SyncStep1(sv) => {
                let sv = StateVector::decode_v1(sv).unwrap();
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(Message::SyncStep2(diff.into())).await;
            }
            Message::SyncStep2(u) | Message::Update(u) => {
                let u = Update::decode_v1(u).unwrap();
                self.doc.transact_mut().apply_update(u).unwrap();
            }
            Message::Auth(AuthMessage::PermissionDenied(reason)) => {
                self.denied.push(reason.clone())
            }
            Message::Awareness(bytes) => {
                self.awareness.push(AwarenessUpdate::decode(bytes).unwrap());
            }
            _ => {}
        }
    }

    /// The next frame's messages (panics on close).
    async fn frame(&mut self) -> Vec<Message> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame");
            match msg {
                Ws::Binary(b) => {
                    let msgs = decode_frame(&b).unwrap();
                    assert_eq!(msgs.len(), 1, "one protocol message per frame");
                    return msgs;
                }
                Ws::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                Ws::Text(t) => panic!("text frame from the server: {t}"),
                _ => {}
            }
        }
    }

    /// Process frames until one holds a message matching `pred`.
    async fn until(&mut self, pred: impl Fn(&Message) -> bool) {
        loop {
            for m in self.frame().await {
                self.handle(&m).await;
                if pred(&m) {
                    return;
                }
            }
        }
    }

    /// Process frames until the document satisfies `pred`.
    async fn until_doc(&mut self, pred: impl Fn(&yrs::Doc) -> bool) {
        while !pred(&self.doc) {
            for m in self.frame().await {
                self.handle(&m).await;
            }
        }
    }

    /// Apply a local edit and send its update.
    async fn edit(&mut self, f: impl FnOnce(&Roots, &mut yrs::TransactionMut)) {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            f(&self.roots, &mut txn);
        }
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        self.send(Message::Update(update.into())).await;
    }

    fn json(&self) -> serde_json::Value {
        nimbus_doc::doc_to_json(&self.doc)
    }

    /// Read until the server closes; returns its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Ws::Close(Some(f)))) => {
                    let _ = self.ws.flush().await;
                    return (u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(Ws::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("dropped without a close frame: {e}"),
                None => panic!("ended without a close frame"),
            }
        }
    }
}

fn text(doc: &yrs::Doc, name: &str) -> String {
    let t = doc.get_or_insert_text(name);
    let s = t.get_string(&doc.transact());
    s
}

fn lens(doc: &yrs::Doc) -> (u32, u32) {
    let arr = doc.get_or_insert_array("arr");
    let m = doc.get_or_insert_map("m");
    let txn = doc.transact();
    (arr.len(&txn), m.len(&txn))
}

#[tokio::test]
async fn the_server_speaks_first_with_step1_and_answers_step1_with_step2() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut p = Peer::open(&doc_url(&server, "bytes")).await;
    let first = p.frame().await;
    assert_eq!(first, vec![Message::SyncStep1(Bytes::from_static(&[0]))]);
    // The empty document's step1, byte for byte.
    p.ws.send(Ws::Binary(Bytes::from_static(&[0, 0, 1, 0])))
        .await
        .unwrap();
    let reply = p.frame().await;
    assert_eq!(reply, vec![Message::SyncStep2(Bytes::from_static(&[0, 0]))]);
    server.stop().await;
}

#[tokio::test]
async fn two_clients_converge_on_concurrent_text_map_and_array_edits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let url = doc_url(&server, "converge");
    let mut a = Peer::join(&url).await;
    let mut b = Peer::join(&url).await;
    // Concurrent: neither has seen the other's edit.
    a.edit(|d, t| {
        d.t.insert(t, 0, "hello ");
        d.m.insert(t, "a", 1);
        d.arr.push_back(t, "from a");
    })
    .await;
    b.edit(|d, t| {
        d.t.insert(t, 0, "world");
        d.m.insert(t, "b", 2);
        d.arr.push_back(t, "from b");
    })
    .await;
    let both = |d: &yrs::Doc| lens(d) == (2, 2) && text(d, "t").len() == "hello world".len();
    a.until_doc(both).await;
    b.until_doc(both).await;
    assert_eq!(a.json(), b.json());
    let t = text(&a.doc, "t");
    assert!(t.contains("hello ") && t.contains("world"), "{t}");
    server.stop().await;
}

#[tokio::test]
async fn a_late_joiner_gets_the_full_state_and_it_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let url = doc_url(&server, "late");
    let mut a = Peer::join(&url).await;
    let mut witness = Peer::join(&url).await;
    for i in 0..20 {
        a.edit(|d, t| d.t.push(t, &format!("{i};"))).await;
    }
    let expected: String = (0..20).map(|i| format!("{i};")).collect();
    // Once another client has every edit, the room has applied them all.
    witness.until_doc(|d| text(d, "t") == expected).await;
    let late = Peer::join(&url).await;
    assert_eq!(
        text(&late.doc, "t"),
        expected,
        "all of it in the first sync"
    );
    drop((a, witness, late));
    server.stop().await;

    let server = TestServer::start(config(dir.path())).await;
    let again = Peer::join(&doc_url(&server, "late")).await;
    assert_eq!(text(&again.doc, "t"), expected);
    let (status, body) = server.http_get("/api/docs/late").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["t"], serde_json::json!(expected));
    server.stop().await;
}

#[tokio::test]
async fn compaction_keeps_the_state_identical_while_shrinking_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.compaction.max_updates = 16;
    let server = TestServer::start(cfg.clone()).await;
    let url = doc_url(&server, "compact");
    let mut a = Peer::join(&url).await;
    let mut b = Peer::join(&url).await;
    for i in 0..200 {
        a.edit(|d, t| {
            d.t.push(t, &format!("{i},"));
            if i % 2 == 0 {
                d.t.remove_range(t, 0, 1);
            }
        })
        .await;
    }
    // A second client proves the server applied all 200 before we stop it.
    let expected = text(&a.doc, "t");
    b.until_doc(|d| text(d, "t") == expected).await;
    // The writer compacts after its group commit; poll (bounded) until it has.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = server.http_get("/metrics").await;
        if metric(&metrics, "nimbus_doc_compactions_total") >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    server.stop().await;

    let mut db =
        nimbus_server::store::SqliteBackend::open(&dir.path().join("nimbus.sqlite3")).unwrap();
    use nimbus_server::store::Backend;
    let log = db.load_doc("compact").unwrap();
    assert!(log.snapshot.is_some());
    assert!(log.updates.len() < 16, "{} updates left", log.updates.len());
    drop(db);

    let server = TestServer::start(cfg).await;
    let c = Peer::join(&doc_url(&server, "compact")).await;
    assert_eq!(text(&c.doc, "t"), expected);
    server.stop().await;
}

fn tokens(specs: &[&str]) -> Vec<nimbus_server::doc::TokenRule> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn a_read_only_token_gets_updates_refused_with_auth_and_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.tokens = tokens(&["notes:rw:writer", "notes:ro:reader"]);
    let server = TestServer::start(cfg).await;
    let base = doc_url(&server, "notes");
    let mut writer = Peer::join(&format!("{base}?token=writer")).await;
    let mut reader = Peer::join(&format!("{base}?token=reader")).await;
    reader.edit(|d, t| d.t.push(t, "vandal")).await;
    reader
        .until(|m| matches!(m, Message::Auth(AuthMessage::PermissionDenied(_))))
        .await;
    assert!(!reader.denied.is_empty());
    writer.edit(|d, t| d.t.push(t, "legit")).await;
    reader.until_doc(|d| text(d, "t").contains("legit")).await;
    // A newcomer sees only the writer's text.
    let check = Peer::join(&format!("{base}?token=writer")).await;
    assert_eq!(text(&check.doc, "t"), "legit");
    server.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_tokens_and_bad_room_names_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.tokens = tokens(&["secret:rw:t0k"]);
    let server = TestServer::start(cfg).await;
    for (url, status) in [
        (doc_url(&server, "secret"), 401),
        (format!("{}?token=nope", doc_url(&server, "secret")), 401),
        (doc_url(&server, "bad%0Aname"), 400),
    ] {
        let err = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), status, "{url}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("error"), "{body}");
            }
            other => panic!("{url}: {other}"),
        }
    }
    // The bearer header works as well as the query parameter.
    let mut req = doc_url(&server, "secret").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer t0k".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Unruled rooms stay open.
    Peer::join(&doc_url(&server, "open")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_is_closed_with_a_reason_and_the_room_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let url = doc_url(&server, "broken");
    let mut good = Peer::join(&url).await;
    let mut bad = Peer::join(&url).await;
    // Sync type 7 does not exist.
    bad.ws
        .send(Ws::Binary(Bytes::from_static(&[0, 7, 1, 0])))
        .await
        .unwrap();
    let (code, reason) = bad.closed().await;
    assert_eq!(code, 1007, "{reason}");
    assert!(!reason.is_empty());

    // A decodable message carrying a broken update never reaches the document.
    let mut bad = Peer::join(&url).await;
    bad.send(Message::Update(Bytes::from_static(&[0xff, 0xff, 0xff])))
        .await;
    let mut text_frame = Peer::join(&url).await;
    text_frame.ws.send(Ws::text("hello")).await.unwrap();
    let (code, _) = text_frame.closed().await;
    assert_eq!(code, 1003);

    good.edit(|d, t| d.t.push(t, "still fine")).await;
    let fresh = Peer::join(&url).await;
    assert_eq!(text(&fresh.doc, "t"), "still fine");
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009_and_oversized_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.doc.max_message_bytes = 4096;
    cfg.doc.max_doc_bytes = 2048;
    let server = TestServer::start(cfg).await;
    let url = doc_url(&server, "big");
    let mut p = Peer::join(&url).await;
    p.edit(|d, t| d.t.push(t, &"x".repeat(3000))).await;
    p.until(|m| matches!(m, Message::Auth(_))).await;
    assert!(p.denied[0].contains("too large"), "{:?}", p.denied);
    // The client applied the refused update locally: it is closed with a clear code
    // instead of failing later with 1007 on an update that depends on it.
    let (code, reason) = p.closed().await;
    assert_eq!(code, 1009);
    assert!(reason.starts_with("document too large"), "{reason}");
    let mut p = Peer::join(&url).await;
    p.edit(|d, t| d.t.push(t, &"y".repeat(5000))).await;
    let (code, _) = p.closed().await;
    assert_eq!(code, 1009);
    let fresh = Peer::join(&url).await;
    assert_eq!(text(&fresh.doc, "t"), "");
    server.stop().await;
}

#[tokio::test]
async fn awareness_is_relayed_to_everyone_and_removed_when_its_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let url = doc_url(&server, "aware");
    let mut a = Peer::join(&url).await;
    let mut b = Peer::join(&url).await;
    let update = AwarenessUpdate {
        entries: vec![AwarenessEntry {
            client_id: 42,
            clock: 1,
            state: Some(r#"{"user":"a"}"#.into()),
        }],
    };
    a.send(Message::Awareness(update.encode())).await;
    let has = |p: &Peer, state: Option<&str>| {
        p.awareness.iter().any(|u| {
            u.entries
                .iter()
                .any(|e| e.client_id == 42 && e.state.as_deref() == state)
        })
    };
    a.until(|m| matches!(m, Message::Awareness(_))).await;
    assert!(has(&a, Some(r#"{"user":"a"}"#)), "echoed to the sender");
    b.until(|m| matches!(m, Message::Awareness(_))).await;
    assert!(has(&b, Some(r#"{"user":"a"}"#)));
    // A newcomer gets the known states right after step1.
    let mut c = Peer::open(&url).await;
    let first = c.frame().await;
    assert!(matches!(first[0], Message::SyncStep1(_)));
    let second = c.frame().await;
    assert!(matches!(second[0], Message::Awareness(_)), "{second:?}");
    drop(a);
    while !has(&b, None) {
        b.until(|m| matches!(m, Message::Awareness(_))).await;
    }
    drop(c);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_document_clients_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut p = Peer::join(&doc_url(&server, "bye")).await;
    let stopping = tokio::spawn(server.stop());
    let (code, _) = p.closed().await;
    assert_eq!(code, 1001);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn reloading_a_room_does_not_store_its_state_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let url = doc_url(&server, "reload");
    let mut a = Peer::join(&url).await;
    let mut w = Peer::join(&url).await;
    a.edit(|d, t| d.t.push(t, "once")).await;
    w.until_doc(|d| text(d, "t") == "once").await;
    drop((a, w));
    for _ in 0..5 {
        let mut p = Peer::join(&url).await;
        assert_eq!(text(&p.doc, "t"), "once");
        let _ = p.ws.close(None).await;
    }
    let (_, metrics) = server.http_get("/metrics").await;
    assert_eq!(metric(&metrics, "nimbus_doc_updates_total"), 1.0);
    server.stop().await;
}
