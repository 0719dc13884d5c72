//! Server configuration: flags, `NIMBUS_*` environment variables and a TOML file.
//!
//! [`Settings`] is the single description of every setting: the same struct is
//! parsed by clap (flags + env) and by serde (the `--config` file), then
//! [`Settings::merge`] applies the precedence flag > env > file and
//! [`Config::from_settings`] fills in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nimbus_proto::cloud::ValueProfile;
use serde::Deserialize;
use thiserror::Error;

use crate::gateway::{GatewayConfig, GatewayToken};

/// A configuration problem found at startup.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML for [`Settings`] (unknown keys are errors).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Every setting of `nimbus serve`, each optional so that flags, environment and
/// file can be layered. Durations are in milliseconds.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:9080].
    #[arg(long, env = "NIMBUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the embedded store [default: ./nimbus-data].
    #[arg(long, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Group-commit window of the store: a `kill -9` loses at most this much [default: 100].
    #[arg(long, env = "NIMBUS_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Value rules: `turbowarp` (any number) or `scratch` (digits only) [default: turbowarp].
    #[arg(long, env = "NIMBUS_VALUE_PROFILE", value_parser = parse_profile)]
    pub value_profile: Option<ValueProfile>,
    /// Clients per room; the next handshake is closed with 4003 [default: 128].
    #[arg(long, env = "NIMBUS_MAX_CLIENTS_PER_ROOM")]
    pub max_clients_per_room: Option<usize>,
    /// Variables per room; a set that would create one more is dropped [default: 128].
    #[arg(long, env = "NIMBUS_MAX_VARIABLES_PER_ROOM")]
    pub max_variables_per_room: Option<usize>,
    /// Loaded rooms; a handshake for a new room is closed with 4003 [default: 16384].
    #[arg(long, env = "NIMBUS_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Maximum variable name length in characters [default: 1024].
    #[arg(long, env = "NIMBUS_MAX_NAME_LEN")]
    pub max_name_len: Option<usize>,
    /// Maximum value length in characters [default: 100000 (turbowarp) / 256 (scratch)].
    #[arg(long, env = "NIMBUS_MAX_VALUE_LEN")]
    pub max_value_len: Option<usize>,
    /// Maximum incoming WebSocket message size in bytes; larger ones close with 1009 [default: 1048576].
    #[arg(long, env = "NIMBUS_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Maximum username length [default: 20].
    #[arg(long, env = "NIMBUS_MAX_USERNAME_LEN")]
    pub max_username_len: Option<usize>,
    /// Refuse a username already used in the room (4002) [default: false].
    #[arg(long, env = "NIMBUS_UNIQUE_USERNAMES")]
    pub unique_usernames: Option<bool>,
    /// Require a non-empty User-Agent header (4006) [default: false].
    #[arg(long, env = "NIMBUS_REQUIRE_USER_AGENT")]
    pub require_user_agent: Option<bool>,
    /// Close connections that send a `scratchsessionsid` cookie (4005) [default: true].
    #[arg(long, env = "NIMBUS_REJECT_SESSION_COOKIE")]
    pub reject_session_cookie: Option<bool>,
    /// Honour `rename` messages [default: false: silently ignored].
    #[arg(long, env = "NIMBUS_ALLOW_RENAME")]
    pub allow_rename: Option<bool>,
    /// Honour `delete` messages [default: false: silently ignored].
    #[arg(long, env = "NIMBUS_ALLOW_DELETE")]
    pub allow_delete: Option<bool>,
    /// Send a frame holding only "\n" when joining an empty room [default: false].
    #[arg(long, env = "NIMBUS_EMPTY_JOIN_FRAME")]
    pub empty_join_frame: Option<bool>,
    /// Never batch broadcasts: one message per frame after the join frame [default: false].
    #[arg(long, env = "NIMBUS_ONE_MESSAGE_PER_FRAME")]
    pub one_message_per_frame: Option<bool>,
    /// Hold each connection's outgoing updates for up to this long and send them as one frame
    /// (TurboWarp's `bufferSends`); trades latency for fewer syscalls. 0 = send at once [default: 0].
    #[arg(long, env = "NIMBUS_SEND_INTERVAL_MS")]
    pub send_interval_ms: Option<u64>,
    /// Serve the IPC routes (see docs/ipc.md) on their own ports [default: false].
    #[arg(long, env = "NIMBUS_IPC", num_args = 0..=1, default_missing_value = "true")]
    pub ipc: Option<bool>,
    /// IPC main port [default: 8000].
    #[arg(long, env = "NIMBUS_IPC_PORT")]
    pub ipc_port: Option<u16>,
    /// IPC multicast (discovery) port [default: 20000].
    #[arg(long, env = "NIMBUS_IPC_MULTICAST_PORT")]
    pub ipc_multicast_port: Option<u16>,
    /// IPC host; anything but loopback requires a secret [default: 127.0.0.1].
    #[arg(long, env = "NIMBUS_IPC_HOST")]
    pub ipc_host: Option<String>,
    /// IPC shared secret (the `Authorization` value clients send).
    #[arg(long, env = "NIMBUS_IPC_SECRET", hide_env_values = true)]
    pub ipc_secret: Option<String>,
    /// Room keys refused with 4004 (comma-separated) [default: none].
    #[arg(long, env = "NIMBUS_BLOCKED_ROOMS", value_delimiter = ',')]
    pub blocked_rooms: Option<Vec<String>>,
    /// Time allowed before the handshake [default: 30000].
    #[arg(long, env = "NIMBUS_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Keepalive ping period; a peer that missed the previous ping is dropped [default: 30000].
    #[arg(long, env = "NIMBUS_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// How long an empty room stays loaded [default: 60000].
    #[arg(long, env = "NIMBUS_ROOM_IDLE_MS")]
    pub room_idle_ms: Option<u64>,
    /// Per-connection send queue, in messages; a consumer whose queue is full is closed with 1008 [default: 1024].
    #[arg(long, env = "NIMBUS_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    /// Queue length from which a newer value replaces a queued older value of the same variable [default: 64].
    #[arg(long, env = "NIMBUS_COALESCE_AFTER")]
    pub coalesce_after: Option<usize>,
    /// Document rooms: largest incoming message in bytes; larger ones close with 1009 [default: 16777216].
    #[arg(long, env = "NIMBUS_DOC_MAX_MESSAGE_BYTES")]
    pub doc_max_message_bytes: Option<usize>,
    /// Document rooms: largest document (stored bytes); updates beyond are refused with the Auth message [default: 67108864].
    #[arg(long, env = "NIMBUS_DOC_MAX_BYTES")]
    pub doc_max_bytes: Option<usize>,
    /// Document rooms: loaded rooms; a connection to one more is refused with 503 [default: 16384].
    #[arg(long, env = "NIMBUS_DOC_MAX_ROOMS")]
    pub doc_max_rooms: Option<usize>,
    /// Document rooms: a token rule `ROOM:rw:TOKEN` or `ROOM:ro:TOKEN` (ROOM may be `*`); repeatable.
    /// A room matched by any rule needs a token [default: none, every room open].
    #[arg(
        long = "doc-token",
        env = "NIMBUS_DOC_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub doc_tokens: Option<Vec<crate::doc::TokenRule>>,
    /// Document rooms: awareness states not renewed for this long are removed [default: 30000].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_TIMEOUT_MS")]
    pub doc_awareness_timeout_ms: Option<u64>,
    /// Document rooms: fold a room's update log into a snapshot after this many updates [default: 1000].
    #[arg(long, env = "NIMBUS_DOC_COMPACT_UPDATES")]
    pub doc_compact_updates: Option<usize>,
    /// ... or after this many bytes of updates [default: 4194304].
    #[arg(long, env = "NIMBUS_DOC_COMPACT_BYTES")]
    pub doc_compact_bytes: Option<usize>,
    /// Document rooms: bytes queued for one client before it is closed with 1008 "too slow" [default: 4194304].
    #[arg(long, env = "NIMBUS_DOC_QUEUE_BYTES")]
    pub doc_queue_bytes: Option<usize>,
    /// Document rooms: longest time one frame may take to go out before the client is closed with 1008 [default: 10000].
    #[arg(long, env = "NIMBUS_DOC_SEND_TIMEOUT_MS")]
    pub doc_send_timeout_ms: Option<u64>,
    /// Document rooms: the same for the answer to a client's first SyncStep1 (the whole document) [default: 60000].
    #[arg(long, env = "NIMBUS_DOC_SYNC_SEND_TIMEOUT_MS")]
    pub doc_sync_send_timeout_ms: Option<u64>,
    /// Document rooms: updates per second per connection; over it reading pauses (0: no limit) [default: 200].
    #[arg(long, env = "NIMBUS_DOC_UPDATE_RATE")]
    pub doc_update_rate: Option<u32>,
    /// Document rooms: updates a connection may send at once after a quiet period [default: 1000].
    #[arg(long, env = "NIMBUS_DOC_UPDATE_BURST")]
    pub doc_update_burst: Option<u32>,
    /// Document rooms: awareness changes per second per connection; over it reading pauses (0: no limit) [default: 100].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_RATE")]
    pub doc_awareness_rate: Option<u32>,
    /// Document rooms: awareness changes a connection may send at once [default: 300].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_BURST")]
    pub doc_awareness_burst: Option<u32>,
    /// Document rooms: a connection paused for a rate this long since its last frame within its rates is closed with 1008 [default: 20000].
    #[arg(long, env = "NIMBUS_DOC_RATE_ABUSE_MS")]
    pub doc_rate_abuse_ms: Option<u64>,
    /// Document rooms: awareness client ids one connection may own [default: 8].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_IDS")]
    pub doc_awareness_max_ids: Option<usize>,
    /// Document rooms: bytes of one awareness state [default: 32768].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_STATE_BYTES")]
    pub doc_awareness_max_state_bytes: Option<usize>,
    /// Document rooms: awareness states per room [default: 10000].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_STATES")]
    pub doc_awareness_max_states: Option<usize>,
    /// Document rooms: bytes of awareness states per room [default: 8388608].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_MAX_ROOM_BYTES")]
    pub doc_awareness_max_room_bytes: Option<usize>,
    /// Document rooms: largest awareness message of the table sent to a joiner [default: 65536].
    #[arg(long, env = "NIMBUS_DOC_AWARENESS_CHUNK_BYTES")]
    pub doc_awareness_chunk_bytes: Option<usize>,
    /// Bot token accepted by `/gateway` (repeatable; `TOKEN` or `TOKEN=cloud+rooms+doc` to
    /// limit its intents). The gateway is served only when at least one is set.
    #[arg(
        long = "gateway-token",
        env = "NIMBUS_GATEWAY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub gateway_token: Option<Vec<String>>,
    /// Gateway heartbeat interval sent in Hello [default: 41250].
    #[arg(long, env = "NIMBUS_GATEWAY_HEARTBEAT_INTERVAL_MS")]
    pub gateway_heartbeat_interval_ms: Option<u64>,
    /// How long a disconnected gateway session stays resumable [default: 180000].
    #[arg(long, env = "NIMBUS_GATEWAY_RESUME_WINDOW_MS")]
    pub gateway_resume_window_ms: Option<u64>,
    /// Dispatches kept per gateway session for Resume [default: 16384].
    #[arg(long, env = "NIMBUS_GATEWAY_REPLAY_BUFFER")]
    pub gateway_replay_buffer: Option<usize>,
    /// Gateway identify buckets (`shard_id % max_concurrency`), one Identify each per window [default: 1].
    #[arg(long, env = "NIMBUS_GATEWAY_MAX_CONCURRENCY")]
    pub gateway_max_concurrency: Option<u64>,
    /// Length of an identify bucket's window [default: 5000].
    #[arg(long, env = "NIMBUS_GATEWAY_IDENTIFY_WINDOW_MS")]
    pub gateway_identify_window_ms: Option<u64>,
    /// Time allowed between connecting and Identify/Resume (then 4009) [default: 20000].
    #[arg(long, env = "NIMBUS_GATEWAY_IDENTIFY_TIMEOUT_MS")]
    pub gateway_identify_timeout_ms: Option<u64>,
    /// Gateway Identifies per 24 h [default: 1000].
    #[arg(long, env = "NIMBUS_GATEWAY_SESSION_START_LIMIT")]
    pub gateway_session_start_limit: Option<u32>,
    /// Share cloud rooms with every node connected to this Redis (`redis://host:port`);
    /// see docs/operations.md [default: none: single node, embedded store].
    #[arg(long, env = "NIMBUS_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Per-connection bounds of the edge (the `[edge]` table of the file).
    #[command(flatten)]
    #[serde(default)]
    pub edge: crate::edge::EdgeSettings,
}

