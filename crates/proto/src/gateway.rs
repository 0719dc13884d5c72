//! The Discord v10 gateway protocol, IO-free: payloads, opcodes, close codes,
//! the Identify / Resume / Hello / Ready shapes, intents and [`shard_of`].
//!
//! nimbus speaks it in both directions: `nimbus-server` serves room events at
//! `/gateway`, and `nimbus-client`'s `GatewayClient` talks to Discord or nimbus.
//! See `docs/gateway.md` and `shared/protocols/gateway.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// The only API version served and spoken.
pub const API_VERSION: u8 = 10;

/// Largest payload a client may send, in bytes (larger: close 4002).
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Payloads a client may send per [`SEND_WINDOW_SECS`] on one connection (more: close 4008).
pub const SEND_LIMIT: u32 = 120;

/// Length of the send-rate window, in seconds.
pub const SEND_WINDOW_SECS: u64 = 60;

/// Length of Discord's identify-concurrency window, in seconds.
pub const IDENTIFY_WINDOW_SECS: u64 = 5;

/// Discord's production gateway (fresh Identifies go here unless `/gateway/bot` says otherwise).
pub const DISCORD_GATEWAY_URL: &str = "wss://gateway.discord.gg";

/// The 4-byte suffix of a complete zlib-stream message (`Z_SYNC_FLUSH`).
pub const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Gateway opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0: an event (`t`, `s`). Received.
    Dispatch,
    /// 1: heartbeat (both ways; from the server: "heartbeat now").
    Heartbeat,
    /// 2: start a session.
    Identify,
    /// 3: presence update.
    PresenceUpdate,
    /// 4: voice state update.
    VoiceStateUpdate,
    /// 6: resume a session.
    Resume,
    /// 7: reconnect and resume.
    Reconnect,
    /// 8: request guild members.
    RequestGuildMembers,
    /// 9: the session is invalid; `d` says whether it is resumable.
    InvalidSession,
    /// 10: first payload: the heartbeat interval.
    Hello,
    /// 11: heartbeat acknowledged.
    HeartbeatAck,
    /// 31: request soundboard sounds.
    RequestSoundboardSounds,
    /// 43: request channel info.
    RequestChannelInfo,
}

impl OpCode {
    /// The numeric opcode.
    pub const fn code(self) -> u8 {
        match self {
            OpCode::Dispatch => 0,
            OpCode::Heartbeat => 1,
            OpCode::Identify => 2,
            OpCode::PresenceUpdate => 3,
            OpCode::VoiceStateUpdate => 4,
            OpCode::Resume => 6,
            OpCode::Reconnect => 7,
            OpCode::RequestGuildMembers => 8,
            OpCode::InvalidSession => 9,
            OpCode::Hello => 10,
            OpCode::HeartbeatAck => 11,
            OpCode::RequestSoundboardSounds => 31,
            OpCode::RequestChannelInfo => 43,
        }
    }

    /// The opcode for a number, `None` for unknown ones (5 does not exist).
    pub const fn from_code(code: u64) -> Option<OpCode> {
        Some(match code {
            0 => OpCode::Dispatch,
            1 => OpCode::Heartbeat,
            2 => OpCode::Identify,
            3 => OpCode::PresenceUpdate,
            4 => OpCode::VoiceStateUpdate,
            6 => OpCode::Resume,
            7 => OpCode::Reconnect,
            8 => OpCode::RequestGuildMembers,
            9 => OpCode::InvalidSession,
            10 => OpCode::Hello,
            11 => OpCode::HeartbeatAck,
            31 => OpCode::RequestSoundboardSounds,
            43 => OpCode::RequestChannelInfo,
            _ => return None,
        })
    }
}

/// One gateway payload: `{"op": int, "d": any, "s": int|null, "t": string|null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Opcode (kept numeric so unknown ones can be reported as 4001).
    pub op: u64,
    /// Data.
    #[serde(default)]
    pub d: Value,
    /// Sequence number (dispatches only).
    #[serde(default)]
    pub s: Option<u64>,
    /// Event name (dispatches only).
    #[serde(default)]
    pub t: Option<String>,
}

