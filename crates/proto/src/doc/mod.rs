//! The y-sync protocol (y-protocols / y-websocket) used by Yjs document rooms.
//!
//! The reference is `/work/shared/protocols/yjs-sync.md`. This module is IO-free and has no
//! CRDT dependency: updates and state vectors are opaque Yjs v1 bytes, carried as
//! [`Bytes`](bytes::Bytes) slices of the frame they came in (no copies).
//!
//! - [`lib0`]: the lib0 encoding primitives (`varUint`, `varUint8Array`, `varString`).
//! - [`Message`]: one protocol message; [`Message::encode`] gives one frame,
//!   [`decode_frame`] accepts one or several concatenated messages.
//! - [`AwarenessUpdate`]: the payload of an [`Message::Awareness`] message.
//!
//! ```
//! use bytes::Bytes;
//! use nimbus_proto::doc::{decode_frame, Message};
//!
//! // The SyncStep1 of an empty document (empty state vector) and its SyncStep2 answer.
//! assert_eq!(&Message::SyncStep1(Bytes::from_static(&[0])).encode()[..], [0, 0, 1, 0]);
//! assert_eq!(&Message::SyncStep2(Bytes::from_static(&[0, 0])).encode()[..], [0, 1, 2, 0, 0]);
//!
//! // Two messages in one frame (accepted on receive, never sent).
//! let frame = Bytes::from_static(&[0, 0, 1, 0, 3]);
//! let msgs = decode_frame(&frame).unwrap();
//! assert_eq!(msgs, [Message::SyncStep1(Bytes::from_static(&[0])), Message::QueryAwareness]);
//! ```

mod awareness;
pub mod lib0;
mod message;

pub use awareness::{AwarenessEntry, AwarenessUpdate, MAX_AWARENESS_ENTRIES};
pub use message::{
    decode_frame, AuthMessage, DecodeError, Message, MAX_MESSAGES_PER_FRAME, MSG_AUTH,
    MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
};
