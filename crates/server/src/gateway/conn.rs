//! One gateway connection: Hello, Identify or Resume, heartbeats, limits, dispatch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use nimbus_proto::gateway::{
    decode_client_payload, CloseCode, DecodeError, Identify, Intents, OpCode, Payload, Resume,
    API_VERSION, SEND_LIMIT, SEND_WINDOW_SECS,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::log::{Durable, Found, TakeoverError};
use super::session::{Buffered, ResumeError, Session};
use super::{Allowed, Gateway, RoomFilter};
use crate::auth::Auth;
use crate::edge::EdgeMetrics;
use nimbus_proto::batch::Batch;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How a connection ends.
enum End {
    /// Close with a gateway code.
    Close(CloseCode, String),
    /// The peer closed (or vanished); `invalidate` when it closed with 1000/1001.
    Peer { invalidate: bool },
    /// Stop without a close frame (taken over by a Resume elsewhere, write stalled).
    Drop,
    /// An edge bound was broken (ping flood, framing error): close with its RFC 6455 code.
    Edge(crate::edge::ws::Violation),
}

fn close(code: CloseCode) -> End {
    End::Close(code, code.meaning().to_owned())
}

struct Conn {
    id: u64,
    gw: Arc<Gateway>,
    url: String,
    /// The attached session, its change signal and the last sequence sent.
    session: Option<(Arc<Session>, watch::Receiver<u64>)>,
    cursor: u64,
    /// Receive times of the last payloads (the 120 / 60 s limit).
    recv_times: VecDeque<Instant>,
    last_heartbeat: Instant,
    asked_heartbeat: bool,
    /// zlib-stream transport compression (one context for the connection's life).
    zlib: Option<flate2::Compress>,
    /// The edge's control-frame budget.
    guard: crate::edge::ws::Guard,
    /// Static and signed tokens.
    auth: Arc<Auth>,
    /// When the signed token it identified or resumed with expires (then 4004).
    expires: Option<Instant>,
    /// When to write dispatches (the edge's batching policy).
    batch: Batch,
}

/// Serve one upgraded gateway WebSocket until it closes.
pub(crate) async fn serve(
    mut ws: WebSocket,
    gw: Arc<Gateway>,
    url: String,
    bad_version: bool,
    compress: bool,
    shutdown: CancellationToken,
    (edge, auth, batch): (Arc<EdgeMetrics>, Arc<Auth>, Batch),
) {
    let metrics = gw.metrics();
    metrics.connections.inc();
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        id,
        gw: gw.clone(),
        url,
        session: None,
        cursor: 0,
        recv_times: VecDeque::new(),
        last_heartbeat: Instant::now(),
        asked_heartbeat: false,
        zlib: compress.then(|| flate2::Compress::new(flate2::Compression::fast(), true)),
        guard: crate::edge::ws::Guard::default(),
        auth,
        expires: None,
        batch,
    };
    let end = if bad_version {
        close(CloseCode::InvalidApiVersion)
    } else {
        conn.run(&mut ws, &shutdown).await
    };
    let session = conn.session.take().map(|(s, _)| s);
    match &end {
        End::Peer { invalidate: true } => {
            if let Some(s) = &session {
                tracing::debug!(conn = id, session = %s.id, "client closed with 1000/1001: session invalidated");
                gw.remove(&s.id);
            }
        }
        _ => {
            if let Some(s) = &session {
                s.detach(id, Instant::now());
            }
        }
    }
    if let End::Close(code, reason) = end {
        metrics.close(code.code());
        tracing::debug!(conn = id, code = code.code(), %reason, "gateway close");
        if matches!(code, CloseCode::NotAuthenticated | CloseCode::InvalidSeq) {
            // The client must identify anew: the session (if any) is gone.
            if let Some(s) = &session {
                gw.remove(&s.id);
            }
        }
        crate::edge::ws::close(&mut ws, code.code(), reason, gw.config().close_timeout).await;
    } else if let End::Edge(v) = &end {
        edge.violation(v.label());
        metrics.close(v.code());
        tracing::info!(
            conn = id,
            code = v.code(),
            bound = v.label(),
            "gateway connection closed by an edge bound"
        );
        crate::edge::ws::close(&mut ws, v.code(), v.reason(), gw.config().close_timeout).await;
    }
    metrics.connections.dec();
}