impl Payload {
    /// A non-dispatch payload.
    pub fn new(op: OpCode, d: Value) -> Payload {
        Payload {
            op: u64::from(op.code()),
            d,
            s: None,
            t: None,
        }
    }

    /// A dispatch (op 0) with sequence `s` and event name `t`.
    pub fn dispatch(s: u64, t: &str, d: Value) -> Payload {
        Payload {
            op: 0,
            d,
            s: Some(s),
            t: Some(t.to_owned()),
        }
    }

    /// The opcode, `None` if unknown.
    pub fn opcode(&self) -> Option<OpCode> {
        OpCode::from_code(self.op)
    }

    /// Encode as JSON text (all four fields present).
    pub fn encode(&self) -> String {
        // Serialising a Value-based struct cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a received payload could not be decoded (the server answers 4002).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// More than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    /// Not JSON, or not a payload object with a numeric `op`.
    #[error("not a gateway payload: {0}")]
    Invalid(String),
}

/// Decode a payload sent by a client, enforcing [`MAX_PAYLOAD_BYTES`].
pub fn decode_client_payload(text: &str) -> Result<Payload, DecodeError> {
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(text.len()));
    }
    decode_payload(text)
}

/// Decode any payload (no size limit: server payloads may be large).
pub fn decode_payload(text: &str) -> Result<Payload, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(DecodeError::Invalid("not a JSON object".into()));
    }
    serde_json::from_value::<Payload>(value).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Gateway close codes 4000–4014 (4006 does not exist in v10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 4000: unknown error (also: missed heartbeats, draining). Resumable.
    UnknownError,
    /// 4001: unknown opcode or invalid payload. Resumable.
    UnknownOpcode,
    /// 4002: decode error (invalid JSON or more than 4096 bytes). Resumable.
    DecodeError,
    /// 4003: a payload before Identify, or the session was invalidated. Re-identify.
    NotAuthenticated,
    /// 4004: the token is wrong. Fatal.
    AuthenticationFailed,
    /// 4005: a second Identify on one connection. Resumable.
    AlreadyAuthenticated,
    /// 4007: Resume with a `seq` that was never sent. Re-identify.
    InvalidSeq,
    /// 4008: more than 120 payloads in 60 s. Resumable.
    RateLimited,
    /// 4009: the session timed out (nothing arrived in time). Re-identify.
    SessionTimedOut,
    /// 4010: invalid `shard`. Fatal.
    InvalidShard,
    /// 4011: sharding required. Fatal.
    ShardingRequired,
    /// 4012: invalid API version. Fatal.
    InvalidApiVersion,
    /// 4013: unknown intent bits. Fatal.
    InvalidIntents,
    /// 4014: intents the token may not use. Fatal.
    DisallowedIntents,
}

