//! The request body and its `webhook-id`.
//!
//! ```json
//! {"type":"nimbus.events","timestamp":"2026-05-01T12:00:00.123Z",
//!  "data":{"events":[{"id":"e1","type":"CLOUD_SET","room":"lobby","at":1777636800120,
//!                     "data":{"room":"lobby","name":"☁ x","value":1,"user":null}}]}}
//! ```
//!
//! Each event's element is written once, when it is published ([`fragment`]), and shared by
//! every endpoint's queue; a batch is the envelope around a comma-separated run of them.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::Event;

const HEAD: &str = r#"{"type":"nimbus.events","timestamp":""#;
const MID: &str = r#"","data":{"events":["#;
const TAIL: &str = "]}}";
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const TIMESTAMP_LEN: usize = 24;

/// Bytes of the envelope around the events.
pub(crate) const ENVELOPE_BYTES: usize = HEAD.len() + TIMESTAMP_LEN + MID.len() + TAIL.len();

/// The smallest accepted `max_batch_bytes`.
pub(crate) const MIN_BATCH_BYTES: usize = 1024;

/// The event's element of `data.events`.
pub(crate) fn fragment(ev: &Event) -> Bytes {
    let mut out = Vec::with_capacity(ev.body.len() + ev.id.len() + ev.room.len() + 64);
    out.extend_from_slice(b"{\"id\":");
    push_json_str(&mut out, &ev.id);
    out.extend_from_slice(b",\"type\":");
    push_json_str(&mut out, ev.kind);
    out.extend_from_slice(b",\"room\":");
    push_json_str(&mut out, &ev.room);
    out.extend_from_slice(b",\"at\":");
    out.extend_from_slice(unix_millis(ev.at).to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    if ev.body.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(&ev.body);
    }
    out.push(b'}');
    Bytes::from(out)
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The request body for a batch of fragments, stamped `now`.
pub(crate) fn body<'a>(fragments: impl IntoIterator<Item = &'a Bytes>, now: SystemTime) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(HEAD.as_bytes());
    out.extend_from_slice(rfc3339_millis(now).as_bytes());
    out.extend_from_slice(MID.as_bytes());
    for (i, f) in fragments.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(f);
    }
    out.extend_from_slice(TAIL.as_bytes());
    Bytes::from(out)
}

/// The body size of a batch of `n` fragments totalling `bytes`.
pub(crate) fn body_len(n: usize, bytes: usize) -> usize {
    ENVELOPE_BYTES + bytes + n.saturating_sub(1)
}

/// The batch's `webhook-id`: `msg_` and 32 hex digits of SHA-256 over its event ids, so
/// every attempt of the batch carries the same id.
pub(crate) fn message_id<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let mut out = String::from("msg_");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Milliseconds since the epoch (0 before it).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the epoch (0 before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC; years past 9999 are clamped to 9999-12-31).
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let ms = unix_millis(t).min(253_402_300_799_999);
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is 1..=31 and m 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(id: &str, room: &str, body: &str) -> Event {
        Event {
            id: id.into(),
            room: room.into(),
            kind: "CLOUD_SET",
            body: Bytes::from(body.to_owned()),
            at: UNIX_EPOCH + Duration::from_millis(1_777_636_800_120),
            order: None,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_007); // leap day 2000
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.007Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_777_636_800_123);
        assert_eq!(rfc3339_millis(t), "2026-05-01T12:00:00.123Z");
        assert_eq!(rfc3339_millis(t).len(), TIMESTAMP_LEN);
    }

    #[test]
    fn the_body_is_the_documented_json_and_its_length_is_predicted() {
        let a = fragment(&event("e1", "lobby", r#"{"v":1}"#));
        let b = fragment(&event("e\"2", "r\n", ""));
        let now = UNIX_EPOCH + Duration::from_millis(1_777_636_800_123);
        let body = body([&a, &b], now);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "nimbus.events",
                "timestamp": "2026-05-01T12:00:00.123Z",
                "data": {"events": [
                    {"id": "e1", "type": "CLOUD_SET", "room": "lobby", "at": 1_777_636_800_120u64,
                     "data": {"v": 1}},
                    {"id": "e\"2", "type": "CLOUD_SET", "room": "r\n", "at": 1_777_636_800_120u64,
                     "data": null},
                ]}
            })
        );
        assert_eq!(body.len(), body_len(2, a.len() + b.len()));
        assert_eq!(super::body([], now).len(), body_len(0, 0));
    }

    #[test]
    fn message_ids_depend_only_on_the_event_ids() {
        let one = message_id(["a", "b"]);
        assert_eq!(one, message_id(["a", "b"]));
        assert_ne!(one, message_id(["a", "c"]));
        assert_ne!(message_id(["ab"]), message_id(["a", "b"]));
        assert!(one.starts_with("msg_") && one.len() == 36, "{one}");
    }
}
