//! The gateway: room events as a resumable Discord-v10-style event stream at `/gateway`.
//!
//! - [`GatewayConfig`]: tokens (with the intents each may use), heartbeat interval,
//!   resume window, replay buffer size, identify concurrency;
//! - [`Gateway`]: the session registry. It listens on the hub's
//!   [`EventBus`] and appends every matching event (intents,
//!   `shard_of(room, n) == id`) to each session's bounded replay buffer, under the
//!   session's next sequence number;
//! - the sockets (one task per WebSocket: Hello, Identify/Resume, heartbeats, limits,
//!   dispatch from the buffer) are the server's (`nimbus_server::gateway`);
//! - `limiter`: identify concurrency buckets and the session start limit.
//!
//! Delivery guarantee (tested in `crates/server/tests/gateway.rs`): a session's dispatches
//! have consecutive `s`; a Resume with `seq` replays exactly `s > seq` in order, so a
//! client that resumes any number of times within the resume window sees every event once
//! and in order. When the gap is no longer in the buffer (overflow, expiry, unknown
//! session) the Resume is answered with op 9 `false`: the client is told, never silently
//! left with a gap.

pub mod limiter;
pub mod log;
pub mod metrics;
pub mod session;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use nimbus_proto::gateway::{strip_bot_prefix, Intents};
use tokio::time::Instant;

use crate::events::{EventBus, Interest, RoomEvent};

pub use limiter::{IdentifyBudget, SessionStartLimit};
use log::SessionLog;
pub use metrics::GatewayMetrics;
pub use session::{RoomFilter, Session};
pub use settings::GatewaySettings;

/// A bot token the gateway accepts, and the intents it may use.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayToken {
    /// The token (without `Bot `).
    pub token: String,
    /// Intents this token may request (others: 4014).
    pub allowed: Intents,
}

impl std::fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayToken")
            .field("token", &"<set>")
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl GatewayToken {
    /// Parse `TOKEN` (every intent) or `TOKEN=INTENTS`, where INTENTS is a number or
    /// names joined with `+` (`cloud+rooms+doc`). A `Bot ` prefix is dropped.
    pub fn parse(spec: &str) -> Result<GatewayToken, String> {
        let (token, allowed) = match spec.rsplit_once('=') {
            Some((t, i)) => (t, Intents::parse(&i.replace('+', ","))?),
            None => (spec, Intents::ALL),
        };
        let token = strip_bot_prefix(token);
        if token.is_empty() {
            return Err("empty gateway token".into());
        }
        Ok(GatewayToken {
            token: token.to_owned(),
            allowed,
        })
    }
}

/// Gateway settings (see `docs/gateway.md`). The gateway is served when at least one
/// token is configured.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Accepted tokens.
    pub tokens: Vec<GatewayToken>,
    /// `heartbeat_interval` sent in Hello. No heartbeat for 1.5× this closes with 4000;
    /// after 1.25× the server sends op 1 once.
    pub heartbeat_interval: Duration,
    /// How long a disconnected session stays resumable.
    pub resume_window: Duration,
    /// Dispatches kept per session for replay.
    pub replay_buffer: usize,
    /// Identify buckets (`shard_id % max_concurrency`), one Identify per bucket per
    /// `identify_window`; beyond: op 9 `false`.
    pub max_concurrency: u64,
    /// Length of an identify bucket's window (Discord: 5 s).
    pub identify_window: Duration,
    /// Time allowed between connecting and Identify/Resume (else 4009).
    pub identify_timeout: Duration,
    /// Identifies per 24 h (reported by `/gateway/bot`; beyond: op 9 `false`).
    pub session_start_limit: u32,
    /// After op 7 on shutdown, how long to wait for the client to close before 4000.
    pub drain_grace: Duration,
    /// The largest dispatch frame the server may send (bounds the connection's write
    /// buffer): a `DOC_UPDATE` carries the base64 of one document update, so this follows
    /// the document rooms' largest message ([`GatewayConfig::dispatch_bound`]).
    pub max_dispatch_bytes: usize,
    /// How long a close handshake may take before the socket is dropped.
    pub close_timeout: Duration,
}

impl GatewayConfig {
    /// The largest dispatch for document updates of up to `max_update` bytes: base64
    /// (4/3) plus the payload's envelope, and never below 1 MiB (cloud values, READY).
    pub fn dispatch_bound(max_update: usize) -> usize {
        max_update
            .div_ceil(3)
            .saturating_mul(4)
            .saturating_add(64 << 10)
            .max(1 << 20)
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tokens: Vec::new(),
            heartbeat_interval: Duration::from_millis(41_250),
            resume_window: Duration::from_secs(180),
            replay_buffer: 16_384,
            max_concurrency: 1,
            identify_window: Duration::from_secs(5),
            identify_timeout: Duration::from_secs(20),
            session_start_limit: 1000,
            drain_grace: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
            max_dispatch_bytes: GatewayConfig::dispatch_bound(
                crate::doc::settings::DocLimits::default().max_message_bytes,
            ),
        }
    }
}

