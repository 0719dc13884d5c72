//! Gateway sessions kept in Redis, so that a session can be resumed on any node.
//!
//! With a backplane every room event reaches the gateway of every node from the
//! subscription, in the order of the global event stream ([`super::EVENTS_STREAM`]), so a
//! session's dispatches are a deterministic selection (intents, shard) of that stream.
//! The node that owns a session writes:
//!
//! - `nimbus:gw:{SID}` (hash): `owner` (node id), `token` (SHA-256 of the bot token),
//!   `intents`, `shard_id`, `shard_n`;
//! - `nimbus:gw:{SID}:log` (stream, entry `SEQ-0`): each dispatch's payload `t` and the
//!   global id `g` of the event it came from, trimmed to the replay buffer.
//!
//! A dispatch is written **before** it is sent ([`GW_SCRIPT`], only while the hash still
//! names this node as owner), so whatever a client received is in Redis. Both keys expire
//! one resume window after the session's last dispatch or heartbeat.
//!
//! A Resume on a node that does not own the session takes it over ([`TAKEOVER_SCRIPT`]:
//! checks the token, sets `owner`), reads the log after the client's `seq`, then rebuilds
//! the dispatches the old owner never got to from the global stream after the last
//! logged event, filtered the same way, under the next sequence numbers. When that part
//! of the global stream was trimmed the Resume is answered with op 9.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BackplaneError, Decoded, Lua, RedisBackplane, StreamId, EVENTS_STREAM};
use crate::metrics::Metrics;
use nimbus_core::events::RoomEvent;
use nimbus_core::gateway::log::{
    Appended, Dispatch, Durable, Found, SessionLog, TakenOver, TakeoverError,
};

/// Appends dispatches to a session's log if this node still owns the session.
///
/// KEYS: meta, log. ARGV: node, log length, ttl ms, then `seq, gid, payload` per dispatch,
/// in order. Returns 1, or 0 when another node took the session over.
pub const GW_SCRIPT: &str = include_str!("lua/gateway.lua");

/// Takes a session over for this node.
///
/// KEYS: meta. ARGV: node, token hash. Returns `{intents, shard_id, shard_n}`, -1 for an
/// unknown (or expired) session, -2 for another token.
pub const TAKEOVER_SCRIPT: &str = include_str!("lua/gateway_takeover.lua");

static GW_LUA: Lua = Lua::new(GW_SCRIPT);
static TAKEOVER_LUA: Lua = Lua::new(TAKEOVER_SCRIPT);

/// Jobs written per pipeline at most.
const BATCH: usize = 2048;

/// The most bytes of jobs queued for the writer (payloads, ids and a fixed overhead per
/// job): while Redis is unreachable or behind, dispatches beyond it are refused and their
/// sessions end ([`Appended::Refused`]), heartbeat touches beyond it are dropped, so the
/// queue never holds more than this plus one session's metadata per new session.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What one queued job counts against [`MAX_QUEUED_BYTES`] besides its strings.
const JOB_OVERHEAD: usize = 128;

/// Longest pause between two attempts of a failed write.
const MAX_RETRY: Duration = Duration::from_secs(2);

fn meta_key(sid: &str) -> String {
    format!("nimbus:gw:{{{sid}}}")
}

fn log_key(sid: &str) -> String {
    format!("nimbus:gw:{{{sid}}}:log")
}

/// The hash of a token as kept in Redis (never the token itself).
pub(crate) fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One write of the gateway writer.
pub(crate) enum GwJob {
    /// A new session's metadata (before its READY).
    Meta {
        sid: String,
        token_hash: String,
        intents: u64,
        shard: [u64; 2],
    },
    /// One dispatch.
    Dispatch {
        sid: String,
        seq: u64,
        gid: StreamId,
        text: Arc<str>,
        session: Weak<dyn Durable>,
    },
    /// The session is alive (a heartbeat): keep its keys.
    Touch { sid: String },
}

