//! zlib-stream transport decompression: one inflate context per connection, fed
//! binary frames until a message ends with `00 00 FF FF`. Both the compressed bytes of one
//! message and what they inflate to are bounded by the client's `max_message_bytes`.

use flate2::{Decompress, FlushDecompress, Status};
use nimbus_proto::gateway::ZLIB_SUFFIX;

/// See the module docs.
pub(crate) struct Inflater {
    z: Decompress,
    pending: Vec<u8>,
    max: usize,
}

impl Inflater {
    /// An inflater for messages of at most `max` bytes, compressed or inflated.
    pub(crate) fn new(max: usize) -> Inflater {
        Inflater {
            z: Decompress::new(true),
            pending: Vec::new(),
            max,
        }
    }

    /// Feed one binary frame; `Ok(Some(text))` when a whole message is complete. An error
    /// leaves the stream unusable (the connection must end).
    pub(crate) fn push(&mut self, frame: &[u8]) -> Result<Option<String>, String> {
        if self.pending.len() + frame.len() > self.max {
            return Err(format!(
                "compressed message over {} bytes without an end",
                self.max
            ));
        }
        self.pending.extend_from_slice(frame);
        if !self.pending.ends_with(&ZLIB_SUFFIX) {
            return Ok(None);
        }
        let input = std::mem::take(&mut self.pending);
        // At most one byte past the bound is ever held (enough to see that it was passed).
        let limit = self.max.saturating_add(1);
        let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).min(limit));
        let mut consumed = 0usize;
        loop {
            if out.len() > self.max {
                return Err(format!("message inflates past {} bytes", self.max));
            }
            if out.capacity() - out.len() < 1024 {
                let room = limit.saturating_sub(out.len()).max(1);
                out.reserve_exact(out.capacity().max(1024).min(room));
            }
            let before_in = self.z.total_in();
            let status = self
                .z
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|e| e.to_string())?;
            consumed += usize::try_from(self.z.total_in() - before_in).unwrap_or(0);
            let done = consumed >= input.len() && out.len() < out.capacity();
            if matches!(status, Status::StreamEnd) || done {
                break;
            }
            if matches!(status, Status::BufError) && consumed >= input.len() {
                break;
            }
        }
        String::from_utf8(out)
            .map(Some)
            .map_err(|_| "inflated payload is not UTF-8".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(z: &mut Compress, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
            .expect("compress");
        out
    }

    #[test]
    fn one_context_across_messages_and_split_frames() {
        let mut z = Compress::new(Compression::default(), true);
        let mut inf = Inflater::new(1 << 20);
        let a = deflate(&mut z, r#"{"op":10,"d":{"heartbeat_interval":45000}}"#);
        assert!(a.ends_with(&ZLIB_SUFFIX));
        let (x, y) = a.split_at(a.len() / 2);
        assert_eq!(inf.push(x), Ok(None));
        assert_eq!(
            inf.push(y).expect("inflate").as_deref(),
            Some(r#"{"op":10,"d":{"heartbeat_interval":45000}}"#)
        );
        let big = "x".repeat(100_000);
        let b = deflate(&mut z, &big);
        assert_eq!(inf.push(&b).expect("inflate"), Some(big));
    }

    #[test]
    fn a_message_of_the_bound_inflates_and_one_byte_more_is_refused() {
        let max = 64 << 10;
        let mut z = Compress::new(Compression::default(), true);
        let mut inf = Inflater::new(max);
        let exact = "y".repeat(max);
        assert_eq!(inf.push(&deflate(&mut z, &exact)), Ok(Some(exact)));
        // A bomb: 16 MiB of one letter is ~16 KiB compressed.
        let bomb = deflate(&mut z, &"b".repeat(16 << 20));
        assert!(bomb.len() < max);
        let err = inf.push(&bomb).expect_err("a bomb");
        assert!(err.contains("inflates past"), "{err}");
        let mut z = Compress::new(Compression::default(), true);
        let mut inf = Inflater::new(max);
        let over = "y".repeat(max + 1);
        assert!(inf.push(&deflate(&mut z, &over)).is_err());
    }

    #[test]
    fn compressed_bytes_past_the_bound_without_an_end_are_refused() {
        let mut inf = Inflater::new(1000);
        assert_eq!(inf.push(&[1; 600]), Ok(None));
        assert!(inf
            .push(&[1; 600])
            .expect_err("over")
            .contains("without an end"));
    }
}
