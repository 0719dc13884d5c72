//! The room actor: one task owns a room's variables and subscribers.
//!
//! Every change to a room goes through its command channel and then through the room's
//! [`CloudReplication`], which puts it in the room's order; the room applies ordered
//! changes (its own and those made elsewhere) on one path, in sequence order
//! (`replication::Follower`), so every change gets the next [`Room::offset`] and nothing on the hot
//! path takes a lock shared with other rooms.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_proto::cloud::{encode_set, CloseCode, CloudValue};
use tokio::sync::{mpsc, oneshot};

use crate::cloud::metrics::CloudMetrics;
use crate::cloud::settings::CloudLimits;
use crate::events::{EventBody, RoomEvent};
use crate::outbox::{Line, Outbox, Pushed, Released};
use crate::replication::{
    Change, CloudReplication, Committed, Follower, OrderedChange, OrderedOp, Proposal,
    ReplicationMetrics, Reply, RoomState, RoomView, Step,
};

/// A connection as a room sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Connection id (unique per server).
    pub id: u64,
    /// Username from the handshake.
    pub user: String,
    /// Its send queue.
    pub outbox: Arc<Outbox>,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The room has `max_clients_per_room` clients (4003).
    RoomFull,
    /// The server has `max_rooms` rooms loaded (4003).
    TooManyRooms,
    /// Another client of the room uses this name (4002, when usernames are unique).
    UsernameTaken,
    /// The room's state could not be loaded (1011).
    Unavailable,
    /// The room was unloading; join again.
    Retry,
}

/// A command to a room actor.
#[derive(Debug)]
pub enum RoomCmd {
    /// Add a subscriber; its outbox first receives the join frame.
    Join {
        /// The connection.
        sub: Subscriber,
        /// Result.
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Remove a subscriber.
    Leave {
        /// Connection id.
        id: u64,
    },
    /// Set (or create) a variable. Name and value are already validated.
    Set {
        /// Sender's connection id (not echoed to it).
        from: u64,
        /// Variable name.
        name: String,
        /// New value.
        value: CloudValue,
    },
    /// Set (or create) a variable as the server and hear how it ended: `true` once
    /// ordered, `false` when the room's rules refuse it (the variable limit); the reply is
    /// dropped when the replication cannot keep it now. Name and value are already
    /// validated.
    Put {
        /// Variable name.
        name: String,
        /// New value.
        value: CloudValue,
        /// Result.
        reply: oneshot::Sender<bool>,
    },
    /// Rename a variable; replies `false` when `name` is unknown or `new_name` taken.
    Rename {
        /// Sender's connection id ([`SERVER_SENDER`] for the API/IPC).
        from: u64,
        /// Current name.
        name: String,
        /// New name (already validated).
        new_name: String,
        /// Result.
        reply: oneshot::Sender<bool>,
    },
    /// Delete a variable; replies `false` when unknown.
    Delete {
        /// Sender's connection id ([`SERVER_SENDER`] for the API/IPC).
        from: u64,
        /// Name.
        name: String,
        /// Result.
        reply: oneshot::Sender<bool>,
    },
    /// Close every subscriber with this username (case-insensitive) with 4002.
    Kick {
        /// Username.
        user: String,
        /// How many were closed.
        reply: oneshot::Sender<usize>,
    },
    /// Current variables in insertion order.
    Snapshot {
        /// Result.
        reply: oneshot::Sender<Vec<(Arc<str>, CloudValue)>>,
    },
    /// A change ordered elsewhere (delivered by the replication's subscription),
    /// applied in sequence order.
    Replicated(Box<OrderedChange>),
    /// Catch up with the replication (after its subscription was re-established).
    Resync,
}

struct Var {
    value: CloudValue,
    pos: i64,
}

/// The most subscribers one fan-out writes to directly (`outbox`'s direct writes); the rest
/// get the line queued and their connection tasks write it, so a large room's fan-out is
/// spread over the runtime's workers and the room's task makes a bounded number of system
/// calls per change.
pub const DIRECT_PER_FAN_OUT: usize = 128;

/// Held lines due this soon are released with those due now, so that the room's timer serves
/// several connections per wake-up (their budgets end at scattered instants).
pub const RELEASE_EARLY: std::time::Duration = std::time::Duration::from_micros(250);

/// The sender id of changes made by the server itself (no connection has id 0).
pub const SERVER_SENDER: u64 = 0;

/// What a room needs from whoever runs it: its limits, the replication that orders its
/// changes, and the metrics it counts in. The room holds no pointer back to its registry:
/// the task that runs it (`Hub`) unregisters it when `Room::serve` returns.
#[derive(Clone)]
pub struct RoomContext {
    /// Cloud limits and policies.
    pub limits: Arc<CloudLimits>,
    /// Orders the room's changes and keeps them (in process, or Redis).
    pub replication: Arc<dyn CloudReplication>,
    /// The cloud's metrics.
    pub metrics: Arc<CloudMetrics>,
    /// Catch-ups of an order kept elsewhere.
    pub replication_metrics: ReplicationMetrics,
}

/// Why `Room::serve` returned: the room is to be unregistered, then drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// Its state could not be loaded: joins racing in are refused as unavailable.
    LoadFailed,
    /// Idle (or every handle dropped): joins racing in retry on a fresh room.
    Idle,
}