fn parse_profile(s: &str) -> Result<ValueProfile, String> {
    match s.to_ascii_lowercase().as_str() {
        "turbowarp" | "tw" => Ok(ValueProfile::TurboWarp),
        "scratch" => Ok(ValueProfile::Scratch),
        other => Err(format!(
            "unknown value profile {other:?} (turbowarp, scratch)"
        )),
    }
}

macro_rules! merge_fields {
    ($hi:ident, $lo:ident, $($f:ident),* $(,)?) => {
        Settings { $($f: $hi.$f.or($lo.$f),)* edge: $hi.edge.merge($lo.edge) }
    };
}

impl Settings {
    /// Read a TOML file of settings (same keys as the long flags, with `_`).
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// Layer two sets of settings: every value of `self` wins over `lower`'s.
    pub fn merge(self, lower: Settings) -> Settings {
        let hi = self;
        let lo = lower;
        merge_fields!(
            hi,
            lo,
            listen,
            data_dir,
            flush_interval_ms,
            value_profile,
            max_clients_per_room,
            max_variables_per_room,
            max_rooms,
            max_name_len,
            max_value_len,
            max_frame_bytes,
            max_username_len,
            unique_usernames,
            require_user_agent,
            reject_session_cookie,
            allow_rename,
            allow_delete,
            empty_join_frame,
            one_message_per_frame,
            send_interval_ms,
            ipc,
            ipc_port,
            ipc_multicast_port,
            ipc_host,
            ipc_secret,
            blocked_rooms,
            handshake_timeout_ms,
            ping_interval_ms,
            room_idle_ms,
            outbox_capacity,
            coalesce_after,
            doc_max_message_bytes,
            doc_max_bytes,
            doc_max_rooms,
            doc_tokens,
            doc_awareness_timeout_ms,
            doc_compact_updates,
            doc_compact_bytes,
            doc_queue_bytes,
            doc_send_timeout_ms,
            doc_sync_send_timeout_ms,
            doc_update_rate,
            doc_update_burst,
            doc_awareness_rate,
            doc_awareness_burst,
            doc_rate_abuse_ms,
            doc_awareness_max_ids,
            doc_awareness_max_state_bytes,
            doc_awareness_max_states,
            doc_awareness_max_room_bytes,
            doc_awareness_chunk_bytes,
            gateway_token,
            gateway_heartbeat_interval_ms,
            gateway_resume_window_ms,
            gateway_replay_buffer,
            gateway_max_concurrency,
            gateway_identify_window_ms,
            gateway_identify_timeout_ms,
            gateway_session_start_limit,
            redis,
        )
    }
}

