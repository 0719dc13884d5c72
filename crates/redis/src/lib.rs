//! The Redis backplane: several nodes share cloud rooms through one Redis.
//!
//! Chosen at startup (`--redis URL`); without it nothing here runs and cloud rooms
//! replicate with [`nimbus_core::replication::InProcess`]. Cloud rooms reach this code only
//! through [`cloud::RedisReplication`], their [`nimbus_core::replication::CloudReplication`].
//! See `docs/operations.md` for the design:
//!
//! - **One writer of the order: Redis.** A node never applies a cloud change of
//!   its own. The room actor hands it to this node's writer task, which runs
//!   [`CLOUD_SCRIPT`] (one Lua script call per room's changes of a batch, the
//!   calls pipelined). The script atomically checks each change, updates the
//!   room's state hash, takes the room's next sequence number, appends the change to the
//!   room's stream (`XADD` with id `seq-0`, trimmed with `MAXLEN ~`) and
//!   `PUBLISH`es it. Every node, the origin included, applies changes as they
//!   come back on the channel, in sequence order, so every node sees the same
//!   order.
//! - **Gaps** (a dropped subscription, a node that was away) are filled from the
//!   room's stream (`XRANGE` from the last applied sequence); when the stream
//!   no longer reaches back far enough, or the room's epoch changed (Redis lost
//!   the room and restarted its sequence), the room reloads the state hash.
//! - **Redis unreachable:** a change that could not be written closes its
//!   sender with 1011 "backplane unavailable"; the change is applied on every
//!   node or on none (a script is atomic). Joins of rooms that are not loaded
//!   fail with 1011. Loaded rooms keep serving their clients. The subscription
//!   reconnects with backoff and every loaded room catches up when it is back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_proto::backplane::split_event;
pub use nimbus_proto::backplane::StreamId;
use nimbus_proto::cloud::{CloseCode, CloudValue};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use nimbus_core::doc::replication::DocFeed;
use nimbus_core::events::{EventBody, EventBus, RoomEvent};
use nimbus_core::replication::{
    Change as CloudChange, Feed, OrderedChange, OrderedOp, Reply, RoomState,
};
use nimbus_core::store::StoredVar;

pub mod cloud;
pub mod doc;
pub mod gateway;
pub mod history;
pub mod identify;
mod keys;
pub mod lease;
mod lua;
pub mod metrics;
mod writer;

use keys::Keys;
pub(crate) use lua::{Lua, CLOUD_LUA, PRESENCE_LUA};
pub use lua::{CLOUD_SCRIPT, PRESENCE_SCRIPT};
use writer::writer;
pub(crate) use writer::Job;

/// The pub/sub channel every node subscribes to: every room event of every room, as
/// `GID KIND BODY` (see [`EVENTS_STREAM`]).
pub const EVENTS_CHANNEL: &str = "nimbus:events";

/// The stream of every room event in the order Redis accepted them (entry field `m`:
/// `KIND BODY`; KIND `c` cloud change, `d` document update, `p` presence). Its entry id
/// (the GID) is the global order the gateway's sessions follow; trimmed with `MAXLEN ~`.
pub const EVENTS_STREAM: &str = "nimbus:events";

/// Entries kept in [`EVENTS_STREAM`] (approximate): how far back a gateway session can
/// be resumed on another node.
pub const EVENTS_MAX_LEN: usize = 100_000;

/// Changes kept per room stream (approximate: `XADD MAXLEN ~`).
pub const LOG_MAX_LEN: usize = 10_000;

/// Changes written to Redis in one pipeline at most.
const BATCH: usize = 1024;

/// Subscription messages handled per wake-up at most.
const SUBSCRIBER_CHUNK: usize = 256;

/// Capacity of the queue in front of the writer task.
const WRITE_QUEUE: usize = 8192;

