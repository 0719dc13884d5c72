//! [`GatewayClient`]: a Discord v10 gateway shard (Discord or nimbus's `/gateway`).
//!
//! The Rust counterpart of scurrypy's `GatewayClient` (seed 004), with its defects
//! fixed (see `docs/gateway.md`):
//! - Identify sends `shard: [id, n]`; op 1 from the server is answered at once;
//! - heartbeats start after `interval × jitter`; a heartbeat that finds the previous one
//!   unacknowledged closes the connection with 4000 (zombie) and resumes;
//! - close codes are inspected: fatal ones (4004, 4010–4014) end the shard with
//!   [`GatewayError::Fatal`]; 4003/4007/4009 and op 9 `false` re-identify; everything
//!   else (including bare drops, 1000/1001 from the server and op 7) resumes at once;
//! - Resume goes to READY's `resume_gateway_url`, a fresh Identify always to the
//!   original URL;
//! - exponential backoff from 5 s with jitter only when connecting keeps failing
//!   (reset on READY/RESUMED);
//! - a 120 / 60 s send limiter that reserves permits for heartbeats;
//! - optional zlib-stream transport compression (always compiled in: `flate2` with its
//!   pure-Rust backend is small).

mod driver;
mod http;
mod inflate;
mod limiter;
mod queue;
mod shard;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use nimbus_proto::gateway::{CloseCode, Intents, Properties, DISCORD_GATEWAY_URL};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

pub use http::{fetch_gateway_bot, GatewayBot, SessionStartLimit};
pub use limiter::RateLimiter;
pub use queue::IdentifyQueue;
pub use shard::{ShardManager, ShardManagerConfig};

/// Everything that can end or refuse a gateway operation.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The gateway URL is not a usable `ws://` / `wss://` URL.
    #[error("bad gateway url {0:?}")]
    BadUrl(String),
    /// The server closed with a code after which reconnecting is pointless.
    #[error("gateway closed the shard with {0}")]
    Fatal(CloseCode),
    /// [`GatewayClient::close`] was called (or the client is gone).
    #[error("gateway client closed")]
    Closed,
    /// [`GatewayClient::start`] was called twice.
    #[error("gateway client already started")]
    AlreadyStarted,
    /// A payload to send is larger than 4096 bytes.
    #[error("payload of {0} bytes exceeds 4096")]
    TooLarge(usize),
    /// An HTTP lookup (`/gateway/bot`) failed.
    #[error("http: {0}")]
    Http(String),
}

/// Where the shard is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Not started.
    Idle,
    /// Connecting; `attempts` consecutive connections failed before READY/RESUMED.
    Disconnected {
        /// Failed attempts since the last READY/RESUMED.
        attempts: u32,
    },
    /// Identify sent, waiting for READY.
    Identifying,
    /// Resume sent, waiting for RESUMED.
    Resuming,
    /// READY or RESUMED received.
    Active,
    /// Ended by a fatal close code.
    FatallyClosed(CloseCode),
    /// Ended by [`GatewayClient::close`].
    Closed,
}

/// Heartbeat round trips (the seed's `GatewayMetrics`, done right).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayMetrics {
    /// The last round trip.
    pub latest: Option<Duration>,
    /// Mean of every round trip measured.
    pub average: Option<Duration>,
    /// The last 5 round trips, oldest first.
    pub recent: Vec<Duration>,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeat ACKs received.
    pub acks_received: u64,
    /// Resumes that succeeded (RESUMED).
    pub resumes: u64,
    /// READYs received (fresh sessions).
    pub identifies: u64,
}

impl GatewayMetrics {
    pub(crate) fn record(&mut self, rtt: Duration) {
        let n = u32::try_from(self.acks_received).unwrap_or(u32::MAX);
        let total = self.average.unwrap_or_default() * n + rtt;
        self.acks_received += 1;
        self.average = Some(total / (n + 1).max(1));
        self.latest = Some(rtt);
        self.recent.push(rtt);
        if self.recent.len() > 5 {
            self.recent.remove(0);
        }
    }
}

