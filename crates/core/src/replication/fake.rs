//! [`Fake`]: an in-memory stand-in for a shared replication (Redis, without a server), for
//! tests of the room actor. It keeps a room's state, order and log like Redis does, but
//! orders nothing by itself: a test takes the proposals ([`Fake::proposals`]), orders them
//! in the order it likes ([`Fake::order`]) and delivers the results in the order (and with
//! the gaps and duplicates) it likes ([`Fake::deliver`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_util::future::BoxFuture;
use nimbus_proto::cloud::CloudValue;

use super::{
    Change, CloudReplication, Committed, Feed, OrderedChange, OrderedOp, Proposal,
    ReplicationError, RoomState, RoomView,
};
use crate::events::RoomEvent;
use crate::store::StoredVar;

/// A change proposed to the fake, waiting for the test to order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proposed {
    pub(crate) change: Change,
    pub(crate) from: u64,
}

#[derive(Debug, Default)]
struct State {
    epoch: Arc<str>,
    seq: u64,
    next_pos: i64,
    /// Variables in insertion order.
    vars: Vec<StoredVar>,
    /// The order's log; entries before a trim are gone.
    log: Vec<OrderedChange>,
    proposals: Vec<Proposed>,
    feed: Option<Weak<dyn Feed>>,
    /// How often the room asked for a fill and for a load.
    fills: usize,
    loads: usize,
}

/// One room's replication, in memory (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Fake {
    state: Mutex<State>,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fake whose room starts in `epoch` at `seq` with `vars`.
    pub(crate) fn with_state(epoch: &str, seq: u64, vars: &[(&str, &str)]) -> Fake {
        let fake = Fake::default();
        fake.reset(epoch, seq, vars);
        fake
    }

    /// The order restarts (as when Redis lost the room): a new epoch, this state, an
    /// empty log.
    pub(crate) fn reset(&self, epoch: &str, seq: u64, vars: &[(&str, &str)]) {
        let mut s = self.lock();
        s.epoch = Arc::from(epoch);
        s.seq = seq;
        s.log.clear();
        s.vars = vars
            .iter()
            .zip(0..)
            .map(|((n, v), pos)| StoredVar {
                name: Arc::from(*n),
                value: CloudValue::Number((*v).to_owned()),
                pos,
            })
            .collect();
        s.next_pos = i64::try_from(vars.len()).unwrap_or(i64::MAX);
    }

    /// The changes proposed so far (taken).
    pub(crate) fn proposals(&self) -> Vec<Proposed> {
        std::mem::take(&mut self.lock().proposals)
    }

    /// (fills, loads) the room asked for since it was created.
    pub(crate) fn asked(&self) -> (usize, usize) {
        let s = self.lock();
        (s.fills, s.loads)
    }

    /// Drop the log's entries before `seq` (as `MAXLEN` trims a stream).
    pub(crate) fn trim_before(&self, seq: u64) {
        self.lock().log.retain(|c| c.seq >= seq);
    }

    /// Order `change` of connection `from` (a set only: what these tests need): the next
    /// sequence number, the state and the log change. Returns it for [`Fake::deliver`].
    pub(crate) fn order(&self, room: &str, change: Change, from: u64) -> OrderedChange {
        let mut s = self.lock();
        let Change::Set { name, value } = change else {
            panic!("the fake orders sets only");
        };
        let (pos, created) = match s.vars.iter_mut().find(|v| v.name == name) {
            Some(v) => {
                v.value = value.clone();
                (v.pos, false)
            }
            None => {
                let pos = s.next_pos;
                s.next_pos += 1;
                s.vars.push(StoredVar {
                    name: name.clone(),
                    value: value.clone(),
                    pos,
                });
                (pos, true)
            }
        };
        s.seq += 1;
        let ordered = OrderedChange {
            room: Arc::from(room),
            epoch: s.epoch.clone(),
            seq: s.seq,
            op: OrderedOp::Set { name, value, pos },
            local_conn: Some(from),
            created,
            user: None,
            ts: 0,
        };
        s.log.push(ordered.clone());
        ordered
    }

    /// Deliver `change` to the subscribed feed (as the subscription would).
    pub(crate) async fn deliver(&self, change: OrderedChange) {
        let feed = self.lock().feed.as_ref().and_then(Weak::upgrade);
        if let Some(feed) = feed {
            feed.changed(change).await;
        }
    }
}

impl CloudReplication for Fake {
    fn load<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Result<RoomState, ReplicationError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.loads += 1;
            Ok(RoomState {
                epoch: s.epoch.clone(),
                seq: s.seq,
                vars: s.vars.clone(),
            })
        })
    }

    fn changes_since<'a>(
        &'a self,
        _room: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Vec<OrderedChange>, ReplicationError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.fills += 1;
            Ok(s.log.iter().filter(|c| c.seq >= from).cloned().collect())
        })
    }

    fn commit<'a>(&'a self, _view: &'a dyn RoomView, p: Proposal) -> BoxFuture<'a, Committed> {
        Box::pin(async move {
            self.lock().proposals.push(Proposed {
                change: p.change,
                from: p.from,
            });
            p.reply.accepted();
            Committed::Later
        })
    }

    fn can_commit(&self) -> bool {
        true
    }

    fn presence(&self, _event: &dyn Fn() -> RoomEvent) {}

    fn unavailable_reason(&self) -> &'static str {
        "fake unavailable"
    }

    fn subscribe(&self, feed: Weak<dyn Feed>) {
        self.lock().feed = Some(feed);
    }
}