/// What a client does after a close (protocol §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseAction {
    /// Reconnect to the resume URL and Resume.
    Resume,
    /// Drop the session; Identify on the original URL.
    Reidentify,
    /// Stop: never retry.
    Fatal,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 14] = [
        CloseCode::UnknownError,
        CloseCode::UnknownOpcode,
        CloseCode::DecodeError,
        CloseCode::NotAuthenticated,
        CloseCode::AuthenticationFailed,
        CloseCode::AlreadyAuthenticated,
        CloseCode::InvalidSeq,
        CloseCode::RateLimited,
        CloseCode::SessionTimedOut,
        CloseCode::InvalidShard,
        CloseCode::ShardingRequired,
        CloseCode::InvalidApiVersion,
        CloseCode::InvalidIntents,
        CloseCode::DisallowedIntents,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::UnknownError => 4000,
            CloseCode::UnknownOpcode => 4001,
            CloseCode::DecodeError => 4002,
            CloseCode::NotAuthenticated => 4003,
            CloseCode::AuthenticationFailed => 4004,
            CloseCode::AlreadyAuthenticated => 4005,
            CloseCode::InvalidSeq => 4007,
            CloseCode::RateLimited => 4008,
            CloseCode::SessionTimedOut => 4009,
            CloseCode::InvalidShard => 4010,
            CloseCode::ShardingRequired => 4011,
            CloseCode::InvalidApiVersion => 4012,
            CloseCode::InvalidIntents => 4013,
            CloseCode::DisallowedIntents => 4014,
        }
    }

    /// The code for a number, `None` outside 4000–4014 (and for 4006).
    pub const fn from_code(code: u16) -> Option<CloseCode> {
        Some(match code {
            4000 => CloseCode::UnknownError,
            4001 => CloseCode::UnknownOpcode,
            4002 => CloseCode::DecodeError,
            4003 => CloseCode::NotAuthenticated,
            4004 => CloseCode::AuthenticationFailed,
            4005 => CloseCode::AlreadyAuthenticated,
            4007 => CloseCode::InvalidSeq,
            4008 => CloseCode::RateLimited,
            4009 => CloseCode::SessionTimedOut,
            4010 => CloseCode::InvalidShard,
            4011 => CloseCode::ShardingRequired,
            4012 => CloseCode::InvalidApiVersion,
            4013 => CloseCode::InvalidIntents,
            4014 => CloseCode::DisallowedIntents,
            _ => return None,
        })
    }

    /// The documented meaning (also used as the close reason).
    pub const fn meaning(self) -> &'static str {
        match self {
            CloseCode::UnknownError => "unknown error",
            CloseCode::UnknownOpcode => "unknown opcode or invalid payload",
            CloseCode::DecodeError => "decode error",
            CloseCode::NotAuthenticated => "not authenticated",
            CloseCode::AuthenticationFailed => "authentication failed",
            CloseCode::AlreadyAuthenticated => "already authenticated",
            CloseCode::InvalidSeq => "invalid seq",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SessionTimedOut => "session timed out",
            CloseCode::InvalidShard => "invalid shard",
            CloseCode::ShardingRequired => "sharding required",
            CloseCode::InvalidApiVersion => "invalid API version",
            CloseCode::InvalidIntents => "invalid intent(s)",
            CloseCode::DisallowedIntents => "disallowed intent(s)",
        }
    }

    /// Never reconnect after this code (4004, 4010–4014).
    pub const fn is_fatal(self) -> bool {
        matches!(self.action(), CloseAction::Fatal)
    }

    /// The session survives this code: reconnect and Resume.
    pub const fn is_resumable(self) -> bool {
        matches!(self.action(), CloseAction::Resume)
    }

    /// What a client does after this code.
    pub const fn action(self) -> CloseAction {
        match self {
            CloseCode::UnknownError
            | CloseCode::UnknownOpcode
            | CloseCode::DecodeError
            | CloseCode::AlreadyAuthenticated
            | CloseCode::RateLimited => CloseAction::Resume,
            CloseCode::NotAuthenticated | CloseCode::InvalidSeq | CloseCode::SessionTimedOut => {
                CloseAction::Reidentify
            }
            CloseCode::AuthenticationFailed
            | CloseCode::InvalidShard
            | CloseCode::ShardingRequired
            | CloseCode::InvalidApiVersion
            | CloseCode::InvalidIntents
            | CloseCode::DisallowedIntents => CloseAction::Fatal,
        }
    }
}

