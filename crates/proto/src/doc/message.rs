//! y-sync protocol messages: `varUint(type) ‖ payload`.

use bytes::Bytes;
use thiserror::Error;

use super::lib0::{write_var_bytes, write_var_string, write_var_uint, Reader};

/// Message type 0: a sync message (step 1, step 2 or update).
pub const MSG_SYNC: u64 = 0;
/// Message type 1: an awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Message type 2: an auth message.
pub const MSG_AUTH: u64 = 2;
/// Message type 3: a query for all awareness states.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync subtype 0: SyncStep1 (a state vector).
pub const SYNC_STEP1: u64 = 0;
/// Sync subtype 1: SyncStep2 (the update the receiver lacks).
pub const SYNC_STEP2: u64 = 1;
/// Sync subtype 2: an incremental update.
pub const SYNC_UPDATE: u64 = 2;

const AUTH_PERMISSION_DENIED: u64 = 0;
const AUTH_PERMISSION_GRANTED: u64 = 1;

/// An auth message (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMessage {
    /// Subtype 0, with the reason: the server refused something (e.g. an update from a
    /// read-only client).
    PermissionDenied(String),
    /// Subtype 1 (a yrs addition): permission granted.
    PermissionGranted,
}

/// One y-sync protocol message.
///
/// Payload bytes are slices of the frame they were decoded from: Yjs v1 state vectors and
/// updates, and awareness updates (see [`AwarenessUpdate`](super::AwarenessUpdate)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `[0, 0, varUint8Array(state vector)]`.
    SyncStep1(Bytes),
    /// `[0, 1, varUint8Array(update)]`: everything the receiver lacks.
    SyncStep2(Bytes),
    /// `[0, 2, varUint8Array(update)]`: one incremental update.
    Update(Bytes),
    /// `[1, varUint8Array(awareness update)]`.
    Awareness(Bytes),
    /// `[2, subtype, ...]`.
    Auth(AuthMessage),
    /// `[3]`: asks for all awareness states.
    QueryAwareness,
    /// Any other message type, assumed to carry a `varUint8Array` payload as yrs does (for
    /// instance y-sweet's sync-status message 102). A room ignores these.
    Custom {
        /// The message type (not 0..=3).
        kind: u64,
        /// The payload.
        payload: Bytes,
    },
}

/// Why a frame could not be decoded. Every variant carries the byte offset (from the start
/// of the frame) where the failing value starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame holds no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The frame ends inside a value.
    #[error("truncated {what} at byte {offset}")]
    Truncated {
        /// Which value.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A `varUint` above 2^53 or longer than 8 bytes.
    #[error("{what} at byte {offset} is larger than 2^53")]
    VarUintTooLarge {
        /// Which value.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A `varString` that is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which value.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A sync message whose subtype is not 0, 1 or 2.
    #[error("unknown sync message subtype {subtype} at byte {offset}")]
    UnknownSyncType {
        /// The subtype read.
        subtype: u64,
        /// Where it starts.
        offset: usize,
    },
    /// An auth message whose subtype is not 0 or 1.
    #[error("unknown auth message subtype {subtype} at byte {offset}")]
    UnknownAuthType {
        /// The subtype read.
        subtype: u64,
        /// Where it starts.
        offset: usize,
    },
    /// More values than a decoder takes in one piece (messages in a frame, entries in an
    /// awareness update): refused before they are allocated.
    #[error("more than {max} {what}, at byte {offset}")]
    TooMany {
        /// Which values.
        what: &'static str,
        /// The most taken.
        max: usize,
        /// Where the first one over starts.
        offset: usize,
    },
}

/// The most messages [`decode_frame`] takes from one frame. y-websocket and pycrdt send one
/// message per frame; the bound keeps a frame of one-byte messages (a 16 MiB frame would
/// decode into ~800 MB of `Message`s) from costing more than a few KiB.
pub const MAX_MESSAGES_PER_FRAME: usize = 1024;

impl DecodeError {
    /// The byte offset of the failure (0 for [`DecodeError::Empty`]).
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Empty => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::VarUintTooLarge { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnknownSyncType { offset, .. }
            | DecodeError::UnknownAuthType { offset, .. }
            | DecodeError::TooMany { offset, .. } => *offset,
        }
    }
}