impl GatewayConfig {
    /// Whether `/gateway` is served.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The intents `token` (with or without `Bot `) may use, `None` if unknown.
    pub fn check_token(&self, token: &str) -> Option<Intents> {
        let token = strip_bot_prefix(token);
        let mut found = None;
        // Compare against every token without an early exit (no timing hint of which matched).
        for t in &self.tokens {
            // `subtle` compares in constant time (a length difference is not hidden).
            let same: bool =
                subtle::ConstantTimeEq::ct_eq(t.token.as_bytes(), token.as_bytes()).into();
            if same {
                found = Some(t.allowed);
            }
        }
        found
    }
}

/// The gateway's session registry (one per server).
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    metrics: Arc<GatewayMetrics>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// The bots' identify budgets (this node's, or shared through Redis).
    budget: Arc<dyn IdentifyBudget>,
    /// Where the sessions' dispatches are kept (in memory, or shared through Redis).
    log: Arc<dyn SessionLog>,
    /// On while there is at least one session: with none, rooms build no events. Always
    /// on with a shared log (the global position must be followed even without sessions).
    interest: std::sync::OnceLock<Interest>,
    /// The static tokens (swapped whole by [`Gateway::set_tokens`]; `config.tokens` is
    /// what it started with).
    tokens: arc_swap::ArcSwap<GatewayConfig>,
    /// With a shared log: the global id of the last event seen (updated with the session
    /// map locked, so a new session starts exactly after it).
    last_gid: Mutex<nimbus_proto::backplane::StreamId>,
}

