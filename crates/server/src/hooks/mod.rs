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
    debounce: Mutex<Debounce>,
    wake: Notify,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Debounce {
    debouncer: Debouncer,
    /// Rooms evicted from the debouncer at its bound: emitted at once.
    urgent: Vec<String>,
}

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
            debounce: Mutex::new(Debounce {
                debouncer: Debouncer::new(
                    config.doc_interval,
                    nimbus_webhook::debounce::DEFAULT_MAX_ROOMS,
                ),
                urgent: Vec::new(),
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
                    d.urgent.push(evicted);
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
        match self.leader.take_handover() {
            Some(from) => {
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
            }
            None => self.publish(ev),
        }
        drop(buffered);
        if let Some(gid) = ev.gid {
            self.leader.progress(gid);
        }
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
        });
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
            rooms
        };
        for room in due {
            h.doc_changed(&docs, &room).await;
        }
    }
}
