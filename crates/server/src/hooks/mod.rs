//! Webhooks in the server: room events from the [`EventBus`] to `nimbus-webhook`
//! (`docs/integrations.md`, Webhooks; the delivery contract is `docs/webhooks.md`).
//!
//! - Every cloud event (`CLOUD_CREATE/SET/RENAME/DELETE`), `ROOM_JOIN` and `ROOM_LEAVE` is
//!   handed to [`Webhooks::publish`] with the body [`RoomEvent::to_json`] builds (the
//!   gateway's `d`) and its kind's name. The listener runs inside room actors and the
//!   backplane's subscription: it only asks [`Webhooks::wants`] and queues (never blocks).
//! - `DOC_UPDATE`s are not forwarded: they touch a [`Debouncer`], and a task emits one
//!   `DOC_CHANGED` per room per interval with `{room, state_vector}` (base64 of the
//!   room's Yjs v1 state vector) and, with `--webhook-doc-snapshot`, `doc` (the document
//!   as JSON).
//! - Ids: with `--redis` an event's global id (`evt_<gid>`, the same on every node); on a
//!   single node a per-boot random prefix and a counter (`evt_<prefix>_<n>`).
//! - Once per cluster: only the holder of the [`Leadership`] publishes. With `--redis`
//!   every node keeps its recent events (up to [`REPLAY_EVENTS`]); a node that takes the
//!   lease over replays those after its predecessor's recorded progress.

pub mod settings;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use nimbus_core::events::{EventBody, EventBus, RoomEvent};
use nimbus_core::lease::Leadership;
use nimbus_proto::backplane::StreamId;
use nimbus_webhook::{Debouncer, Event, StartError, WebhookMetrics, Webhooks};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::doc::DocRooms;
pub use settings::{EndpointSpec, HookSettings, HooksConfig};

/// Events kept for a replay after a lease takeover (`--redis`).
pub const REPLAY_EVENTS: usize = 10_000;
/// Kind of the debounced document event.
pub const DOC_CHANGED: &str = "DOC_CHANGED";

