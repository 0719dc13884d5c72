//! zlib-stream transport decompression: one inflate context per connection, fed
//! binary frames until a message ends with `00 00 FF FF`.

use flate2::{Decompress, FlushDecompress, Status};
use nimbus_proto::gateway::ZLIB_SUFFIX;

/// See the module docs.
pub(crate) struct Inflater {
    z: Decompress,
    pending: Vec<u8>,
}

impl Inflater {
    pub(crate) fn new() -> Inflater {
        Inflater {
            z: Decompress::new(true),
            pending: Vec::new(),
        }
    }

    /// Feed one binary frame; `Ok(Some(text))` when a whole message is complete.
    pub(crate) fn push(&mut self, frame: &[u8]) -> Result<Option<String>, String> {
        self.pending.extend_from_slice(frame);
        if !self.pending.ends_with(&ZLIB_SUFFIX) {
            return Ok(None);
        }
        let input = std::mem::take(&mut self.pending);
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(1024));
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
        let mut inf = Inflater::new();
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
}
