//! The WebSocket half of the edge: the buffer bounds every upgrade gets, the control-frame
//! policy, how a socket error becomes a close code, and the close sequence.
//!
//! Every wire of `nimbus serve` (cloud, doc, gateway) configures its upgrade with
//! [`configure`], passes every message it reads through a [`Guard`] and ends with
//! [`close`]. The IPC server (the `nimbus-ipc` crate, which does not depend on this one)
//! applies the same policy with its own settings (`docs/ipc.md`).

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Slack on top of the largest outgoing message in the write buffer: a queued close frame
/// and the pongs a client can ask for within its ping budget (≤ 127 bytes each).
const CONTROL_SLACK: usize = 4096;

/// Buffer bounds of one kind of WebSocket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Largest incoming message and frame, bytes (1009 beyond).
    pub max_message: usize,
    /// Read buffer, bytes (tungstenite's default of 128 KiB would dominate an idle socket).
    pub read_buffer: usize,
    /// Outgoing bytes gathered before a write to the socket (0: write every frame at once).
    pub write_buffer: usize,
    /// Largest single outgoing message, bytes. The write buffer never holds more than this
    /// plus [`CONTROL_SLACK`]: automatic pongs cannot pile up behind a socket nobody reads.
    pub max_outgoing: usize,
}

impl Bounds {
    /// The most the write buffer may hold, bytes.
    pub(crate) fn max_write_buffer(&self) -> usize {
        self.write_buffer.max(self.max_outgoing) + CONTROL_SLACK
    }
}

/// Apply `bounds` to an upgrade.
pub(crate) fn configure(upgrade: WebSocketUpgrade, bounds: Bounds) -> WebSocketUpgrade {
    upgrade
        .max_message_size(bounds.max_message)
        .max_frame_size(bounds.max_message)
        .read_buffer_size(bounds.read_buffer)
        .write_buffer_size(bounds.write_buffer)
        .max_write_buffer_size(bounds.max_write_buffer())
}

/// Why the edge ends a connection on its own, whatever the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A message or frame over the size limit (1009).
    TooBig(String),
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8,
    /// A framing error: unmasked client frame, reserved bits or opcode, bad close frame (1002).
    Protocol(String),
    /// More pings than the control-frame budget allows (1008).
    PingFlood,
}

impl Violation {
    /// The RFC 6455 close code.
    pub(crate) fn code(&self) -> u16 {
        match self {
            Violation::TooBig(_) => 1009,
            Violation::InvalidUtf8 => 1007,
            Violation::Protocol(_) => 1002,
            Violation::PingFlood => 1008,
        }
    }

    /// The close reason (public: no internals).
    pub(crate) fn reason(&self) -> String {
        match self {
            Violation::TooBig(what) => format!("message too big: {what}"),
            Violation::InvalidUtf8 => "text frame is not valid UTF-8".into(),
            Violation::Protocol(what) => format!("protocol error: {what}"),
            Violation::PingFlood => "too many pings".into(),
        }
    }

    /// A label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Violation::TooBig(_) => "too_big",
            Violation::InvalidUtf8 => "invalid_utf8",
            Violation::Protocol(_) => "protocol",
            Violation::PingFlood => "ping_flood",
        }
    }
}

/// What a read error means: a [`Violation`] that deserves a close frame, or `None` when the
/// transport itself failed (reset, EOF) and there is nobody to tell.
pub(crate) fn classify(e: &axum::Error) -> Option<Violation> {
    tungstenite_error(e).and_then(classify_tungstenite)
}

/// The tungstenite error behind an axum WebSocket error, if there is one.
pub(crate) fn tungstenite_error(e: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return Some(t);
        }
        source = err.source();
    }
    None
}

