//! A store that cannot write (disk full) or read (corrupted database), simulated in-process
//! with `FailingBackend` over the real SQLite backend, and driven over loopback sockets:
//! nothing a client saw as accepted is lost, later changes are refused with documented codes,
//! `/readyz` and `/metrics` show the state, and shutdown reports what could not be stored.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, http_get, Client, Ended, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::doc::{decode_frame, AuthMessage, Message};
use nimbus_server::store::{
    Backend, CompactionPolicy, FailSwitch, FailingBackend, SqliteBackend, Store, StoreError,
};
use nimbus_server::{Config, Server, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

const FLUSH: Duration = Duration::from_millis(20);

/// A server over a SQLite store whose writes and reads fail on demand.
struct Failing {
    addr: std::net::SocketAddr,
    hub: Arc<nimbus_server::hub::Hub>,
    store: Store,
    switch: Arc<FailSwitch>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Failing {
    async fn start(cfg: Config) -> Failing {
        let sqlite = SqliteBackend::open(&cfg.data_dir.join("nimbus.sqlite3")).unwrap();
        let (backend, switch) = FailingBackend::new(sqlite);
        let store = Store::spawn_with(backend, FLUSH, cfg.doc.compaction);
        let server = Server::bind_with_store(cfg, store.clone()).await.unwrap();
        let addr = server.local_addr();
        let hub = server.hub();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        Failing {
            addr,
            hub,
            store,
            switch,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }

    /// Make writes fail and wait until a commit has failed (the store's own flag).
    async fn break_writes(&self) {
        self.switch.fail_writes(true);
        until("a commit failed", || !self.store.can_write()).await;
    }

    async fn heal_writes(&self) {
        self.switch.fail_writes(false);
        until("a retry worked", || self.store.can_write()).await;
    }

    /// Graceful shutdown; the server's result.
    async fn stop(self) -> Result<(), ServerError> {
        let _ = self.stop.send(());
        drop((self.store, self.hub));
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("shutdown in time")
            .expect("join")
    }
}

/// Poll (bounded) until `f` holds: the store retries on its own backoff clock.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .parse()
        .unwrap()
}

fn stored(dir: &std::path::Path, room: &str) -> Vec<(String, String)> {
    let mut db = SqliteBackend::open(&dir.join("nimbus.sqlite3")).unwrap();
    db.load(room)
        .unwrap()
        .into_iter()
        .map(|v| (v.name.to_string(), v.value.as_str().to_owned()))
        .collect()
}

#[tokio::test]
async fn cloud_sets_after_a_write_failure_are_refused_and_accepted_ones_survive_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Failing::start(config(dir.path())).await;
    let url = server.url();
    let mut w = Client::join(&url, "1", "writer").await;
    let mut o = Client::join(&url, "1", "observer").await;
    w.set("a", "1").await;
    assert!(o.frame().await.contains("1"));
    server.store.flush().await.unwrap();
    assert_eq!(server.get("/readyz").await.0, 200);

    // The disk fills. This set is accepted and fanned out before any commit fails ...
    server.switch.fail_writes(true);
    w.set("a", "2").await;
    assert!(o.frame().await.contains("\"value\":2"));
    until("the commit failed", || !server.store.can_write()).await;

    // ... so it is kept and retried; /readyz and /metrics say so.
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["store"], "write_failing", "{body}");
    assert!(json["reason"].as_str().unwrap().contains("disk is full"));
    assert_eq!(json["pending_ops"], 1);
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metric(&metrics, "nimbus_store_healthy"), 0.0);
    assert_eq!(metric(&metrics, "nimbus_store_pending_ops"), 1.0);
    assert!(metric(&metrics, "nimbus_store_commit_failures_total") >= 1.0);
    assert_eq!(server.get("/healthz").await.0, 200, "liveness is unchanged");

    // A new set is refused: its sender is closed with 1011, nobody sees the value.
    w.set("a", "3").await;
    assert_eq!(w.ended().await.0, Ended::Closed(1011));
    o.assert_silent(Duration::from_millis(100)).await;
    let (_, vars) = server.get("/api/rooms/1/variables").await;
    assert!(vars.contains("\"☁ a\":2"), "{vars}");
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "nimbus_store_refused_writes_total{wire=\"cloud\"}"
        ),
        1.0
    );

    // Space returns: the kept batch is stored, changes are accepted again.
    server.heal_writes().await;
    assert_eq!(server.get("/readyz").await.0, 200);
    let mut w = Client::join(&url, "1", "writer2").await;
    assert!(w.frame().await.contains("\"value\":2"));
    w.set("b", "5").await;
    assert!(o.frame().await.contains("\"value\":5"));
    drop((w, o));
    server.stop().await.unwrap();
    assert_eq!(
        stored(dir.path(), "1"),
        vec![
            ("☁ a".to_owned(), "2".to_owned()),
            ("☁ b".to_owned(), "5".to_owned())
        ]
    );
}

