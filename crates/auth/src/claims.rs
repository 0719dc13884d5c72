//! What a verified token grants: [`Identity`], per [`Capability`] a [`RoomSet`] of
//! [`Pattern`]s with a [`Mode`], and the gateway intents.
//!
//! The claim layout (`docs/tokens.md`):
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600,
//!  "nimbus": {"doc": {"rw": ["notes/*"], "ro": ["public/*"]},
//!             "cloud": {"rw": ["12345"]},
//!             "gateway": {"ro": ["*"], "intents": 5},
//!             "api": {"rw": ["*"]}}}
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::Deserialize;

use crate::error::TokenError;
use crate::{MAX_PATTERNS, MAX_PATTERN_BYTES, MAX_SUB_BYTES};

/// A part of nimbus a token can grant rooms of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Scratch cloud rooms (`/`): the room is the project id.
    Cloud,
    /// Document rooms (`/doc/{room}`).
    Doc,
    /// The bot gateway (`/gateway`); the token also carries its intents.
    Gateway,
    /// The HTTP API.
    Api,
}

impl Capability {
    /// Every capability, in claim order.
    pub const ALL: [Capability; 4] = [
        Capability::Cloud,
        Capability::Doc,
        Capability::Gateway,
        Capability::Api,
    ];

    /// The name used in the `nimbus` claim: `cloud`, `doc`, `gateway`, `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Cloud => "cloud",
            Capability::Doc => "doc",
            Capability::Gateway => "gateway",
            Capability::Api => "api",
        }
    }

    fn index(self) -> usize {
        match self {
            Capability::Cloud => 0,
            Capability::Doc => 1,
            Capability::Gateway => 2,
            Capability::Api => 3,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown capability {s:?} (cloud, doc, gateway, api)"))
    }
}

/// What the bearer may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
}

impl Mode {
    /// `rw` or `ro`, as in the claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadWrite => "rw",
            Mode::ReadOnly => "ro",
        }
    }

    /// The wider of two modes: read-write wins.
    fn max(self, other: Mode) -> Mode {
        if self == Mode::ReadWrite || other == Mode::ReadWrite {
            Mode::ReadWrite
        } else {
            Mode::ReadOnly
        }
    }
}

/// A room pattern: an exact room name, or a prefix ending in `*`.
///
/// `notes/*` matches every room whose name starts with `notes/` (`notes/a`, `notes/a/b`,
/// and `notes/` itself, but not `notes`); `*` alone matches every room. A `*` anywhere but
/// at the end is refused, so no pattern means something its author did not expect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this room.
    Exact(String),
    /// Every room whose name starts with this (empty: every room).
    Prefix(String),
}

impl Pattern {
    /// Parse one pattern: 1 to [`MAX_PATTERN_BYTES`] bytes, no control characters, `*` only
    /// as the last character.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("empty room pattern (use * for every room)".into());
        }
        if s.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "room pattern of {} bytes (at most {MAX_PATTERN_BYTES})",
                s.len()
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("room pattern with a control character".into());
        }
        match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(Pattern::Prefix(prefix.to_owned())),
            Some(_) => Err("`*` is allowed only once, at the end of a room pattern".into()),
            None if s.contains('*') => {
                Err("`*` is allowed only at the end of a room pattern".into())
            }
            None => Ok(Pattern::Exact(s.to_owned())),
        }
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == room,
            Pattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// The rooms of one capability, each pattern with its mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomSet {
    entries: Vec<(Pattern, Mode)>,
}

impl RoomSet {
    /// Whether any pattern (read-write or read-only) matches `room`.
    pub fn contains(&self, room: &str) -> bool {
        self.access(room).is_some()
    }

    /// The mode `room` gets: read-write if any read-write pattern matches, else read-only
    /// if any read-only pattern matches, else `None`.
    pub fn access(&self, room: &str) -> Option<Mode> {
        self.entries
            .iter()
            .filter(|(p, _)| p.matches(room))
            .map(|(_, m)| *m)
            .reduce(Mode::max)
    }

