//! `ClientSession`: one persistent connection, reused across requests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nimbus_proto::ipc::{self as wire, Reply};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::IpcError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client of an IPC server. Holds no background task: dropping it closes the socket.
///
/// Without a `port`, the first request asks the multicast port for the main port
/// (the port handshake) and [`ClientSession::resolved_port`] returns it.
///
/// ```no_run
/// # async fn demo() -> Result<(), nimbus_ipc::IpcError> {
/// use nimbus_ipc::ClientSession;
/// let v = ClientSession::scope(ClientSession::new("127.0.0.1", None, 20000, Some("key".into())), |s| Box::pin(async move {
///     s.request("stats", serde_json::json!({"guild": 1})).await
/// })).await?;
/// # let _ = v; Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientSession {
    host: String,
    port: Option<u16>,
    multicast_port: u16,
    secret_key: Option<String>,
    timeout: Duration,
    max_message: usize,
    resolved: Option<u16>,
    ws: Option<Ws>,
}

impl ClientSession {
    /// A session (not connected yet; it connects on the first request).
    pub fn new(
        host: impl Into<String>,
        port: Option<u16>,
        multicast_port: u16,
        secret_key: Option<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            multicast_port,
            secret_key,
            timeout: Duration::from_secs(30),
            max_message: nimbus_proto::CLIENT_MAX_MESSAGE,
            resolved: port,
            ws: None,
        }
    }

    /// Set the longest reply taken, bytes (default [`nimbus_proto::CLIENT_MAX_MESSAGE`],
    /// 32 MiB, above the server's largest reply). A longer one fails its request with [`IpcError::Io`] and ends the connection.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Set the per-request timeout (default 30 s).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Create a session and connect now (resolving the port if needed).
    pub async fn connect(
        host: impl Into<String>,
        port: Option<u16>,
        multicast_port: u16,
        secret_key: Option<String>,
    ) -> Result<Self, IpcError> {
        let mut s = Self::new(host, port, multicast_port, secret_key);
        s.ensure_connected().await?;
        Ok(s)
    }

    /// Run `f` with a connected session, then close it (like Python's `async with`).
    pub async fn scope<F, T>(mut session: Self, f: F) -> Result<T, IpcError>
    where
        F: for<'a> FnOnce(&'a mut Self) -> futures_util::future::BoxFuture<'a, Result<T, IpcError>>,
    {
        session.ensure_connected().await?;
        let out = f(&mut session).await;
        session.close().await;
        out
    }

    /// The main port: the configured one, or the one found through the handshake.
    pub fn resolved_port(&self) -> Option<u16> {
        self.resolved
    }

    async fn open(&self, port: u16) -> Result<Ws, IpcError> {
        let url = format!("ws://{}:{}/", self.host, port);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(nimbus_proto::CLIENT_READ_BUFFER)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
        let (ws, _) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| IpcError::Timeout)?
            .map_err(|e| IpcError::Io(e.to_string()))?;
        Ok(ws)
    }

    async fn exchange(&self, ws: &mut Ws, text: String) -> Result<String, IpcError> {
        let fut = async {
            ws.send(Message::text(text))
                .await
                .map_err(|e| IpcError::Io(e.to_string()))?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                    Some(Ok(Message::Binary(_))) => {
                        return Err(IpcError::Protocol("binary reply".into()))
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(IpcError::Io("connection closed".into()))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(IpcError::Io(e.to_string())),
                }
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| IpcError::Timeout)?
    }

    async fn ensure_connected(&mut self) -> Result<(), IpcError> {
        if self.ws.is_some() {
            return Ok(());
        }
        let port = match self.port {
            Some(p) => p,
            None => {
                let mut mc = self.open(self.multicast_port).await?;
                let reply = self
                    .exchange(&mut mc, wire::encode_handshake(self.secret_key.as_deref()))
                    .await;
                let _ = mc.close(None).await;
                match wire::parse_handshake_reply(&reply?) {
                    Some(Ok(p)) => p,
                    Some(Err(Reply::Error { code, message })) => {
                        return Err(IpcError::from_reply(code, message))
                    }
                    _ => return Err(IpcError::Protocol("handshake reply without a port".into())),
                }
            }
        };
        self.resolved = Some(port);
        self.ws = Some(self.open(port).await?);
        Ok(())
    }

    /// Send a request and wait for its reply. Error replies become typed errors.
    ///
    /// If a reused connection turns out to be dead before a reply arrives, the
    /// request is sent once more on a fresh connection (reconnect on drop).
    pub async fn request(&mut self, endpoint: &str, data: Value) -> Result<Value, IpcError> {
        let text = wire::encode_request(endpoint, &data, self.secret_key.as_deref());
        let reused = self.ws.is_some();
        self.ensure_connected().await?;
        let mut ws = self
            .ws
            .take()
            .ok_or_else(|| IpcError::Io("not connected".into()))?;
        let reply = match self.exchange(&mut ws, text.clone()).await {
            Ok(r) => {
                self.ws = Some(ws);
                r
            }
            Err(IpcError::Io(_)) if reused => {
                if self.port.is_none() {
                    self.resolved = None;
                }
                self.ensure_connected().await?;
                let mut ws = self
                    .ws
                    .take()
                    .ok_or_else(|| IpcError::Io("not connected".into()))?;
                let r = self.exchange(&mut ws, text).await?;
                self.ws = Some(ws);
                r
            }
            Err(e) => return Err(e),
        };
        match wire::parse_reply(&reply) {
            Some(Reply::Value(v)) => Ok(v),
            Some(Reply::Error { code, message }) => Err(IpcError::from_reply(code, message)),
            None => Err(IpcError::Protocol("reply is not JSON".into())),
        }
    }

    /// Close the connection (a later request reconnects).
    pub async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }
}
