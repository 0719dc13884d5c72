//! [`Wire`]: an admitted connection's socket, shared by the task that serves the connection
//! (hyper, then the WebSocket on top of it) and, for a document or cloud connection, the room
//! that writes to it directly ([`DirectWire`]: `nimbus_doc::DirectWrite` for binary document
//! updates, `outbox::DirectLine` for cloud lines).
//!
//! The socket is split: the connection's task owns the read half, and the write half sits
//! behind one lock, so the room's task can write to it while the connection's task waits
//! in a read. Two writers on one byte stream need a rule that keeps every WebSocket frame
//! whole:
//!
//! - Until a document or cloud connection [engages](DirectWire::engage) the wire, writes
//!   pass straight through (HTTP, the gateway WebSocket: nothing else writes to them).
//! - Engaged, the wire is in **whole-write** mode: a write is taken whole or not at all.
//!   What the socket does not take at once is kept (`rest`) and written before any other
//!   byte, at the next write or flush. tungstenite hands over its buffer of whole frames and
//!   gets "all written" back, so every buffer it writes starts on a frame boundary, and a
//!   direct write lands between two of its frames, never inside one.
//! - A direct write is refused (the room queues the frame for the session instead) while
//!   a rest is kept, and for good once a close frame has gone out (RFC 6455 §5.5.1: no
//!   data after a close), which the wire sees in the frames it is handed.
//!
//! The rest is bounded by one buffer of tungstenite's (its `max_write_buffer_size`) or one
//! directly written frame; the write-stall deadline of [`super::accept`] covers draining it.
//!
//! Cost for the connections that never engage (HTTP, gateway): one uncontended lock per write
//! and one more pointer between the connection and its socket (measured at +2–4 % of the
//! server's CPU in the cloud `fanout50` shape before the cloud wire engaged too;
//! `docs/benchmarks.md`, "Direct writes").

use std::io::{ErrorKind, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use nimbus_core::outbox::DirectLine;
use nimbus_doc::{DirectWrite, Written};
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The writing side of one admitted TCP connection's socket.
pub(crate) struct Wire {
    out: Mutex<Out>,
}

struct Out {
    /// tokio's write half, written through its own `AsyncWrite` (which clears the socket's
    /// readiness after a short write, saving a system call) and, for direct writes, its
    /// `try_write`. Its drop shuts the socket's sending side (FIN).
    half: OwnedWriteHalf,
    /// Whole-write mode (see the module doc).
    whole: bool,
    /// A close frame went out: no more direct writes.
    closed: bool,
    /// Bytes taken but not yet on the socket (whole-write mode only).
    rest: Vec<u8>,
}

impl Wire {
    /// Split `tcp`: the read half for the connection's task, and the shared wire.
    pub(crate) fn split(tcp: TcpStream) -> (OwnedReadHalf, Wire) {
        let (read, half) = tcp.into_split();
        let wire = Wire {
            out: Mutex::new(Out {
                half,
                whole: false,
                closed: false,
                rest: Vec::new(),
            }),
        };
        (read, wire)
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.out();
        if !out.whole {
            return Pin::new(&mut out.half).poll_write(cx, buf);
        }
        ready!(out.drain(cx))?;
        let n = ready!(Pin::new(&mut out.half).poll_write(cx, buf))?;
        out.saw(buf);
        if n < buf.len() {
            out.rest.extend_from_slice(&buf[n..]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.out();
        if !out.whole {
            return Pin::new(&mut out.half).poll_write_vectored(cx, bufs);
        }
        // Only tungstenite writes to an engaged wire, and it does not gather.
        drop(out);
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        self.poll_write(cx, first)
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.out().drain(cx)
    }

    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = self.out();
        ready!(out.drain(cx))?;
        Pin::new(&mut out.half).poll_shutdown(cx)
    }
}

impl Out {
    /// Write the kept rest, if any.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.rest.is_empty() {
            let Out { half, rest, .. } = self;
            match ready!(Pin::new(half).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(ErrorKind::WriteZero.into())),
                n => {
                    rest.drain(..n);
                }
            }
        }
        if self.rest.capacity() > 0 {
            self.rest = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Note a close frame among the whole frames of `buf` (a buffer tungstenite wrote).
    fn saw(&mut self, buf: &[u8]) {
        if !self.closed && carries_close(buf) {
            self.closed = true;
        }
    }
}

/// Whether the whole server frames in `buf` include a close frame; a buffer that does not
/// parse as whole frames counts as one (direct writes then stop: the safe side).
fn carries_close(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        let mut cursor = std::io::Cursor::new(buf);
        let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) else {
            return true;
        };
        if header.opcode == OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) {
            return true;
        }
        let start = cursor.position() as usize;
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= buf.len())
        else {
            return true;
        };
        buf = &buf[end..];
    }
    false
}