impl Failing {
    /// Break writes and make a commit fail by queueing a change directly.
    async fn break_writes_with_a_set(&self) {
        self.switch.fail_writes(true);
        self.store.apply(nimbus_server::store::StoreOp::Put {
            room: "probe".into(),
            var: nimbus_server::store::StoredVar {
                name: "☁ p".into(),
                value: nimbus_proto::cloud::CloudValue::from(1),
                pos: 0,
            },
        });
        self.break_writes().await;
    }
}

#[tokio::test]
async fn shutdown_with_changes_not_stored_reports_them_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = Failing::start(config(dir.path())).await;
    let mut w = Client::join(&server.url(), "9", "writer").await;
    let mut o = Client::join(&server.url(), "9", "observer").await;
    server.switch.fail_writes(true);
    w.set("x", "1").await;
    w.set("y", "2").await;
    o.lines(2).await;
    until("the commit failed", || !server.store.can_write()).await;
    drop((w, o));
    match server.stop().await {
        Err(ServerError::Store(StoreError::Unflushed { ops, reason })) => {
            assert_eq!(ops, 2);
            assert!(reason.contains("disk is full"), "{reason}");
        }
        other => panic!("shutdown must fail, got {other:?}"),
    }
}

/// A raw y-websocket peer: enough to sync, edit and read refusals.
struct Peer {
    ws: common::Ws,
    doc: yrs::Doc,
    denied: Vec<String>,
}

impl Peer {
    async fn join(url: &str) -> Peer {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut p = Peer {
            ws,
            doc: yrs::Doc::new(),
            denied: Vec::new(),
        };
        let sv = p.doc.transact().state_vector().encode_v1();
        p.send(Message::SyncStep1(sv.into())).await;
        loop {
            let msgs = p.next().await.expect("synced, not closed");
            if msgs.iter().any(|m| matches!(m, Message::SyncStep2(_))) {
                return p;
            }
        }
    }

    async fn send(&mut self, m: Message) {
        self.ws.send(Ws::Binary(m.encode())).await.unwrap();
    }

    /// The next frame's messages, applied; `Err((code, reason))` when the server closed.
    async fn next(&mut self) -> Result<Vec<Message>, (u16, String)> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Ws::Binary(b))) => {
                    let msgs = decode_frame(&b).unwrap();
                    for m in &msgs {
                        match m {
                            Message::SyncStep2(u) | Message::Update(u) => {
                                use yrs::updates::decoder::Decode;
                                let u = yrs::Update::decode_v1(u).unwrap();
                                self.doc.transact_mut().apply_update(u).unwrap();
                            }
                            Message::Auth(AuthMessage::PermissionDenied(r)) => {
                                self.denied.push(r.clone())
                            }
                            _ => {}
                        }
                    }
                    return Ok(msgs);
                }
                Some(Ok(Ws::Close(f))) => {
                    let _ = self.ws.flush().await;
                    return Err(f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => {}
                other => panic!("dropped without a close frame: {other:?}"),
            }
        }
    }

    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Err(end) = self.next().await {
                return end;
            }
        }
    }

    fn text(&self) -> String {
        let t = self.doc.get_or_insert_text("t");
        let s = t.get_string(&self.doc.transact());
        s
    }

    async fn edit(&mut self, f: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut)) {
        let t = self.doc.get_or_insert_text("t");
        let before = self.doc.transact().state_vector();
        f(&t, &mut self.doc.transact_mut());
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        self.send(Message::Update(update.into())).await;
    }

    async fn until_text(&mut self, want: &str) {
        while self.text() != want {
            self.next().await.expect("not closed");
        }
    }

    /// Read until this peer has everything `other` has: every insertion (its state vector;
    /// the text alone looks the same before and after an insert-then-delete pair) and the
    /// same text (deletions do not move the state vector).
    async fn until_caught_up(&mut self, other: &Peer) {
        let want = other.doc.transact().state_vector();
        let has_all = |p: &Peer| {
            let sv = p.doc.transact().state_vector();
            want.iter().all(|(client, clock)| sv.get(client) >= *clock)
        };
        while !has_all(self) || self.text() != other.text() {
            self.next().await.expect("not closed");
        }
    }
}