/// How a [`GatewayClient`] connects.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The original gateway URL (`wss://gateway.discord.gg`, or `ws://host:port/gateway`).
    /// Fresh Identifies always go here; `?v=10&encoding=json` is appended.
    pub url: String,
    /// This shard's id.
    pub shard_id: u64,
    /// Total shards (`shard` sent in Identify is `[shard_id, total_shards]`).
    pub total_shards: u64,
    /// Ask for zlib-stream transport compression.
    pub compress: bool,
    /// Identify `properties`.
    pub properties: Properties,
    /// First reconnect delay ceiling; doubles per failed attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Timeout of one WebSocket connect.
    pub connect_timeout: Duration,
    /// Identify buckets shared with other shards (a fresh Identify waits for its slot).
    pub identify_queue: Option<Arc<IdentifyQueue>>,
    /// Events received and not yet taken by [`GatewayClient::next_event`], at most. When a
    /// dispatch finds the queue full, the shard does not take it: it closes its connection
    /// (resumable), waits until the consumer has taken half of the queue, and resumes, so
    /// the server replays from the last event queued. A consumer that stays away longer
    /// than the server's resume window loses its session (op 9, a new Identify), as on
    /// Discord. Bounds the client's memory by the consumer, not by the event rate.
    pub max_pending_events: usize,
    /// The longest message taken from the server, bytes, after inflating when `compress` is
    /// on (so a zlib bomb is cut off here too). A longer one ends the connection, which
    /// resumes like after a drop. Default [`nimbus_proto::CLIENT_MAX_MESSAGE`] (32 MiB, above the
    /// largest dispatch of a nimbus server at its defaults).
    pub max_message_bytes: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            url: DISCORD_GATEWAY_URL.into(),
            shard_id: 0,
            total_shards: 1,
            compress: false,
            properties: Properties {
                os: std::env::consts::OS.into(),
                browser: "nimbus".into(),
                device: "nimbus".into(),
            },
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            identify_queue: None,
            max_pending_events: 16_384,
            max_message_bytes: nimbus_proto::CLIENT_MAX_MESSAGE,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Status {
    pub state: ShardState,
    pub seq: Option<u64>,
    pub session_id: Option<String>,
    pub resume_url: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub metrics: GatewayMetrics,
    pub limiter: Option<RateLimiter>,
    /// The URL of every connection made, in order (for diagnostics and tests).
    pub connections: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub options: GatewayOptions,
    pub status: Mutex<Status>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One gateway shard (see the module docs).
///
/// ```no_run
/// # async fn demo() -> Result<(), nimbus_client::gateway::GatewayError> {
/// use nimbus_client::gateway::{GatewayClient, GatewayOptions};
/// let client = GatewayClient::new(GatewayOptions {
///     url: "ws://127.0.0.1:9080/gateway".into(),
///     ..GatewayOptions::default()
/// });
/// client.start("my-token", 1)?;
/// while let Some((name, data)) = client.next_event().await {
///     println!("{name} {data}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GatewayClient {
    shared: Arc<Shared>,
    events_tx: Mutex<Option<mpsc::Sender<(String, Value)>>>,
    events: tokio::sync::Mutex<mpsc::Receiver<(String, Value)>>,
    commands_tx: mpsc::UnboundedSender<String>,
    commands_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    stop: watch::Sender<bool>,
    outcome: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), GatewayError>>>>,
}

impl GatewayClient {
    /// A client that has not connected yet.
    pub fn new(options: GatewayOptions) -> GatewayClient {
        let (events_tx, events_rx) = mpsc::channel(options.max_pending_events.max(2));
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        GatewayClient {
            shared: Arc::new(Shared {
                options,
                status: Mutex::new(Status {
                    state: ShardState::Idle,
                    seq: None,
                    session_id: None,
                    resume_url: None,
                    heartbeat_interval: None,
                    metrics: GatewayMetrics::default(),
                    limiter: None,
                    connections: Vec::new(),
                }),
            }),
            events_tx: Mutex::new(Some(events_tx)),
            events: tokio::sync::Mutex::new(events_rx),
            commands_tx,
            commands_rx: Mutex::new(Some(commands_rx)),
            stop: watch::Sender::new(false),
            outcome: tokio::sync::Mutex::new(None),
        }
    }