/// The action for any WebSocket close code (or none: a bare TCP drop): gateway codes by
/// [`CloseCode::action`], everything else (1000, 1001, 1006, ...) → Resume (the server
/// answers op 9 if the session is gone).
pub fn close_action(code: Option<u16>) -> CloseAction {
    code.and_then(CloseCode::from_code)
        .map_or(CloseAction::Resume, CloseCode::action)
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

/// Intent bits of nimbus's gateway (Discord's own bits mean other things).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Intents(pub u64);

impl Intents {
    /// Bit 0: `CLOUD_SET`, `CLOUD_CREATE`, `CLOUD_DELETE`, `CLOUD_RENAME`.
    pub const CLOUD: Intents = Intents(1);
    /// Bit 1: `ROOM_JOIN`, `ROOM_LEAVE`.
    pub const ROOMS: Intents = Intents(1 << 1);
    /// Bit 2: `DOC_UPDATE`.
    pub const DOC: Intents = Intents(1 << 2);
    /// Every defined bit.
    pub const ALL: Intents = Intents(0b111);

    /// The bits, or `None` if any undefined bit is set (4013).
    pub const fn from_bits(bits: u64) -> Option<Intents> {
        if bits & !Intents::ALL.0 == 0 {
            Some(Intents(bits))
        } else {
            None
        }
    }

    /// All bits of `other` are set.
    pub const fn contains(self, other: Intents) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Union.
    pub const fn union(self, other: Intents) -> Intents {
        Intents(self.0 | other.0)
    }

    /// Parse `cloud,rooms,doc` (also `room`, `all`, or a number).
    pub fn parse(text: &str) -> Result<Intents, String> {
        if let Ok(n) = text.trim().parse::<u64>() {
            return Intents::from_bits(n).ok_or_else(|| format!("undefined intent bits in {n}"));
        }
        let mut out = Intents(0);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out = out.union(match part.to_ascii_lowercase().as_str() {
                "cloud" => Intents::CLOUD,
                "room" | "rooms" => Intents::ROOMS,
                "doc" | "docs" => Intents::DOC,
                "all" => Intents::ALL,
                other => return Err(format!("unknown intent {other:?} (cloud, rooms, doc, all)")),
            });
        }
        Ok(out)
    }
}

/// The room events dispatched by nimbus, with their names (`t`) and intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A variable changed (`CLOUD_SET`).
    CloudSet,
    /// A variable was created (its first set, `CLOUD_CREATE`).
    CloudCreate,
    /// A variable was deleted (`CLOUD_DELETE`).
    CloudDelete,
    /// A variable was renamed (`CLOUD_RENAME`).
    CloudRename,
    /// A client joined a room (`ROOM_JOIN`).
    RoomJoin,
    /// A client left a room (`ROOM_LEAVE`).
    RoomLeave,
    /// A Yjs document changed (`DOC_UPDATE`).
    DocUpdate,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        EventKind::CloudSet,
        EventKind::CloudCreate,
        EventKind::CloudDelete,
        EventKind::CloudRename,
        EventKind::RoomJoin,
        EventKind::RoomLeave,
        EventKind::DocUpdate,
    ];

    /// The dispatch name (`t`).
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::CloudSet => "CLOUD_SET",
            EventKind::CloudCreate => "CLOUD_CREATE",
            EventKind::CloudDelete => "CLOUD_DELETE",
            EventKind::CloudRename => "CLOUD_RENAME",
            EventKind::RoomJoin => "ROOM_JOIN",
            EventKind::RoomLeave => "ROOM_LEAVE",
            EventKind::DocUpdate => "DOC_UPDATE",
        }
    }

    /// The intent that selects it.
    pub const fn intent(self) -> Intents {
        match self {
            EventKind::CloudSet
            | EventKind::CloudCreate
            | EventKind::CloudDelete
            | EventKind::CloudRename => Intents::CLOUD,
            EventKind::RoomJoin | EventKind::RoomLeave => Intents::ROOMS,
            EventKind::DocUpdate => Intents::DOC,
        }
    }
}

/// Identify `properties`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Properties {
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Library name.
    #[serde(default)]
    pub browser: String,
    /// Library name.
    #[serde(default)]
    pub device: String,
}

