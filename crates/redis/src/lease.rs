//! [`RedisLease`]: the [`Leadership`] of `--redis`, so that webhooks are delivered once
//! per cluster rather than once per node.
//!
//! One key, `nimbus:webhook:lease`, holds the node id of the holder with a TTL
//! (the script `lua/lease.lua`: `SET key node NX PX ttl` when free, `PEXPIRE` when held). Every
//! node runs a task that calls it every `ttl / 5`. The holder also stores its progress
//! (the global id up to which every event is settled, see [`Leadership::progress`]) in
//! `nimbus:webhook:progress`; a node that takes the lease gets that progress back and
//! replays the events it saw after it.
//!
//! A node believes it holds the lease until `ttl - ttl / 5` after the call that last
//! renewed it started, so it stops acting before another node can take the lease (clocks
//! of the nodes are not compared; only elapsed time on each). When the holder dies, its
//! lease expires after at most `ttl`; meanwhile no node publishes, and the next holder
//! replays from the recorded progress: events of a handover may be delivered twice
//! (receivers de-duplicate by id), never skipped, as long as the new holder still holds
//! them in its replay buffer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nimbus_core::lease::Leadership;
use nimbus_proto::backplane::StreamId;

use crate::lua::{LEASE_SCRIPT, RELEASE_SCRIPT};
use crate::RedisBackplane;

/// The lease key.
pub const LEASE_KEY: &str = "nimbus:webhook:lease";
/// Where the holder records its progress.
pub const PROGRESS_KEY: &str = "nimbus:webhook:progress";
/// Default lease time.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    /// Held until then (local clock).
    until: Option<Instant>,
    /// The last event handed on, not yet recorded in Redis.
    progress: Option<StreamId>,
    /// The previous holder's progress, for the first event after a takeover.
    handover: Option<StreamId>,
    /// Just taken over with no progress recorded: replay what is buffered.
    took_over: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct RedisLease {
    bp: Arc<RedisBackplane>,
    ttl: Duration,
    state: Mutex<State>,
}

impl RedisLease {
    /// Start competing for the lease through `bp` (a task renews it every `ttl / 5`
    /// until the backplane stops).
    pub fn start(bp: Arc<RedisBackplane>, ttl: Duration) -> Arc<RedisLease> {
        let lease = Arc::new(RedisLease {
            bp,
            ttl: ttl.max(Duration::from_millis(100)),
            state: Mutex::new(State::default()),
        });
        let weak = Arc::downgrade(&lease);
        let stop = lease.bp.stop.clone();
        let every = lease.ttl / 5;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(lease) = weak.upgrade() else { return };
                lease.renew().await;
            }
        });
        lease
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One round: renew (recording the progress) or try to take the lease.
    async fn renew(&self) {
        let started = Instant::now();
        let progress = self.lock().progress;
        let mut conn = self.bp.conn.clone();
        let reply: Result<(u8, String), _> = redis::Script::new(LEASE_SCRIPT)
            .key(LEASE_KEY)
            .key(PROGRESS_KEY)
            .arg(self.bp.node())
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(progress.map(|g| g.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await;
        let valid = started + self.ttl - self.ttl / 5;
        let mut s = self.lock();
        match reply {
            Ok((1, _)) => {
                s.until = Some(valid);
                if s.progress == progress {
                    s.progress = None;
                }
            }
            Ok((2, recorded)) => {
                tracing::info!(node = %self.bp.node(), from = %recorded, "webhook lease taken: this node delivers webhooks");
                s.until = Some(valid);
                s.handover = recorded.parse().ok();
                s.took_over = true;
            }
            Ok(_) => {
                if s.until.take().is_some() {
                    tracing::warn!(node = %self.bp.node(), "webhook lease lost to another node");
                }
            }
            Err(e) => {
                // Keep acting until the lease would have expired, then stop.
                if s.until.is_some_and(|u| Instant::now() >= u) {
                    s.until = None;
                    tracing::warn!(error = %e, "webhook lease: Redis unreachable, no longer delivering");
                }
            }
        }
    }
}

impl Leadership for RedisLease {
    fn is_leader(&self) -> bool {
        self.lock().until.is_some_and(|u| Instant::now() < u)
    }

    fn progress(&self, gid: StreamId) {
        let mut s = self.lock();
        s.progress = Some(s.progress.map_or(gid, |p| p.max(gid)));
    }

    fn take_handover(&self) -> Option<StreamId> {
        let mut s = self.lock();
        if !std::mem::take(&mut s.took_over) {
            return None;
        }
        Some(s.handover.take().unwrap_or_default())
    }

    /// Give the lease up, so another node takes over at once; the progress is recorded
    /// first.
    fn release(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.is_leader() {
                self.renew().await;
            }
            self.lock().until = None;
            let mut conn = self.bp.conn.clone();
            let _: Result<i64, _> = redis::Script::new(RELEASE_SCRIPT)
                .key(LEASE_KEY)
                .arg(self.bp.node())
                .invoke_async(&mut conn)
                .await;
        })
    }
}