/// Limits and policies of document (Yjs) rooms (see `docs/protocols/doc.md`).
#[derive(Debug, Clone)]
pub struct DocLimits {
    /// Largest incoming WebSocket message, bytes (1009 beyond).
    pub max_message_bytes: usize,
    /// Largest document, in stored bytes (snapshot + updates); updates beyond are refused.
    pub max_doc_bytes: usize,
    /// Loaded document rooms (HTTP 503 beyond).
    pub max_rooms: usize,
    /// Token rules.
    pub tokens: Vec<crate::doc::TokenRule>,
    /// Awareness expiry.
    pub awareness_timeout: Duration,
    /// When the store folds a room's log into a snapshot.
    pub compaction: crate::store::CompactionPolicy,
    /// Bytes queued for one client before it is closed with 1008.
    pub queue_bytes: usize,
    /// Longest time one frame may take to go out (1008 beyond).
    pub send_timeout: Duration,
    /// The same for the answer to a client's first SyncStep1.
    pub sync_send_timeout: Duration,
    /// Pace of a connection's document updates.
    pub update_rate: nimbus_doc::RateLimit,
    /// Pace of a connection's awareness changes.
    pub awareness_rate: nimbus_doc::RateLimit,
    /// A connection paused for a rate this long since its last frame within its rates is
    /// closed with 1008.
    pub rate_abuse_after: Duration,
    /// Awareness client ids one connection may own.
    pub awareness_max_ids: usize,
    /// Bytes of one awareness state.
    pub awareness_max_state_bytes: usize,
    /// Largest awareness message of the table sent to a joiner.
    pub awareness_chunk_bytes: usize,
    /// Per-room awareness bounds (states, bytes, tombstones).
    pub awareness: nimbus_doc::AwarenessLimits,
    /// Counters of what these bounds did, shared by every document connection of the
    /// server (for metrics).
    pub stats: std::sync::Arc<nimbus_doc::ServeStats>,
}