#[tokio::test]
async fn document_updates_while_the_store_cannot_write_close_the_writer_with_1011() {
    let dir = tempfile::tempdir().unwrap();
    let server = Failing::start(config(dir.path())).await;
    let url = format!("ws://{}/doc/notes", server.addr);
    let mut a = Peer::join(&url).await;
    let mut b = Peer::join(&url).await;
    a.edit(|t, txn| t.push(txn, "one ")).await;
    b.until_text("one ").await;
    server.store.flush().await.unwrap();

    server.break_writes_with_a_set().await;
    a.edit(|t, txn| t.push(txn, "two")).await;
    let (code, reason) = a.closed().await;
    assert_eq!((code, reason.as_str()), (1011, "store unavailable"));
    assert_eq!(a.denied, vec!["store unavailable".to_owned()]);
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "nimbus_store_refused_writes_total{wire=\"doc\"}"),
        1.0
    );

    // Recovered: the client reconnects and its update is accepted, as y-websocket resyncs.
    server.heal_writes().await;
    let mut again = Peer::join(&url).await;
    let missing = a
        .doc
        .transact()
        .encode_state_as_update_v1(&again.doc.transact().state_vector());
    again.send(Message::Update(missing.into())).await;
    b.until_text("one two").await;
    drop((a, b, again));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_database_that_cannot_be_read_makes_readyz_503_and_closes_with_a_stable_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Failing::start(config(dir.path())).await;
    server.switch.fail_reads(true);
    let mut c = Client::join(&server.url(), "3", "u").await;
    assert_eq!(c.ended().await.0, Ended::Closed(1011));
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("read_failing"), "{body}");
    assert!(body.contains("malformed"), "{body}");

    // A document client sees a stable public reason, never the backend's error text.
    let url = format!("ws://{}/doc/d", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let reason = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Ws::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        reason,
        (1011, "room failed to load: store unavailable".to_owned())
    );

    server.switch.fail_reads(false);
    let mut c = Client::join(&server.url(), "3", "u").await;
    c.set("v", "1").await;
    let _ = Peer::join(&url).await;
    assert_eq!(server.get("/readyz").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_used_fails_startup_naming_the_path_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cfg = config(&file.join("data"));
    let err = Server::bind(cfg.clone()).await.unwrap_err().to_string();
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
    assert!(err.contains("Not a directory"), "{err}");

    // A database file that is not one: named too.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("nimbus.sqlite3"), vec![7u8; 8192]).unwrap();
    cfg.data_dir = data.clone();
    let err = Server::bind(cfg).await.unwrap_err().to_string();
    assert!(err.contains("nimbus.sqlite3"), "{err}");
    assert!(err.contains("not a database"), "{err}");
}

#[tokio::test]
async fn insert_delete_churn_never_refuses_a_small_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // 40 pairs of 1 MB append 40 MB: far past the limit if the size only grew.
    cfg.doc.max_doc_bytes = 16 << 20;
    cfg.doc.max_message_bytes = 2 << 20;
    cfg.doc.compaction = CompactionPolicy {
        max_updates: 1000,
        max_bytes: 2 << 20,
    };
    let server = Failing::start(cfg).await;
    let url = format!("ws://{}/doc/churn", server.addr);
    let mut a = Peer::join(&url).await;
    let mut b = Peer::join(&url).await;
    a.edit(|t, txn| t.push(txn, "tiny")).await;
    b.until_text("tiny").await;
    let mb = "x".repeat(1 << 20);
    for _ in 0..40 {
        a.edit(|t, txn| t.insert(txn, 2, &mb)).await;
        a.edit(|t, txn| t.remove_range(txn, 2, 1 << 20)).await;
        // b reads both (a reader that stops reading is cut as too slow, by design).
        b.until_caught_up(&a).await;
        assert!(b.text() == "tiny", "b's text is {} bytes", b.text().len());
        // Let the store commit and compact what is due (no timing involved).
        server.store.flush().await.unwrap();
        server.store.settle().await.unwrap();
    }
    assert!(a.denied.is_empty(), "{:?}", a.denied);
    a.edit(|t, txn| t.push(txn, "!")).await;
    b.until_text("tiny!").await;
    let stats = server.store.doc_stats();
    assert!(stats.compactions.load(std::sync::atomic::Ordering::Relaxed) >= 10);
    drop((a, b));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn deletes_and_api_changes_while_the_store_cannot_write_are_refused() {
    use nimbus_proto::cloud::CloudValue;
    use nimbus_server::hub::AdminError;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cloud.allow_delete = true;
    let server = Failing::start(cfg).await;
    let mut w = Client::join(&server.url(), "4", "writer").await;
    let mut o = Client::join(&server.url(), "4", "observer").await;
    w.set("a", "1").await;
    assert!(o.frame().await.contains("\"value\":1"));
    server.store.flush().await.unwrap();
    server.break_writes_with_a_set().await;
    w.send(r#"{"method":"delete","name":"☁ a"}"#).await;
    assert_eq!(w.ended().await.0, Ended::Closed(1011));
    let set = server
        .hub
        .set_variable("4", "☁ a", CloudValue::from(2))
        .await;
    assert!(matches!(set, Err(AdminError::StoreUnavailable)), "{set:?}");
    let delete = server.hub.delete_variable("4", "☁ a").await;
    assert!(
        matches!(delete, Err(AdminError::StoreUnavailable)),
        "{delete:?}"
    );
    let (_, vars) = server.get("/api/rooms/4/variables").await;
    assert!(vars.contains("\"☁ a\":1"), "{vars}");
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "nimbus_store_refused_writes_total{wire=\"api\"}"),
        2.0
    );
    drop(o);
    server.heal_writes().await;
    server.stop().await.unwrap();
}