impl GwJob {
    /// What it counts against [`MAX_QUEUED_BYTES`].
    fn cost(&self) -> usize {
        JOB_OVERHEAD
            + match self {
                GwJob::Meta {
                    sid, token_hash, ..
                } => sid.len() + token_hash.len(),
                GwJob::Dispatch { sid, text, .. } => sid.len() + text.len(),
                GwJob::Touch { sid } => sid.len(),
            }
    }
}

/// The writer is done with `batch` (written, or given up): its bytes are free again.
fn release(queued: &AtomicUsize, batch: &[GwJob]) {
    let cost: usize = batch.iter().map(GwJob::cost).sum();
    queued.fetch_sub(cost, Ordering::AcqRel);
}

/// What the writer needs, kept until the gateway starts it.
type Unstarted = (
    mpsc::UnboundedReceiver<GwJob>,
    Arc<Metrics>,
    CancellationToken,
);

/// The gateway's [`SessionLog`] with `--redis`: sessions kept in Redis (see the module
/// docs), so that any node can resume them.
#[derive(Debug, Clone)]
pub struct RedisSessionLog {
    bp: Arc<RedisBackplane>,
}

impl RedisSessionLog {
    /// The session log of `bp`.
    pub fn new(bp: Arc<RedisBackplane>) -> RedisSessionLog {
        RedisSessionLog { bp }
    }
}

impl SessionLog for RedisSessionLog {
    fn start(&self, replay_buffer: usize, resume_window: Duration) {
        self.bp.gateway.start(replay_buffer, resume_window);
    }

    fn shared(&self) -> bool {
        true
    }

    fn opened(&self, sid: &str, token: &str, intents: u64, shard: [u64; 2]) {
        self.bp.gateway.send(GwJob::Meta {
            sid: sid.to_owned(),
            token_hash: token_hash(token),
            intents,
            shard,
        });
    }

    /// Queued for the writer: the session hears once it is in Redis. Refused when the
    /// queue is full ([`MAX_QUEUED_BYTES`]).
    fn append(&self, d: Dispatch<'_>) -> Appended {
        let queued = self.bp.gateway.send(GwJob::Dispatch {
            sid: d.sid.to_owned(),
            seq: d.seq,
            gid: d.gid,
            text: d.text.clone(),
            session: d.session.clone(),
        });
        if queued {
            Appended::Queued
        } else {
            Appended::Refused
        }
    }

    fn touch(&self, sid: &str) {
        self.bp.gateway.send(GwJob::Touch {
            sid: sid.to_owned(),
        });
    }

    fn take_over<'a>(
        &'a self,
        sid: &'a str,
        token: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Found, TakeoverError>> {
        Box::pin(async move {
            let taken = self
                .bp
                .gateway
                .take_over(sid, token, seq)
                .await
                .map_err(takeover_error)?;
            Ok(Found::TakenOver(taken))
        })
    }

    fn events_after(
        &self,
        after: StreamId,
    ) -> BoxFuture<'_, Result<Option<Vec<RoomEvent>>, TakeoverError>> {
        Box::pin(async move { self.bp.events_after(after).await.map_err(takeover_error) })
    }
}

/// The session part of the backplane (see the module docs).
pub(crate) struct GatewayStore {
    node: String,
    conn: ConnectionManager,
    queue: Queue,
    rx: std::sync::Mutex<Option<Unstarted>>,
}