impl DocLimits {
    /// The options of one client connection (`read_only` from its token).
    pub fn serve_options(&self, read_only: bool) -> nimbus_doc::ServeOptions {
        nimbus_doc::ServeOptions {
            read_only,
            max_message_bytes: self.max_message_bytes,
            awareness_timeout: self.awareness_timeout,
            queue_bytes: self.queue_bytes,
            send_timeout: self.send_timeout,
            sync_send_timeout: self.sync_send_timeout,
            update_rate: self.update_rate,
            awareness_rate: self.awareness_rate,
            rate_abuse_after: self.rate_abuse_after,
            awareness_max_ids: self.awareness_max_ids,
            awareness_max_state_bytes: self.awareness_max_state_bytes,
            awareness_chunk_bytes: self.awareness_chunk_bytes,
            stats: self.stats.clone(),
            ..nimbus_doc::ServeOptions::default()
        }
    }

    /// The options of a room.
    pub fn room_options(&self) -> nimbus_doc::RoomOptions {
        nimbus_doc::RoomOptions {
            awareness: nimbus_doc::AwarenessLimits {
                tombstone_ttl: self.awareness_timeout * 2,
                ..self.awareness.clone()
            },
            ..nimbus_doc::RoomOptions::default()
        }
    }
}

impl Default for DocLimits {
    fn default() -> Self {
        let serve = nimbus_doc::ServeOptions::default();
        DocLimits {
            max_message_bytes: 16 << 20,
            max_doc_bytes: 64 << 20,
            max_rooms: 16_384,
            tokens: Vec::new(),
            awareness_timeout: Duration::from_secs(30),
            compaction: crate::store::CompactionPolicy::default(),
            queue_bytes: serve.queue_bytes,
            send_timeout: serve.send_timeout,
            sync_send_timeout: serve.sync_send_timeout,
            update_rate: serve.update_rate,
            awareness_rate: serve.awareness_rate,
            rate_abuse_after: serve.rate_abuse_after,
            awareness_max_ids: serve.awareness_max_ids,
            awareness_max_state_bytes: serve.awareness_max_state_bytes,
            awareness_chunk_bytes: serve.awareness_chunk_bytes,
            awareness: nimbus_doc::AwarenessLimits::default(),
            stats: std::sync::Arc::default(),
        }
    }
}