    /// No pattern at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The patterns, in claim order (read-write ones first).
    pub fn patterns(&self) -> impl Iterator<Item = (&Pattern, Mode)> {
        self.entries.iter().map(|(p, m)| (p, *m))
    }
}

/// Who a verified token names, until when, and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    sub: String,
    expires_at: SystemTime,
    issuer: Option<String>,
    key_id: Option<String>,
    rooms: [RoomSet; 4],
    gateway_intents: u64,
}

impl Identity {
    /// The user (`sub`): 1 to [`MAX_SUB_BYTES`] bytes, no control characters.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// When the token expires (`exp`, without the leeway).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// `iss`, when the token has one.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The `kid` of the key that verified the token, when that key has one (for logs).
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// What the bearer may do in `room` of `cap`; read-write wins when both match.
    pub fn access(&self, cap: Capability, room: &str) -> Option<Mode> {
        self.rooms(cap).access(room)
    }

    /// The rooms of `cap` (empty when the token grants none).
    pub fn rooms(&self, cap: Capability) -> &RoomSet {
        &self.rooms[cap.index()]
    }

    /// The gateway intents (a bitmask, `nimbus.gateway.intents`; 0 when absent).
    pub fn gateway_intents(&self) -> u64 {
        self.gateway_intents
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, an integer or a fraction (floored).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NumericDate(pub(crate) u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(v) = n.as_u64() {
            return Ok(NumericDate(v));
        }
        match n.as_f64() {
            // `as` saturates: a huge value becomes u64::MAX, refused as out of range later.
            Some(v) if v.is_finite() && v >= 0.0 => Ok(NumericDate(v.floor() as u64)),
            _ => Err(serde::de::Error::custom(
                "a date is a number of seconds since 1970, not negative",
            )),
        }
    }
}

/// `aud`: one string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(all) => all.iter().any(|a| a == want),
        }
    }
}

/// The claims as signed. Unknown top-level claims (`iat`, `jti`, …) are ignored; a
/// duplicated claim is refused (serde_json refuses duplicate fields of a struct).
#[derive(Debug, Deserialize)]
pub(crate) struct RawClaims {
    pub(crate) sub: Option<String>,
    pub(crate) exp: Option<NumericDate>,
    pub(crate) nbf: Option<NumericDate>,
    pub(crate) iss: Option<String>,
    pub(crate) aud: Option<Audience>,
    #[serde(default)]
    pub(crate) nimbus: Option<RawGrants>,
}

/// `nimbus`: unknown fields are refused, so a grant this version does not know (or a typo)
/// never passes silently as something narrower or wider than meant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrants {
    cloud: Option<RawGrant>,
    doc: Option<RawGrant>,
    gateway: Option<RawGatewayGrant>,
    api: Option<RawGrant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    rw: Vec<String>,
    #[serde(default)]
    ro: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewayGrant {
    #[serde(default)]
    rw: Vec<String>,
    #[serde(default)]
    ro: Vec<String>,
    #[serde(default)]
    intents: u64,
}

fn room_set(
    cap: Capability,
    rw: Vec<String>,
    ro: Vec<String>,
    count: &mut usize,
) -> Result<RoomSet, TokenError> {
    let mut entries = Vec::with_capacity(rw.len() + ro.len());
    for (mode, list) in [(Mode::ReadWrite, rw), (Mode::ReadOnly, ro)] {
        for (i, s) in list.into_iter().enumerate() {
            *count += 1;
            if *count > MAX_PATTERNS {
                return Err(TokenError::BadClaims(format!(
                    "more than {MAX_PATTERNS} room patterns"
                )));
            }
            let p = Pattern::parse(&s).map_err(|e| {
                TokenError::BadClaims(format!("nimbus.{cap}.{}[{i}]: {e}", mode.as_str()))
            })?;
            entries.push((p, mode));
        }
    }
    Ok(RoomSet { entries })
}

