//! [`SocketChannel`]: an axum WebSocket as a `nimbus_doc::Channel`, with the server's
//! keepalive (a ping every interval; a peer that did not answer the previous one is
//! dropped) and shutdown (close 1001).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use nimbus_doc::{Channel, ChannelError};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior, Sleep};
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
    guard: crate::edge::ws::Guard,
    metrics: std::sync::Arc<crate::edge::EdgeMetrics>,
    /// When the client's signed token expires: closed then (4401). Boxed and made once:
    /// `recv` polls it at every call, and most connections have none.
    expiry: Option<Pin<Box<Sleep>>>,
    /// The socket as the room may write it directly (engaged), if the edge gave one.
    direct: Option<crate::edge::wire::DirectWire>,
}

impl SocketChannel {
    pub(crate) fn new(
        ws: WebSocket,
        shutdown: CancellationToken,
        ping_interval: Duration,
        close_timeout: Duration,
        metrics: std::sync::Arc<crate::edge::EdgeMetrics>,
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
            guard: crate::edge::ws::Guard::default(),
            metrics,
            expiry: None,
            direct: None,
        }
    }

    /// Let the room write to this socket directly through `direct` (an engaged wire).
    pub(crate) fn with_direct(
        mut self,
        direct: Option<crate::edge::wire::DirectWire>,
    ) -> SocketChannel {
        self.direct = direct;
        self
    }

    /// Close the connection at `at` (when its signed token expires).
    pub(crate) fn expire_at(mut self, at: Option<Instant>) -> SocketChannel {
        self.expiry = at.map(|at| Box::pin(tokio::time::sleep_until(at)));
        self
    }
}

/// A read error as the channel reports it: an oversized message is [`ChannelError::TooBig`];
/// any other edge violation (1002, 1007) is closed here with its code.
async fn read_error(this: &mut SocketChannel, e: &axum::Error) -> Option<ChannelError> {
    if let Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
        size,
        max_size,
    })) = crate::edge::ws::tungstenite_error(e)
    {
        return Some(ChannelError::TooBig {
            size: *size,
            max: *max_size,
        });
    }
    match crate::edge::ws::classify(e) {
        Some(v) => {
            this.violation(&v).await;
            None
        }
        None => Some(ChannelError::Transport(e.to_string())),
    }
}

impl SocketChannel {
    /// Close for an edge violation, counted and logged once.
    async fn violation(&mut self, v: &crate::edge::ws::Violation) {
        self.metrics.violation(v.label());
        tracing::info!(
            code = v.code(),
            bound = v.label(),
            "document socket closed by an edge bound"
        );
        self.close(v.code(), &v.reason()).await;
    }
}

impl Channel for SocketChannel {
    fn direct(&self) -> Option<std::sync::Arc<dyn nimbus_doc::DirectWrite>> {
        self.direct
            .clone()
            .map(|d| std::sync::Arc::new(d) as std::sync::Arc<dyn nimbus_doc::DirectWrite>)
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.ws
            .send(Message::Binary(frame))
            .await
            .map_err(|e| ChannelError::Transport(e.to_string()))
    }

    async fn feed(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.ws
            .feed(Message::Binary(frame))
            .await
            .map_err(|e| ChannelError::Transport(e.to_string()))
    }

    async fn flush(&mut self) -> Result<(), ChannelError> {
        self.ws
            .flush()
            .await
            .map_err(|e| ChannelError::Transport(e.to_string()))
    }

    async fn recv(&mut self) -> Option<Result<Bytes, ChannelError>> {
        if self.closed {
            return None;
        }
        loop {
            let expiry = std::future::poll_fn(|cx| match self.expiry.as_mut() {
                Some(sleep) => sleep.as_mut().poll(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                // The close paths are boxed: they run once, and the future of `recv` lives
                // in every idle connection's task.
                () = self.shutdown.cancelled() => {
                    Box::pin(self.close(GOING_AWAY, "server shutting down")).await;
                    return None;
                }
                () = expiry => {
                    tracing::info!("document client's token expired: closed");
                    Box::pin(self.close(crate::auth::TOKEN_EXPIRED, crate::auth::TOKEN_EXPIRED_REASON)).await;
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
                    Some(Err(e)) => return Box::pin(read_error(self, &e)).await.map(Err),
                    Some(Ok(m)) if self.guard.check(&m).is_err() => {
                        Box::pin(self.violation(&crate::edge::ws::Violation::PingFlood)).await;
                        return None;
                    }
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
        crate::edge::ws::close(&mut self.ws, code, reason.to_owned(), self.close_timeout).await;
    }
}