/// A room's state, owned by its actor task.
pub struct Room {
    key: Arc<str>,
    metrics: Arc<CloudMetrics>,
    replication_metrics: ReplicationMetrics,
    limits: Arc<CloudLimits>,
    /// Orders the room's changes and keeps them (in process, or Redis).
    repl: Arc<dyn CloudReplication>,
    vars: HashMap<Arc<str>, Var>,
    /// Each variable's last fanned-out `set` line, shared by every queue that holds it, so a
    /// join costs the joiner references, not a copy of the room. Written by `fan_out`,
    /// removed with the variable's name; a missing line is encoded at the next join.
    lines: HashMap<Arc<str>, Line>,
    next_pos: i64,
    subs: Vec<Subscriber>,
    /// The room's place in its order (epoch, offset).
    follow: Follower,
    /// Outboxes holding lines for the room to release (`outbox`'s module doc), and the
    /// earliest instant one is due.
    held: Vec<Arc<Outbox>>,
    due: Option<tokio::time::Instant>,
    /// The buffer held lines are joined in.
    scratch: Vec<u8>,
}

impl RoomView for Room {
    fn seq(&self) -> u64 {
        self.follow.applied()
    }

    fn next_pos(&self) -> i64 {
        self.next_pos
    }

    fn count(&self) -> usize {
        self.vars.len()
    }

    fn var(&self, name: &str) -> Option<(Arc<str>, &CloudValue, i64)> {
        self.vars
            .get_key_value(name)
            .map(|(k, v)| (k.clone(), &v.value, v.pos))
    }
}

impl Room {
    /// A room `key` with no variables yet (it loads them when it starts serving).
    pub fn new(key: Arc<str>, ctx: RoomContext) -> Room {
        Room {
            key,
            metrics: ctx.metrics,
            replication_metrics: ctx.replication_metrics,
            limits: ctx.limits,
            repl: ctx.replication,
            vars: HashMap::new(),
            lines: HashMap::new(),
            next_pos: 0,
            subs: Vec::new(),
            follow: Follower::default(),
            held: Vec::new(),
            due: None,
            scratch: Vec::new(),
        }
    }

    /// Offset of the last accepted change (0 before any).
    pub fn offset(&self) -> u64 {
        self.follow.applied()
    }

