//! [`InProcess`]: the replication of a single node. The room is the authority; its
//! changes go to the local store.

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use nimbus_proto::cloud::validate_name;

use super::{
    Change, CloudReplication, Committed, Feed, OrderedChange, OrderedOp, Proposal, Refusal,
    ReplicationError, RoomState, RoomView,
};
use crate::cloud::metrics::CloudMetrics;
use crate::events::{EventBody, EventBus, RoomEvent};
use crate::store::metrics::StoreMetrics;
use crate::store::{Store, StoreOp, StoredVar, STORE_UNAVAILABLE};

/// One node, no sharing: a change is checked against the room's own state, takes the
/// room's next offset at once (epoch ""), goes to the store's pending batch and is
/// published on the event bus.
#[derive(Debug, Clone)]
pub struct InProcess {
    store: Store,
    events: Arc<EventBus>,
    cloud_metrics: Arc<CloudMetrics>,
    store_metrics: Arc<StoreMetrics>,
    max_name_len: usize,
}

impl InProcess {
    /// Rooms kept in `store`, events published on `events`; `max_name_len` checks the
    /// new name of a rename. Refusals count in the cloud's and the store's metrics.
    pub fn new(
        store: Store,
        events: Arc<EventBus>,
        (cloud_metrics, store_metrics): (Arc<CloudMetrics>, Arc<StoreMetrics>),
        max_name_len: usize,
    ) -> InProcess {
        InProcess {
            store,
            events,
            cloud_metrics,
            store_metrics,
            max_name_len,
        }
    }

    fn publish(&self, p: &Proposal, body: impl FnOnce() -> EventBody) {
        if self.events.is_active() {
            self.events.publish(&RoomEvent {
                room: p.room.clone(),
                user: p.user.clone(),
                body: body(),
                gid: None,
            });
        }
    }

    /// Decide `p` against `view`; the store gets the change when it is ordered.
    fn order(&self, view: &dyn RoomView, p: &Proposal) -> Result<OrderedChange, Refusal> {
        let seq = view.seq() + 1;
        let ordered = |op, created| OrderedChange {
            room: p.room.clone(),
            epoch: Arc::from(""),
            seq,
            op,
            local_conn: Some(p.from),
            created,
            user: p.user.clone(),
            ts: 0,
        };
        match &p.change {
            Change::Set { name, value } => {
                let (name, pos, created) = match view.var(name) {
                    Some((name, _, pos)) => (name, pos, false),
                    None => {
                        if view.count() >= p.max_vars {
                            self.cloud_metrics.dropped_set("too_many_variables");
                            tracing::debug!(room = %p.room, %name, "set dropped: variable limit reached");
                            return Err(Refusal::Rules);
                        }
                        (name.clone(), view.next_pos(), true)
                    }
                };
                self.publish(p, || {
                    let (name, value) = (name.clone(), value.clone());
                    if created {
                        EventBody::CloudCreate { name, value }
                    } else {
                        EventBody::CloudSet { name, value }
                    }
                });
                self.store.apply(StoreOp::Put {
                    room: p.room.clone(),
                    var: StoredVar {
                        name: name.clone(),
                        value: value.clone(),
                        pos,
                    },
                });
                let value = value.clone();
                Ok(ordered(OrderedOp::Set { name, value, pos }, created))
            }
            Change::Rename { name, new_name } => {
                if view.var(new_name).is_some()
                    || validate_name(new_name, self.max_name_len).is_err()
                {
                    return Err(Refusal::Rules);
                }
                let Some((name, value, _)) = view.var(name) else {
                    return Err(Refusal::Rules);
                };
                let new_name: Arc<str> = Arc::from(new_name.as_str());
                let value = value.clone();
                self.publish(p, || EventBody::CloudRename {
                    name: name.clone(),
                    new_name: new_name.clone(),
                    value: Some(value.clone()),
                });
                self.store.apply(StoreOp::Rename {
                    room: p.room.clone(),
                    name: name.clone(),
                    new_name: new_name.clone(),
                });
                let value = Some(value);
                Ok(ordered(
                    OrderedOp::Rename {
                        name,
                        new_name,
                        value,
                    },
                    false,
                ))
            }
            Change::Delete { name } => {
                let Some((name, value, _)) = view.var(name) else {
                    return Err(Refusal::Rules);
                };
                let value = Some(value.clone());
                self.publish(p, || EventBody::CloudDelete {
                    name: name.clone(),
                    value: value.clone(),
                });
                self.store.apply(StoreOp::Delete {
                    room: p.room.clone(),
                    name: name.clone(),
                });
                Ok(ordered(OrderedOp::Delete { name, value }, false))
            }
        }
    }
}

impl CloudReplication for InProcess {
    fn load<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<RoomState, ReplicationError>> {
        Box::pin(async move {
            let vars = self.store.load(room).await?;
            Ok(RoomState {
                epoch: Arc::from(""),
                seq: 0,
                vars,
            })
        })
    }

    /// The room is the authority: it never misses a change, so there is nothing to fill.
    fn changes_since<'a>(
        &'a self,
        _room: &'a str,
        _from: u64,
    ) -> BoxFuture<'a, Result<Vec<OrderedChange>, ReplicationError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// While the store cannot write, a change is refused instead of being fanned out as if
    /// it were durable (`docs/security.md`, "Store failures"): a client sender is closed
    /// with 1011 "store unavailable" and reconnects with its backoff; a change from the
    /// HTTP/IPC API is dropped (the hub answers those callers first). Changes accepted
    /// before the failure stay in the store's retried batch.
    fn commit<'a>(&'a self, view: &'a dyn RoomView, p: Proposal) -> BoxFuture<'a, Committed> {
        Box::pin(async move {
            if !self.store.can_write() {
                self.store_metrics.refused("cloud");
                if let (super::Reply::Sender(Some(_)), Some(user)) = (&p.reply, &p.user) {
                    tracing::info!(room = %p.room, conn = p.from, %user, "change refused: the store cannot write; closing the sender (1011)");
                }
                p.reply.unavailable();
                return Committed::Refused(Refusal::Unavailable);
            }
            match self.order(view, &p) {
                Ok(change) => {
                    p.reply.accepted();
                    Committed::Now(change)
                }
                Err(refusal) => {
                    p.reply.refused();
                    Committed::Refused(refusal)
                }
            }
        })
    }

    fn can_commit(&self) -> bool {
        self.store.can_write()
    }

    fn presence(&self, event: &dyn Fn() -> RoomEvent) {
        if self.events.is_active() {
            self.events.publish(&event());
        }
    }

    fn unavailable_reason(&self) -> &'static str {
        STORE_UNAVAILABLE
    }

    fn subscribe(&self, _feed: Weak<dyn Feed>) {}
}