    /// Start the shard in the background with `token` (with or without `Bot `: Identify
    /// and Resume carry the bare token, as Discord wants) and `intents`. Events arrive on
    /// [`GatewayClient::next_event`]; the shard runs until [`GatewayClient::close`] or a
    /// fatal close code ([`GatewayClient::wait`] tells which).
    pub fn start(&self, token: &str, intents: u64) -> Result<(), GatewayError> {
        let url = driver::connect_url(&self.shared.options.url, self.shared.options.compress)?;
        let Some(commands) = self
            .commands_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Err(GatewayError::AlreadyStarted);
        };
        let Some(events) = self
            .events_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Err(GatewayError::AlreadyStarted);
        };
        let driver = driver::Driver {
            shared: self.shared.clone(),
            // Discord's gateway wants the bare token (the `Bot ` prefix is for HTTP).
            token: nimbus_proto::gateway::strip_bot_prefix(token).to_owned(),
            intents,
            base_url: url,
            events,
            commands,
            stop: self.stop.subscribe(),
        };
        let handle = tokio::spawn(driver.run());
        if let Ok(mut o) = self.outcome.try_lock() {
            *o = Some(handle);
        }
        Ok(())
    }

    /// The next dispatch as `(t, d)` (READY and RESUMED included); `None` once the shard
    /// has ended and every event was taken.
    pub async fn next_event(&self) -> Option<(String, Value)> {
        self.events.lock().await.recv().await
    }

    /// The dispatches as a stream (same items as [`GatewayClient::next_event`]).
    pub fn events(&self) -> impl futures_util::Stream<Item = (String, Value)> + '_ {
        futures_util::stream::unfold(
            self,
            |c| async move { c.next_event().await.map(|e| (e, c)) },
        )
    }

    /// Send a payload (`{"op": .., "d": ..}`) once the shard is active, within the
    /// send limit (waits for a permit).
    pub async fn send(&self, payload: Value) -> Result<(), GatewayError> {
        let text = payload.to_string();
        if text.len() > nimbus_proto::gateway::MAX_PAYLOAD_BYTES {
            return Err(GatewayError::TooLarge(text.len()));
        }
        loop {
            let wait = {
                let mut st = self.shared.lock();
                match st.state {
                    ShardState::FatallyClosed(c) => return Err(GatewayError::Fatal(c)),
                    ShardState::Closed => return Err(GatewayError::Closed),
                    _ => {}
                }
                match st.limiter.as_mut() {
                    Some(l) => l.try_acquire(tokio::time::Instant::now()),
                    None => Err(Duration::from_millis(50)),
                }
            };
            match wait {
                Ok(()) => break,
                Err(d) => tokio::time::sleep(d).await,
            }
        }
        self.commands_tx
            .send(text)
            .map_err(|_| GatewayError::Closed)
    }

    /// Close with 1000 (which ends the session) and stop the shard.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let _ = self.wait().await;
    }

    /// Wait for the shard to end: `Ok` after [`GatewayClient::close`], the error otherwise
    /// (e.g. [`GatewayError::Fatal`]).
    pub async fn wait(&self) -> Result<(), GatewayError> {
        let mut o = self.outcome.lock().await;
        match o.take() {
            Some(h) => h.await.unwrap_or(Err(GatewayError::Closed)),
            None => match self.state() {
                ShardState::FatallyClosed(c) => Err(GatewayError::Fatal(c)),
                _ => Ok(()),
            },
        }
    }

    /// This shard's id.
    pub fn shard_id(&self) -> u64 {
        self.shared.options.shard_id
    }

    /// Total shards.
    pub fn total_shards(&self) -> u64 {
        self.shared.options.total_shards
    }

    /// Last sequence received.
    pub fn seq(&self) -> Option<u64> {
        self.shared.lock().seq
    }

    /// Current session id (from READY).
    pub fn session_id(&self) -> Option<String> {
        self.shared.lock().session_id.clone()
    }

    /// READY's `resume_gateway_url` (used for Resume only).
    pub fn resume_url(&self) -> Option<String> {
        self.shared.lock().resume_url.clone()
    }

    /// Whether the next connection will Resume (a session and a sequence are known).
    pub fn can_resume(&self) -> bool {
        let st = self.shared.lock();
        st.session_id.is_some() && st.seq.is_some()
    }

    /// Life-cycle state.
    pub fn state(&self) -> ShardState {
        self.shared.lock().state
    }

    /// Heartbeat round trips and counters.
    pub fn metrics(&self) -> GatewayMetrics {
        self.shared.lock().metrics.clone()
    }

    /// Every URL connected to so far, in order.
    pub fn connection_urls(&self) -> Vec<String> {
        self.shared.lock().connections.clone()
    }

    /// Command permits available on the current connection (see [`RateLimiter`]).
    pub fn send_permits(&self) -> Option<u32> {
        self.shared
            .lock()
            .limiter
            .as_mut()
            .map(|l| l.available(tokio::time::Instant::now()))
    }
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