/// How long one Redis request may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the subscription connection is checked with a PING.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Longest pause between two attempts to resubscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A backplane failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Something in Redis is not in the format nimbus writes.
    #[error("malformed backplane data: {0}")]
    Malformed(String),
    /// A message from Redis that nimbus did not write.
    #[error(transparent)]
    Message(#[from] nimbus_proto::backplane::Malformed),
    /// The writer task has stopped.
    #[error("the backplane writer has stopped")]
    Stopped,
    /// A gateway session cannot be taken over (the gateway's own refusal, not a failure).
    #[error(transparent)]
    Takeover(#[from] nimbus_core::gateway::log::TakeoverError),
}

impl From<BackplaneError> for nimbus_core::store::StoreError {
    fn from(e: BackplaneError) -> Self {
        nimbus_core::store::StoreError::Backplane(e.to_string())
    }
}

/// One change queued for the writer.
#[derive(Debug)]
pub struct Write {
    /// Room key.
    pub room: Arc<str>,
    /// The change.
    pub op: CloudChange,
    /// Sender's connection id (not echoed to it).
    pub from: u64,
    /// Sender's username.
    pub user: Option<Arc<str>>,
    /// The room's variable limit.
    pub max_vars: usize,
    /// Who to answer.
    pub reply: Reply,
}

/// The change part of a message, as JSON (written by nimbus, read by every node). The
/// subscriber borrows its strings from the message where they hold no escapes.
#[derive(Debug, Serialize, Deserialize)]
struct Change<'a> {
    /// Room key.
    #[serde(borrow)]
    r: Cow<'a, str>,
    /// Op: `s`, `r`, `d`.
    #[serde(borrow)]
    o: Cow<'a, str>,
    /// Name.
    #[serde(borrow)]
    n: Cow<'a, str>,
    /// Value text (set).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    v: Option<Cow<'a, str>>,
    /// Value is a number (set).
    #[serde(default)]
    num: bool,
    /// New name (rename).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    nn: Option<Cow<'a, str>>,
    /// Origin node id.
    #[serde(borrow)]
    nd: Cow<'a, str>,
    /// Origin connection id.
    c: u64,
    /// Origin username.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    u: Option<Cow<'a, str>>,
    /// Origin wall clock, ms since the Unix epoch (for the lag metric).
    ts: u64,
    /// Rename/delete: the variable's value in the state hash (`n`/`s` prefix, see
    /// [`encode_value_into`]), added by [`CLOUD_SCRIPT`], never by the node. Absent in the
    /// messages of nodes of the previous version.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    hv: Option<Cow<'a, str>>,
}

/// [`Change`] as the writer serialises it, borrowing from the queued change: the same
/// JSON, without copying every string first.
#[derive(Debug, Serialize)]
struct ChangeRef<'a> {
    r: &'a str,
    o: &'a str,
    n: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<&'a str>,
    num: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nn: Option<&'a str>,
    nd: &'a str,
    c: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<&'a str>,
    ts: u64,
}

/// A presence event as written to Redis: the event's typed fields.
#[derive(Debug, Serialize, Deserialize)]
struct PresenceBody {
    /// Room key.
    r: String,
    /// Event name (`ROOM_JOIN`, `ROOM_LEAVE`).
    k: String,
    /// Username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    /// Connection id. Absent in messages of nodes of the previous version, which carried
    /// it in `d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<u64>,
    /// The previous version's prebuilt gateway body (only its `conn` is read); never
    /// written.
    #[serde(default, skip_serializing)]
    d: Option<serde_json::Value>,
}