impl Message {
    /// Encode exactly one message (one frame's worth).
    pub fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut buf);
        Bytes::from(buf)
    }

    /// Append the encoding of this message to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        match self {
            Message::SyncStep1(data) => sync(buf, SYNC_STEP1, data),
            Message::SyncStep2(data) => sync(buf, SYNC_STEP2, data),
            Message::Update(data) => sync(buf, SYNC_UPDATE, data),
            Message::Awareness(data) => {
                write_var_uint(buf, MSG_AWARENESS);
                write_var_bytes(buf, data);
            }
            Message::Auth(AuthMessage::PermissionDenied(reason)) => {
                write_var_uint(buf, MSG_AUTH);
                write_var_uint(buf, AUTH_PERMISSION_DENIED);
                write_var_string(buf, reason);
            }
            Message::Auth(AuthMessage::PermissionGranted) => {
                write_var_uint(buf, MSG_AUTH);
                write_var_uint(buf, AUTH_PERMISSION_GRANTED);
            }
            Message::QueryAwareness => write_var_uint(buf, MSG_QUERY_AWARENESS),
            Message::Custom { kind, payload } => {
                write_var_uint(buf, *kind);
                write_var_bytes(buf, payload);
            }
        }
    }

    fn encoded_len_hint(&self) -> usize {
        12 + match self {
            Message::SyncStep1(d)
            | Message::SyncStep2(d)
            | Message::Update(d)
            | Message::Awareness(d)
            | Message::Custom { payload: d, .. } => d.len(),
            Message::Auth(AuthMessage::PermissionDenied(r)) => r.len(),
            Message::Auth(AuthMessage::PermissionGranted) | Message::QueryAwareness => 0,
        }
    }

    /// A short name of the message kind, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::SyncStep1(_) => "sync-step1",
            Message::SyncStep2(_) => "sync-step2",
            Message::Update(_) => "sync-update",
            Message::Awareness(_) => "awareness",
            Message::Auth(_) => "auth",
            Message::QueryAwareness => "query-awareness",
            Message::Custom { .. } => "custom",
        }
    }
}

fn sync(buf: &mut Vec<u8>, subtype: u64, data: &[u8]) {
    write_var_uint(buf, MSG_SYNC);
    write_var_uint(buf, subtype);
    write_var_bytes(buf, data);
}

/// Decode a frame holding one or several concatenated messages.
///
/// Payloads are zero-copy slices of `frame`. An empty frame is an error; any error in any
/// message fails the whole frame (nothing of it should be applied), and so do more than
/// [`MAX_MESSAGES_PER_FRAME`] messages.
pub fn decode_frame(frame: &Bytes) -> Result<Vec<Message>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut r = Reader::new(frame);
    let mut out = Vec::with_capacity(1);
    while !r.is_empty() {
        if out.len() == MAX_MESSAGES_PER_FRAME {
            return Err(DecodeError::TooMany {
                what: "messages in one frame",
                max: MAX_MESSAGES_PER_FRAME,
                offset: r.offset(),
            });
        }
        out.push(decode_one(frame, &mut r)?);
    }
    Ok(out)
}