/// The server's webhooks: the bus listener, the `DOC_CHANGED` task and the sender.
#[derive(Debug)]
pub struct Hooks {
    webhooks: Webhooks,
    leader: Arc<dyn Leadership>,
    config: HooksConfig,
    /// Per-boot id prefix (single node).
    prefix: String,
    counter: AtomicU64,
    /// With a shared leadership: the recent events every node keeps for a takeover.
    replay: Option<Mutex<VecDeque<RoomEvent>>>,
    /// The global id of the last event this node published (with a shared leadership).
    last_published: Mutex<Option<StreamId>>,
    debounce: Mutex<Debounce>,
    wake: Notify,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Debounce {
    debouncer: Debouncer,
    /// Rooms evicted from the debouncer at its bound: emitted at once (each once, at most
    /// [`MAX_URGENT`]).
    urgent: Vec<String>,
    /// Evicted rooms not emitted because `urgent` was full (logged by the task).
    dropped: u64,
}

/// Evicted rooms waiting to be emitted at once; beyond, an eviction's `DOC_CHANGED` is
/// dropped (an overload of over 10,000 distinct rooms changing within one interval while
/// the task cannot keep up).
const MAX_URGENT: usize = 10_000;

impl Hooks {
    /// Start the endpoints' senders, listen on `events`, and run the `DOC_CHANGED` task
    /// over `docs`. `shared`: the leadership is shared by several nodes (keep events for
    /// a replay after a takeover).
    pub fn start(
        config: HooksConfig,
        metrics: &WebhookMetrics,
        events: &EventBus,
        leader: Arc<dyn Leadership>,
        shared: bool,
        docs: Arc<DocRooms>,
    ) -> Result<Arc<Hooks>, StartError> {
        let webhooks = Webhooks::start(config.endpoints.clone(), metrics)?;
        let hooks = Arc::new(Hooks {
            webhooks,
            leader,
            prefix: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            counter: AtomicU64::new(0),
            replay: shared.then(|| Mutex::new(VecDeque::new())),
            last_published: Mutex::new(None),
            debounce: Mutex::new(Debounce {
                debouncer: Debouncer::new(
                    config.doc_interval,
                    nimbus_webhook::debounce::DEFAULT_MAX_ROOMS,
                ),
                urgent: Vec::new(),
                dropped: 0,
            }),
            config,
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        let weak: Weak<Hooks> = Arc::downgrade(&hooks);
        events.subscribe(Arc::new(move |ev: &RoomEvent| {
            if let Some(h) = weak.upgrade() {
                h.on_event(ev);
            }
        }));
        tokio::spawn(doc_changes(hooks.clone(), docs, hooks.stop.clone()));
        if shared {
            tokio::spawn(progress_ticks(Arc::downgrade(&hooks), hooks.stop.clone()));
        }
        Ok(hooks)
    }

    fn next_local_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("evt_{}_{n}", self.prefix)
    }

    /// The bus listener (in a room actor or the subscription: never blocks).
    fn on_event(&self, ev: &RoomEvent) {
        let kind = ev.kind().name();
        if matches!(ev.body, EventBody::DocUpdate { .. }) {
            if self.webhooks.wants(DOC_CHANGED, &ev.room) && self.leader.is_leader() {
                let mut d = self.debounce.lock().unwrap_or_else(PoisonError::into_inner);
                // Wake the task for a new first deadline, or for a room the bound evicted
                // (it goes out at once).
                let mut wake = d.debouncer.is_empty();
                if let Some(evicted) = d.debouncer.touch(&ev.room, Instant::now()) {
                    if d.urgent.len() < MAX_URGENT {
                        d.urgent.push(evicted);
                    } else {
                        d.dropped += 1;
                    }
                    wake = true;
                }
                drop(d);
                if wake {
                    self.wake.notify_one();
                }
            }
            return;
        }
        if !self.webhooks.wants(kind, &ev.room) {
            return;
        }
        let Some(replay) = &self.replay else {
            if self.leader.is_leader() {
                self.publish(ev);
            }
            return;
        };
        // Shared: keep the event for a takeover, whoever leads now.
        let mut buffered = replay.lock().unwrap_or_else(PoisonError::into_inner);
        if buffered.len() >= REPLAY_EVENTS {
            buffered.pop_front();
        }
        buffered.push_back(ev.clone());
        if !self.leader.is_leader() {
            return;
        }
        if !self.replay_handover(&buffered) {
            self.publish(ev);
        }
        drop(buffered);
        self.record_progress();
    }

    /// Once after this node took the lease over: publish every kept event after the
    /// previous holder's progress (`buffered` is the locked replay buffer). Called at each
    /// event and on the progress tick, so the replay does not wait for a next event.
    /// Returns whether it replayed (the newest kept event included).
    fn replay_handover(&self, buffered: &VecDeque<RoomEvent>) -> bool {
        let Some(from) = self.leader.take_handover() else {
            return false;
        };
        let again: Vec<&RoomEvent> = buffered
            .iter()
            .filter(|e| e.gid.is_none_or(|g| g > from))
            .collect();
        tracing::info!(
            events = again.len(),
            after = %from,
            "webhooks: lease taken over, replaying the events after the previous holder's progress"
        );
        for e in again {
            self.publish(e);
        }
        true
    }

    /// The progress tick (with a shared leadership): a pending handover replay, then the
    /// settled progress.
    fn tick(&self) {
        if !self.leader.is_leader() {
            return;
        }
        if let Some(replay) = &self.replay {
            let buffered = replay.lock().unwrap_or_else(PoisonError::into_inner);
            self.replay_handover(&buffered);
        }
        self.record_progress();
    }

    /// Record (for the next holder of the lease) how far every event is settled: up to
    /// just before the oldest event still queued for an endpoint, or the last one
    /// published when none is. An event queued but not yet delivered when this node dies
    /// is therefore replayed by the next holder, not lost.
    fn record_progress(&self) {
        let Some(last) = *self
            .last_published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        else {
            return;
        };
        let settled = match self.webhooks.oldest_pending() {
            Some(order) => just_before(gid_of_order(order)).min(last),
            None => last,
        };
        self.leader.progress(settled);
    }

    fn publish(&self, ev: &RoomEvent) {
        let id = match ev.gid {
            Some(gid) => format!("evt_{gid}"),
            None => self.next_local_id(),
        };
        self.webhooks.publish(Event {
            id,
            room: ev.room.to_string(),
            kind: ev.kind().name(),
            body: Bytes::from(ev.to_json()),
            at: SystemTime::now(),
            order: ev.gid.map(order_of_gid),
        });
        if let Some(gid) = ev.gid {
            let mut last = self
                .last_published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *last = Some(last.map_or(gid, |l| l.max(gid)));
        }
    }

    /// Build and publish one room's `DOC_CHANGED`.
    async fn doc_changed(&self, docs: &DocRooms, room: &str) {
        let sv = match docs.state_vector(room).await {
            Ok(sv) => sv.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%room, error = %e, "webhooks: DOC_CHANGED without a state vector");
                Vec::new()
            }
        };
        let mut body = serde_json::json!({
            "room": room,
            "state_vector": base64::engine::general_purpose::STANDARD.encode(sv),
        });
        if self.config.doc_snapshot {
            body["doc"] = match docs.to_json(room).await {
                Ok(doc) => doc.unwrap_or(serde_json::Value::Null),
                Err(_) => serde_json::Value::Null,
            };
        }
        self.webhooks.publish(Event {
            id: self.next_local_id(),
            room: room.to_owned(),
            kind: DOC_CHANGED,
            body: Bytes::from(body.to_string()),
            at: SystemTime::now(),
            order: None,
        });
    }