/// Frames up to this size (header included) are written directly with one copy and one
/// `send`.
const SMALL_FRAME: usize = 2048;

/// Most frames (a keystroke's update, a cloud line) fit in this, and the stack buffer a
/// frame is copied into is zeroed first: 128 bytes, not [`SMALL_FRAME`], for those.
const TINY_FRAME: usize = 128;

/// Send `head` and `frame` (together at most `N` bytes) with one `send`, copied into a
/// stack buffer of `N` bytes.
fn send_copied<const N: usize>(
    tcp: &tokio::net::tcp::OwnedWriteHalf,
    head: &[u8],
    frame: &[u8],
) -> std::io::Result<usize> {
    let mut buf = [0u8; N];
    let total = head.len() + frame.len();
    buf[..head.len()].copy_from_slice(head);
    buf[head.len()..total].copy_from_slice(frame);
    tcp.try_write(&buf[..total])
}

/// A connection's wire as its room sees it: written directly when the client is idle
/// (`nimbus_doc::DirectWrite`, `outbox::DirectLine`). Every request of a connection carries
/// one (an extension); the document and cloud routes [engage](DirectWire::engage) it once
/// upgraded.
#[derive(Clone)]
pub(crate) struct DirectWire(pub(crate) Arc<Wire>);

impl DirectWire {
    /// Put the wire in whole-write mode: from now on it may be written directly. Called by
    /// the WebSocket's owner before its first write.
    pub(crate) fn engage(&self) {
        self.0.out().whole = true;
    }
}

impl DirectWrite for DirectWire {
    fn write_now(&self, frame: &Bytes) -> Written {
        self.write_frame(Data::Binary, frame)
    }
}

impl DirectLine for DirectWire {
    fn write_line(&self, line: &[u8]) -> Written {
        self.write_frame(Data::Text, line)
    }
}

