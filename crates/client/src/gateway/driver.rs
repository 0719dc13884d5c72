//! The shard's background task: connect, Hello, Identify/Resume, heartbeats,
//! dispatches, and the reconnect decisions of protocol §6.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nimbus_proto::gateway::{close_action, decode_payload, CloseAction, CloseCode, OpCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::inflate::Inflater;
use super::{GatewayError, RateLimiter, ShardState, Shared};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `base` with `?v=10&encoding=json` (and `&compress=zlib-stream`).
pub(crate) fn connect_url(base: &str, compress: bool) -> Result<String, GatewayError> {
    let mut url = url::Url::parse(base).map_err(|_| GatewayError::BadUrl(base.to_owned()))?;
    match url.scheme() {
        "ws" | "wss" => {}
        "http" => url
            .set_scheme("ws")
            .map_err(|()| GatewayError::BadUrl(base.to_owned()))?,
        "https" => url
            .set_scheme("wss")
            .map_err(|()| GatewayError::BadUrl(base.to_owned()))?,
        _ => return Err(GatewayError::BadUrl(base.to_owned())),
    }
    let q = if compress {
        "v=10&encoding=json&compress=zlib-stream"
    } else {
        "v=10&encoding=json"
    };
    url.set_query(Some(q));
    Ok(url.to_string())
}

/// How one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Reconnect and Resume.
    Resume,
    /// Forget the session and Identify on the original URL.
    Reidentify,
    /// Op 9 `false`: like Reidentify, after a short random wait.
    InvalidSession,
    /// Stop for good.
    Fatal(CloseCode),
    /// `close()` was called.
    Stopped,
    /// A dispatch found the event queue full: it was not taken; resume once the consumer
    /// has taken half of the queue.
    Backlogged,
}

pub(crate) struct Driver {
    pub shared: Arc<Shared>,
    pub token: String,
    pub intents: u64,
    pub base_url: String,
    pub events: mpsc::Sender<(String, Value)>,
    pub commands: mpsc::UnboundedReceiver<String>,
    pub stop: watch::Receiver<bool>,
}

impl Driver {
    fn set_state(&self, s: ShardState) {
        self.shared.lock().state = s;
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.shared.options;
        // "Equal jitter": between half the ceiling and the ceiling.
        nimbus_proto::backoff::Backoff::new(o.backoff_base, o.backoff_cap)
            .equal_jitter(attempt, rand::random())
    }