impl Gateway {
    /// A gateway listening on `events`; its sessions' dispatches are kept by `log` and its
    /// bots' identify budgets by `budget` (both chosen by the composition root:
    /// [`log::in_memory`] and [`Gateway::local_budget`] on one node).
    pub fn new(
        events: &EventBus,
        metrics: Arc<GatewayMetrics>,
        config: GatewayConfig,
        log: Arc<dyn SessionLog>,
        budget: Arc<dyn IdentifyBudget>,
    ) -> Arc<Gateway> {
        let gw = Arc::new(Gateway {
            budget,
            tokens: arc_swap::ArcSwap::from_pointee(config.clone()),
            config,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            log,
            interest: std::sync::OnceLock::new(),
            last_gid: Mutex::default(),
        });
        gw.log
            .start(gw.config.replay_buffer, gw.config.resume_window);
        let weak: Weak<Gateway> = Arc::downgrade(&gw);
        let (_, interest) = events.subscribe_with_interest(Arc::new(move |ev: &RoomEvent| {
            if let Some(gw) = weak.upgrade() {
                gw.publish(ev);
            }
        }));
        interest.set(gw.log.shared());
        let _ = gw.interest.set(interest);
        // Sessions detached past the resume window go on a timer too, not only when another
        // session starts or is looked up: a bot that never comes back keeps no buffer.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&gw);
            let every = (gw.config.resume_window / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(60));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(gw) = weak.upgrade() else { return };
                    gw.prune_expired();
                }
            });
        }
        gw
    }

    /// Drop the sessions detached for longer than the resume window.
    pub fn prune_expired(&self) {
        let now = Instant::now();
        let mut sessions = self.sessions();
        let before = sessions.len();
        sessions.retain(|_, s| !s.expired(now, self.config.resume_window));
        if sessions.len() != before {
            self.sessions_changed(sessions.len());
        }
    }

    /// Its settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The intents static token `token` (with or without `Bot `) may use, `None` if unknown
    /// (the current tokens: [`Gateway::set_tokens`] replaces them).
    pub fn check_token(&self, token: &str) -> Option<Intents> {
        self.tokens.load().check_token(token)
    }

    /// Replace the static tokens (a config reload); sessions already identified stay.
    pub fn set_tokens(&self, tokens: Vec<GatewayToken>) {
        let config = GatewayConfig {
            tokens,
            ..self.config.clone()
        };
        self.tokens.store(Arc::new(config));
    }

    /// Its metrics (`nimbus_gateway_*`).
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Where the sessions' dispatches are kept.
    pub fn log(&self) -> &Arc<dyn SessionLog> {
        &self.log
    }

    /// This node's identify budgets with `config`'s buckets, window and daily limit.
    pub fn local_budget(config: &GatewayConfig) -> Arc<dyn IdentifyBudget> {
        limiter::in_memory(
            config.max_concurrency,
            config.identify_window,
            config.session_start_limit,
        )
    }

    /// Take an Identify slot of `shard_id`'s bucket of `bot` now (the caller names the
    /// bot: its static token, or its signed token's issuer and subject); `false` when the
    /// bucket or the bot's daily start limit is spent (the client gets op 9 `false`).
    pub async fn try_identify(&self, bot: &str, shard_id: u64) -> bool {
        self.budget.try_identify(bot, shard_id).await
    }

    /// Number of sessions (attached or resumable).
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The current session start limit of `bot` (for `/gateway/bot`).
    pub async fn session_start_limit(&self, bot: &str) -> SessionStartLimit {
        self.budget.snapshot(bot).await
    }

    /// Append `ev` to every session that selected it.
    fn publish(&self, ev: &RoomEvent) {
        let sessions = self.sessions();
        if let Some(gid) = ev.gid {
            let mut last = self.last_gid.lock().unwrap_or_else(PoisonError::into_inner);
            *last = (*last).max(gid);
        }
        if sessions.is_empty() {
            return;
        }
        // Serialise `d` once for every session.
        let d = ev.to_json();
        let now = Instant::now();
        let mut dispatched = 0u64;
        for s in sessions.values() {
            if s.wants(ev) && !s.expired(now, self.config.resume_window) {
                s.push(ev.kind().name(), &d, self.config.replay_buffer, ev.gid);
                dispatched += 1;
            }
        }
        self.metrics.dispatches.inc_by(dispatched);
    }

    /// Register a new session and append its READY, with the session map locked so that
    /// it receives exactly the events after the current one. The log hears of it
    /// first.
    pub fn start(&self, s: Arc<Session>, conn: u64, ready: &str) {
        let sessions = self.sessions();
        let gid = *self.last_gid.lock().unwrap_or_else(PoisonError::into_inner);
        self.log.opened(&s.id, &s.token, s.intents.0, s.shard);
        s.ready(conn, ready, self.config.replay_buffer, gid);
        self.insert_locked(sessions, s);
    }

    /// Register `s` in place of the session with its id; returns the one replaced.
    pub fn replace(&self, s: Arc<Session>) -> Option<Arc<Session>> {
        let sessions = self.sessions();
        let old = sessions.get(&s.id).cloned();
        self.insert_locked(sessions, s);
        old
    }

    fn insert_locked(
        &self,
        mut sessions: MutexGuard<'_, HashMap<String, Arc<Session>>>,
        s: Arc<Session>,
    ) {
        let now = Instant::now();
        // Prune expired sessions whenever a new one is created: memory stays bounded by
        // the identify limits.
        sessions.retain(|_, s| !s.expired(now, self.config.resume_window));
        sessions.insert(s.id.clone(), s);
        self.sessions_changed(sessions.len());
    }

    /// Keep the bus interest and the gauge in step with the session count (called with
    /// the session map locked, so the switch never lags behind an insert).
    fn sessions_changed(&self, n: usize) {
        if let Some(i) = self.interest.get() {
            i.set(n > 0 || self.log.shared());
        }
        self.metrics.sessions.set(n as i64);
    }

    /// The live session `id` (an expired one is removed and `None`).
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let now = Instant::now();
        let mut sessions = self.sessions();
        let s = sessions.get(id)?.clone();
        if s.expired(now, self.config.resume_window) {
            sessions.remove(id);
            self.sessions_changed(sessions.len());
            return None;
        }
        Some(s)
    }

    /// Forget session `id` (invalidated, or taken over elsewhere).
    pub fn remove(&self, id: &str) {
        let mut sessions = self.sessions();
        sessions.remove(id);
        self.sessions_changed(sessions.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_dispatch_at_default_settings_fits_the_sdk_clients_default_bound() {
        // A client that refuses a dispatch resumes and is sent it again: the SDK's default
        // must take every dispatch a server with default settings may send.
        let largest = GatewayConfig::default().max_dispatch_bytes;
        assert!(largest > 16 << 20, "{largest}");
        assert!(
            largest <= nimbus_proto::CLIENT_MAX_MESSAGE,
            "{largest} > {}",
            nimbus_proto::CLIENT_MAX_MESSAGE
        );
    }

    #[test]
    fn token_specs() {
        let t = GatewayToken::parse("abc").expect("bare");
        assert_eq!(t.allowed, Intents::ALL);
        let t = GatewayToken::parse("Bot abc=cloud+doc").expect("with intents");
        assert_eq!(t.token, "abc");
        assert_eq!(t.allowed, Intents(5));
        assert!(GatewayToken::parse("abc=guilds").is_err());
        assert!(GatewayToken::parse("").is_err());
        let cfg = GatewayConfig {
            tokens: vec![t],
            ..GatewayConfig::default()
        };
        assert_eq!(cfg.check_token("Bot abc"), Some(Intents(5)));
        assert_eq!(cfg.check_token("abc"), Some(Intents(5)));
        assert_eq!(cfg.check_token("abd"), None);
    }
}