/// Compress `input` as one sync-flushed chunk of the connection's zlib stream (it ends
/// with `00 00 FF FF`).
fn deflate(z: &mut flate2::Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = z.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        let done = usize::try_from(z.total_in() - start).unwrap_or(usize::MAX);
        let rest = input.get(done..).unwrap_or_default();
        if z.compress_vec(rest, &mut out, flate2::FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        let done = usize::try_from(z.total_in() - start).unwrap_or(usize::MAX);
        // The flush is complete once all input is in and the output had room left.
        if done >= input.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

impl Conn {
    fn message(&mut self, text: &str) -> Message {
        match self.zlib.as_mut() {
            Some(z) => Message::Binary(deflate(z, text.as_bytes()).into()),
            None => Message::Text(Utf8Bytes::from(text)),
        }
    }

    async fn send(&mut self, ws: &mut WebSocket, p: &Payload) -> Result<(), End> {
        let msg = self.message(&p.encode());
        ws.send(msg)
            .await
            .map_err(|_| End::Peer { invalidate: false })
    }

    fn cfg(&self) -> &super::GatewayConfig {
        self.gw.config()
    }

    async fn run(&mut self, ws: &mut WebSocket, shutdown: &CancellationToken) -> End {
        let interval = self.cfg().heartbeat_interval;
        let hello = nimbus_proto::gateway::Hello {
            heartbeat_interval: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }
        .payload();
        if let Err(e) = self.send(ws, &hello).await {
            return e;
        }
        let identify_deadline = Instant::now() + self.cfg().identify_timeout;
        self.last_heartbeat = Instant::now();
        let timer = tokio::time::sleep_until(identify_deadline);
        tokio::pin!(timer);
        let mut batch: Vec<Buffered> = Vec::new();
        // While dispatches are held for a busy connection's next write, it is due at
        // `flush_at` (on the same timer).
        let mut flush_at: Option<Instant> = None;
        loop {
            // The next deadline: identify timeout, then "ask for a heartbeat" (1.25×) and
            // "missed heartbeats" (1.5×).
            let deadline = if self.session.is_none() {
                identify_deadline.min(self.heartbeat_deadline(interval))
            } else {
                self.heartbeat_deadline(interval)
            };
            timer
                .as_mut()
                .reset(flush_at.map_or(deadline, |at| at.min(deadline)));
            let expires = self.expires;
            let expiry = async move {
                match expires {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return self.drain(ws).await,
                () = expiry => {
                    return End::Close(CloseCode::AuthenticationFailed, "token expired".into());
                }
                ok = async {
                    match &mut self.session {
                        Some((_, rx)) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if flush_at.is_none() => {
                    if !ok {
                        return End::Drop;
                    }
                    if let Some(until) = self.batch.hold_until(Instant::now()) {
                        // Busy: let more dispatches join this write.
                        flush_at = Some(until);
                    } else if let Err(e) = self.flush(ws, &mut batch).await {
                        return e;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if flush_at.is_some_and(|at| now >= at) {
                        flush_at = None;
                        if let Err(e) = self.flush(ws, &mut batch).await {
                            return e;
                        }
                        continue;
                    }
                    if self.session.is_none() && now >= identify_deadline {
                        return close(CloseCode::SessionTimedOut);
                    }
                    let since = now.duration_since(self.last_heartbeat);
                    if since >= interval.mul_f64(1.5) {
                        self.gw.metrics().heartbeat_timeouts.inc();
                        return End::Close(CloseCode::UnknownError, "heartbeat timed out".into());
                    }
                    if since >= interval.mul_f64(1.25) && !self.asked_heartbeat {
                        self.asked_heartbeat = true;
                        if let Err(e) = self.send(ws, &Payload::new(OpCode::Heartbeat, Value::Null)).await {
                            return e;
                        }
                    }
                }
                msg = ws.recv() => match msg {
                    Some(Ok(m)) if self.guard.check(&m).is_err() => {
                        return End::Edge(crate::edge::ws::Violation::PingFlood);
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = self.on_text(ws, &text).await {
                            return e;
                        }
                        if self.session.is_some() {
                            if let Err(e) = self.flush(ws, &mut batch).await {
                                return e;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return End::Close(CloseCode::DecodeError, "binary frames are not supported (encoding=json)".into());
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let invalidate = frame.is_some_and(|f| f.code == 1000 || f.code == 1001);
                        return End::Peer { invalidate };
                    }
                    None => return End::Peer { invalidate: false },
                    Some(Err(e)) => return on_socket_error(&e),
                },
            }
        }
    }

    fn heartbeat_deadline(&self, interval: Duration) -> Instant {
        if self.asked_heartbeat {
            self.last_heartbeat + interval.mul_f64(1.5)
        } else {
            self.last_heartbeat + interval.mul_f64(1.25)
        }
    }

    /// Shutdown: op 7, wait a little for the client to go, then 4000.
    async fn drain(&mut self, ws: &mut WebSocket) -> End {
        if self
            .send(ws, &Payload::new(OpCode::Reconnect, Value::Null))
            .await
            .is_err()
        {
            return End::Peer { invalidate: false };
        }
        let grace = self.cfg().drain_grace;
        let waited = tokio::time::timeout(grace, async {
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        match waited {
            Ok(()) => End::Peer { invalidate: false },
            Err(_) => End::Close(CloseCode::UnknownError, "server shutting down".into()),
        }
    }

    /// Send every buffered dispatch after the cursor.
    async fn flush(&mut self, ws: &mut WebSocket, batch: &mut Vec<Buffered>) -> Result<(), End> {
        let Some((session, _)) = &self.session else {
            return Ok(());
        };
        batch.clear();
        match session.after(self.id, self.cursor, batch) {
            Ok(true) => {}
            Ok(false) if session.refused() => {
                // The session log (Redis) could not keep up: the session ended here; a
                // Resume is served from what the log kept.
                return Err(End::Close(
                    CloseCode::UnknownError,
                    "session log unavailable".into(),
                ));
            }
            Ok(false) => return Err(End::Drop),
            Err(()) => {
                // This connection fell so far behind that the buffer dropped events it
                // had not sent: end it; its Resume is answered with op 9 false.
                return Err(End::Close(
                    CloseCode::UnknownError,
                    "too far behind: replay buffer overflowed".into(),
                ));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let msgs: Vec<Message> = batch.iter().map(|b| self.message(&b.text)).collect();
        let write = async {
            for m in msgs {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(self.cfg().heartbeat_interval, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(End::Peer { invalidate: false }),
            Err(_) => return Err(End::Drop),
        }
        if let Some(b) = batch.last() {
            self.cursor = b.seq;
        }
        self.batch.wrote(Instant::now());
        Ok(())
    }

    async fn on_text(&mut self, ws: &mut WebSocket, text: &str) -> Result<(), End> {
        let now = Instant::now();
        let window = Duration::from_secs(SEND_WINDOW_SECS);
        while self
            .recv_times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.recv_times.pop_front();
        }
        if self.recv_times.len() >= SEND_LIMIT as usize {
            return Err(close(CloseCode::RateLimited));
        }
        self.recv_times.push_back(now);
        let p = decode_client_payload(text).map_err(|e| match e {
            DecodeError::TooLarge(n) => End::Close(
                CloseCode::DecodeError,
                format!("payload of {n} bytes exceeds 4096"),
            ),
            DecodeError::Invalid(_) => close(CloseCode::DecodeError),
        })?;
        let Some(op) = p.opcode() else {
            return Err(End::Close(
                CloseCode::UnknownOpcode,
                format!("unknown opcode {}", p.op),
            ));
        };
        match op {
            OpCode::Heartbeat => {
                self.last_heartbeat = now;
                self.asked_heartbeat = false;
                if let Some((s, _)) = &self.session {
                    // Keeps the session in a shared log for another resume window.
                    self.gw.log().touch(&s.id);
                }
                self.send(ws, &Payload::new(OpCode::HeartbeatAck, Value::Null))
                    .await
            }
            OpCode::Identify => {
                if self.session.is_some() {
                    return Err(close(CloseCode::AlreadyAuthenticated));
                }
                let id: Identify =
                    serde_json::from_value(p.d).map_err(|_| close(CloseCode::DecodeError))?;
                self.identify(ws, id).await
            }
            OpCode::Resume => {
                if self.session.is_some() {
                    return Err(close(CloseCode::AlreadyAuthenticated));
                }
                let r: Resume =
                    serde_json::from_value(p.d).map_err(|_| close(CloseCode::DecodeError))?;
                self.resume(ws, r).await
            }
            OpCode::Dispatch
            | OpCode::Reconnect
            | OpCode::InvalidSession
            | OpCode::Hello
            | OpCode::HeartbeatAck => Err(End::Close(
                CloseCode::UnknownOpcode,
                format!("opcode {} is not sent by clients", p.op),
            )),
            OpCode::PresenceUpdate
            | OpCode::VoiceStateUpdate
            | OpCode::RequestGuildMembers
            | OpCode::RequestSoundboardSounds
            | OpCode::RequestChannelInfo => {
                if self.session.is_none() {
                    Err(close(CloseCode::NotAuthenticated))
                } else {
                    // Accepted and ignored: nimbus has no guilds, voice or presence.
                    Ok(())
                }
            }
        }
    }

    /// What `token` allows ([`super::allowed`]); `None`: refused (4004).
    fn check_token(&self, token: &str) -> Option<Allowed> {
        let allowed = super::allowed(&self.auth, &self.gw, token);
        if allowed.is_none() {
            tracing::debug!(conn = self.id, "gateway token refused");
        }
        allowed
    }

    async fn identify(&mut self, ws: &mut WebSocket, id: Identify) -> Result<(), End> {
        let Some(granted) = self.check_token(&id.token) else {
            return Err(close(CloseCode::AuthenticationFailed));
        };
        let allowed = granted.intents;
        let [shard_id, num_shards] = id.shard.unwrap_or([0, 1]);
        if num_shards < 1 || shard_id >= num_shards {
            return Err(close(CloseCode::InvalidShard));
        }
        let Some(intents) = Intents::from_bits(id.intents) else {
            return Err(close(CloseCode::InvalidIntents));
        };
        if intents.0 & !allowed.0 != 0 {
            return Err(close(CloseCode::DisallowedIntents));
        }
        if !self.gw.try_identify(&granted.bot, shard_id).await {
            self.gw.metrics().invalid_sessions.inc();
            return self
                .send(
                    ws,
                    &Payload::new(OpCode::InvalidSession, Value::Bool(false)),
                )
                .await;
        }
        let session_id = random_session_id();
        let token = nimbus_proto::gateway::strip_bot_prefix(&id.token).to_owned();
        let session = Session::new(
            session_id.clone(),
            token,
            intents,
            [shard_id, num_shards],
            self.gw.log().clone(),
        );
        if let Some(rooms) = granted.rooms {
            session.restrict_rooms(rooms);
        }
        self.expires = granted.expires;
        let ready = nimbus_proto::gateway::Ready {
            v: API_VERSION,
            session_id: session_id.to_string(),
            resume_gateway_url: self.url.to_string(),
            shard: Some([shard_id, num_shards]),
            user: json!({"id": "0", "username": "nimbus", "discriminator": "0", "bot": true}),
            guilds: Vec::new(),
            application: json!({"id": "0", "flags": 0}),
            intents: Some(intents.0),
        };
        let rx = session.subscribe();
        // READY is sequence 1, buffered like any dispatch; registered with the session map
        // locked, so no event can precede it.
        self.gw.start(session.clone(), self.id, &ready.to_json());
        tracing::debug!(conn = self.id, session = %session_id, shard_id, num_shards, intents = intents.0, "identified");
        self.session = Some((session, rx));
        self.cursor = 0;
        Ok(())
    }

    async fn invalid_session(&mut self, ws: &mut WebSocket) -> Result<(), End> {
        self.gw.metrics().invalid_sessions.inc();
        self.send(
            ws,
            &Payload::new(OpCode::InvalidSession, Value::Bool(false)),
        )
        .await
    }

    async fn resume(&mut self, ws: &mut WebSocket, r: Resume) -> Result<(), End> {
        let Some(granted) = self.check_token(&r.token) else {
            return Err(close(CloseCode::AuthenticationFailed));
        };
        let session = match self.take_over(&r, granted.rooms.clone()).await {
            Ok(s) => s,
            Err(TakeoverError::FutureSeq) => {
                return Err(End::Close(
                    CloseCode::InvalidSeq,
                    format!("seq {} was never sent", r.seq),
                ))
            }
            Err(TakeoverError::Invalid) => None,
            Err(error @ TakeoverError::Unavailable(_)) => {
                tracing::warn!(%error, "cannot resume a session");
                None
            }
        };
        let Some(session) = session else {
            return self.invalid_session(ws).await;
        };
        if session.token != nimbus_proto::gateway::strip_bot_prefix(&r.token) {
            return self.invalid_session(ws).await;
        }
        self.expires = granted.expires;
        let rx = session.subscribe();
        match session.resume(self.id, r.seq, self.cfg().replay_buffer) {
            Ok(cursor) => {
                self.gw.metrics().resumes.inc();
                tracing::debug!(conn = self.id, session = %session.id, seq = r.seq, "resumed");
                self.cursor = cursor;
                self.session = Some((session, rx));
                Ok(())
            }
            Err(ResumeError::FutureSeq) => Err(End::Close(
                CloseCode::InvalidSeq,
                format!("seq {} was never sent", r.seq),
            )),
            Err(ResumeError::TooOld) => {
                self.gw.remove(&session.id);
                self.invalid_session(ws).await
            }
        }
    }
}

impl Conn {
    /// The session a Resume names: in this node's registry when sessions live in memory;
    /// with a shared log, every Resume takes the session over from it (wherever it ran
    /// before, this node included): the log names one owner, so two nodes never extend
    /// the same session.
    ///
    /// `rooms` is the resuming token's room grant: a session rebuilt here gets it before it
    /// is registered (one found here has it since its Identify, with the same token).
    async fn take_over(
        &self,
        r: &Resume,
        rooms: Option<RoomFilter>,
    ) -> Result<Option<Arc<Session>>, TakeoverError> {
        let token = nimbus_proto::gateway::strip_bot_prefix(&r.token).to_owned();
        let log = self.gw.log().clone();
        let taken = match log.take_over(&r.session_id, &token, r.seq).await? {
            Found::Here => return Ok(self.gw.get(&r.session_id)),
            Found::TakenOver(taken) => taken,
        };
        let from = taken.last.1;
        let session = Session::taken_over(r.session_id.clone(), token, log.clone(), taken);
        if let Some(rooms) = rooms {
            session.restrict_rooms(rooms);
        }
        // Registered before reading the global stream: live events wait in the session.
        if let Some(old) = self.gw.replace(session.clone()) {
            Durable::lost(&*old);
        }
        match log.events_after(from).await {
            Ok(Some(events)) => {
                session.catch_up(&events, self.cfg().replay_buffer);
                tracing::debug!(session = %r.session_id, rebuilt = events.len(), gid = %session.gid(), "session taken over from the shared log");
                Ok(Some(session))
            }
            Ok(None) => {
                self.gw.remove(&r.session_id);
                Err(TakeoverError::Invalid)
            }
            Err(e) => {
                self.gw.remove(&r.session_id);
                Err(e)
            }
        }
    }
}

fn random_session_id() -> String {
    let a: u128 = rand::random();
    format!("{a:032x}")
}

fn on_socket_error(e: &axum::Error) -> End {
    match crate::edge::ws::classify(e) {
        // Discord answers an oversized payload with 4002.
        Some(crate::edge::ws::Violation::TooBig(_)) => {
            End::Close(CloseCode::DecodeError, "payload too large".into())
        }
        Some(v) => End::Edge(v),
        None => End::Peer { invalidate: false },
    }
}