/// Limits and policies of the cloud protocol. Defaults are TurboWarp's
/// (see `docs/protocols/cloud.md`).
#[derive(Debug, Clone)]
pub struct CloudLimits {
    /// Value rules.
    pub profile: ValueProfile,
    /// Clients per room (4003 beyond).
    pub max_clients_per_room: usize,
    /// Variables per room (new ones dropped beyond).
    pub max_variables_per_room: usize,
    /// Loaded rooms (4003 beyond).
    pub max_rooms: usize,
    /// Name length limit, characters.
    pub max_name_len: usize,
    /// Value length limit, characters.
    pub max_value_len: usize,
    /// Incoming message limit, bytes (1009 beyond).
    pub max_frame_bytes: usize,
    /// Username length limit.
    pub max_username_len: usize,
    /// Usernames unique per room (4002).
    pub unique_usernames: bool,
    /// Require a User-Agent (4006).
    pub require_user_agent: bool,
    /// Refuse Scratch session cookies (4005).
    pub reject_session_cookie: bool,
    /// Honour `rename`.
    pub allow_rename: bool,
    /// Honour `delete`.
    pub allow_delete: bool,
    /// Send `"\n"` on joining an empty room.
    pub empty_join_frame: bool,
    /// No batching after the join frame.
    pub one_message_per_frame: bool,
    /// Batch outgoing updates per connection on this grid (zero: send at once).
    pub send_interval: Duration,
    /// How long a closing connection waits for the client's close reply (and how long the
    /// close frame may take to send). Bounds shutdown time for peers that never answer.
    pub close_timeout: Duration,
    /// Room keys refused with 4004.
    pub blocked_rooms: Vec<String>,
    /// Time allowed before the handshake.
    pub handshake_timeout: Duration,
    /// Keepalive period.
    pub ping_interval: Duration,
    /// How long an empty room stays loaded.
    pub room_idle: Duration,
    /// Per-connection send queue capacity, in messages.
    pub outbox_capacity: usize,
    /// Queue length from which last-writer-wins replacement starts.
    pub coalesce_after: usize,
}

impl Default for CloudLimits {
    fn default() -> Self {
        CloudLimits {
            profile: ValueProfile::TurboWarp,
            max_clients_per_room: 128,
            max_variables_per_room: 128,
            max_rooms: 16_384,
            max_name_len: 1024,
            max_value_len: ValueProfile::TurboWarp.default_max_len(),
            max_frame_bytes: 1 << 20,
            max_username_len: 20,
            unique_usernames: false,
            require_user_agent: false,
            reject_session_cookie: true,
            allow_rename: false,
            allow_delete: false,
            empty_join_frame: false,
            one_message_per_frame: false,
            send_interval: Duration::ZERO,
            close_timeout: Duration::from_secs(5),
            blocked_rooms: Vec::new(),
            handshake_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            room_idle: Duration::from_secs(60),
            outbox_capacity: 1024,
            coalesce_after: 64,
        }
    }
}

/// The resolved configuration of a server.
///
/// ```
/// let mut config = nimbus_server::Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// config.cloud.max_clients_per_room = 2;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Group-commit window of the store.
    pub flush_interval: Duration,
    /// Cloud protocol limits and policies.
    pub cloud: CloudLimits,
    /// Document room limits and policies.
    pub doc: DocLimits,
    /// IPC routes, when enabled.
    pub ipc: Option<IpcConfig>,
    /// The gateway at `/gateway` (served when it has tokens).
    pub gateway: GatewayConfig,
    /// Redis URL of the backplane (`--redis`); `None`: single node.
    pub redis: Option<String>,
    /// Per-connection bounds of the edge (`docs/security.md`).
    pub edge: crate::edge::EdgeConfig,
}

