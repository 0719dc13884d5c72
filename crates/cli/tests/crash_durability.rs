//! `kill -9` loses at most the flush window: the real binary, killed with SIGKILL.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{doc_client, free_port, text_of, WAIT};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const FLUSH_MS: u64 = 50;

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(["--flush-interval-ms", &FLUSH_MS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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
