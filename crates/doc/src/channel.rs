//! [`Channel`]: one client connection carrying whole binary frames.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

/// One client connection carrying whole binary frames (one y-sync frame each).
///
/// Implemented by the wires of this crate ([`crate::wire::memory::MemoryChannel`],
/// [`crate::wire::websocket::WsChannel`]); a server that has its own socket type (an axum
/// `WebSocket`, say) implements it with a small wrapper.
///
/// [`Channel::recv`] must be **cancel-safe** (dropping its future before it completes must
/// not lose a frame): [`Room::serve`](crate::Room::serve) selects over it and the room's
/// outgoing queue. A `Stream::next` of a WebSocket is.
pub trait Channel: Send + 'static {
    /// Send one binary frame (and flush it).
    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send;

    /// Queue one binary frame without flushing it: [`Room::serve`](crate::Room::serve)
    /// feeds every frame queued for a client, then calls [`Channel::flush`] once, so a
    /// burst leaves in one write. A wire without buffering just sends it (the default).
    fn feed(&mut self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send {
        self.send(frame)
    }

    /// Write out every frame [`Channel::feed`] queued (the default has nothing to do).
    fn flush(&mut self) -> impl Future<Output = Result<(), ChannelError>> + Send {
        std::future::ready(Ok(()))
    }

    /// The next binary frame; `None` once the connection is closed. A text frame is reported
    /// as [`ChannelError::TextFrame`], a close frame with a code as [`ChannelError::Closed`].
    fn recv(&mut self) -> impl Future<Output = Option<Result<Bytes, ChannelError>>> + Send;

    /// Close the connection with a WebSocket close code and reason (a no-op where the wire has
    /// no such thing).
    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;

    /// A writer through which the room may put frames on this connection from its own task
    /// (see [`DirectWrite`]), or `None` (the default): every frame then goes through the
    /// connection's session, as it always may.
    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        None
    }
}

/// What [`DirectWrite::write_now`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The whole frame is on the wire.
    All,
    /// Part of it is; the writer holds the rest, which goes out before any other byte at
    /// the channel's next [`Channel::flush`] (the room asks the session for one).
    Part,
    /// Nothing was written: the wire would block, still holds the rest of an earlier frame,
    /// or failed. The frame must be queued for the session instead.
    Nothing,
}

/// A connection's wire, writable from outside its session: a room whose client is idle
/// (nothing queued, its session not writing) writes an update straight to the client's
/// socket instead of queueing it and waking the session, which would then write it
/// (uWebSockets' model; it saves a task wake-up and poll per delivery).
///
/// The contract, which the room relies on for the order and integrity of the stream:
/// - [`write_now`](DirectWrite::write_now) never waits: it writes what the wire takes at
///   once, as one whole binary message.
/// - After [`Written::Part`] it answers [`Written::Nothing`] until the channel's
///   [`Channel::flush`] has written the rest.
/// - Its bytes and the channel's own writes never interleave inside a message.
pub trait DirectWrite: Send + Sync {
    /// Write `frame` as one binary message, without waiting.
    fn write_now(&self, frame: &Bytes) -> Written;
}

/// A boxed channel is a channel: a server boxes its socket once, so that the futures
/// serving it (which hold the channel at every level) hold a pointer, not the socket.
impl<C: Channel> Channel for Box<C> {
    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send {
        (**self).send(frame)
    }

    fn feed(&mut self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send {
        (**self).feed(frame)
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), ChannelError>> + Send {
        (**self).flush()
    }

    fn recv(&mut self) -> impl Future<Output = Option<Result<Bytes, ChannelError>>> + Send {
        (**self).recv()
    }

    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send {
        (**self).close(code, reason)
    }

    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        (**self).direct()
    }
}

/// A failure of a [`Channel`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    /// The peer sent a text frame (the y-sync protocol is binary only; close code 1003).
    #[error("text frame received (the y-sync protocol is binary only)")]
    TextFrame,
    /// The peer closed the connection with a close frame.
    #[error("closed by peer with code {code}: {reason:?}")]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The peer did not answer the previous keepalive ping.
    #[error("keepalive ping not answered")]
    PingTimeout,
    /// A frame larger than the wire accepts.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooBig {
        /// The frame's size (as far as known).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(String),
}
