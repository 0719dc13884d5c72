//! Who may open a document room, and how: room-name rules and per-room tokens.
//!
//! A room with no token rule is open to everyone, read-write. A room that matches at
//! least one rule (its exact name, or `*` for every room) needs a token: the one the
//! client presents (`?token=` or `Authorization: Bearer`) selects the access it gets.
//! A missing or unknown token is refused before the WebSocket upgrade (HTTP 401), so a
//! client never sees any of the document.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

/// Longest accepted room name, in bytes (after percent-decoding).
pub const MAX_ROOM_NAME: usize = 512;

/// What a client may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only: its updates are refused with the Auth message and never applied.
    ReadOnly,
}

/// One `room:mode:token` rule.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRule {
    /// Room name, or `*` for every room.
    pub room: String,
    /// Access granted by the token.
    pub access: Access,
    /// The token.
    pub token: String,
}

impl fmt::Debug for TokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRule")
            .field("room", &self.room)
            .field("access", &self.access)
            .field("token", &"<set>")
            .finish()
    }
}

impl FromStr for TokenRule {
    type Err = String;

    /// `ROOM:rw:TOKEN` or `ROOM:ro:TOKEN` (`ROOM` may be `*`; the token may contain `:`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let (Some(room), Some(mode), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{s:?} is not ROOM:MODE:TOKEN (MODE is rw or ro; ROOM may be *)"
            ));
        };
        let access = match mode {
            "rw" => Access::ReadWrite,
            "ro" => Access::ReadOnly,
            other => return Err(format!("unknown access mode {other:?} (rw, ro)")),
        };
        if room.is_empty() {
            return Err("the room of a token rule is empty (use * for every room)".into());
        }
        if token.is_empty() {
            return Err(format!("the token for room {room:?} is empty"));
        }
        Ok(TokenRule {
            room: room.into(),
            access,
            token: token.into(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for TokenRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a client may not open a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The room needs a token and none was sent.
    #[error("this document room needs a token (?token= or Authorization: Bearer)")]
    MissingToken,
    /// The token sent is not valid for this room.
    #[error("the token is not valid for this document room")]
    BadToken,
}

/// The token rules of a server.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<TokenRule>,
}

impl AccessRules {
    /// Rules as configured.
    pub fn new(rules: Vec<TokenRule>) -> AccessRules {
        AccessRules { rules }
    }

    /// Whether a rule names `room` (or every room): then it needs a static token.
    pub fn governs(&self, room: &str) -> bool {
        self.rules.iter().any(|r| r.room == room || r.room == "*")
    }

    /// The access `token` gives to `room`.
    pub fn check(&self, room: &str, token: Option<&str>) -> Result<Access, Denied> {
        let mut matching = self
            .rules
            .iter()
            .filter(|r| r.room == room || r.room == "*")
            .peekable();
        if matching.peek().is_none() {
            return Ok(Access::ReadWrite);
        }
        let token = token.ok_or(Denied::MissingToken)?;
        // Compare against every rule, without stopping early, in constant time per rule.
        let mut best: Option<Access> = None;
        for rule in matching {
            if bool::from(rule.token.as_bytes().ct_eq(token.as_bytes())) {
                best = match (best, rule.access) {
                    (Some(Access::ReadWrite), _) | (_, Access::ReadWrite) => {
                        Some(Access::ReadWrite)
                    }
                    _ => Some(Access::ReadOnly),
                };
            }
        }
        best.ok_or(Denied::BadToken)
    }
}

/// Check a percent-decoded room name: 1 to [`MAX_ROOM_NAME`] bytes, no control characters.
pub fn validate_room_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the document room name is empty (use /doc/NAME)".into());
    }
    if name.len() > MAX_ROOM_NAME {
        return Err(format!(
            "the document room name is {} bytes long (at most {MAX_ROOM_NAME})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the document room name contains a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: &[&str]) -> AccessRules {
        AccessRules::new(
            specs
                .iter()
                .map(|s| s.parse().expect("valid rule"))
                .collect(),
        )
    }

    #[test]
    fn a_room_without_rules_is_open_read_write() {
        let r = rules(&["other:rw:x"]);
        assert_eq!(r.check("mine", None), Ok(Access::ReadWrite));
    }

    #[test]
    fn a_ruled_room_needs_a_matching_token() {
        let r = rules(&["notes:rw:writer", "notes:ro:reader"]);
        assert_eq!(r.check("notes", None), Err(Denied::MissingToken));
        assert_eq!(r.check("notes", Some("nope")), Err(Denied::BadToken));
        assert_eq!(r.check("notes", Some("reader")), Ok(Access::ReadOnly));
        assert_eq!(r.check("notes", Some("writer")), Ok(Access::ReadWrite));
    }

    #[test]
    fn a_wildcard_rule_covers_every_room_and_the_widest_grant_wins() {
        let r = rules(&["*:ro:public", "admin:rw:public"]);
        assert_eq!(r.check("anything", Some("public")), Ok(Access::ReadOnly));
        assert_eq!(r.check("admin", Some("public")), Ok(Access::ReadWrite));
        assert_eq!(r.check("anything", None), Err(Denied::MissingToken));
    }

    #[test]
    fn rules_parse_with_colons_in_the_token_and_reject_bad_shapes() {
        let rule: TokenRule = "r:ro:a:b".parse().expect("valid");
        assert_eq!(rule.token, "a:b");
        assert_eq!(rule.access, Access::ReadOnly);
        for bad in ["r:rw", "r:xx:t", ":rw:t", "r:rw:", "nothing"] {
            assert!(bad.parse::<TokenRule>().is_err(), "{bad} accepted");
        }
        assert!(!format!("{rule:?}").contains("a:b"), "token not in Debug");
    }

    #[test]
    fn room_names_are_checked() {
        assert!(validate_room_name("a/b c").is_ok());
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("a\nb").is_err());
        assert!(validate_room_name(&"x".repeat(MAX_ROOM_NAME + 1)).is_err());
    }
}
