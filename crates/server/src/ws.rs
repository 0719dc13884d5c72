//! WebSocket helpers shared by every wire of `nimbus serve` (cloud, doc).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};

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
}