    /// Sleep unless stopped; `false` when stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        if d.is_zero() {
            return !*self.stop.borrow();
        }
        tokio::select! {
            () = tokio::time::sleep(d) => !*self.stop.borrow(),
            _ = self.stop.changed() => false,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), GatewayError> {
        let mut failures: u32 = 0;
        let mut wait = Duration::ZERO;
        loop {
            if failures > 0 {
                self.set_state(ShardState::Disconnected { attempts: failures });
                wait = wait.max(self.backoff(failures - 1));
            }
            if !self.pause(wait).await {
                self.set_state(ShardState::Closed);
                return Ok(());
            }
            wait = Duration::ZERO;
            let (resuming, url) = {
                let st = self.shared.lock();
                let resuming = st.session_id.is_some() && st.seq.is_some();
                let url = match (&st.resume_url, resuming) {
                    (Some(r), true) => connect_url(r, self.shared.options.compress)
                        .unwrap_or_else(|_| self.base_url.clone()),
                    _ => self.base_url.clone(),
                };
                (resuming, url)
            };
            if !resuming {
                if let Some(q) = self.shared.options.identify_queue.clone() {
                    let shard = self.shared.options.shard_id;
                    tokio::select! {
                        () = q.wait(shard) => {}
                        _ = self.stop.changed() => {
                            self.set_state(ShardState::Closed);
                            return Ok(());
                        }
                    }
                }
            }
            self.shared.lock().connections.push(url.clone());
            tracing::debug!(%url, resuming, "gateway connecting");
            let connect = tokio::time::timeout(
                self.shared.options.connect_timeout,
                tokio_tungstenite::connect_async_with_config(
                    url.as_str(),
                    Some(crate::ws_config(self.shared.options.max_message_bytes)),
                    false,
                ),
            );
            let ws = tokio::select! {
                r = connect => r,
                _ = self.stop.changed() => {
                    self.set_state(ShardState::Closed);
                    return Ok(());
                }
            };
            let ws = match ws {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => {
                    tracing::debug!(%url, error = %e, "gateway connect failed");
                    failures += 1;
                    // A resume URL that does not answer is dropped; the next attempt
                    // resumes on the original URL.
                    self.shared.lock().resume_url = None;
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%url, "gateway connect timed out");
                    failures += 1;
                    self.shared.lock().resume_url = None;
                    continue;
                }
            };
            let (outcome, active, instructed) = self.connection(ws, resuming).await;
            if active {
                failures = 0;
            } else if !instructed {
                failures += 1;
            }
            tracing::debug!(?outcome, active, "gateway connection ended");
            match outcome {
                Outcome::Stopped => {
                    self.set_state(ShardState::Closed);
                    return Ok(());
                }
                Outcome::Fatal(code) => {
                    tracing::warn!(%code, "gateway closed the shard: not reconnecting");
                    self.set_state(ShardState::FatallyClosed(code));
                    return Err(GatewayError::Fatal(code));
                }
                Outcome::Resume => {}
                Outcome::Backlogged => {
                    if !self.drained().await {
                        self.set_state(ShardState::Closed);
                        return Ok(());
                    }
                }
                Outcome::Reidentify | Outcome::InvalidSession => {
                    let mut st = self.shared.lock();
                    st.session_id = None;
                    st.seq = None;
                    st.resume_url = None;
                    drop(st);
                    if outcome == Outcome::InvalidSession {
                        // Discord: wait 1-5 s before identifying again.
                        let base = self.shared.options.backoff_base;
                        wait = base.mul_f64(0.2 + 0.8 * rand::random::<f64>());
                    }
                }
            }
            self.set_state(ShardState::Disconnected { attempts: failures });
        }
    }

    /// Wait until the consumer has taken at least half of the event queue; `false` when
    /// stopped, or when the consumer is gone.
    async fn drained(&mut self) -> bool {
        let half = self.events.max_capacity().div_ceil(2);
        tracing::info!(
            queued = self.events.max_capacity() - self.events.capacity(),
            "gateway events not taken: connection closed until the consumer catches up"
        );
        self.set_state(ShardState::Disconnected { attempts: 0 });
        // Half of the queue free: taken (then given back at once) when the consumer has
        // made room; an error when the consumer is gone.
        if *self.stop.borrow() {
            return false;
        }
        let events = self.events.clone();
        tokio::select! {
            room = events.reserve_many(half) => room.is_ok(),
            _ = self.stop.changed() => false,
        }
    }

    async fn send(&self, ws: &mut Socket, v: &Value) -> bool {
        ws.send(Message::text(v.to_string())).await.is_ok()
    }

    /// Close with `code` without waiting long for the peer (it may be a zombie).
    async fn close(ws: &mut Socket, code: u16) {
        let frame = CloseFrame {
            code: WsCode::from(code),
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }

    fn send_heartbeat_record(&self) -> Value {
        let mut st = self.shared.lock();
        st.metrics.heartbeats_sent += 1;
        if let Some(l) = st.limiter.as_mut() {
            l.heartbeat(Instant::now());
        }
        json!({"op": nimbus_proto::gateway::OpCode::Heartbeat.code(), "d": st.seq})
    }

    /// Serve one connection; returns how it ended, whether it reached READY/RESUMED,
    /// and whether the end was the server's instruction (op 7 / op 9).
    async fn connection(&mut self, mut ws: Socket, resuming: bool) -> (Outcome, bool, bool) {
        let max_message = self.shared.options.max_message_bytes;
        let mut inflater = self
            .shared
            .options
            .compress
            .then(|| Inflater::new(max_message));
        let mut active = false;
        let mut interval: Option<Duration> = None;
        let mut next_beat = Instant::now();
        let mut awaiting_ack = false;
        let mut beat_sent_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.changed() => {
                    Self::close(&mut ws, 1000).await;
                    return (Outcome::Stopped, active, false);
                }
                () = async {
                    match interval {
                        Some(_) => tokio::time::sleep_until(next_beat).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if awaiting_ack {
                        tracing::info!("gateway heartbeat not acknowledged: zombie connection, resuming");
                        Self::close(&mut ws, 4000).await;
                        return (Outcome::Resume, active, true);
                    }
                    let hb = self.send_heartbeat_record();
                    beat_sent_at = Instant::now();
                    awaiting_ack = true;
                    if !self.send(&mut ws, &hb).await {
                        return (Outcome::Resume, active, false);
                    }
                    // From now, not from the schedule: a stalled task must not fire two
                    // beats back to back (the second would see no ACK and call it a zombie).
                    next_beat = Instant::now() + interval.unwrap_or(Duration::from_secs(41));
                }
                cmd = self.commands.recv(), if active => {
                    let Some(text) = cmd else {
                        Self::close(&mut ws, 1000).await;
                        return (Outcome::Stopped, active, false);
                    };
                    if ws.send(Message::text(text)).await.is_err() {
                        return (Outcome::Resume, active, false);
                    }
                }
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                        Some(Ok(Message::Binary(b))) => match inflater.as_mut() {
                            Some(inf) => match inf.push(&b) {
                                Ok(Some(t)) => t,
                                Ok(None) => continue,
                                Err(e) => {
                                    tracing::warn!(error = %e, "gateway: bad zlib-stream data");
                                    Self::close(&mut ws, 4000).await;
                                    return (Outcome::Resume, active, false);
                                }
                            },
                            None => continue,
                        },
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map(|f| u16::from(f.code));
                            let _ = ws.flush().await;
                            tracing::debug!(?code, "gateway closed by server");
                            let outcome = match close_action(code) {
                                CloseAction::Resume => Outcome::Resume,
                                CloseAction::Reidentify => Outcome::Reidentify,
                                CloseAction::Fatal => Outcome::Fatal(
                                    code.and_then(CloseCode::from_code).unwrap_or(CloseCode::UnknownError),
                                ),
                            };
                            return (outcome, active, false);
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return (Outcome::Resume, active, false),
                    };
                    let Ok(p) = decode_payload(&text) else {
                        tracing::warn!("gateway: undecodable payload ignored");
                        continue;
                    };
                    match p.opcode() {
                        Some(OpCode::Hello) => {
                            let ms = p.d["heartbeat_interval"].as_u64().unwrap_or(41_250);
                            let iv = Duration::from_millis(ms.max(1));
                            interval = Some(iv);
                            next_beat = Instant::now() + iv.mul_f64(rand::random::<f64>());
                            awaiting_ack = false;
                            let hello = {
                                let mut st = self.shared.lock();
                                st.heartbeat_interval = Some(iv);
                                let mut l = RateLimiter::new(iv);
                                let _ = l.try_acquire(Instant::now());
                                st.limiter = Some(l);
                                st.state = if resuming { ShardState::Resuming } else { ShardState::Identifying };
                                if resuming {
                                    json!({"op": 6, "d": {
                                        "token": self.token,
                                        "session_id": st.session_id,
                                        "seq": st.seq,
                                    }})
                                } else {
                                    let o = &self.shared.options;
                                    json!({"op": 2, "d": {
                                        "token": self.token,
                                        "intents": self.intents,
                                        "properties": o.properties,
                                        "shard": [o.shard_id, o.total_shards],
                                    }})
                                }
                            };
                            if !self.send(&mut ws, &hello).await {
                                return (Outcome::Resume, active, false);
                            }
                        }
                        Some(OpCode::Dispatch) => {
                            let t = p.t.unwrap_or_default();
                            let ready = (t == "READY").then(|| {
                                let s = |k: &str| p.d[k].as_str().map(str::to_owned);
                                (s("session_id"), s("resume_gateway_url"))
                            });
                            let resumed = t == "RESUMED";
                            // Queued first: the sequence moves only past what the consumer
                            // will see, so a Resume replays whatever was not taken.
                            match self.events.try_send((t, p.d)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    Self::close(&mut ws, 4000).await;
                                    return (Outcome::Backlogged, active, true);
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    Self::close(&mut ws, 1000).await;
                                    return (Outcome::Stopped, active, false);
                                }
                            }
                            let mut st = self.shared.lock();
                            if let Some(s) = p.s {
                                st.seq = Some(s);
                            }
                            if let Some((session_id, resume_url)) = ready {
                                st.session_id = session_id;
                                st.resume_url = resume_url;
                                st.state = ShardState::Active;
                                st.metrics.identifies += 1;
                                active = true;
                            } else if resumed {
                                st.state = ShardState::Active;
                                st.metrics.resumes += 1;
                                active = true;
                            }
                        }
                        Some(OpCode::Heartbeat) => {
                            // The server wants a heartbeat now; the schedule continues.
                            let hb = self.send_heartbeat_record();
                            beat_sent_at = Instant::now();
                            awaiting_ack = true;
                            if !self.send(&mut ws, &hb).await {
                                return (Outcome::Resume, active, false);
                            }
                        }
                        Some(OpCode::HeartbeatAck) => {
                            if awaiting_ack {
                                let rtt = beat_sent_at.elapsed();
                                self.shared.lock().metrics.record(rtt);
                            }
                            awaiting_ack = false;
                        }
                        Some(OpCode::Reconnect) => {
                            Self::close(&mut ws, 4000).await;
                            return (Outcome::Resume, active, true);
                        }
                        Some(OpCode::InvalidSession) => {
                            if p.d.as_bool() == Some(true) {
                                Self::close(&mut ws, 4000).await;
                                return (Outcome::Resume, active, true);
                            }
                            Self::close(&mut ws, 1000).await;
                            return (Outcome::InvalidSession, active, true);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            connect_url("wss://gateway.discord.gg", false).expect("url"),
            "wss://gateway.discord.gg/?v=10&encoding=json"
        );
        assert_eq!(
            connect_url("ws://127.0.0.1:9/gateway", true).expect("url"),
            "ws://127.0.0.1:9/gateway?v=10&encoding=json&compress=zlib-stream"
        );
        assert_eq!(
            connect_url("http://h/gateway?v=9", false).expect("url"),
            "ws://h/gateway?v=10&encoding=json"
        );
        assert!(connect_url("ftp://x", false).is_err());
    }
}
