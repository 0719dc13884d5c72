//! The cloud protocol's settings ([`CloudSettings`]: flags, `NIMBUS_*` environment, keys of
//! the config file) and the limits they resolve to ([`CloudLimits`], whose `Default` holds
//! every default).

use std::time::Duration;

use nimbus_proto::cloud::ValueProfile;
use serde::Deserialize;

use crate::setting::{millis, nonzero, nonzero_millis, InvalidSetting};

/// The cloud protocol's settings, each optional so that flags, environment and file can be
/// layered. Durations are in milliseconds.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct CloudSettings {
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
    /// Queue length from which a newer value replaces a queued older value of the same variable [default: 256].
    #[arg(long, env = "NIMBUS_COALESCE_AFTER")]
    pub coalesce_after: Option<usize>,
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
            coalesce_after: 256,
        }
    }
}

impl CloudLimits {
    /// Fill in defaults and check ranges.
    pub fn from_settings(s: &CloudSettings) -> Result<CloudLimits, InvalidSetting> {
        let d = CloudLimits::default();
        let profile = s.value_profile.unwrap_or(d.profile);
        let outbox_capacity = nonzero("outbox_capacity", s.outbox_capacity, d.outbox_capacity)?;
        let coalesce_after = s.coalesce_after.unwrap_or(d.coalesce_after);
        if coalesce_after > outbox_capacity {
            return Err(InvalidSetting {
                key: "coalesce_after",
                reason: format!("must not exceed outbox_capacity ({outbox_capacity})"),
            });
        }
        Ok(CloudLimits {
            profile,
            max_clients_per_room: nonzero(
                "max_clients_per_room",
                s.max_clients_per_room,
                d.max_clients_per_room,
            )?,
            max_variables_per_room: s.max_variables_per_room.unwrap_or(d.max_variables_per_room),
            max_rooms: nonzero("max_rooms", s.max_rooms, d.max_rooms)?,
            max_name_len: s.max_name_len.unwrap_or(d.max_name_len),
            // The default follows the profile.
            max_value_len: s.max_value_len.unwrap_or(profile.default_max_len()),
            max_frame_bytes: nonzero("max_frame_bytes", s.max_frame_bytes, d.max_frame_bytes)?,
            max_username_len: nonzero("max_username_len", s.max_username_len, d.max_username_len)?,
            unique_usernames: s.unique_usernames.unwrap_or(d.unique_usernames),
            require_user_agent: s.require_user_agent.unwrap_or(d.require_user_agent),
            reject_session_cookie: s.reject_session_cookie.unwrap_or(d.reject_session_cookie),
            allow_rename: s.allow_rename.unwrap_or(d.allow_rename),
            allow_delete: s.allow_delete.unwrap_or(d.allow_delete),
            empty_join_frame: s.empty_join_frame.unwrap_or(d.empty_join_frame),
            one_message_per_frame: s.one_message_per_frame.unwrap_or(d.one_message_per_frame),
            send_interval: millis(s.send_interval_ms, d.send_interval),
            close_timeout: d.close_timeout,
            blocked_rooms: s.blocked_rooms.clone().unwrap_or(d.blocked_rooms),
            handshake_timeout: millis(s.handshake_timeout_ms, d.handshake_timeout),
            ping_interval: nonzero_millis("ping_interval_ms", s.ping_interval_ms, d.ping_interval)?,
            room_idle: millis(s.room_idle_ms, d.room_idle),
            outbox_capacity,
            coalesce_after,
        })
    }
}