/// A value as the state hash keeps it: `n` or `s`, then the text (appended to `out`).
fn encode_value_into(value: &CloudValue, out: &mut Vec<u8>) {
    let (prefix, text) = match value {
        CloudValue::Number(n) => (b'n', n),
        CloudValue::String(s) => (b's', s),
    };
    out.push(prefix);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
fn encode_value(value: &CloudValue) -> String {
    let mut out = Vec::new();
    encode_value_into(value, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn decode_value(text: &str) -> Option<CloudValue> {
    if let Some(n) = text.strip_prefix('n') {
        Some(CloudValue::Number(n.to_owned()))
    } else {
        text.strip_prefix('s')
            .map(|s| CloudValue::String(s.to_owned()))
    }
}

pub(crate) use nimbus_core::history::now_ms;

/// The Redis backplane of one node.
pub struct RedisBackplane {
    node: String,
    client: redis::Client,
    conn: ConnectionManager,
    writes: mpsc::Sender<Job>,
    /// Gateway sessions kept in Redis (for Resume on another node).
    pub(crate) gateway: gateway::GatewayStore,
    /// Document rooms being compacted by this node.
    compacting: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    /// What cloud rooms keep of their history (set once, before the first change; the
    /// default otherwise).
    pub(crate) history: std::sync::OnceLock<nimbus_core::history::Retention>,
    /// The document rooms of this node (set once they exist).
    docs: std::sync::OnceLock<std::sync::Weak<dyn DocFeed>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// Connect to Redis at `url` (fails when Redis cannot be reached now) and
    /// start this node's writer task.
    pub async fn connect(url: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, BackplaneError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(MAX_BACKOFF)
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        let node = format!("{:016x}", rand::random::<u64>());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let stop = CancellationToken::new();
        metrics.backplane.up.set(1);
        tracing::info!(%node, "connected to the Redis backplane");
        let bp = Arc::new_cyclic(|weak| {
            tokio::spawn(writer(
                weak.clone(),
                node.clone(),
                conn.clone(),
                rx,
                metrics.clone(),
                stop.clone(),
            ));
            RedisBackplane {
                gateway: gateway::GatewayStore::new(
                    node.clone(),
                    conn.clone(),
                    metrics.clone(),
                    stop.clone(),
                ),
                node,
                client,
                conn,
                writes: tx,
                docs: std::sync::OnceLock::new(),
                history: std::sync::OnceLock::new(),
                compacting: std::sync::Mutex::default(),
                metrics,
                stop,
            }
        });
        Ok(bp)
    }

    /// Keep each cloud room's history in Redis under `retention` (call before the first
    /// change; later calls are ignored).
    pub fn keep_history(&self, retention: nimbus_core::history::Retention) {
        let _ = self.history.set(retention);
    }

    /// This node's id (random per process).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Start the subscription task: it publishes every event on `events` and hands every
    /// cloud change to `feed` (until `feed` is dropped).
    pub(crate) fn start(self: &Arc<Self>, feed: std::sync::Weak<dyn Feed>, events: Arc<EventBus>) {
        tokio::spawn(subscriber(self.clone(), feed, events));
    }

    /// Stop the writer and the subscription.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Queue a change for Redis (waits while the writer's queue is full).
    pub async fn write(&self, write: Write) -> Result<(), BackplaneError> {
        self.writes
            .send(Job::Cloud(write))
            .await
            .map_err(|_| BackplaneError::Stopped)
    }

    /// Queue a presence event (`ROOM_JOIN`/`ROOM_LEAVE`) for the global event order; dropped
    /// (and counted as a write failure) when the writer's queue is full.
    pub(crate) fn presence(&self, ev: &RoomEvent) {
        let (EventBody::Join { conn } | EventBody::Leave { conn }) = ev.body else {
            tracing::warn!(kind = ev.kind().name(), "not a presence event; not written");
            return;
        };
        let body = PresenceBody {
            r: ev.room.to_string(),
            k: ev.kind().name().to_owned(),
            u: ev.user.as_deref().map(str::to_owned),
            c: Some(conn),
            d: None,
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        if self.writes.try_send(Job::Presence(body)).is_err() {
            self.metrics.backplane.write_failures.inc();
        }
    }

    /// Let the subscription hand document updates to `docs`.
    pub(crate) fn attach_docs(&self, docs: std::sync::Weak<dyn DocFeed>) {
        let _ = self.docs.set(docs);
    }

    fn docs(&self) -> Option<Arc<dyn DocFeed>> {
        self.docs.get().and_then(std::sync::Weak::upgrade)
    }

    /// A room's state: epoch, sequence and variables, read atomically.
    pub async fn load(&self, room: &str) -> Result<RoomState, BackplaneError> {
        let keys = Keys::new(room);
        let mut conn = self.conn.clone();
        type Raw = (
            Option<u64>,
            Option<String>,
            HashMap<String, String>,
            HashMap<String, i64>,
        );
        let (seq, epoch, vars, pos): Raw = redis::pipe()
            .atomic()
            .get(&keys.seq)
            .get(&keys.epoch)
            .hgetall(&keys.vars)
            .hgetall(&keys.pos)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(vars.len());
        for (name, text) in vars {
            let value = decode_value(&text)
                .ok_or_else(|| BackplaneError::Malformed(format!("value of {name:?}")))?;
            let pos = pos.get(&name).copied().unwrap_or(i64::MAX);
            out.push(StoredVar {
                name: Arc::from(name),
                value,
                pos,
            });
        }
        out.sort_by_key(|v| v.pos);
        Ok(RoomState {
            epoch: Arc::from(epoch.unwrap_or_default()),
            seq: seq.unwrap_or(0),
            vars: out,
        })
    }

    /// A room's changes from sequence `from` on, in order (as far as the stream reaches).
    pub async fn read_log(
        &self,
        room: &str,
        from: u64,
    ) -> Result<Vec<OrderedChange>, BackplaneError> {
        let keys = Keys::new(room);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.log)
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(LOG_MAX_LEN * 2)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids {
            let msg: String = entry
                .get("m")
                .ok_or_else(|| BackplaneError::Malformed(format!("stream entry {}", entry.id)))?;
            out.push(self.parse(msg.as_bytes())?);
        }
        Ok(out)
    }

    fn parse(&self, msg: &[u8]) -> Result<OrderedChange, BackplaneError> {
        parse_message(&self.node, msg)
    }
}

/// Parse `EPOCH SEQ POS CREATED CHANGE-JSON` as written by [`CLOUD_SCRIPT`]; `node` is this node's
/// id (a change of this node's origin remembers its sender so it is not echoed).
fn parse_message(node: &str, msg: &[u8]) -> Result<OrderedChange, BackplaneError> {
    let bad = |what: &str| BackplaneError::Malformed(what.to_owned());
    let text = std::str::from_utf8(msg).map_err(|_| bad("message is not UTF-8"))?;
    let mut parts = text.splitn(5, ' ');
    let epoch = parts.next().ok_or_else(|| bad("no epoch"))?;
    let seq: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no sequence"))?;
    let pos: i64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no position"))?;
    let created = match parts.next() {
        Some("1") => true,
        Some("0") => false,
        _ => return Err(bad("no created flag")),
    };
    let change: Change<'_> = serde_json::from_str(parts.next().ok_or_else(|| bad("no change"))?)
        .map_err(|e| BackplaneError::Malformed(e.to_string()))?;
    let value = change
        .hv
        .as_deref()
        .map(|text| decode_value(text).ok_or_else(|| bad("value of a rename/delete")))
        .transpose()?;
    let op = match &*change.o {
        "s" => {
            let text = change
                .v
                .ok_or_else(|| bad("set without value"))?
                .into_owned();
            OrderedOp::Set {
                name: Arc::from(&*change.n),
                value: if change.num {
                    CloudValue::Number(text)
                } else {
                    CloudValue::String(text)
                },
                pos,
            }
        }
        "r" => OrderedOp::Rename {
            name: Arc::from(&*change.n),
            new_name: Arc::from(
                change
                    .nn
                    .ok_or_else(|| bad("rename without new name"))?
                    .into_owned(),
            ),
            value,
        },
        "d" => OrderedOp::Delete {
            name: Arc::from(&*change.n),
            value,
        },
        other => return Err(BackplaneError::Malformed(format!("op {other:?}"))),
    };
    Ok(OrderedChange {
        room: Arc::from(&*change.r),
        epoch: Arc::from(epoch),
        seq,
        op,
        local_conn: (change.nd == node).then_some(change.c),
        created,
        user: change.u.as_deref().map(Arc::from),
        ts: change.ts,
    })
}

/// The subscription task: hands every change to its loaded room; after every
/// (re)subscription, tells every loaded room to catch up from the stream.
async fn subscriber(
    bp: Arc<RedisBackplane>,
    feed: std::sync::Weak<dyn Feed>,
    events: Arc<EventBus>,
) {
    use futures_util::StreamExt;
    let backoff = nimbus_proto::backoff::Backoff::new(Duration::from_millis(50), MAX_BACKOFF);
    let mut failures = 0;
    loop {
        let subscribed = async {
            let mut pubsub = bp.client.get_async_pubsub().await?;
            pubsub.subscribe(EVENTS_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let attempt = tokio::select! {
            () = bp.stop.cancelled() => return,
            r = tokio::time::timeout(RESPONSE_TIMEOUT, subscribed) => r,
        };
        match attempt {
            Ok(Ok(pubsub)) => {
                failures = 0;
                bp.metrics.backplane.up.set(1);
                bp.metrics.backplane.subscriptions.inc();
                tracing::info!(node = %bp.node, "subscribed to the Redis backplane");
                let Some(f) = feed.upgrade() else { return };
                f.resync_all().await;
                drop(f);
                if let Some(docs) = bp.docs() {
                    docs.resync_all();
                }
                let (mut sink, stream) = pubsub.split();
                // Every message already received is handled in one go (in order), not one
                // wake-up and one select per message.
                let mut stream = stream.ready_chunks(SUBSCRIBER_CHUNK);
                // A peer that vanished without closing the socket is found by a PING.
                let mut ping = tokio::time::interval(PING_INTERVAL);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await;
                loop {
                    let msgs = tokio::select! {
                        () = bp.stop.cancelled() => return,
                        msgs = stream.next() => msgs,
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if matches!(pong, Ok(Ok(_))) {
                                continue;
                            }
                            None
                        }
                    };
                    let Some(msgs) = msgs else { break };
                    let Some(f) = feed.upgrade() else { return };
                    bp.metrics.backplane.events.inc_by(msgs.len() as u64);
                    for msg in &msgs {
                        if let Err(error) = bp.on_event(&*f, &events, msg.get_payload_bytes()).await
                        {
                            tracing::warn!(%error, "dropping a malformed backplane message");
                        }
                    }
                }
                bp.metrics.backplane.up.set(0);
                tracing::warn!(node = %bp.node, "lost the Redis subscription; reconnecting");
            }
            Ok(Err(error)) => {
                bp.metrics.backplane.up.set(0);
                tracing::warn!(%error, "cannot subscribe to Redis; retrying");
            }
            Err(_) => {
                bp.metrics.backplane.up.set(0);
                tracing::warn!("subscribing to Redis timed out; retrying");
            }
        }
        tokio::select! {
            () = bp.stop.cancelled() => return,
            () = tokio::time::sleep(backoff.ceiling(failures)) => {}
        }
        failures = failures.saturating_add(1);
    }
}

/// One decoded message of [`EVENTS_CHANNEL`] (or entry of [`EVENTS_STREAM`]).
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A cloud change.
    Cloud(OrderedChange),
    /// A document update.
    Doc(doc::DocMessage),
    /// A presence event.
    Presence(RoomEvent),
    /// A document room was deleted (`x NODE ROOM`, published only: no event, no stream
    /// entry).
    DocDeleted(Arc<str>),
}

impl Decoded {
    /// Decode `KIND BODY`; `node` is this node's id.
    pub(crate) fn parse(node: &str, kind: u8, body: &[u8]) -> Result<Decoded, BackplaneError> {
        Ok(match kind {
            b'c' => Decoded::Cloud(parse_message(node, body)?),
            b'd' => Decoded::Doc(nimbus_proto::backplane::parse_doc_message(node, body)?),
            b'p' => {
                let p: PresenceBody = serde_json::from_slice(body)
                    .map_err(|e| BackplaneError::Malformed(e.to_string()))?;
                // The previous version sent the gateway body `d` instead of `c`.
                let conn =
                    p.c.or_else(|| p.d.as_ref()?.get("conn")?.as_u64())
                        .ok_or_else(|| BackplaneError::Malformed("presence without conn".into()))?;
                let body = match p.k.as_str() {
                    "ROOM_JOIN" => EventBody::Join { conn },
                    "ROOM_LEAVE" => EventBody::Leave { conn },
                    other => return Err(BackplaneError::Malformed(format!("event {other:?}"))),
                };
                Decoded::Presence(RoomEvent {
                    room: Arc::from(p.r),
                    user: p.u.map(Arc::from),
                    body,
                    gid: None,
                })
            }
            b'x' => {
                let room = std::str::from_utf8(body)
                    .ok()
                    .and_then(|b| b.split_once(' '))
                    .map(|(_node, room)| room)
                    .ok_or_else(|| BackplaneError::Malformed("document deletion".into()))?;
                Decoded::DocDeleted(Arc::from(room))
            }
            other => {
                return Err(BackplaneError::Malformed(format!(
                    "event kind {:?}",
                    char::from(other)
                )))
            }
        })
    }

    /// The event-bus event, with its global id (`None`: not a room event).
    pub(crate) fn room_event(&self, gid: StreamId) -> Option<RoomEvent> {
        let mut ev = match self {
            Decoded::Cloud(ev) => room_event(ev),
            Decoded::Doc(m) => nimbus_core::doc::update_event(&m.room, &m.update),
            Decoded::Presence(ev) => ev.clone(),
            Decoded::DocDeleted(_) => return None,
        };
        ev.gid = Some(gid);
        Some(ev)
    }
}

impl RedisBackplane {
    /// Handle one message of the subscription: publish it on the event bus (every room,
    /// loaded here or not, in the global order) and hand it to its loaded room.
    async fn on_event(
        &self,
        feed: &dyn Feed,
        events: &EventBus,
        payload: &[u8],
    ) -> Result<(), BackplaneError> {
        let (gid, kind, body) = split_event(payload)?;
        let decoded = Decoded::parse(&self.node, kind, body)?;
        if events.is_active() {
            if let Some(mut ev) = decoded.room_event(gid) {
                fill_unknown_value(feed, &mut ev).await;
                events.publish(&ev);
            }
        }
        match decoded {
            Decoded::Cloud(event) => {
                let lag = now_ms().saturating_sub(event.ts);
                self.metrics
                    .backplane
                    .lag_ms
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
                feed.changed(event).await;
            }
            Decoded::Doc(m) => {
                if let Some(docs) = self.docs() {
                    docs.replicated(m);
                }
            }
            Decoded::DocDeleted(room) => {
                if let Some(docs) = self.docs() {
                    docs.deleted(&room);
                }
            }
            Decoded::Presence(_) => {}
        }
        Ok(())
    }
}

/// The event-bus event of a change. With a backplane the subscription publishes every
/// room's cloud changes (loaded on this node or not), in the room's order, so the gateway
/// of every node sees all rooms. The same event as a single node's room builds: rename and
/// delete carry the value from Redis (see [`CLOUD_SCRIPT`]).
pub(crate) fn room_event(ev: &OrderedChange) -> RoomEvent {
    let body = match &ev.op {
        OrderedOp::Set { name, value, .. } => {
            let (name, value) = (name.clone(), value.clone());
            if ev.created {
                EventBody::CloudCreate { name, value }
            } else {
                EventBody::CloudSet { name, value }
            }
        }
        OrderedOp::Rename {
            name,
            new_name,
            value,
        } => EventBody::CloudRename {
            name: name.clone(),
            new_name: new_name.clone(),
            value: value.clone(),
        },
        OrderedOp::Delete { name, value } => EventBody::CloudDelete {
            name: name.clone(),
            value: value.clone(),
        },
    };
    RoomEvent {
        room: ev.room.clone(),
        user: ev.user.clone(),
        body,
        gid: None,
    }
}

/// A rename/delete published by a node of the previous version carries no value: take
/// the value this node's copy of the room holds (the change is not applied to it yet: the
/// room gets it after this), if the room is loaded here; else the event says `null`.
async fn fill_unknown_value(feed: &dyn Feed, ev: &mut RoomEvent) {
    let (EventBody::CloudRename {
        name, value: None, ..
    }
    | EventBody::CloudDelete { name, value: None }) = &ev.body
    else {
        return;
    };
    let Ok(Some(vars)) = tokio::time::timeout(RESPONSE_TIMEOUT, feed.variables(&ev.room)).await
    else {
        return;
    };
    let known = vars.into_iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if let EventBody::CloudRename { value, .. } | EventBody::CloudDelete { value, .. } =
        &mut ev.body
    {
        *value = known;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_remember_local_senders() {
        let msg = r#"ep1 7 2 1 {"r":"room","o":"s","n":"a b","v":"1.50","num":true,"nd":"me","c":9,"u":"sam","ts":5}"#;
        let ev = parse_message("me", msg.as_bytes()).expect("parse");
        assert_eq!(&*ev.room, "room");
        assert_eq!(&*ev.epoch, "ep1");
        assert_eq!(ev.seq, 7);
        assert_eq!(ev.local_conn, Some(9));
        assert!(ev.created);
        assert_eq!(ev.user.as_deref(), Some("sam"));
        assert_eq!(
            ev.op,
            OrderedOp::Set {
                name: "a b".into(),
                value: CloudValue::Number("1.50".into()),
                pos: 2,
            }
        );
        let other = parse_message("you", msg.as_bytes()).expect("parse");
        assert_eq!(other.local_conn, None);
        for bad in [
            "",
            "ep",
            "ep x 1 0 {}",
            "ep 1 1 0 {}",
            "ep 1 1 2 {}",
            "ep 1 1 0 not json",
        ] {
            assert!(parse_message("me", bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_round_trip_with_their_type() {
        for v in [
            CloudValue::Number("1.50".into()),
            CloudValue::String("1.50".into()),
            CloudValue::String(String::new()),
            CloudValue::String("n".into()),
        ] {
            assert_eq!(decode_value(&encode_value(&v)), Some(v));
        }
        assert_eq!(decode_value("x"), None);
    }

    #[test]
    fn a_document_deletion_names_its_room_and_is_no_room_event() {
        let (gid, kind, body) = split_event(b"0-0 x node-1 notes/a b").expect("split");
        let decoded = Decoded::parse("me", kind, body).expect("parse");
        assert!(matches!(&decoded, Decoded::DocDeleted(room) if &**room == "notes/a b"));
        assert!(decoded.room_event(gid).is_none(), "not on the event bus");
        assert!(Decoded::parse("me", b'x', b"no-room").is_err());
    }

    #[test]
    fn event_messages_split_into_id_kind_and_body() {
        let (gid, kind, body) = split_event(b"17-3 d a b").expect("split");
        assert_eq!(
            (gid, kind, body),
            (StreamId { ms: 17, seq: 3 }, b'd', &b"a b"[..])
        );
        for bad in [&b""[..], b"17-3", b"x-1 c {}", b"17-3 cc", b"17 c {}"] {
            assert!(split_event(bad).is_err(), "{bad:?}");
        }
        assert!(Decoded::parse("n", b'z', b"{}").is_err());
        assert!(Decoded::parse("n", b'p', br#"{"r":"7","k":"NOPE","c":1}"#).is_err());
        assert!(Decoded::parse("n", b'p', br#"{"r":"7","k":"CLOUD_SET","c":1}"#).is_err());
        assert!(Decoded::parse("n", b'p', br#"{"r":"7","k":"ROOM_JOIN"}"#).is_err());
    }

    fn presence(body: &[u8]) -> RoomEvent {
        match Decoded::parse("n", b'p', body).expect("presence") {
            Decoded::Presence(ev) => ev,
            other => panic!("not presence: {other:?}"),
        }
    }

    #[test]
    fn presence_goes_through_redis_as_typed_fields_and_the_old_shape_still_decodes() {
        let ev = RoomEvent {
            room: Arc::from("7"),
            user: Some(Arc::from("amy")),
            body: EventBody::Leave { conn: 42 },
            gid: None,
        };
        // What `presence` writes: kind, room, user, conn; no prebuilt JSON.
        let written = serde_json::to_string(&PresenceBody {
            r: "7".into(),
            k: ev.kind().name().into(),
            u: Some("amy".into()),
            c: Some(42),
            d: None,
        })
        .expect("json");
        assert_eq!(written, r#"{"r":"7","k":"ROOM_LEAVE","u":"amy","c":42}"#);
        assert_eq!(presence(written.as_bytes()), ev);
        // The previous version's message (prebuilt `d`) decodes to the same event.
        let old = presence(
            br#"{"r":"7","k":"ROOM_LEAVE","d":{"room":"7","user":"amy","conn":42},"u":"amy"}"#,
        );
        assert_eq!(old, ev);
        assert_eq!(old.to_json(), r#"{"room":"7","user":"amy","conn":42}"#);
    }

    #[test]
    fn renames_and_deletes_carry_the_value_the_script_adds_and_old_messages_decode_without_it() {
        // As CLOUD_SCRIPT writes them: the node's change JSON with "hv" spliced in.
        let rename = r#"ep 3 0 0 {"r":"7","o":"r","n":"☁ x","num":false,"nn":"☁ y","nd":"a","c":5,"u":"alice","ts":1,"hv":"n1.50"}"#;
        let ev = parse_message("b", rename.as_bytes()).expect("rename");
        assert_eq!(
            ev.op,
            OrderedOp::Rename {
                name: "☁ x".into(),
                new_name: "☁ y".into(),
                value: Some(CloudValue::Number("1.50".into())),
            }
        );
        assert_eq!(
            room_event(&ev).to_json(),
            r#"{"room":"7","name":"☁ x","new_name":"☁ y","value":1.5,"user":"alice"}"#
        );
        let delete = r#"ep 4 0 0 {"r":"7","o":"d","n":"☁ y","num":false,"nd":"a","c":0,"ts":1,"hv":"s\/ \"q\""}"#;
        let ev = parse_message("b", delete.as_bytes()).expect("delete");
        assert_eq!(
            room_event(&ev).to_json(),
            r#"{"room":"7","name":"☁ y","value":"/ \"q\"","user":null}"#
        );
        // The previous version's messages: no value (the subscriber fills in what the
        // node knows, else null).
        let old = r#"ep 4 0 0 {"r":"7","o":"d","n":"☁ y","num":false,"nd":"a","c":0,"ts":1}"#;
        let ev = parse_message("b", old.as_bytes()).expect("old delete");
        assert_eq!(
            ev.op,
            OrderedOp::Delete {
                name: "☁ y".into(),
                value: None
            }
        );
        assert_eq!(
            room_event(&ev).to_json(),
            r#"{"room":"7","name":"☁ y","value":null,"user":null}"#
        );
        let bad = r#"ep 4 0 0 {"r":"7","o":"d","n":"☁ y","nd":"a","c":0,"ts":1,"hv":"x"}"#;
        assert!(parse_message("b", bad.as_bytes()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_event_parsers(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok((_, kind, body)) = split_event(&bytes) {
                let _ = Decoded::parse("node", kind, body);
            }
            for kind in [b'c', b'd', b'p', b'x'] {
                let _ = Decoded::parse("node", kind, &bytes);
            }
        }

        #[test]
        fn document_messages_round_trip(
            room in "\\PC{0,40}",
            update in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            seq in 1u64..u64::MAX,
            local in proptest::bool::ANY,
        ) {
            // The body exactly as DOC_SCRIPT concatenates it.
            let mut body = format!("ep-1 {seq} {} 0 {} {room}", if local { "me" } else { "other" }, room.len()).into_bytes();
            body.extend_from_slice(&update);
            let gid = StreamId { ms: 5, seq: 9 };
            let mut msg = format!("{gid} d ").into_bytes();
            msg.extend_from_slice(&body);
            let (g, kind, body) = split_event(&msg).expect("split");
            proptest::prop_assert_eq!(g, gid);
            let Decoded::Doc(m) = Decoded::parse("me", kind, body).expect("parse") else {
                panic!("not a document message")
            };
            proptest::prop_assert_eq!(&*m.room, room.as_str());
            proptest::prop_assert_eq!(&m.update[..], &update[..]);
            proptest::prop_assert_eq!((m.seq, m.local), (seq, local));
        }
    }
}
