//! The WebSocket wire: [`WsChannel`], a [`Channel`] over a tokio-tungstenite stream (client
//! or server side), with the keepalive of the reference: a ping every 30 s, and the
//! connection closed if the previous ping got no pong.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::channel::{Channel, ChannelError};

/// The keepalive ping period of the reference (y-websocket-server's `pingTimeout`).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// A WebSocket config with this maximum message (and frame) size and a
/// [`nimbus_proto::CLIENT_READ_BUFFER`] read buffer (for the sockets this crate opens and
/// the ones its server accepts).
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(nimbus_proto::CLIENT_READ_BUFFER)
}

/// A [`Channel`] over a WebSocket stream.
pub struct WsChannel<S> {
    ws: WebSocketStream<S>,
    ping: Option<Interval>,
    awaiting_pong: bool,
    closed: bool,
}

impl<S> std::fmt::Debug for WsChannel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsChannel")
            .field("awaiting_pong", &self.awaiting_pong)
            .field("closed", &self.closed)
            .finish()
    }
}

impl<S> WsChannel<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Wrap an open WebSocket; `ping_interval` `None` disables the keepalive.
    pub fn new(ws: WebSocketStream<S>, ping_interval: Option<Duration>) -> WsChannel<S> {
        let ping = ping_interval.filter(|d| !d.is_zero()).map(|period| {
            let mut i = tokio::time::interval_at(Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        WsChannel {
            ws,
            ping,
            awaiting_pong: false,
            closed: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }
}

async fn tick(ping: &mut Option<Interval>) {
    match ping {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn transport(e: WsError) -> ChannelError {
    ChannelError::Transport(e.to_string())
}

impl<S> Channel for WsChannel<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn send(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.ws
            .send(WsMessage::Binary(frame))
            .await
            .map_err(transport)
    }

    async fn feed(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.ws
            .feed(WsMessage::Binary(frame))
            .await
            .map_err(transport)
    }

    async fn flush(&mut self) -> Result<(), ChannelError> {
        self.ws.flush().await.map_err(transport)
    }

    async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
        if self.closed {
            return None;
        }
        loop {
            tokio::select! {
                msg = self.ws.next() => match msg {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        self.closed = true;
                        return None;
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        return Some(Err(ChannelError::TooBig { size, max: max_size }));
                    }
                    Some(Err(e)) => {
                        self.closed = true;
                        return Some(Err(transport(e)));
                    }
                    Some(Ok(WsMessage::Binary(b))) => return Some(Ok(b)),
                    Some(Ok(WsMessage::Text(_))) => return Some(Err(ChannelError::TextFrame)),
                    Some(Ok(WsMessage::Pong(_))) => self.awaiting_pong = false,
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Frame(_))) => {}
                    Some(Ok(WsMessage::Close(frame))) => {
                        self.closed = true;
                        // tungstenite queued the close reply: send it now, or the peer
                        // waits for it until its own timeout.
                        let _ = self.ws.flush().await;
                        return frame.map(|f| {
                            Err(ChannelError::Closed { code: f.code.into(), reason: f.reason.to_string() })
                        });
                    }
                },
                _ = tick(&mut self.ping) => {
                    if self.awaiting_pong {
                        return Some(Err(ChannelError::PingTimeout));
                    }
                    self.awaiting_pong = true;
                    if let Err(e) = self.ws.send(WsMessage::Ping(Bytes::new())).await {
                        self.closed = true;
                        return Some(Err(transport(e)));
                    }
                }
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Wait (briefly) for the peer's close frame so the close handshake completes.
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        self.closed = true;
    }
}
