//! WebSocket close codes used by the cloud protocol.

/// Every close code the cloud server sends, with its documented meaning.
///
/// See `docs/protocols/cloud.md` for when each one is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1008: the client could not keep up (its send queue stayed full).
    SlowConsumer,
    /// 1009: a frame larger than the configured frame limit.
    TooBig,
    /// 1011: the server cannot accept changes right now (e.g. its Redis backplane is
    /// unreachable); reconnecting later is expected to work.
    Unavailable,
    /// 4000: generic protocol violation (bad handshake, unknown method, bad rename/delete).
    Generic,
    /// 4002: username problem (length, charset, in use, filtered).
    Username,
    /// 4003: overloaded: the server or the room is full.
    Overloaded,
    /// 4004: project unavailable (room refused by policy).
    ProjectUnavailable,
    /// 4005: closed to protect the client's security (a Scratch session cookie was sent).
    Security,
    /// 4006: identify yourself: a `User-Agent` header is required.
    IdentifyYourself,
}

impl CloseCode {
    /// The numeric code sent in the WebSocket close frame.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::SlowConsumer => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Unavailable => 1011,
            CloseCode::Generic => 4000,
            CloseCode::Username => 4002,
            CloseCode::Overloaded => 4003,
            CloseCode::ProjectUnavailable => 4004,
            CloseCode::Security => 4005,
            CloseCode::IdentifyYourself => 4006,
        }
    }

    /// Map a numeric code back (for clients reading a close frame).
    pub const fn from_code(code: u16) -> Option<CloseCode> {
        Some(match code {
            1001 => CloseCode::GoingAway,
            1008 => CloseCode::SlowConsumer,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Unavailable,
            4000 => CloseCode::Generic,
            4002 => CloseCode::Username,
            4003 => CloseCode::Overloaded,
            4004 => CloseCode::ProjectUnavailable,
            4005 => CloseCode::Security,
            4006 => CloseCode::IdentifyYourself,
            _ => return None,
        })
    }

    /// A short stable label, used in logs and as the Prometheus label value.
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "going_away",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::TooBig => "too_big",
            CloseCode::Unavailable => "unavailable",
            CloseCode::Generic => "protocol",
            CloseCode::Username => "username",
            CloseCode::Overloaded => "overloaded",
            CloseCode::ProjectUnavailable => "project_unavailable",
            CloseCode::Security => "security",
            CloseCode::IdentifyYourself => "identify_yourself",
        }
    }

    /// Whether a well-behaved client should reconnect after this code.
    ///
    /// TurboWarp's GUI does not reconnect after 4002 or 4004; neither does ours.
    pub const fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::Username | CloseCode::ProjectUnavailable | CloseCode::Security
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for c in [
            CloseCode::GoingAway,
            CloseCode::SlowConsumer,
            CloseCode::TooBig,
            CloseCode::Unavailable,
            CloseCode::Generic,
            CloseCode::Username,
            CloseCode::Overloaded,
            CloseCode::ProjectUnavailable,
            CloseCode::Security,
            CloseCode::IdentifyYourself,
        ] {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert_eq!(CloseCode::from_code(4001), None);
    }
}