impl DirectWire {
    /// Write `frame` as one whole data frame of type `kind`, without waiting: the one
    /// direct-write path of both wires that take them (documents, cloud).
    fn write_frame(&self, kind: Data, frame: &[u8]) -> Written {
        let wire = &self.0;
        let mut out = wire.out();
        if !out.whole || out.closed || !out.rest.is_empty() {
            return Written::Nothing;
        }
        let header = FrameHeader {
            opcode: OpCode::Data(kind),
            ..FrameHeader::default()
        };
        let mut head = [0u8; 10];
        let head_len = header.len(frame.len() as u64);
        if header
            .format(frame.len() as u64, &mut &mut head[..])
            .is_err()
        {
            return Written::Nothing;
        }
        let head = &head[..head_len];
        let total = head_len + frame.len();
        let tcp = &out.half;
        // A small frame is copied behind its header and sent with one `send`; a large one
        // is gathered (`writev`, whose file-layer overhead a small write would notice).
        let sent = if total <= TINY_FRAME {
            send_copied::<TINY_FRAME>(tcp, head, frame)
        } else if total <= SMALL_FRAME {
            send_copied::<SMALL_FRAME>(tcp, head, frame)
        } else {
            tcp.try_write_vectored(&[IoSlice::new(head), IoSlice::new(frame)])
        };
        match sent {
            Ok(n) if n == total => Written::All,
            Ok(0) => Written::Nothing,
            Ok(n) => {
                if n < head_len {
                    out.rest.extend_from_slice(&head[n..]);
                    out.rest.extend_from_slice(frame);
                } else {
                    out.rest.extend_from_slice(&frame[n - head_len..]);
                }
                Written::Part
            }
            // Would block, or failed: the session's own write finds out which.
            Err(_) => Written::Nothing,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;

    fn frames(list: &[Frame]) -> Vec<u8> {
        let mut buf = Vec::new();
        for f in list {
            f.clone().format(&mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn a_close_frame_is_found_among_whole_frames_and_a_torn_buffer_counts_as_one() {
        let data = Frame::message(vec![7u8; 300], OpCode::Data(Data::Binary), true);
        let ping = Frame::ping(vec![1, 2]);
        let close = Frame::close(None);
        assert!(!carries_close(&frames(&[data.clone(), ping.clone()])));
        assert!(carries_close(&frames(&[data.clone(), close, ping])));
        let whole = frames(&[data]);
        assert!(carries_close(&whole[..whole.len() - 1]), "a torn frame");
        assert!(!carries_close(&[]));
    }

    /// Whole server frames parsed from `buf`: (opcode, payload).
    fn parse(mut buf: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let mut cursor = std::io::Cursor::new(buf);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.mask.is_none() && header.is_final);
            let start = cursor.position() as usize;
            let end = start + len as usize;
            assert!(end <= buf.len(), "a torn frame");
            out.push((header.opcode, buf[start..end].to_vec()));
            buf = &buf[end..];
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_and_session_writes_reach_a_slow_reader_whole_and_in_order() {
        // Binary frames are the document rooms', text frames the cloud rooms' (one line).
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, wire) = Wire::split(server);
        let wire = DirectWire(Arc::new(wire));
        let message = |i: u32, len: usize| {
            let mut m = i.to_be_bytes().to_vec();
            m.resize(len, i as u8);
            Bytes::from(m)
        };
        // Not engaged yet: the room may not write.
        assert_eq!(wire.write_now(&message(0, 8)), Written::Nothing);
        wire.engage();
        let line = b"{\"method\":\"set\",\"name\":\"x\",\"value\":1}\n";
        assert_eq!(wire.write_line(line), Written::All);
        // The peer does not read. Small frames (one copy, `send`) go out whole; a frame
        // larger than any socket buffer (gathered) is taken in part and its rest held; after
        // it nothing more is taken directly.
        let mut sent = Vec::new();
        // Either side of each copy buffer's size (a payload up to 125 bytes has a 2-byte
        // header, a longer one 4): copied into 128 bytes, into 2,048, or gathered.
        let lens = [600, 125, 126, SMALL_FRAME - 4, SMALL_FRAME - 3];
        for (i, len) in (0..).zip(lens) {
            let m = message(i, len);
            assert_eq!(wire.write_now(&m), Written::All, "{len} bytes");
            sent.push(m);
        }
        let huge = message(5, 16 << 20);
        assert_eq!(wire.write_now(&huge), Written::Part);
        sent.push(huge);
        assert_eq!(wire.write_now(&message(6, 600)), Written::Nothing);
        // The session's own frame (a pong here) goes after them, whole, though the socket
        // is full: the write waits until the peer reads.
        let mut pong = Vec::new();
        Frame::pong(vec![9u8; 5]).format(&mut pong).unwrap();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let n = std::future::poll_fn(|cx| wire.0.poll_write(cx, &pong))
            .await
            .unwrap();
        assert_eq!(n, pong.len(), "an engaged wire takes a write whole");
        std::future::poll_fn(|cx| wire.0.poll_flush(cx))
            .await
            .unwrap();
        // Idle again: direct writes resume after the pong.
        let last = message(u32::MAX, 16);
        assert_eq!(wire.write_now(&last), Written::All);
        // A close frame through the session ends direct writes.
        let mut close = Vec::new();
        Frame::close(None).format(&mut close).unwrap();
        std::future::poll_fn(|cx| wire.0.poll_write(cx, &close))
            .await
            .unwrap();
        assert_eq!(wire.write_now(&message(1, 8)), Written::Nothing);
        std::future::poll_fn(|cx| wire.0.poll_shutdown(cx))
            .await
            .unwrap();
        let frames = parse(&reader.await.unwrap());
        let binary = OpCode::Data(Data::Binary);
        let mut expected = vec![(OpCode::Data(Data::Text), line.to_vec())];
        expected.extend(sent.iter().map(|m| (binary, m.to_vec())));
        expected.push((
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Pong),
            vec![9u8; 5],
        ));
        expected.push((binary, last.to_vec()));
        expected.push((
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
            vec![],
        ));
        assert_eq!(frames.len(), expected.len());
        assert!(frames == expected, "frames out of order or changed");
    }
}
