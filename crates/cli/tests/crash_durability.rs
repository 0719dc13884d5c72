//! `kill -9` loses at most the flush window: the real binary, killed with SIGKILL.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{doc_client, free_port, text_of, WAIT};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const FLUSH_MS: u64 = 50;

fn start(dir: &std::path::Path, port: u16) -> Child {
    // These tests send sets back to back and wait for each: lift the per-connection set rate
    // (a bound of its own, tested in hostile_edge) so no set is dropped as over the rate.
    // Write batching off: each set is awaited before the next, and a 2 ms hold per round
    // trip would slow the sets (and the store's load) enough for the 80 MB compaction to
    // end before sets have gone on through it for eight flush windows.
    let flush = FLUSH_MS.to_string();
    let flags = [
        "--max-batch-delay-us",
        "0",
        "--flush-interval-ms",
        flush.as_str(),
        "--sets-per-sec",
        "1000000",
        "--sets-burst",
        "1000000",
    ];
    common::spawn_serve(dir, port, &flags)
}

async fn connect(
    port: u16,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await {
            Ok((ws, _)) => return ws,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server never came up: {e}"),
        }
    }
}

#[tokio::test]
async fn values_older_than_the_flush_window_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);

    let mut writer = connect(port).await;
    let mut observer = connect(port).await;
    observer
        .send(Message::text(
            r#"{"method":"handshake","user":"obs","project_id":"42"}"#,
        ))
        .await
        .unwrap();
    writer
        .send(Message::text(
            r#"{"method":"handshake","user":"w","project_id":"42"}"#,
        ))
        .await
        .unwrap();
    // Observer sees the value: the room accepted it and queued it for the store.
    writer
        .send(Message::text(
            r#"{"method":"set","name":"☁ saved","value":123}"#,
        ))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, observer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(frame.to_text().unwrap().contains("123"), "{frame:?}");
    // Wait several flush windows: the value is now committed.
    tokio::time::sleep(Duration::from_millis(FLUSH_MS * 10)).await;

    server.kill().unwrap(); // SIGKILL: no shutdown, no final flush
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let mut late = connect(port).await;
    late.send(Message::text(
        r#"{"method":"handshake","user":"late","project_id":"42"}"#,
    ))
    .await
    .unwrap();
    let join = tokio::time::timeout(WAIT, late.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        join.to_text().unwrap(),
        "{\"method\":\"set\",\"name\":\"☁ saved\",\"value\":123}\n"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn document_edits_older_than_the_flush_window_survive_kill_9() {
    use nimbus_doc::yrs::{Text, Transact};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);

    let writer = doc_client(port, "crash").await;
    let observer = doc_client(port, "crash").await;
    let text = writer.doc().get_or_insert_text("t");
    let mut expected = String::new();
    for i in 0..50 {
        let piece = format!("{i};");
        text.push(&mut writer.doc().transact_mut(), &piece);
        expected.push_str(&piece);
    }
    // The observer has every edit: the room applied them and queued them for the store.
    let deadline = Instant::now() + WAIT;
    while text_of(&observer) != expected {
        assert!(Instant::now() < deadline, "observer never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Wait several flush windows: the edits are now committed.
    tokio::time::sleep(Duration::from_millis(FLUSH_MS * 10)).await;

    server.kill().unwrap(); // SIGKILL: no shutdown, no final flush
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let late = doc_client(port, "crash").await;
    assert_eq!(text_of(&late), expected);
    late.close().await;
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Kills the server when the test ends, also when an assertion fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP GET; the body.
async fn http_body(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A document log of about `mb` MB (4 MB text updates), written straight into the database,
/// so the server has a large document to compact as soon as the room loads.
fn seed_large_document(dir: &std::path::Path, room: &str, mb: usize) {
    use nimbus_doc::yrs::{ReadTxn, Text, Transact};
    use nimbus_server::store::{Backend, SqliteBackend, StoreOp};
    let doc = nimbus_doc::yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut db = SqliteBackend::open(&dir.join("nimbus.sqlite3")).unwrap();
    let chunk = "0123456789abcdef".repeat(1 << 18); // 4 MiB
    for _ in 0..mb.div_ceil(4) {
        let before = doc.transact().state_vector();
        text.push(&mut doc.transact_mut(), &chunk);
        let update = doc.transact().encode_state_as_update_v1(&before);
        db.commit(&[StoreOp::DocAppend {
            room: room.into(),
            update: update.into(),
        }])
        .unwrap();
    }
}

#[tokio::test]
async fn the_flush_window_holds_while_an_80_mb_document_compacts() {
    let dir = tempfile::tempdir().unwrap();
    seed_large_document(dir.path(), "big", 80);
    let port = free_port();
    let mut server = Killed(start(dir.path(), port));
    let mut writer = connect(port).await;
    let mut observer = connect(port).await;
    for (ws, user) in [(&mut observer, "obs"), (&mut writer, "w")] {
        let hs = format!(r#"{{"method":"handshake","user":"{user}","project_id":"7"}}"#);
        ws.send(Message::text(hs)).await.unwrap();
    }
    // The cloud room is loaded before the document room (whose load queues the compaction).
    writer
        .send(Message::text(r#"{"method":"set","name":"☁ n","value":0}"#))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, observer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Loading the room finds a log past the compaction policy: the store compacts it.
    let (_big, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/doc/big"))
        .await
        .unwrap();

    // Sets go on; each counts as acknowledged when the observer has it.
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let mut compacting_since: Option<Instant> = None;
    let mut next_check = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0u64;
    loop {
        assert!(Instant::now() < deadline, "the compaction never ran");
        i += 1;
        let set = format!(r#"{{"method":"set","name":"☁ n","value":{i}}}"#);
        writer.send(Message::text(set)).await.unwrap();
        let want = format!("\"value\":{i}}}");
        loop {
            let frame = tokio::time::timeout(WAIT, observer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if frame.to_text().unwrap_or("").contains(&want) {
                break;
            }
        }
        seen.push((i, Instant::now()));
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(100);
            let running = metric(
                &http_body(port, "/metrics").await,
                "nimbus_store_compactions_running",
            );
            match (running > 0.0, compacting_since) {
                (true, None) => compacting_since = Some(Instant::now()),
                // Sets have gone on for a while during the compaction: crash now.
                (true, Some(t)) if t.elapsed() > Duration::from_millis(FLUSH_MS * 8) => break,
                (false, Some(_)) => panic!("the compaction finished too soon to test anything"),
                _ => {}
            }
        }
    }
    let killed = Instant::now();
    server.0.kill().unwrap(); // SIGKILL while the document compacts
    server.0.wait().unwrap();

    let mut server = Killed(start(dir.path(), port));
    let mut late = connect(port).await;
    late.send(Message::text(
        r#"{"method":"handshake","user":"late","project_id":"7"}"#,
    ))
    .await
    .unwrap();
    let join = tokio::time::timeout(WAIT, late.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let join = join.to_text().unwrap().to_owned();
    let stored: u64 = join
        .rsplit_once("\"value\":")
        .and_then(|(_, v)| v.trim_end().trim_end_matches('}').parse().ok())
        .unwrap_or_else(|| panic!("no value in {join:?}"));
    // The oldest acknowledged set that was lost, and how long before the kill it was seen.
    let lost = seen.iter().find(|(n, _)| *n > stored);
    let window = lost.map_or(Duration::ZERO, |(_, t)| killed - *t);
    eprintln!(
        "acknowledged {} sets, stored up to {stored}; lost the last {:?} (flush window {FLUSH_MS} ms)",
        seen.len(),
        window
    );
    // Only the documented window may be lost (with room for a loaded CI machine), not
    // the length of the compaction (at least 8 windows when it is killed).
    assert!(
        window <= Duration::from_millis(FLUSH_MS * 4),
        "lost {window:?} of acknowledged sets during a compaction"
    );
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}