/// [`classify`] for a tungstenite error.
pub(crate) fn classify_tungstenite(e: &tungstenite::Error) -> Option<Violation> {
    match e {
        tungstenite::Error::Capacity(c) => Some(Violation::TooBig(c.to_string())),
        tungstenite::Error::Utf8(_) => Some(Violation::InvalidUtf8),
        tungstenite::Error::Protocol(p) => match p {
            // The peer vanished mid-frame: nobody to tell.
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => None,
            other => Some(Violation::Protocol(other.to_string())),
        },
        tungstenite::Error::AttackAttempt => Some(Violation::Protocol("attack attempt".into())),
        _ => None,
    }
}

/// Pings a client may send in a burst before the refill rate applies.
pub(crate) const PING_BURST: u32 = 16;
/// Pings per second a client may send in the long run.
pub(crate) const PINGS_PER_SEC: u32 = 1;

/// The per-connection control-frame policy.
///
/// tungstenite answers every ping with a pong; a client that floods pings and never reads
/// would make the server queue pongs. The write buffer bound keeps that bounded in bytes;
/// this budget ends such a connection quickly (1008) instead of spending CPU on it. No
/// client in the interop suites pings more than once per few seconds.
pub(crate) struct Guard {
    pings: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(PING_BURST, PINGS_PER_SEC)
    }
}

impl Guard {
    /// A guard allowing `burst` pings, refilled at `per_sec`.
    pub(crate) fn new(burst: u32, per_sec: u32) -> Guard {
        let quota = Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Guard {
            pings: RateLimiter::direct(quota),
        }
    }

    /// Check one message read from the socket.
    pub(crate) fn check(&self, msg: &Message) -> Result<(), Violation> {
        match msg {
            Message::Ping(_) => self.pings.check().map_err(|_| Violation::PingFlood),
            _ => Ok(()),
        }
    }
}

/// Send a close frame with `code` and `reason`, then read until the peer's close or EOF.
///
/// Dropping a socket with unread input makes the kernel send a reset, and the peer would
/// lose the close frame and its code. A peer that stopped reading or never answers must
/// not hold the task forever: both steps share one `deadline`.
pub(crate) async fn close(ws: &mut WebSocket, code: u16, reason: String, deadline: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate_reason(reason)),
    };
    let _ = tokio::time::timeout(deadline, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(msg)) = ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
}

/// A close reason must fit in a control frame (123 bytes).
pub(crate) fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let r = truncate_reason("é".repeat(100));
        assert!(r.len() <= 123);
        assert!(r.chars().all(|c| c == 'é'));
        assert_eq!(truncate_reason("short".into()), "short");
    }

    #[test]
    fn a_ping_burst_over_the_budget_is_a_flood() {
        let g = Guard::new(4, 1);
        for _ in 0..4 {
            assert_eq!(g.check(&Message::Ping(bytes::Bytes::new())), Ok(()));
        }
        assert_eq!(
            g.check(&Message::Ping(bytes::Bytes::new())),
            Err(Violation::PingFlood)
        );
        // Data frames never count against the ping budget.
        assert_eq!(g.check(&Message::Text("x".into())), Ok(()));
    }

    #[test]
    fn the_write_buffer_bound_covers_the_largest_message_and_a_pong() {
        let b = Bounds {
            max_message: 1 << 20,
            read_buffer: 256,
            write_buffer: 0,
            max_outgoing: 64 << 10,
        };
        assert_eq!(b.max_write_buffer(), (64 << 10) + CONTROL_SLACK);
        assert!(b.max_write_buffer() > b.write_buffer);
    }

    #[test]
    fn framing_errors_map_to_rfc_6455_codes() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let utf8 = tungstenite::Error::Utf8("bad".into());
        assert_eq!(classify_tungstenite(&utf8).map(|v| v.code()), Some(1007));
        let unmasked = tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(
            classify_tungstenite(&unmasked).map(|v| v.code()),
            Some(1002)
        );
        let rsv = tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(classify_tungstenite(&rsv).map(|v| v.code()), Some(1002));
        let big = tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        });
        assert_eq!(classify_tungstenite(&big).map(|v| v.code()), Some(1009));
        let reset = tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(classify_tungstenite(&reset), None);
        let io = tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(classify_tungstenite(&io), None);
    }
}