/// Check `sub` and the grants, and build the identity (times are checked by the verifier).
pub(crate) fn identity(
    sub: Option<String>,
    expires_at: SystemTime,
    issuer: Option<String>,
    key_id: Option<String>,
    grants: Option<RawGrants>,
) -> Result<Identity, TokenError> {
    let sub = sub.ok_or_else(|| TokenError::BadClaims("sub is missing".into()))?;
    if sub.is_empty() {
        return Err(TokenError::BadClaims("sub is empty".into()));
    }
    if sub.len() > MAX_SUB_BYTES {
        return Err(TokenError::BadClaims(format!(
            "sub is {} bytes long (at most {MAX_SUB_BYTES})",
            sub.len()
        )));
    }
    if sub.chars().any(char::is_control) {
        return Err(TokenError::BadClaims(
            "sub contains a control character".into(),
        ));
    }
    let g = grants.unwrap_or_default();
    let mut count = 0;
    let mut grant = |cap, g: Option<RawGrant>| {
        let g = g.unwrap_or_default();
        room_set(cap, g.rw, g.ro, &mut count)
    };
    let cloud = grant(Capability::Cloud, g.cloud)?;
    let doc = grant(Capability::Doc, g.doc)?;
    let api = grant(Capability::Api, g.api)?;
    let gw = g.gateway.unwrap_or_default();
    let gateway = room_set(Capability::Gateway, gw.rw, gw.ro, &mut count)?;
    Ok(Identity {
        sub,
        expires_at,
        issuer,
        key_id,
        rooms: [cloud, doc, gateway, api],
        gateway_intents: gw.intents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(json: &str) -> Result<Identity, TokenError> {
        let raw: RawGrants = serde_json::from_str(json).map_err(|e| {
            // the verifier maps a serde error of the claims to BadClaims the same way
            TokenError::BadClaims(e.to_string())
        })?;
        identity(
            Some("alice".into()),
            SystemTime::UNIX_EPOCH,
            None,
            None,
            Some(raw),
        )
    }

    #[test]
    fn exact_pattern_matches_only_its_room() {
        let p = Pattern::parse("notes").expect("pattern");
        assert!(p.matches("notes"));
        assert!(!p.matches("notes/a"));
        assert!(!p.matches("note"));
    }

    #[test]
    fn prefix_pattern_matches_rooms_under_it_but_not_its_parent() {
        let p = Pattern::parse("notes/*").expect("pattern");
        assert!(p.matches("notes/a"));
        assert!(p.matches("notes/a/b"));
        assert!(p.matches("notes/"));
        assert!(!p.matches("notes"));
        assert!(!p.matches("other/a"));
        assert_eq!(p.to_string(), "notes/*");
    }

    #[test]
    fn star_alone_matches_every_room() {
        let p = Pattern::parse("*").expect("pattern");
        assert!(p.matches("anything"));
        assert!(p.matches("12345"));
    }

    #[test]
    fn star_anywhere_but_the_end_is_refused() {
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("**").is_err());
        assert!(Pattern::parse("*/x").is_err());
    }

    #[test]
    fn empty_long_and_control_patterns_are_refused() {
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_BYTES + 1)).is_err());
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_BYTES)).is_ok());
        assert!(Pattern::parse("a\nb").is_err());
    }

    #[test]
    fn read_write_wins_over_read_only_when_both_match() {
        let id = grants(r#"{"doc":{"rw":["notes/mine"],"ro":["notes/*"]}}"#).expect("grants");
        assert_eq!(
            id.access(Capability::Doc, "notes/mine"),
            Some(Mode::ReadWrite)
        );
        assert_eq!(
            id.access(Capability::Doc, "notes/other"),
            Some(Mode::ReadOnly)
        );
        assert_eq!(id.access(Capability::Doc, "elsewhere"), None);
        // the order of the lists does not matter
        let id = grants(r#"{"doc":{"ro":["*"],"rw":["a"]}}"#).expect("grants");
        assert_eq!(id.access(Capability::Doc, "a"), Some(Mode::ReadWrite));
    }

    #[test]
    fn capabilities_are_separate() {
        let id = grants(r#"{"cloud":{"rw":["12345"]},"api":{"ro":["*"]}}"#).expect("grants");
        assert_eq!(id.access(Capability::Cloud, "12345"), Some(Mode::ReadWrite));
        assert_eq!(id.access(Capability::Doc, "12345"), None);
        assert_eq!(id.access(Capability::Api, "x"), Some(Mode::ReadOnly));
        assert!(id.rooms(Capability::Gateway).is_empty());
        assert!(!id.rooms(Capability::Gateway).contains("x"));
        assert!(id.rooms(Capability::Cloud).contains("12345"));
    }

    #[test]
    fn gateway_carries_rooms_and_intents() {
        let id = grants(r#"{"gateway":{"rw":["a","b"],"intents":513}}"#).expect("grants");
        assert_eq!(id.gateway_intents(), 513);
        assert!(id.rooms(Capability::Gateway).contains("a"));
        assert!(!id.rooms(Capability::Gateway).contains("c"));
    }

    #[test]
    fn no_grants_means_no_rooms_and_no_intents() {
        let id = identity(Some("bob".into()), SystemTime::UNIX_EPOCH, None, None, None)
            .expect("identity");
        for cap in Capability::ALL {
            assert!(id.rooms(cap).is_empty());
            assert_eq!(id.access(cap, "x"), None);
        }
        assert_eq!(id.gateway_intents(), 0);
    }

    #[test]
    fn unknown_capability_or_field_is_refused() {
        assert!(grants(r#"{"docs":{"rw":["*"]}}"#).is_err());
        assert!(grants(r#"{"doc":{"wr":["*"]}}"#).is_err());
        assert!(grants(r#"{"doc":{"rw":["*"],"deny":["x"]}}"#).is_err());
        assert!(grants(r#"{"cloud":{"intents":1}}"#).is_err());
    }

    #[test]
    fn too_many_patterns_are_refused_across_capabilities() {
        let half: Vec<String> = (0..MAX_PATTERNS / 2).map(|i| format!("r{i}")).collect();
        let list = serde_json::to_string(&half).expect("json");
        let ok = format!(r#"{{"doc":{{"rw":{list}}},"cloud":{{"ro":{list}}}}}"#);
        assert!(grants(&ok).is_ok());
        let over =
            format!(r#"{{"doc":{{"rw":{list}}},"cloud":{{"ro":{list}}},"api":{{"rw":["x"]}}}}"#);
        let err = grants(&over).expect_err("too many");
        assert_eq!(err.reason(), "bad_claims");
    }

    #[test]
    fn bad_pattern_names_where_it_is() {
        let err = grants(r#"{"doc":{"ro":["ok","a*b"]}}"#).expect_err("bad");
        assert!(err.to_string().contains("nimbus.doc.ro[1]"), "{err}");
    }

    #[test]
    fn sub_is_required_non_empty_capped_and_printable() {
        let mk = |s: Option<&str>| {
            identity(
                s.map(str::to_owned),
                SystemTime::UNIX_EPOCH,
                None,
                None,
                None,
            )
        };
        assert!(mk(None).is_err());
        assert!(mk(Some("")).is_err());
        assert!(mk(Some(&"a".repeat(MAX_SUB_BYTES + 1))).is_err());
        assert!(mk(Some(&"a".repeat(MAX_SUB_BYTES))).is_ok());
        assert!(mk(Some("a\u{7}b")).is_err());
    }

    #[test]
    fn capability_names_round_trip() {
        for cap in Capability::ALL {
            assert_eq!(cap.as_str().parse::<Capability>(), Ok(cap));
        }
        assert!("files".parse::<Capability>().is_err());
    }
}
