//! [`SocketChannel`]: an axum WebSocket as a `nimbus_doc::Channel`, with the server's
//! keepalive (a ping every interval; a peer that did not answer the previous one is
//! dropped) and shutdown (close 1001).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use nimbus_doc::{Channel, ChannelError};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Close code sent when the server shuts down.
pub(crate) const GOING_AWAY: u16 = 1001;

/// One document client's socket.
pub(crate) struct SocketChannel {
    ws: WebSocket,
    shutdown: CancellationToken,
    keepalive: Interval,
    awaiting_pong: bool,
    close_timeout: Duration,
    closed: bool,
}

impl SocketChannel {
    pub(crate) fn new(
        ws: WebSocket,
        shutdown: CancellationToken,
        ping_interval: Duration,
        close_timeout: Duration,
    ) -> SocketChannel {
        let mut keepalive = interval_at(Instant::now() + ping_interval, ping_interval);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        SocketChannel {
            ws,
            shutdown,
            keepalive,
            awaiting_pong: false,
            close_timeout,
            closed: false,
        }
    }
}

/// A read error as the channel reports it: an oversized message is [`ChannelError::TooBig`].
fn read_error(e: &axum::Error) -> ChannelError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { size, max_size },
        )) = err.downcast_ref::<tungstenite::Error>()
        {
            return ChannelError::TooBig {
                size: *size,
                max: *max_size,
            };
        }
        source = err.source();
    }
    ChannelError::Transport(e.to_string())
}

impl Channel for SocketChannel {
    async fn send(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.ws
            .send(Message::Binary(frame))
            .await
            .map_err(|e| ChannelError::Transport(e.to_string()))
    }

    async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
        if self.closed {
            return None;
        }
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.close(GOING_AWAY, "server shutting down").await;
                    return None;
                }
                _ = self.keepalive.tick() => {
                    if self.awaiting_pong {
                        return Some(Err(ChannelError::PingTimeout));
                    }
                    self.awaiting_pong = true;
                    if let Err(e) = self.ws.send(Message::Ping(Bytes::new())).await {
                        return Some(Err(ChannelError::Transport(e.to_string())));
                    }
                }
                msg = self.ws.recv() => match msg {
                    None => return None,
                    Some(Err(e)) => return Some(Err(read_error(&e))),
                    Some(Ok(Message::Binary(b))) => {
                        self.awaiting_pong = false;
                        return Some(Ok(b));
                    }
                    Some(Ok(Message::Text(_))) => return Some(Err(ChannelError::TextFrame)),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return Some(Err(ChannelError::Closed { code, reason }));
                    }
                    // Any sign of life answers the keepalive.
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => self.awaiting_pong = false,
                },
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        crate::ws::close(&mut self.ws, code, reason.to_owned(), self.close_timeout).await;
    }
}