    /// Stop taking events, deliver what is queued until `deadline`, log what is left.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        self.stop.cancel();
        let report = self.webhooks.shutdown(deadline).await;
        if report.undelivered > 0 {
            tracing::warn!(
                events = report.undelivered,
                "shutdown: webhook events undelivered at the deadline (dropped)"
            );
        } else {
            tracing::info!("shutdown: every webhook event delivered");
        }
        self.leader.release().await;
        report.undelivered
    }
}

/// How often the holder of the lease records its settled progress while no event comes
/// (deliveries completing move it too; the lease shares it at each renewal) and looks for a
/// handover to replay.
const PROGRESS_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs [`Hooks::tick`] every [`PROGRESS_TICK`] (with a shared leadership).
async fn progress_ticks(h: Weak<Hooks>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(h) = h.upgrade() else { return };
        h.tick();
    }
}

/// A global id as a webhook event's order (increasing with the id).
fn order_of_gid(gid: StreamId) -> u128 {
    (u128::from(gid.ms) << 64) | u128::from(gid.seq)
}

fn gid_of_order(order: u128) -> StreamId {
    StreamId {
        ms: (order >> 64) as u64,
        seq: order as u64,
    }
}

/// The greatest global id below `gid` (the replay after a takeover starts above it).
fn just_before(gid: StreamId) -> StreamId {
    match (gid.ms, gid.seq) {
        (_, 0) if gid.ms > 0 => StreamId {
            ms: gid.ms - 1,
            seq: u64::MAX,
        },
        (_, 0) => StreamId::default(),
        (ms, seq) => StreamId { ms, seq: seq - 1 },
    }
}

/// The `DOC_CHANGED` task: sleeps until the debouncer's next room falls due (or an
/// evicted room waits), then emits those rooms.
async fn doc_changes(h: Arc<Hooks>, docs: Arc<DocRooms>, stop: CancellationToken) {
    loop {
        let (next, urgent) = {
            let d = h.debounce.lock().unwrap_or_else(PoisonError::into_inner);
            (d.debouncer.next_due(), !d.urgent.is_empty())
        };
        if !urgent {
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            // A touch between the read above and this wait leaves a permit: not missed.
            tokio::select! {
                () = stop.cancelled() => return,
                () = h.wake.notified() => continue,
                () = sleep => {}
            }
        }
        let due = {
            let mut d = h.debounce.lock().unwrap_or_else(PoisonError::into_inner);
            let mut rooms = std::mem::take(&mut d.urgent);
            rooms.extend(d.debouncer.due(Instant::now()));
            let dropped = std::mem::take(&mut d.dropped);
            if dropped > 0 {
                tracing::warn!(
                    rooms = dropped,
                    "webhooks: DOC_CHANGED of evicted rooms dropped (over {MAX_URGENT} waiting)"
                );
            }
            rooms
        };
        for room in due {
            h.doc_changed(&docs, &room).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn orders_follow_the_global_ids_and_map_back() {
        let ids = [id(0, 0), id(0, 7), id(1, 0), id(1, u64::MAX), id(2, 3)];
        for w in ids.windows(2) {
            assert!(order_of_gid(w[0]) < order_of_gid(w[1]));
        }
        for gid in ids {
            assert_eq!(gid_of_order(order_of_gid(gid)), gid);
        }
    }

    #[test]
    fn just_before_is_the_greatest_id_below_so_a_replay_above_it_starts_at_the_id() {
        assert_eq!(just_before(id(5, 3)), id(5, 2));
        assert_eq!(just_before(id(5, 0)), id(4, u64::MAX));
        assert_eq!(just_before(id(0, 0)), id(0, 0));
        for gid in [id(5, 3), id(5, 0), id(1, 1)] {
            let from = just_before(gid);
            assert!(gid > from, "the replay filter `g > from` keeps {gid}");
        }
    }
}