/// The sending side of the writer's queue, bounded in bytes ([`GwJob::cost`]).
struct Queue {
    tx: mpsc::UnboundedSender<GwJob>,
    /// Bytes queued and not yet written (or given up), shared with the writer.
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl Queue {
    fn new(max: usize) -> (Queue, mpsc::UnboundedReceiver<GwJob>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (Queue { tx, queued, max }, rx)
    }

    /// Queue `job`; `false` when it was not queued: a dispatch or a touch that would take
    /// the queue over its bound, or any job once the writer has stopped. A session's
    /// metadata is queued whatever the bound: it is one per new session, and its READY
    /// is refused right after it if the queue is full.
    fn send(&self, job: GwJob) -> bool {
        let cost = job.cost();
        let always = matches!(job, GwJob::Meta { .. });
        let max = self.max;
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                if always {
                    Some(q.saturating_add(cost))
                } else {
                    q.checked_add(cost).filter(|&n| n <= max)
                }
            })
            .is_ok();
        if !taken {
            return false;
        }
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// The gateway's view of a backplane failure: its own refusal, or the log unavailable.
fn takeover_error(e: BackplaneError) -> TakeoverError {
    match e {
        BackplaneError::Takeover(t) => t,
        other => TakeoverError::Unavailable(other.to_string()),
    }
}

impl GatewayStore {
    pub(crate) fn new(
        node: String,
        conn: ConnectionManager,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> GatewayStore {
        let (queue, rx) = Queue::new(MAX_QUEUED_BYTES);
        GatewayStore {
            node,
            conn,
            queue,
            rx: std::sync::Mutex::new(Some((rx, metrics, stop))),
        }
    }

    /// Start the writer with the gateway's replay buffer and resume window (once).
    pub(crate) fn start(&self, replay_buffer: usize, resume_window: Duration) {
        let taken = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((rx, metrics, stop)) = taken {
            tokio::spawn(writer(
                self.node.clone(),
                self.conn.clone(),
                (rx, self.queue.queued.clone()),
                metrics,
                stop,
                replay_buffer,
                resume_window,
            ));
        }
    }

    /// Queue a write (see [`Queue::send`]).
    pub(crate) fn send(&self, job: GwJob) -> bool {
        self.queue.send(job)
    }

    /// Take session `sid` over for a Resume from `seq` (see the module docs).
    pub(crate) async fn take_over(
        &self,
        sid: &str,
        token: &str,
        seq: u64,
    ) -> Result<TakenOver, BackplaneError> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = redis::cmd("EVAL")
            .arg(TAKEOVER_LUA.text())
            .arg(1)
            .arg(meta_key(sid))
            .arg(&self.node)
            .arg(token_hash(token))
            .query_async(&mut conn)
            .await?;
        let fields: Vec<Option<u64>> = match reply {
            redis::Value::Int(_) => return Err(TakeoverError::Invalid.into()),
            other => redis::from_redis_value(other)
                .map_err(|e| BackplaneError::Malformed(format!("session {sid}: {e}")))?,
        };
        let [Some(intents), Some(shard_id), Some(shard_n)] = fields[..] else {
            return Err(BackplaneError::Malformed(format!("session {sid} metadata")));
        };
        let log = log_key(sid);
        let (last, replay): (
            redis::streams::StreamRangeReply,
            redis::streams::StreamRangeReply,
        ) = redis::pipe()
            .cmd("XREVRANGE")
            .arg(&log)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&log)
            .arg(format!("{}-0", seq.saturating_add(1)))
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let entry =
            |e: &redis::streams::StreamId| -> Result<(u64, Arc<str>, StreamId), BackplaneError> {
                let id: StreamId = e.id.parse()?;
                let text: String = e
                    .get("t")
                    .ok_or_else(|| BackplaneError::Malformed(format!("session entry {}", e.id)))?;
                let gid: String = e
                    .get("g")
                    .ok_or_else(|| BackplaneError::Malformed(format!("session entry {}", e.id)))?;
                Ok((id.ms, Arc::from(text), gid.parse()?))
            };
        let Some(last) = last.ids.first() else {
            return Err(TakeoverError::Invalid.into());
        };
        let (last_seq, _, last_gid) = entry(last)?;
        if seq > last_seq {
            return Err(TakeoverError::FutureSeq.into());
        }
        let replay = replay
            .ids
            .iter()
            .map(entry)
            .collect::<Result<Vec<_>, _>>()?;
        if seq < last_seq && replay.first().map(|r| r.0) != Some(seq + 1) {
            // The log was trimmed past the client's seq.
            return Err(TakeoverError::Invalid.into());
        }
        Ok(TakenOver {
            intents,
            shard: [shard_id, shard_n],
            replay,
            last: (last_seq, last_gid),
        })
    }
}

