//! `nimbus serve --gateway-token` and `nimbus gateway tail`, as real processes on 127.0.0.1:
//! the tail prints the cloud sets as JSON lines; a wrong token exits non-zero (4004).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nimbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nimbus"))
}

#[test]
fn tail_prints_cloud_events_and_a_wrong_token_fails() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = nimbus()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--gateway-token", "t0k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("ws://127.0.0.1:{port}/gateway");
    let mut tail = nimbus()
        .args([
            "gateway",
            "tail",
            "--token",
            "Bot t0k",
            "--intents",
            "cloud",
            "--all",
        ])
        .args(["--url", &url, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read the tail's lines on a thread, so every wait here is bounded.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(WAIT).expect("a line from the tail in time");
    // --all prints READY first: the tail is identified before the set.
    let ready = next();
    assert!(ready.contains("\"t\":\"READY\""), "{ready}");
    let set = nimbus()
        .args([
            "cloud",
            "set",
            "31",
            "score",
            "5",
            "--host",
            &format!("ws://127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(set.success());
    let event = next();
    let v: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(v["t"], "CLOUD_CREATE");
    assert_eq!(v["d"]["room"], "31");
    assert_eq!(v["d"]["value"], 5);
    assert!(tail.wait().unwrap().success(), "exits after --count events");
    let wrong = nimbus()
        .args(["gateway", "tail", "--token", "nope", "--url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!wrong.success(), "4004 is fatal: the tail exits non-zero");
    let _ = server.kill();
    let _ = server.wait();
}
