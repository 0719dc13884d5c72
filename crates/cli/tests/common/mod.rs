//! Helpers shared by the tests that run the real `nimbus` binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// How long a test waits for a node or a message.
pub const WAIT: Duration = Duration::from_secs(20);

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A document client of room `room` on the node at `port` (retried until the node is up),
/// without reconnecting.
pub async fn doc_client(port: u16, room: &str) -> nimbus_doc::Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let wire = nimbus_doc::ClientWire::WebSocket {
            url: format!("ws://127.0.0.1:{port}/doc"),
        };
        let opts = nimbus_doc::ConnectOptions {
            reconnect: false,
            ..Default::default()
        };
        match nimbus_doc::connect(wire, room, None, opts).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node never came up: {e}"),
        }
    }
}

/// The text `t` of a client's document.
pub fn text_of(client: &nimbus_doc::Client) -> String {
    use nimbus_doc::yrs::{GetString, Transact};
    let t = client.doc().get_or_insert_text("t");
    let s = t.get_string(&client.doc().transact());
    s
}

/// Start `nimbus serve` on `127.0.0.1:port` with its store in `dir` and `extra` flags; quiet.
pub fn spawn_serve(dir: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("NIMBUS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