impl RedisBackplane {
    /// The room events after `after` in the global order (as far as the stream holds
    /// them). `None` when entries after `after` were trimmed away.
    pub(crate) async fn events_after(
        &self,
        after: StreamId,
    ) -> Result<Option<Vec<RoomEvent>>, BackplaneError> {
        let mut conn = self.conn.clone();
        // Redis 7 reports the newest id trimming removed: if it is after `after`, some of
        // the events the session needs are gone.
        let info: redis::Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(EVENTS_STREAM)
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let Some(deleted) = max_deleted(&info) {
            if deleted > after {
                return Ok(None);
            }
        }
        let mut out = Vec::new();
        let mut from = after;
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(EVENTS_STREAM)
                .arg(format!("({from}"))
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let Some(last) = page.ids.last() else { break };
            from = last.id.parse()?;
            for e in &page.ids {
                let gid: StreamId = e.id.parse()?;
                let m: Vec<u8> = e
                    .get("m")
                    .ok_or_else(|| BackplaneError::Malformed(format!("event {}", e.id)))?;
                let (kind, body) = nimbus_proto::backplane::split_kind(&m)?;
                match Decoded::parse(&self.node, kind, body) {
                    Ok(d) => out.extend(d.room_event(gid)),
                    Err(error) => tracing::warn!(%error, id = %e.id, "skipping a malformed event"),
                }
            }
        }
        Ok(Some(out))
    }
}

/// `max-deleted-entry-id` of an `XINFO STREAM` reply (Redis 7+).
fn max_deleted(info: &redis::Value) -> Option<StreamId> {
    let items: Vec<redis::Value> = match info {
        redis::Value::Array(v) => v.clone(),
        redis::Value::Map(m) => m.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => return None,
    };
    let mut it = items.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key: Option<String> = redis::from_redis_value(k.clone()).ok();
        if key.as_deref() == Some("max-deleted-entry-id") {
            let id: String = redis::from_redis_value(v.clone()).ok()?;
            return id.parse().ok();
        }
    }
    None
}

