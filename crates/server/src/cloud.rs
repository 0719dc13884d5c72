//! The cloud-protocol connection: one task per WebSocket.
//!
//! The task `select!`s over the socket, its [`Outbox`], a keepalive timer and
//! the server's shutdown signal. Incoming lines are parsed with the IO-free
//! codec in `nimbus_proto::cloud`, validated, and sent to the room actor.

pub use nimbus_core::cloud::{metrics, settings};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use nimbus_proto::cloud::{
    parse_client_line, split_frame, validate_name, validate_username, ClientMessage, CloseCode,
    Handshake,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::edge::rate::{Verdict, WriteLimit};
use crate::edge::ws::{Guard, Violation};
use crate::edge::{EdgeConfig, EdgeMetrics};
use crate::hub::{Hub, RoomHandle};
use crate::outbox::{DirectLine, Item, Outbox};
use crate::room::{JoinError, RoomCmd, Subscriber};
use nimbus_auth::{Capability, Identity, Mode};
use nimbus_proto::batch::Batch;
pub use settings::{CloudLimits, CloudSettings};

/// Close code for an internal failure (the room could not be loaded).
const INTERNAL_ERROR: u16 = 1011;

use crate::outbox::{join_frame, FRAME_CHUNK};

/// How long the close frame to a client cut for being slow may take: it is not reading.
const CUT_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest frame the cloud wire sends: a chunk, or one line of the longest name and
/// value (JSON escaping can take 6 bytes per character).
pub(crate) fn max_frame_out(limits: &settings::CloudLimits) -> usize {
    FRAME_CHUNK.max(
        limits
            .max_name_len
            .saturating_add(limits.max_value_len)
            .saturating_mul(6)
            .saturating_add(64),
    )
}

/// What the HTTP upgrade request told us about the peer.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Remote address, for logs.
    pub addr: Option<std::net::SocketAddr>,
    /// A policy refusal decided from the headers (4005, 4006), with its explanation.
    pub refuse: Option<(CloseCode, &'static str)>,
    /// With `--cloud-auth required`: the signed token's identity (its `sub` is the
    /// username; its `cloud` grant says which projects, read-write or read-only).
    pub identity: Option<Box<Identity>>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Why a connection ends.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// Cut a client that is not reading: close with this code, waiting briefly.
    Cut(u16, String),
    /// Drop without a close frame (dead peer, handshake timeout, peer gone).
    Drop,
}

fn protocol_error(reason: impl Into<String>) -> End {
    End::Close(CloseCode::Generic.code(), reason.into())
}

/// The room refused a change because the store cannot write (`docs/security.md`).
fn store_unavailable() -> End {
    End::Close(
        CloseCode::Unavailable.code(),
        crate::store::STORE_UNAVAILABLE.into(),
    )
}

/// Close code of a signed-token client whose `cloud` grant does not name the project it
/// asked for in its handshake (`docs/security.md`, "Tokens").
pub const ROOM_NOT_GRANTED: u16 = 4403;

/// Serve one upgraded WebSocket until it closes. With `wire` (the socket, in whole-write
/// mode), the connection's room writes lines to it directly while the connection is idle
/// (`outbox`'s module doc).
pub async fn serve(
    mut ws: WebSocket,
    hub: Arc<Hub>,
    (edge, edge_metrics): (Arc<EdgeConfig>, Arc<EdgeMetrics>),
    mut peer: Peer,
    wire: Option<Arc<dyn DirectLine>>,
    shutdown: CancellationToken,
) {
    let metrics = hub.metrics.clone();
    metrics.clients.inc();
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let end = match peer.refuse {
        Some((code, why)) => {
            // One plain-text explanation frame, then the close (protocol §9).
            let _ = ws.send(Message::Text(Utf8Bytes::from_static(why))).await;
            End::Close(code.code(), why.to_owned())
        }
        None => {
            let mut conn = Conn::new(id, hub.clone(), (edge, edge_metrics), wire, shutdown);
            conn.identity = peer.identity.take();
            conn.expires = crate::auth::deadline(conn.identity.as_ref().map(|i| i.expires_at()));
            conn.run(&mut ws).await
        }
    };
    match end {
        End::Close(code, reason) => {
            metrics.close(code);
            tracing::info!(conn = id, peer = ?peer.addr, code, %reason, "closing connection");
            crate::edge::ws::close(&mut ws, code, reason, hub.limits.close_timeout).await;
        }
        End::Cut(code, reason) => {
            metrics.close(code);
            tracing::info!(conn = id, peer = ?peer.addr, code, %reason, "cutting connection");
            let deadline = hub.limits.close_timeout.min(CUT_CLOSE_TIMEOUT);
            crate::edge::ws::close(&mut ws, code, reason, deadline).await;
        }
        End::Drop => tracing::debug!(conn = id, peer = ?peer.addr, "connection dropped"),
    }
    metrics.clients.dec();
}

struct Joined {
    room: RoomHandle,
}

struct Conn {
    id: u64,
    hub: Arc<Hub>,
    edge: Arc<EdgeConfig>,
    edge_metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
    outbox: Arc<Outbox>,
    joined: Option<Joined>,
    guard: Guard,
    sets: WriteLimit,
    /// A signed token's identity (`--cloud-auth required`), until the handshake uses it.
    identity: Option<Box<Identity>>,
    /// Its grant for the joined project is read-only: changes are dropped.
    read_only: bool,
    /// When its token expires (then 4401).
    expires: Option<tokio::time::Instant>,
}

impl Conn {
    fn new(
        id: u64,
        hub: Arc<Hub>,
        (edge, edge_metrics): (Arc<EdgeConfig>, Arc<EdgeMetrics>),
        wire: Option<Arc<dyn DirectLine>>,
        shutdown: CancellationToken,
    ) -> Conn {
        let outbox = Outbox::new(edge.outbox_bytes, hub.metrics.outbox_bytes.clone());
        let batch = Batch::new(edge.max_batch_delay, hub.limits.send_interval);
        let outbox = Arc::new(match wire {
            Some(wire) => outbox.with_wire(wire, batch, !hub.limits.one_message_per_frame),
            None => outbox.with_batch(batch),
        });
        let sets = WriteLimit::new(edge.sets_per_sec, edge.sets_burst);
        Conn {
            id,
            hub,
            edge,
            edge_metrics,
            shutdown,
            outbox,
            joined: None,
            guard: Guard::default(),
            sets,
            identity: None,
            read_only: false,
            expires: None,
        }
    }

    fn violation(&self, v: &Violation) -> End {
        self.edge_metrics.violation(v.label());
        End::Close(v.code(), v.reason())
    }

    async fn run(mut self, ws: &mut WebSocket) -> End {
        let end = self.main_loop(ws).await;
        if let Some(j) = self.joined.take() {
            j.room.send(RoomCmd::Leave { id: self.id }).await;
        }
        end
    }

    async fn main_loop(&mut self, ws: &mut WebSocket) -> End {
        let limits = self.hub.limits.clone();
        let period = limits.ping_interval;
        // One timer serves both the handshake deadline and the keepalive, to keep
        // an idle connection small.
        let handshake_deadline = tokio::time::Instant::now() + limits.handshake_timeout;
        // A token's expiry shares it too.
        let expires = self.expires;
        let soonest = |t: tokio::time::Instant| expires.map_or(t, |at| t.min(at));
        let mut keepalive_at =
            soonest(handshake_deadline.min(tokio::time::Instant::now() + period));
        // While updates are held for a busy connection's next write, it is due at
        // `flush_at`; the same timer serves it (a second timer would cost every idle
        // connection its size).
        let mut flush_at: Option<tokio::time::Instant> = None;
        let timer = tokio::time::sleep_until(keepalive_at);
        tokio::pin!(timer);
        let mut awaiting_pong = false;
        let mut pending: VecDeque<Item> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return End::Close(CloseCode::GoingAway.code(), "server shutting down".into());
                }
                () = self.outbox.ready(), if flush_at.is_none() => {
                    match self.outbox.hold_until(tokio::time::Instant::now()) {
                        // Busy (or on the grid): let more updates join this write; the
                        // socket is still read meanwhile.
                        Some(until) => {
                            flush_at = Some(until);
                            timer.as_mut().reset(until.min(keepalive_at));
                        }
                        None => {
                            if let Err(end) = self.flush(ws, &mut pending, limits.one_message_per_frame).await {
                                return end;
                            }
                        }
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if flush_at.is_some_and(|at| now >= at) {
                        flush_at = None;
                        if let Err(end) = self.flush(ws, &mut pending, limits.one_message_per_frame).await {
                            return end;
                        }
                    }
                    if now >= keepalive_at {
                        if expires.is_some_and(|at| now >= at) {
                            return End::Close(
                                crate::auth::TOKEN_EXPIRED,
                                crate::auth::TOKEN_EXPIRED_REASON.into(),
                            );
                        }
                        if self.joined.is_none() && now >= handshake_deadline {
                            tracing::debug!(conn = self.id, "no handshake in time");
                            return End::Drop;
                        }
                        if awaiting_pong {
                            self.hub.metrics.keepalive_timeouts.inc();
                            return End::Drop;
                        }
                        awaiting_pong = true;
                        if ws.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                            return End::Drop;
                        }
                        let next = now + period;
                        let next = if self.joined.is_none() { next.min(handshake_deadline) } else { next };
                        keepalive_at = soonest(next);
                    }
                    timer.as_mut().reset(flush_at.map_or(keepalive_at, |at| at.min(keepalive_at)));
                }
                msg = ws.recv() => match msg {
                    Some(Ok(m)) if self.guard.check(&m).is_err() => {
                        return self.violation(&Violation::PingFlood);
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Err(end) = self.on_frame(&text).await {
                            return end;
                        }
                    }
                    Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                    Some(Ok(Message::Binary(_) | Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return End::Drop,
                    Some(Err(e)) => return match crate::edge::ws::classify(&e) {
                        Some(v) => self.violation(&v),
                        None => {
                            tracing::debug!(error = %e, "socket error");
                            End::Drop
                        }
                    },
                },
            }
        }
    }

    /// Drain the outbox and write what it held (and the rest of a direct write the socket
    /// took in part); end the connection if the outbox was closed (slow consumer,
    /// replication lost, room removed).
    async fn flush(
        &self,
        ws: &mut WebSocket,
        pending: &mut VecDeque<Item>,
        one_per_frame: bool,
    ) -> Result<(), End> {
        let drained = self.outbox.drain(pending);
        let any = !pending.is_empty();
        // Every frame must make progress within the write timeout; writing a frame writes
        // the wire's rest first.
        let written = if any {
            self.write(ws, pending, one_per_frame).await
        } else if drained.flush_wire {
            self.bounded(futures_util::SinkExt::flush(ws)).await
        } else {
            Ok(())
        };
        self.outbox.wrote(tokio::time::Instant::now(), any);
        written?;
        let Some(code) = drained.closed else {
            return Ok(());
        };
        let reason = match code {
            CloseCode::SlowConsumer => {
                self.edge_metrics.violation("outbox_bytes");
                return Err(End::Cut(
                    code.code(),
                    "send queue full: client too slow".into(),
                ));
            }
            CloseCode::Unavailable => self.hub.replication.unavailable_reason(),
            _ => "removed by the server operator",
        };
        Err(End::Close(code.code(), reason.into()))
    }

    /// Send `pending` in frames of at most [`FRAME_CHUNK`] bytes (one line per frame with
    /// `one_per_frame`). A frame that makes no progress within the write timeout cuts the
    /// client (1008).
    async fn write(
        &self,
        ws: &mut WebSocket,
        pending: &mut VecDeque<Item>,
        one_per_frame: bool,
    ) -> Result<(), End> {
        let mut frame = Vec::new();
        while !pending.is_empty() {
            let msg = if one_per_frame || pending.len() == 1 {
                pending.pop_front().map(|i| i.text.into_bytes())
            } else {
                let taken = join_frame(&*pending, &mut frame);
                pending.drain(..taken);
                Some(bytes::Bytes::from(std::mem::take(&mut frame)))
            };
            let Some(bytes) = msg else { break };
            // A `Line` is UTF-8 by construction, and lines joined stay UTF-8.
            let Ok(text) = Utf8Bytes::try_from(bytes) else {
                // Not reachable; never send a broken frame, and never drop one silently.
                tracing::error!(
                    conn = self.id,
                    "a queued line is not UTF-8: connection dropped"
                );
                return Err(End::Drop);
            };
            self.bounded(ws.send(Message::Text(text))).await?;
        }
        // Give back the queue's memory once a burst is over.
        pending.shrink_to(4);
        Ok(())
    }

    /// Run one write of the socket within the write timeout; a write that makes no progress
    /// in it cuts the client (1008).
    async fn bounded(
        &self,
        write: impl std::future::Future<Output = Result<(), axum::Error>>,
    ) -> Result<(), End> {
        match tokio::time::timeout(self.edge.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Drop),
            Err(_) => {
                self.edge_metrics.write_timeouts.inc();
                self.edge_metrics.violation("write_timeout");
                self.hub.metrics.slow_consumers.inc();
                Err(End::Cut(
                    CloseCode::SlowConsumer.code(),
                    "write stalled: client too slow".into(),
                ))
            }
        }
    }

    /// The per-connection write rate (`--sets-per-sec`), shared by sets, renames and
    /// deletes: `false` when this write is dropped; over it again, the connection closes.
    fn within_write_rate(&self) -> Result<bool, End> {
        match self.sets.check() {
            Verdict::Allow => Ok(true),
            Verdict::Drop => {
                self.edge_metrics.rate_limited.inc();
                self.hub.metrics.dropped_set("rate_limited");
                Ok(false)
            }
            Verdict::Close => {
                self.edge_metrics.violation("set_rate");
                Err(End::Close(
                    CloseCode::SlowConsumer.code(),
                    "too many sets: slow down".into(),
                ))
            }
        }
    }

    /// A rename/delete got no answer: the store or the backplane cannot take changes now.
    fn unavailable(&self) -> End {
        if self.hub.store.can_write() {
            End::Close(
                CloseCode::Unavailable.code(),
                self.hub.replication.unavailable_reason().into(),
            )
        } else {
            store_unavailable()
        }
    }

    async fn on_frame(&mut self, text: &str) -> Result<(), End> {
        for line in split_frame(text) {
            let msg = parse_client_line(line);
            let Some(joined) = &self.joined else {
                match msg {
                    Ok(ClientMessage::Handshake(h)) => {
                        self.hub.metrics.messages.handshake.inc();
                        self.handshake(&h).await?;
                    }
                    Ok(_) => return Err(protocol_error("the first message must be a handshake")),
                    Err(e) => return Err(protocol_error(format!("malformed handshake: {e}"))),
                }
                continue;
            };
            let room = joined.room.clone();
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    self.hub.metrics.malformed_lines.inc();
                    tracing::debug!(conn = self.id, error = %e, "malformed line dropped");
                    continue;
                }
            };
            self.on_message(&room, msg).await?;
        }
        Ok(())
    }

    async fn handshake(&mut self, h: &Handshake) -> Result<(), End> {
        let limits = &self.hub.limits;
        let room = h
            .room()
            .map_err(|e| protocol_error(format!("bad project_id: {e}")))?;
        if limits.blocked_rooms.iter().any(|b| b == room) {
            return Err(End::Close(
                CloseCode::ProjectUnavailable.code(),
                "project unavailable".into(),
            ));
        }
        let user = match self.identity.take() {
            // The token's `sub` is the username, whatever the handshake says; its grant
            // must name the project.
            Some(identity) => {
                let mode = identity
                    .access(Capability::Cloud, room)
                    .ok_or_else(|| End::Close(ROOM_NOT_GRANTED, "room_not_granted".into()))?;
                self.read_only = mode == Mode::ReadOnly;
                let sub = identity.sub();
                validate_username(sub, limits.max_username_len)
                    .map_err(|e| End::Close(CloseCode::Username.code(), e.to_string()))?;
                sub.to_owned()
            }
            None => h
                .user(limits.max_username_len)
                .map_err(|e| End::Close(CloseCode::Username.code(), e.to_string()))?
                .to_owned(),
        };
        let sub = Subscriber {
            id: self.id,
            user: user.clone(),
            outbox: self.outbox.clone(),
        };
        match self.hub.join(room, sub).await {
            Ok(handle) => {
                tracing::debug!(conn = self.id, %room, %user, "joined");
                self.joined = Some(Joined { room: handle });
                Ok(())
            }
            Err(JoinError::RoomFull) => Err(End::Close(
                CloseCode::Overloaded.code(),
                "room is full".into(),
            )),
            Err(JoinError::TooManyRooms) => Err(End::Close(
                CloseCode::Overloaded.code(),
                "server has too many rooms".into(),
            )),
            Err(JoinError::UsernameTaken) => Err(End::Close(
                CloseCode::Username.code(),
                "username already in use in this room".into(),
            )),
            Err(JoinError::Unavailable | JoinError::Retry) => Err(End::Close(
                INTERNAL_ERROR,
                "room could not be loaded".into(),
            )),
        }
    }

    async fn on_message(&self, room: &RoomHandle, msg: ClientMessage) -> Result<(), End> {
        let limits = &self.hub.limits;
        let metrics = &self.hub.metrics;
        let is_create = matches!(msg, ClientMessage::Create { .. });
        match msg {
            ClientMessage::Handshake(_) => {
                metrics.messages.handshake.inc();
                Err(protocol_error("already handshaken"))
            }
            ClientMessage::Set { name, value } | ClientMessage::Create { name, value } => {
                if is_create {
                    metrics.messages.create.inc();
                } else {
                    metrics.messages.set.inc();
                }
                if self.read_only {
                    metrics.dropped_set("read_only");
                    return Ok(());
                }
                if !self.within_write_rate()? {
                    return Ok(());
                }
                let (Ok(name), Ok(value)) = (name, value) else {
                    metrics.dropped_set("bad_field");
                    return Ok(());
                };
                if let Err(e) = validate_name(&name, limits.max_name_len) {
                    metrics.dropped_set("invalid_name");
                    tracing::debug!(conn = self.id, error = %e, "set dropped");
                    return Ok(());
                }
                if let Err(e) = value.validate(limits.profile, limits.max_value_len) {
                    metrics.dropped_set("invalid_value");
                    tracing::debug!(conn = self.id, error = %e, "set dropped");
                    return Ok(());
                }
                if !room
                    .send(RoomCmd::Set {
                        from: self.id,
                        name,
                        value,
                    })
                    .await
                {
                    return Err(End::Drop);
                }
                Ok(())
            }
            ClientMessage::Rename { name, new_name } => {
                metrics.messages.rename.inc();
                if !limits.allow_rename || self.read_only || !self.within_write_rate()? {
                    return Ok(());
                }
                let (Ok(name), Ok(new_name)) = (name, new_name) else {
                    return Err(protocol_error("rename needs name and new_name"));
                };
                let (reply, rx) = oneshot::channel();
                room.send(RoomCmd::Rename {
                    from: self.id,
                    name,
                    new_name,
                    reply,
                })
                .await;
                match rx.await {
                    Ok(true) => Ok(()),
                    // No answer: the store or the backplane could not take it.
                    Err(_) => Err(self.unavailable()),
                    Ok(false) => Err(protocol_error(
                        "rename of an unknown variable or to an invalid name",
                    )),
                }
            }
            ClientMessage::Delete { name } => {
                metrics.messages.delete.inc();
                if !limits.allow_delete || self.read_only || !self.within_write_rate()? {
                    return Ok(());
                }
                let Ok(name) = name else {
                    return Err(protocol_error("delete needs a name"));
                };
                let (reply, rx) = oneshot::channel();
                room.send(RoomCmd::Delete {
                    from: self.id,
                    name,
                    reply,
                })
                .await;
                match rx.await {
                    Ok(true) => Ok(()),
                    Err(_) => Err(self.unavailable()),
                    Ok(false) => Err(protocol_error("delete of an unknown variable")),
                }
            }
            ClientMessage::Unknown { method } => {
                metrics.messages.other.inc();
                Err(protocol_error(format!("unknown method {method:?}")))
            }
        }
    }
}
