//! Shared helpers: a real server on 127.0.0.1:0 and a raw WebSocket client.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nimbus_server::{Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod redis;

/// Upper bound for anything a test waits for; a hang fails the test instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    /// The IPC port and multicast port, when the config turned IPC on.
    pub ipc: Option<(u16, u16)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        let ipc = server
            .ipc_addr()
            .zip(server.ipc_multicast_addr())
            .map(|(a, m)| (a.port(), m.port()));
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = rx.await;
                })
                .await
                .expect("server run");
        });
        TestServer {
            addr,
            ipc,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Graceful shutdown, waiting until the store is flushed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("shutdown in time")
                .expect("join");
        }
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }
}

pub fn config(dir: &std::path::Path) -> Config {
    // Test clients often stop reading; don't wait 5 s for their close reply at shutdown.
    let cloud = nimbus_server::CloudLimits {
        close_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        cloud,
        ..Config::default()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
}

/// What a client observed when the server ended the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Client::connect_with(url, &[]).await
    }

    pub async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Client {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws }
    }

    /// Connect and handshake into `room` as `user`.
    pub async fn join(url: &str, room: &str, user: &str) -> Client {
        let mut c = Client::connect(url).await;
        c.send(&format!(
            r#"{{"method":"handshake","user":"{user}","project_id":"{room}"}}"#
        ))
        .await;
        c
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn set(&mut self, name: &str, value_json: &str) {
        self.send(&format!(
            r#"{{"method":"set","name":"☁ {name}","value":{value_json}}}"#
        ))
        .await;
    }

    /// The next text frame (pings are answered by tungstenite while reading).
    pub async fn frame(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame");
            match msg {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => {}
            }
        }
    }

    /// Next `n` lines, across frames.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let f = self.frame().await;
            assert!(
                f.ends_with('\n'),
                "outgoing frames end with a newline: {f:?}"
            );
            out.extend(f.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
        assert_eq!(out.len(), n, "no more lines than expected");
        out
    }

    /// Read until the server ends the connection; text frames before the end are returned too.
    pub async fn ended(&mut self) -> (Ended, Vec<String>) {
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("end in time")
            {
                Some(Ok(Message::Close(frame))) => {
                    // Send the queued close reply, as a well-behaved peer does.
                    let _ = self.ws.flush().await;
                    let code = frame.map_or(WsCode::Status.into(), |f| u16::from(f.code));
                    return (Ended::Closed(code), texts);
                }
                Some(Ok(Message::Text(t))) => texts.push(t.as_str().to_owned()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (Ended::Dropped, texts),
            }
        }
    }

    /// Assert nothing arrives for a short while (used only to check absence).
    pub async fn assert_silent(&mut self, for_: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(for_, self.ws.next()).await {
            panic!("unexpected frame {t:?}");
        }
    }
}

pub fn set_line(name: &str, value_json: &str) -> String {
    format!(r#"{{"method":"set","name":"☁ {name}","value":{value_json}}}"#)
}

/// A plain HTTP/1.1 GET with extra header lines (`"Name: value"`); status and body.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