/// The gateway writer: pipelines queued jobs; a failed pipeline is retried (with
/// backoff) until Redis takes it, so dispatches wait rather than get lost.
async fn writer(
    node: String,
    mut conn: ConnectionManager,
    (mut rx, queued): (mpsc::UnboundedReceiver<GwJob>, Arc<AtomicUsize>),
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    replay_buffer: usize,
    resume_window: Duration,
) {
    let ttl = u64::try_from(resume_window.as_millis())
        .unwrap_or(u64::MAX)
        .max(1000);
    let mut batch: Vec<GwJob> = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(GW_LUA.text()).ignore();
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, job) in batch.iter().enumerate() {
            match job {
                GwJob::Meta {
                    sid,
                    token_hash,
                    intents,
                    shard,
                } => {
                    let key = meta_key(sid);
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg("owner")
                        .arg(&node)
                        .arg("token")
                        .arg(token_hash)
                        .arg("intents")
                        .arg(intents)
                        .arg("shard_id")
                        .arg(shard[0])
                        .arg("shard_n")
                        .arg(shard[1])
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
                }
                GwJob::Dispatch { sid, .. } => match index.get(sid.as_str()) {
                    Some(&g) => groups[g].1.push(i),
                    None => {
                        index.insert(sid, groups.len());
                        groups.push((sid, vec![i]));
                    }
                },
                GwJob::Touch { sid } => {
                    pipe.cmd("PEXPIRE").arg(meta_key(sid)).arg(ttl).ignore();
                    pipe.cmd("PEXPIRE").arg(log_key(sid)).arg(ttl).ignore();
                }
            }
        }
        // One script call per session with all of its dispatches of the batch, in order,
        // after every metadata write (a session's Meta precedes its dispatches).
        let mut gid_text = String::with_capacity(32);
        for (sid, jobs) in &groups {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(GW_LUA.sha())
                .arg(2)
                .arg(meta_key(sid))
                .arg(log_key(sid))
                .arg(&node)
                .arg(replay_buffer)
                .arg(ttl);
            for &i in jobs {
                if let GwJob::Dispatch { seq, gid, text, .. } = &batch[i] {
                    use std::fmt::Write as _;
                    gid_text.clear();
                    let _ = write!(gid_text, "{gid}");
                    cmd.arg(seq).arg(gid_text.as_str()).arg(&**text);
                }
            }
        }
        let backoff = nimbus_proto::backoff::Backoff::new(Duration::from_millis(50), MAX_RETRY);
        let mut failures = 0;
        let replies = loop {
            let result: Result<Vec<i64>, _> = pipe.query_async(&mut conn).await;
            match result {
                Ok(r) => break r,
                Err(error) => {
                    metrics.backplane.up.set(0);
                    tracing::warn!(%error, jobs = batch.len(), "cannot write gateway sessions to Redis; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.ceiling(failures)) => {}
                    }
                    failures = failures.saturating_add(1);
                }
            }
        };
        for ((_, jobs), owned) in groups.iter().zip(replies.into_iter().map(|r| r == 1)) {
            // A group's dispatches are in order; usually they are one session's, but after a
            // Resume on this same node the replaced session's queued writes share its id.
            // Each session hears once, with its last (highest) seq of the group.
            let mut told: Vec<&Weak<dyn Durable>> = Vec::with_capacity(1);
            for &i in jobs.iter().rev() {
                let GwJob::Dispatch { seq, session, .. } = &batch[i] else {
                    continue;
                };
                if told.iter().any(|t| Weak::ptr_eq(t, session)) {
                    continue;
                }
                told.push(session);
                if let Some(s) = session.upgrade() {
                    if owned {
                        s.persisted(*seq);
                    } else {
                        s.lost();
                    }
                }
            }
        }
        release(&queued, &batch);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_deleted_id_is_read_from_both_reply_shapes() {
        let resp2 = redis::Value::Array(vec![
            redis::Value::BulkString(b"length".to_vec()),
            redis::Value::Int(3),
            redis::Value::BulkString(b"max-deleted-entry-id".to_vec()),
            redis::Value::BulkString(b"5-1".to_vec()),
        ]);
        assert_eq!(max_deleted(&resp2), Some(StreamId { ms: 5, seq: 1 }));
        let resp3 = redis::Value::Map(vec![(
            redis::Value::SimpleString("max-deleted-entry-id".into()),
            redis::Value::BulkString(b"0-0".to_vec()),
        )]);
        assert_eq!(max_deleted(&resp3), Some(StreamId::default()));
        assert_eq!(max_deleted(&redis::Value::Nil), None);
        assert_eq!(token_hash("a").len(), 64);
    }

    fn dispatch(sid: &str, text: &str) -> GwJob {
        let session: Weak<dyn Durable> = Weak::<Never>::new();
        GwJob::Dispatch {
            sid: sid.into(),
            seq: 1,
            gid: StreamId::default(),
            text: Arc::from(text),
            session,
        }
    }

    struct Never;
    impl Durable for Never {
        fn persisted(&self, _seq: u64) {}
        fn lost(&self) {}
    }

    #[test]
    fn the_writer_queue_refuses_dispatches_and_touches_over_its_byte_bound_and_frees_what_was_written(
    ) {
        let one = dispatch("s", &"x".repeat(1000)).cost();
        let (q, mut rx) = Queue::new(3 * one);
        for _ in 0..3 {
            assert!(q.send(dispatch("s", &"x".repeat(1000))));
        }
        assert!(!q.send(dispatch("s", &"x".repeat(1000))), "over the bound");
        assert!(
            !q.send(GwJob::Touch { sid: "s".into() }),
            "a touch is dropped"
        );
        assert!(
            q.send(GwJob::Meta {
                sid: "n".into(),
                token_hash: token_hash("t"),
                intents: 1,
                shard: [0, 1],
            }),
            "a new session's metadata is always queued"
        );
        assert_eq!(rx.len(), 4);
        // The writer took a batch and wrote it: what it held is free again.
        let batch = vec![
            rx.try_recv().expect("queued"),
            rx.try_recv().expect("queued"),
        ];
        release(&q.queued, &batch);
        assert!(q.send(dispatch("s", &"x".repeat(1000))));
        // A stopped writer takes nothing, and counts nothing.
        drop(rx);
        let before = q.queued.load(Ordering::Acquire);
        assert!(!q.send(GwJob::Touch { sid: "s".into() }));
        assert_eq!(q.queued.load(Ordering::Acquire), before);
    }
}