    /// The actor: load, then serve commands until idle for `room_idle`. Returns why it
    /// stopped, with `rx` still open: the caller unregisters the room, then calls
    /// [`Room::drain`] (in that order, so a join that finds the closed room retries on a
    /// fresh one instead of spinning on this one).
    pub async fn serve(&mut self, rx: &mut mpsc::Receiver<RoomCmd>) -> Unload {
        match self.repl.load(&self.key).await {
            Ok(state) => {
                self.follow.reset(state.epoch, state.seq);
                for v in state.vars {
                    self.next_pos = self.next_pos.max(v.pos + 1);
                    self.vars.insert(
                        v.name,
                        Var {
                            value: v.value,
                            pos: v.pos,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::error!(room = %self.key, error = %e, "cannot load room");
                return Unload::LoadFailed;
            }
        }
        // When held lines are due (one timer, reset only when the earliest due moves).
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            if self.due != armed {
                if let Some(at) = self.due {
                    timer.as_mut().reset(at);
                }
                armed = self.due;
            }
            let cmd = if self.subs.is_empty() {
                tokio::select! {
                    cmd = rx.recv() => cmd,
                    () = tokio::time::sleep(self.limits.room_idle) => None,
                }
            } else {
                tokio::select! {
                    biased;
                    () = &mut timer, if armed.is_some() => {
                        armed = None;
                        self.release_held();
                        continue;
                    }
                    cmd = rx.recv() => cmd,
                }
            };
            match cmd {
                Some(cmd) => self.handle(cmd).await,
                None => return Unload::Idle,
            }
        }
    }

    /// After [`Room::serve`] and the unregistering: refuse the joins that raced in, handle
    /// every other command already queued.
    pub async fn drain(mut self, mut rx: mpsc::Receiver<RoomCmd>, why: Unload) {
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match (cmd, why) {
                (RoomCmd::Join { reply, .. }, Unload::LoadFailed) => {
                    let _ = reply.send(Err(JoinError::Unavailable));
                }
                (RoomCmd::Join { reply, .. }, Unload::Idle) => {
                    let _ = reply.send(Err(JoinError::Retry));
                }
                (_, Unload::LoadFailed) => {}
                (other, Unload::Idle) => self.handle(other).await,
            }
        }
        tracing::debug!(room = %self.key, "room unloaded");
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { sub, reply } => {
                let _ = reply.send(self.join(sub));
            }
            RoomCmd::Leave { id } => {
                if let Some(i) = self.subs.iter().position(|s| s.id == id) {
                    let sub = self.subs.remove(i);
                    self.emit_member(false, &sub);
                }
            }
            RoomCmd::Set { from, name, value } => {
                let outbox = self
                    .subs
                    .iter()
                    .find(|s| s.id == from)
                    .map(|s| s.outbox.clone());
                let name = match self.vars.get_key_value(name.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                self.commit(from, Change::Set { name, value }, Reply::Sender(outbox))
                    .await;
            }
            RoomCmd::Put { name, value, reply } => {
                let name = match self.vars.get_key_value(name.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                let change = Change::Set { name, value };
                self.commit(SERVER_SENDER, change, Reply::Accepted(reply))
                    .await;
            }
            RoomCmd::Rename {
                from,
                name,
                new_name,
                reply,
            } => {
                let change = Change::Rename { name, new_name };
                self.commit(from, change, Reply::Accepted(reply)).await;
            }
            RoomCmd::Delete { from, name, reply } => {
                self.commit(from, Change::Delete { name }, Reply::Accepted(reply))
                    .await;
            }
            RoomCmd::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            RoomCmd::Kick { user, reply } => self.kick(&user, reply),
            RoomCmd::Replicated(change) => self.on_ordered(*change).await,
            RoomCmd::Resync => self.catch_up().await,
        }
    }

    /// Propose a change; apply it at once when the replication ordered it now.
    async fn commit(&mut self, from: u64, change: Change, reply: Reply) {
        let proposal = Proposal {
            room: self.key.clone(),
            change,
            from,
            user: self.user_of(from),
            max_vars: self.limits.max_variables_per_room,
            reply,
        };
        let repl = self.repl.clone();
        if let Committed::Now(change) = repl.commit(&*self, proposal).await {
            self.on_ordered(change).await;
        }
    }

    /// An ordered change: apply it if it is the next one, else catch up.
    async fn on_ordered(&mut self, change: OrderedChange) {
        match self.follow.on_change(&change.epoch, change.seq) {
            Step::Apply => self.apply(change),
            Step::Ignore => {}
            Step::Fill => self.catch_up().await,
        }
    }

    /// Apply what the room missed: the replication's changes since the offset when they
    /// follow it, else its whole state.
    async fn catch_up(&mut self) {
        self.replication_metrics.resyncs.inc();
        let from = self.follow.applied() + 1;
        if let Ok(changes) = self.repl.changes_since(&self.key, from).await {
            let mut complete = !changes.is_empty();
            for change in changes {
                if !self.follow.on_filled(&change.epoch, change.seq) {
                    complete = false;
                    break;
                }
                self.apply(change);
            }
            if complete {
                return;
            }
        }
        match self.repl.load(&self.key).await {
            Ok(state) => self.reset_to(state),
            Err(error) => {
                tracing::warn!(room = %self.key, %error, "cannot catch up; will retry on the next change");
            }
        }
    }

    /// Apply one ordered change (the follower has counted it: it is the room's offset).
    fn apply(&mut self, change: OrderedChange) {
        let from = change.local_conn.unwrap_or(SERVER_SENDER);
        match change.op {
            OrderedOp::Set { name, value, pos } => {
                let key = match self.vars.get_key_value(&*name) {
                    Some((k, _)) => k.clone(),
                    None => name,
                };
                // The replication publishes the room event.
                self.fan_out(from, &key, &value);
                match self.vars.get_mut(&key) {
                    Some(v) => v.value = value,
                    None => {
                        self.next_pos = self.next_pos.max(pos + 1);
                        self.vars.insert(key, Var { value, pos });
                    }
                }
            }
            OrderedOp::Rename { name, new_name, .. } => {
                self.lines.remove(&*name);
                if let Some(var) = self.vars.remove(&*name) {
                    self.vars.insert(new_name, var);
                }
            }
            OrderedOp::Delete { name, .. } => {
                self.lines.remove(&*name);
                self.vars.remove(&*name);
            }
        }
    }

    fn kick(&mut self, user: &str, reply: oneshot::Sender<usize>) {
        let mut kicked = Vec::new();
        self.subs.retain(|s| {
            let hit = s.user.eq_ignore_ascii_case(user);
            if hit {
                s.outbox.close(CloseCode::Username);
                kicked.push(s.clone());
            }
            !hit
        });
        for sub in &kicked {
            self.emit_member(false, sub);
        }
        let _ = reply.send(kicked.len());
    }

    /// The username of connection `from` of this room (`None` for [`SERVER_SENDER`] or a
    /// connection that has left).
    fn user_of(&self, from: u64) -> Option<Arc<str>> {
        self.subs
            .iter()
            .find(|s| s.id == from)
            .map(|s| Arc::from(s.user.as_str()))
    }

    /// A client joined (`joined`) or left.
    fn emit_member(&self, joined: bool, sub: &Subscriber) {
        let conn = sub.id;
        let ev = || RoomEvent {
            room: self.key.clone(),
            user: Some(Arc::from(sub.user.as_str())),
            body: if joined {
                EventBody::Join { conn }
            } else {
                EventBody::Leave { conn }
            },
            gid: None,
        };
        // With Redis, presence joins the global order (the gateway of every node
        // dispatches it from the subscription).
        self.repl.presence(&ev);
    }

    fn snapshot(&self) -> Vec<(Arc<str>, CloudValue)> {
        let mut vars: Vec<_> = self.vars.iter().collect();
        vars.sort_by_key(|(_, v)| v.pos);
        vars.into_iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    fn join(&mut self, sub: Subscriber) -> Result<(), JoinError> {
        if self.subs.len() >= self.limits.max_clients_per_room {
            return Err(JoinError::RoomFull);
        }
        if self.limits.unique_usernames
            && self
                .subs
                .iter()
                .any(|s| s.user.eq_ignore_ascii_case(&sub.user))
        {
            return Err(JoinError::UsernameTaken);
        }
        let snapshot = self.snapshot();
        if snapshot.is_empty() {
            if self.limits.empty_join_frame {
                sub.outbox
                    .push(None, &Line::from_static("\n"), usize::MAX, usize::MAX);
            }
        } else {
            let lines = &mut self.lines;
            let items: Vec<(Arc<str>, Line)> = snapshot
                .into_iter()
                .map(|(name, value)| {
                    let line = lines
                        .entry(name.clone())
                        .or_insert_with(|| Line::from(encode_set(&name, &value)))
                        .clone();
                    (name, line)
                })
                .collect();
            // The connection sends these in frames of bounded size.
            sub.outbox.push_join(items);
        }
        self.emit_member(true, &sub);
        self.subs.push(sub);
        Ok(())
    }

    /// Write the held lines that are due (or nearly: [`RELEASE_EARLY`]) and note when the
    /// next are.
    fn release_held(&mut self) {
        let now = (tokio::time::Instant::now(), RELEASE_EARLY);
        let mut next: Option<tokio::time::Instant> = None;
        let mut written = 0;
        let scratch = &mut self.scratch;
        self.held.retain(|outbox| {
            match outbox.release(now, scratch, written < DIRECT_PER_FAN_OUT) {
                Released::Written => written += 1,
                Released::Later(at) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    return true;
                }
                Released::Nothing | Released::Handed => {}
            }
            false
        });
        if scratch.capacity() > 4 * crate::outbox::FRAME_CHUNK {
            *scratch = Vec::new();
        }
        self.metrics.direct_writes.inc_by(written as u64);
        self.due = next;
    }

    /// Queue `key = value` to every subscriber but `from`; cut those that stay full.
    fn fan_out(&mut self, from: u64, key: &Arc<str>, value: &CloudValue) {
        let line = Line::from(encode_set(key, value));
        self.lines.insert(key.clone(), line.clone());
        let (cap, coalesce) = (self.limits.outbox_capacity, self.limits.coalesce_after);
        let metrics = &self.metrics;
        // Ids of subscribers cut in this fan-out (rare; no allocation unless it happens).
        let mut cut: Vec<u64> = Vec::new();
        let mut delivered = 0u64;
        let mut direct = 0usize;
        for s in self.subs.iter().filter(|s| s.id != from) {
            let may_write = direct < DIRECT_PER_FAN_OUT;
            match s.outbox.offer(Some(key), &line, cap, coalesce, may_write) {
                Pushed::Queued => delivered += 1,
                Pushed::Written => {
                    delivered += 1;
                    direct += 1;
                }
                Pushed::Held(at) => {
                    delivered += 1;
                    self.held.push(s.outbox.clone());
                    self.due = Some(self.due.map_or(at, |d| d.min(at)));
                }
                Pushed::Replaced => {
                    delivered += 1;
                    metrics.coalesced.inc();
                }
                Pushed::Overflow => {
                    cut.push(s.id);
                    metrics.slow_consumers.inc();
                    tracing::info!(room = %self.key, conn = s.id, user = %s.user, "slow consumer cut (1008)");
                }
                Pushed::Closed => {}
            }
        }
        metrics.deliveries.inc_by(delivered);
        if direct > 0 {
            metrics.direct_writes.inc_by(direct as u64);
        }
        if !cut.is_empty() {
            let mut gone = Vec::new();
            self.subs.retain(|s| {
                let keep = !cut.contains(&s.id);
                if !keep {
                    gone.push(s.clone());
                }
                keep
            });
            for sub in &gone {
                self.emit_member(false, sub);
            }
        }
    }

    /// Replace the room's state by the replication's; subscribers get every value that changed.
    fn reset_to(&mut self, snap: RoomState) {
        self.follow.reset(snap.epoch, snap.seq);
        let names: std::collections::HashSet<Arc<str>> =
            snap.vars.iter().map(|v| v.name.clone()).collect();
        // The cloud protocol has no "deleted" message: a vanished variable just stops.
        self.vars.retain(|k, _| names.contains(k));
        self.lines.retain(|k, _| names.contains(k));
        for v in snap.vars {
            let changed = self
                .vars
                .get(&v.name)
                .is_none_or(|cur| cur.value != v.value);
            if changed {
                // No event-bus event: the changes this sums up were missed by the
                // subscription too (a listener sees the next change).
                self.fan_out(SERVER_SENDER, &v.name, &v.value);
            }
            self.next_pos = self.next_pos.max(v.pos + 1);
            match self.vars.get_mut(&v.name) {
                Some(cur) => {
                    cur.value = v.value;
                    cur.pos = v.pos;
                }
                None => {
                    self.vars.insert(
                        v.name,
                        Var {
                            value: v.value,
                            pos: v.pos,
                        },
                    );
                }
            }
        }
    }
}