fn decode_one(frame: &Bytes, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let kind = r.read_var_uint("message type")?;
    Ok(match kind {
        MSG_SYNC => {
            let at = r.offset();
            let subtype = r.read_var_uint("sync subtype")?;
            match subtype {
                SYNC_STEP1 => {
                    Message::SyncStep1(frame.slice(r.read_var_bytes_range("state vector")?))
                }
                SYNC_STEP2 => Message::SyncStep2(frame.slice(r.read_var_bytes_range("update")?)),
                SYNC_UPDATE => Message::Update(frame.slice(r.read_var_bytes_range("update")?)),
                subtype => {
                    return Err(DecodeError::UnknownSyncType {
                        subtype,
                        offset: at,
                    })
                }
            }
        }
        MSG_AWARENESS => {
            Message::Awareness(frame.slice(r.read_var_bytes_range("awareness update")?))
        }
        MSG_AUTH => {
            let at = r.offset();
            match r.read_var_uint("auth subtype")? {
                AUTH_PERMISSION_DENIED => Message::Auth(AuthMessage::PermissionDenied(
                    r.read_var_string("auth reason")?.to_owned(),
                )),
                AUTH_PERMISSION_GRANTED => Message::Auth(AuthMessage::PermissionGranted),
                subtype => {
                    return Err(DecodeError::UnknownAuthType {
                        subtype,
                        offset: at,
                    })
                }
            }
        }
        MSG_QUERY_AWARENESS => Message::QueryAwareness,
        kind => Message::Custom {
            kind,
            payload: frame.slice(r.read_var_bytes_range("custom payload")?),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn a_frame_holds_at_most_the_bound_of_messages() {
        let full = Bytes::from(vec![3u8; MAX_MESSAGES_PER_FRAME]);
        assert_eq!(decode_frame(&full).unwrap().len(), MAX_MESSAGES_PER_FRAME);
        let over = Bytes::from(vec![3u8; MAX_MESSAGES_PER_FRAME + 1]);
        assert_eq!(
            decode_frame(&over),
            Err(DecodeError::TooMany {
                what: "messages in one frame",
                max: MAX_MESSAGES_PER_FRAME,
                offset: MAX_MESSAGES_PER_FRAME,
            })
        );
    }

    #[test]
    fn byte_exact_examples_from_the_reference() {
        // Empty document: step1 with the empty state vector, step2 with the empty update.
        assert_eq!(&Message::SyncStep1(b(&[0])).encode()[..], [0, 0, 1, 0]);
        assert_eq!(
            &Message::SyncStep2(b(&[0, 0])).encode()[..],
            [0, 1, 2, 0, 0]
        );
        assert_eq!(&Message::Update(b(&[0, 0])).encode()[..], [0, 2, 2, 0, 0]);
        assert_eq!(&Message::QueryAwareness.encode()[..], [3]);
        assert_eq!(&Message::Awareness(b(&[0])).encode()[..], [1, 1, 0]);
        assert_eq!(
            &Message::Auth(AuthMessage::PermissionDenied("ro".into())).encode()[..],
            [2, 0, 2, b'r', b'o']
        );
        assert_eq!(
            &Message::Auth(AuthMessage::PermissionGranted).encode()[..],
            [2, 1]
        );
        assert_eq!(
            &Message::Custom {
                kind: 102,
                payload: b(&[7])
            }
            .encode()[..],
            [102, 1, 7]
        );
        // An update of 300 bytes: the length is AC 02.
        let big = Bytes::from(vec![9u8; 300]);
        let frame = Message::Update(big.clone()).encode();
        assert_eq!(&frame[..4], [0, 2, 0xAC, 0x02]);
        assert_eq!(frame.len(), 304);
        assert_eq!(decode_frame(&frame).unwrap(), [Message::Update(big)]);
    }

    #[test]
    fn decodes_every_kind_and_concatenations() {
        let frame = b(&[0, 0, 1, 0, 0, 1, 2, 0, 0, 3, 1, 1, 0, 2, 0, 1, b'x', 102, 0]);
        assert_eq!(
            decode_frame(&frame).unwrap(),
            [
                Message::SyncStep1(b(&[0])),
                Message::SyncStep2(b(&[0, 0])),
                Message::QueryAwareness,
                Message::Awareness(b(&[0])),
                Message::Auth(AuthMessage::PermissionDenied("x".into())),
                Message::Custom {
                    kind: 102,
                    payload: Bytes::new()
                },
            ]
        );
    }

    #[test]
    fn payloads_are_slices_of_the_frame() {
        let frame = Message::Update(Bytes::from(vec![1u8; 64])).encode();
        let [Message::Update(u)] = &decode_frame(&frame).unwrap()[..] else {
            panic!()
        };
        assert_eq!(u.as_ptr(), frame[3..].as_ptr());
    }

    #[test]
    fn errors_name_the_value_and_the_offset() {
        assert_eq!(decode_frame(&Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(
            decode_frame(&b(&[0])),
            Err(DecodeError::Truncated {
                what: "sync subtype",
                offset: 1
            })
        );
        assert_eq!(
            decode_frame(&b(&[0, 0, 1, 0, 0, 2, 5, 1])),
            Err(DecodeError::Truncated {
                what: "update",
                offset: 6
            })
        );
        let e = decode_frame(&b(&[0, 7, 0])).unwrap_err();
        assert_eq!(
            e,
            DecodeError::UnknownSyncType {
                subtype: 7,
                offset: 1
            }
        );
        assert_eq!(e.to_string(), "unknown sync message subtype 7 at byte 1");
        assert!(matches!(
            decode_frame(&b(&[2, 9])),
            Err(DecodeError::UnknownAuthType { subtype: 9, .. })
        ));
        assert!(matches!(
            decode_frame(&b(&[2, 0, 1, 0xFF])),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        assert_eq!(
            decode_frame(&b(&[0, 0, 1, 0, 0xFF])).unwrap_err().offset(),
            4
        );
    }
}