/// Where and how `nimbus serve` exposes its IPC routes.
#[derive(Clone)]
pub struct IpcConfig {
    /// Host to bind (loopback unless a secret is set).
    pub host: String,
    /// Main port (0: any free port).
    pub port: u16,
    /// Multicast (discovery) port (0: any free port).
    pub multicast_port: u16,
    /// Shared secret.
    pub secret: Option<String>,
}

impl std::fmt::Debug for IpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("multicast_port", &self.multicast_port)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            data_dir: PathBuf::from("./nimbus-data"),
            flush_interval: Duration::from_millis(100),
            cloud: CloudLimits::default(),
            doc: DocLimits::default(),
            ipc: None,
            gateway: GatewayConfig::default(),
            redis: None,
            edge: crate::edge::EdgeConfig::default(),
        }
    }
}

fn positive(key: &'static str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Invalid {
            key,
            reason: "must be at least 1".into(),
        }),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

impl Config {
    /// Fill in defaults and check ranges.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let d = Config::default();
        let dc = d.cloud;
        let profile = s.value_profile.unwrap_or(dc.profile);
        let ms =
            |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        let outbox_capacity = positive("outbox_capacity", s.outbox_capacity, dc.outbox_capacity)?;
        let coalesce_after = s.coalesce_after.unwrap_or(dc.coalesce_after);
        if coalesce_after > outbox_capacity {
            return Err(ConfigError::Invalid {
                key: "coalesce_after",
                reason: format!("must not exceed outbox_capacity ({outbox_capacity})"),
            });
        }
        let ping_interval = ms(s.ping_interval_ms, dc.ping_interval);
        if ping_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "ping_interval_ms",
                reason: "must be at least 1".into(),
            });
        }
        let ipc = s.ipc.unwrap_or(false).then(|| IpcConfig {
            host: s.ipc_host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: s.ipc_port.unwrap_or(8000),
            multicast_port: s.ipc_multicast_port.unwrap_or(20000),
            secret: s.ipc_secret.clone().filter(|k| !k.is_empty()),
        });
        let dd = d.doc;
        let doc = DocLimits {
            max_message_bytes: positive(
                "doc_max_message_bytes",
                s.doc_max_message_bytes,
                dd.max_message_bytes,
            )?,
            max_doc_bytes: positive("doc_max_bytes", s.doc_max_bytes, dd.max_doc_bytes)?,
            max_rooms: positive("doc_max_rooms", s.doc_max_rooms, dd.max_rooms)?,
            tokens: s.doc_tokens.unwrap_or_default(),
            awareness_timeout: ms(s.doc_awareness_timeout_ms, dd.awareness_timeout),
            compaction: crate::store::CompactionPolicy {
                max_updates: positive(
                    "doc_compact_updates",
                    s.doc_compact_updates,
                    dd.compaction.max_updates,
                )?,
                max_bytes: positive(
                    "doc_compact_bytes",
                    s.doc_compact_bytes,
                    dd.compaction.max_bytes,
                )?,
            },
            ..dd.clone()
        };
        let rate = |per_second: Option<u32>, burst: Option<u32>, d: nimbus_doc::RateLimit| {
            nimbus_doc::RateLimit {
                per_second: per_second.unwrap_or(d.per_second),
                burst: burst.unwrap_or(d.burst).max(1),
            }
        };
        let doc = DocLimits {
            queue_bytes: positive("doc_queue_bytes", s.doc_queue_bytes, dd.queue_bytes)?,
            send_timeout: ms(s.doc_send_timeout_ms, dd.send_timeout),
            sync_send_timeout: ms(s.doc_sync_send_timeout_ms, dd.sync_send_timeout),
            update_rate: rate(s.doc_update_rate, s.doc_update_burst, dd.update_rate),
            awareness_rate: rate(
                s.doc_awareness_rate,
                s.doc_awareness_burst,
                dd.awareness_rate,
            ),
            rate_abuse_after: ms(s.doc_rate_abuse_ms, dd.rate_abuse_after),
            awareness_max_ids: positive(
                "doc_awareness_max_ids",
                s.doc_awareness_max_ids,
                dd.awareness_max_ids,
            )?,
            awareness_max_state_bytes: positive(
                "doc_awareness_max_state_bytes",
                s.doc_awareness_max_state_bytes,
                dd.awareness_max_state_bytes,
            )?,
            awareness_chunk_bytes: positive(
                "doc_awareness_chunk_bytes",
                s.doc_awareness_chunk_bytes,
                dd.awareness_chunk_bytes,
            )?,
            awareness: nimbus_doc::AwarenessLimits {
                max_states: positive(
                    "doc_awareness_max_states",
                    s.doc_awareness_max_states,
                    dd.awareness.max_states,
                )?,
                max_bytes: positive(
                    "doc_awareness_max_room_bytes",
                    s.doc_awareness_max_room_bytes,
                    dd.awareness.max_bytes,
                )?,
                ..dd.awareness
            },
            ..doc
        };
        for (key, v) in [
            ("doc_send_timeout_ms", doc.send_timeout),
            ("doc_sync_send_timeout_ms", doc.sync_send_timeout),
            ("doc_rate_abuse_ms", doc.rate_abuse_after),
        ] {
            if v.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if doc.awareness_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "doc_awareness_timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        let dg = d.gateway;
        let mut tokens = Vec::new();
        for spec in s
            .gateway_token
            .iter()
            .flatten()
            .filter(|t| !t.trim().is_empty())
        {
            tokens.push(GatewayToken::parse(spec.trim()).map_err(|reason| {
                ConfigError::Invalid {
                    key: "gateway_token",
                    reason,
                }
            })?);
        }
        let heartbeat_interval = ms(s.gateway_heartbeat_interval_ms, dg.heartbeat_interval);
        if heartbeat_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "gateway_heartbeat_interval_ms",
                reason: "must be at least 1".into(),
            });
        }
        let gateway = GatewayConfig {
            tokens,
            heartbeat_interval,
            resume_window: ms(s.gateway_resume_window_ms, dg.resume_window),
            replay_buffer: positive(
                "gateway_replay_buffer",
                s.gateway_replay_buffer,
                dg.replay_buffer,
            )?,
            max_concurrency: match s.gateway_max_concurrency {
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        key: "gateway_max_concurrency",
                        reason: "must be at least 1".into(),
                    })
                }
                Some(n) => n,
                None => dg.max_concurrency,
            },
            identify_window: ms(s.gateway_identify_window_ms, dg.identify_window),
            identify_timeout: ms(s.gateway_identify_timeout_ms, dg.identify_timeout),
            session_start_limit: s
                .gateway_session_start_limit
                .unwrap_or(dg.session_start_limit),
            drain_grace: dg.drain_grace,
            max_dispatch_bytes: GatewayConfig::dispatch_bound(doc.max_message_bytes),
        };
        Ok(Config {
            edge: crate::edge::EdgeConfig::from_settings(&s.edge).map_err(|e| {
                ConfigError::Invalid {
                    key: e.key,
                    reason: e.reason,
                }
            })?,
            redis: s.redis.clone().filter(|u| !u.trim().is_empty()),
            doc,
            gateway,
            ipc,
            listen: s.listen.unwrap_or(d.listen),
            data_dir: s.data_dir.unwrap_or(d.data_dir),
            flush_interval: ms(s.flush_interval_ms, d.flush_interval),
            cloud: CloudLimits {
                profile,
                max_clients_per_room: positive(
                    "max_clients_per_room",
                    s.max_clients_per_room,
                    dc.max_clients_per_room,
                )?,
                max_variables_per_room: s
                    .max_variables_per_room
                    .unwrap_or(dc.max_variables_per_room),
                max_rooms: positive("max_rooms", s.max_rooms, dc.max_rooms)?,
                max_name_len: s.max_name_len.unwrap_or(dc.max_name_len),
                max_value_len: s.max_value_len.unwrap_or(profile.default_max_len()),
                max_frame_bytes: positive(
                    "max_frame_bytes",
                    s.max_frame_bytes,
                    dc.max_frame_bytes,
                )?,
                max_username_len: positive(
                    "max_username_len",
                    s.max_username_len,
                    dc.max_username_len,
                )?,
                unique_usernames: s.unique_usernames.unwrap_or(dc.unique_usernames),
                require_user_agent: s.require_user_agent.unwrap_or(dc.require_user_agent),
                reject_session_cookie: s.reject_session_cookie.unwrap_or(dc.reject_session_cookie),
                allow_rename: s.allow_rename.unwrap_or(dc.allow_rename),
                allow_delete: s.allow_delete.unwrap_or(dc.allow_delete),
                empty_join_frame: s.empty_join_frame.unwrap_or(dc.empty_join_frame),
                one_message_per_frame: s.one_message_per_frame.unwrap_or(dc.one_message_per_frame),
                send_interval: ms(s.send_interval_ms, dc.send_interval),
                close_timeout: dc.close_timeout,
                blocked_rooms: s.blocked_rooms.unwrap_or_default(),
                handshake_timeout: ms(s.handshake_timeout_ms, dc.handshake_timeout),
                ping_interval,
                room_idle: ms(s.room_idle_ms, dc.room_idle),
                outbox_capacity,
                coalesce_after,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:1\"\nmax_rooms = 5\nvalue_profile = \"scratch\"\n",
        )
        .expect("valid toml");
        let flags = Settings {
            listen: Some("127.0.0.1:2".parse().expect("addr")),
            ..Settings::default()
        };
        let c = Config::from_settings(flags.merge(file)).expect("valid");
        assert!(!c.gateway.enabled(), "no token: no gateway");
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.cloud.max_rooms, 5);
        assert_eq!(c.cloud.profile, ValueProfile::Scratch);
        assert_eq!(c.cloud.max_value_len, 256, "scratch profile default length");
        assert_eq!(c.cloud.max_clients_per_room, 128);
    }

    #[test]
    fn doc_token_rules_come_from_flags_env_lists_and_files() {
        let file: Settings =
            toml::from_str("doc_tokens = [\"notes:ro:abc\", \"*:rw:root\"]\ndoc_max_bytes = 10\n")
                .expect("valid toml");
        let c = Config::from_settings(file).expect("valid");
        assert_eq!(c.doc.tokens.len(), 2);
        assert_eq!(c.doc.tokens[0].access, crate::doc::Access::ReadOnly);
        assert_eq!(c.doc.max_doc_bytes, 10);
        assert!(toml::from_str::<Settings>("doc_tokens = [\"notes:xx:abc\"]").is_err());
    }

    #[test]
    fn doc_connection_bounds_come_from_settings_and_reach_the_serve_options() {
        let file: Settings = toml::from_str(
            "doc_queue_bytes = 1000\ndoc_update_rate = 0\ndoc_awareness_burst = 5\n\
             doc_awareness_max_states = 3\ndoc_send_timeout_ms = 1500\n",
        )
        .expect("valid toml");
        let c = Config::from_settings(file).expect("valid");
        let opts = c.doc.serve_options(true);
        assert!(opts.read_only);
        assert_eq!(opts.queue_bytes, 1000);
        assert_eq!(opts.update_rate.per_second, 0);
        assert_eq!(opts.awareness_rate.burst, 5);
        assert_eq!(opts.send_timeout, Duration::from_millis(1500));
        assert_eq!(opts.sync_send_timeout, Duration::from_secs(60));
        assert_eq!(c.doc.room_options().awareness.max_states, 3);
        let zero: Settings = toml::from_str("doc_queue_bytes = 0\n").expect("valid toml");
        assert!(Config::from_settings(zero).is_err());
    }

    #[test]
    fn gateway_settings() {
        let file: Settings =
            toml::from_str("gateway_token = [\"a\", \"b=cloud\"]\ngateway_replay_buffer = 7\n")
                .expect("valid toml");
        let c = Config::from_settings(Settings::default().merge(file)).expect("valid");
        assert!(c.gateway.enabled());
        assert_eq!(c.gateway.tokens.len(), 2);
        assert_eq!(c.gateway.replay_buffer, 7);
        let bad = Settings {
            gateway_token: Some(vec!["x=nope".into()]),
            ..Settings::default()
        };
        assert!(Config::from_settings(bad).is_err());
    }

    #[test]
    fn redis_is_off_by_default_and_a_flag_wins_over_the_file() {
        assert_eq!(
            Config::from_settings(Settings::default())
                .expect("valid")
                .redis,
            None
        );
        let file: Settings =
            toml::from_str("redis = \"redis://file:6379/\"\n").expect("valid toml");
        let c = Config::from_settings(Settings::default().merge(file.clone())).expect("valid");
        assert_eq!(c.redis.as_deref(), Some("redis://file:6379/"));
        let flags = Settings {
            redis: Some("redis://flag:6379/".into()),
            ..Settings::default()
        };
        let c = Config::from_settings(flags.merge(file)).expect("valid");
        assert_eq!(c.redis.as_deref(), Some("redis://flag:6379/"));
        let empty = Settings {
            redis: Some("  ".into()),
            ..Settings::default()
        };
        assert_eq!(Config::from_settings(empty).expect("valid").redis, None);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<Settings>("listn = \"x\"").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let s = Settings {
            max_rooms: Some(0),
            ..Settings::default()
        };
        assert!(matches!(
            Config::from_settings(s),
            Err(ConfigError::Invalid {
                key: "max_rooms",
                ..
            })
        ));
        let s = Settings {
            coalesce_after: Some(10),
            outbox_capacity: Some(5),
            ..Settings::default()
        };
        assert!(Config::from_settings(s).is_err());
    }
}