/// Op 2 `d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identify {
    /// Bot token (bare or with `Bot `).
    pub token: String,
    /// Intent bits.
    pub intents: u64,
    /// Client description.
    #[serde(default)]
    pub properties: Properties,
    /// `[shard_id, num_shards]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<[u64; 2]>,
    /// Payload compression (not supported by nimbus's server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// Large guild threshold (ignored by nimbus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_threshold: Option<u64>,
    /// Initial presence (ignored by nimbus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Value>,
}

/// Op 6 `d`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Bot token.
    pub token: String,
    /// From READY.
    pub session_id: String,
    /// Last sequence received.
    pub seq: u64,
}

/// Op 10 `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Milliseconds between heartbeats.
    pub heartbeat_interval: u64,
}

/// READY `d` (the fields a client needs; others are kept by the client as raw JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// API version.
    pub v: u8,
    /// The session to resume.
    pub session_id: String,
    /// Where to Resume.
    pub resume_gateway_url: String,
    /// `[shard_id, num_shards]`, when sent in Identify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<[u64; 2]>,
    /// The bot user.
    #[serde(default)]
    pub user: Value,
    /// Guilds (always empty on nimbus).
    #[serde(default)]
    pub guilds: Vec<Value>,
    /// The application (`{"id", "flags"}` on nimbus).
    #[serde(default)]
    pub application: Value,
    /// The intents the session was identified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intents: Option<u64>,
}

impl Hello {
    /// The op 10 payload.
    pub fn payload(self) -> Payload {
        // A struct of one integer always serialises.
        Payload::new(
            OpCode::Hello,
            serde_json::to_value(self).unwrap_or_default(),
        )
    }
}

impl Ready {
    /// The READY `d` as JSON text.
    pub fn to_json(&self) -> String {
        // Strings, integers and `Value`s always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The token without its `Bot ` prefix.
pub fn strip_bot_prefix(token: &str) -> &str {
    token.strip_prefix("Bot ").unwrap_or(token).trim()
}

/// Query parameters of a gateway connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// `v` (missing: 10, as Discord's docs example URLs always carry it but lenient clients omit it).
    pub version: Option<u64>,
    /// `encoding` (missing: `json`).
    pub encoding: String,
    /// `compress`, if any.
    pub compress: Option<String>,
}

/// Parse the query string (without `?`) of a gateway URL. `v` that is not a number
/// becomes `Some(0)` (→ 4012).
pub fn parse_connect_query(query: &str) -> ConnectParams {
    let mut p = ConnectParams {
        version: None,
        encoding: "json".into(),
        compress: None,
    };
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" => p.version = Some(v.parse().unwrap_or(0)),
            "encoding" => p.encoding = v.to_owned(),
            "compress" => p.compress = Some(v.to_owned()),
            _ => {}
        }
    }
    p
}

/// FNV-1a, 64 bit: a stable hash for non-numeric room keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard (`0..num_shards`) that receives room `room`'s events.
///
/// - A room key that is a decimal snowflake (a `u64` ≥ 2²²) uses Discord's formula
///   `(id >> 22) % num_shards`;
/// - any other key (Scratch project ids are small numbers, names are text) uses
///   `fnv1a_64(key bytes) % num_shards`, stable across processes and versions;
/// - the empty key (room-less events) and `num_shards ≤ 1` give shard 0.
pub fn shard_of(room: &str, num_shards: u64) -> u64 {
    if num_shards <= 1 || room.is_empty() {
        return 0;
    }
    if room.bytes().all(|b| b.is_ascii_digit()) && !room.starts_with('0') {
        if let Ok(id) = room.parse::<u64>() {
            if id >= 1 << 22 {
                return (id >> 22) % num_shards;
            }
        }
    }
    fnv1a(room.as_bytes()) % num_shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_roundtrip_and_shape() {
        let p = Payload::dispatch(42, "CLOUD_SET", json!({"room":"1"}));
        let text = p.encode();
        assert_eq!(
            text, r#"{"op":0,"d":{"room":"1"},"s":42,"t":"CLOUD_SET"}"#,
            "field order and null handling"
        );
        assert_eq!(decode_payload(&text), Ok(p));
        let hb = Payload::new(OpCode::Heartbeat, Value::Null).encode();
        assert_eq!(hb, r#"{"op":1,"d":null,"s":null,"t":null}"#);
    }

    #[test]
    fn size_limit_and_garbage() {
        let big = format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        assert!(matches!(
            decode_client_payload(&big),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(decode_payload(&big).is_ok());
        assert!(decode_client_payload("nope").is_err());
        assert!(decode_client_payload(r#"{"d":1}"#).is_err());
        assert!(decode_client_payload(r#"{"op":"1"}"#).is_err());
        assert!(decode_client_payload(r#"[1]"#).is_err());
        let p = decode_client_payload(r#"{"op":1}"#).expect("minimal");
        assert_eq!(p.d, Value::Null);
    }

    #[test]
    fn opcodes_roundtrip() {
        for n in 0..64u64 {
            if let Some(op) = OpCode::from_code(n) {
                assert_eq!(u64::from(op.code()), n);
            }
        }
        assert_eq!(OpCode::from_code(5), None);
    }

    #[test]
    fn close_codes() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(!(c.is_fatal() && c.is_resumable()));
        }
        assert_eq!(CloseCode::from_code(4006), None);
        let fatal: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| c.is_fatal())
            .map(|c| c.code())
            .collect();
        assert_eq!(fatal, [4004, 4010, 4011, 4012, 4013, 4014]);
        let resume: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| c.is_resumable())
            .map(|c| c.code())
            .collect();
        assert_eq!(resume, [4000, 4001, 4002, 4005, 4008]);
        assert_eq!(close_action(None), CloseAction::Resume);
        assert_eq!(close_action(Some(1000)), CloseAction::Resume);
        assert_eq!(close_action(Some(4009)), CloseAction::Reidentify);
    }

    #[test]
    fn intents() {
        assert_eq!(Intents::from_bits(7), Some(Intents::ALL));
        assert_eq!(Intents::from_bits(8), None);
        assert_eq!(Intents::parse("cloud,doc"), Ok(Intents(5)));
        assert_eq!(Intents::parse("2"), Ok(Intents::ROOMS));
        assert!(Intents::parse("guilds").is_err());
        assert!(Intents::ALL.contains(EventKind::DocUpdate.intent()));
        assert!(!Intents::CLOUD.contains(EventKind::RoomJoin.intent()));
    }

    #[test]
    fn identify_shapes() {
        let id: Identify = serde_json::from_value(json!({
            "token": "Bot abc", "intents": 1,
            "properties": {"os": "linux", "browser": "x", "device": "x"},
            "shard": [0, 2]
        }))
        .expect("identify");
        assert_eq!(id.shard, Some([0, 2]));
        assert_eq!(strip_bot_prefix(&id.token), "abc");
        assert_eq!(strip_bot_prefix("abc"), "abc");
    }

    #[test]
    fn shard_function() {
        assert_eq!(shard_of("", 4), 0);
        assert_eq!(shard_of("anything", 1), 0);
        let snowflake: u64 = 175_928_847_299_117_063;
        assert_eq!(shard_of(&snowflake.to_string(), 16), (snowflake >> 22) % 16);
        assert_eq!(shard_of("123", 4), fnv1a(b"123") % 4);
        assert_eq!(shard_of("lobby", 7), shard_of("lobby", 7));
    }

    #[test]
    fn connect_query() {
        let p = parse_connect_query("v=10&encoding=json&compress=zlib-stream");
        assert_eq!(p.version, Some(10));
        assert_eq!(p.compress.as_deref(), Some("zlib-stream"));
        assert_eq!(parse_connect_query("").version, None);
        assert_eq!(parse_connect_query("v=x").version, Some(0));
    }
}
