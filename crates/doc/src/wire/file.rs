//! The wire-file on-disk format (wiredb's `wire_file`).
//!
//! A file starts with the ASCII version [`VERSION`] (`"0.0.1"`) and a `0x00` byte, then
//! holds records until its end: `varUint(len) ‖ v1 update`. Reading applies the records in
//! order to a fresh document. A truncated final record (a crash in the middle of an append)
//! is ignored with a warning. Squashing rewrites the file as the header plus one record
//! holding the merged state, through a temporary file, `fsync` and `rename` (upstream
//! truncates in place).
//!
//! The client side of this wire is [`ClientWire::File`](crate::ClientWire::File); the
//! functions here can also back a room's persistence.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use nimbus_proto::doc::lib0::{write_var_uint, Reader};
use thiserror::Error;

/// The format version written in the header.
pub const VERSION: &str = "0.0.1";

/// A failure reading or writing an update file.
#[derive(Debug, Error)]
pub enum FileError {
    /// The file's version is not [`VERSION`].
    #[error("File version mismatch (got \"{got}\", expected \"{VERSION}\")")]
    VersionMismatch {
        /// The version found.
        got: String,
    },
    /// The file has no `0x00` after its version.
    #[error("{path}: not a wire-file (no header)")]
    NoHeader {
        /// The file.
        path: PathBuf,
    },
    /// A record is not a valid update.
    #[error("{path}: record {index} at byte {offset} is not a valid update: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The record number (0-based).
        index: usize,
        /// Where the record starts.
        offset: usize,
        /// Why.
        reason: String,
    },
    /// An IO error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The records of an update file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileContents {
    /// The updates in file order.
    pub updates: Vec<Bytes>,
    /// Whether a truncated final record was ignored.
    pub truncated_tail: bool,
    /// The length of the file up to the end of its last whole record (where the next
    /// record belongs; see [`truncate`]).
    pub valid_len: u64,
}

/// The header: version then `0x00`.
pub fn header() -> Vec<u8> {
    let mut h = VERSION.as_bytes().to_vec();
    h.push(0);
    h
}

/// One record: `varUint(len) ‖ update`.
pub fn record(update: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(update.len() + 4);
    write_var_uint(&mut r, update.len() as u64);
    r.extend_from_slice(update);
    r
}

/// Parse the bytes of an update file (`path` is only used in errors and logs).
pub fn parse(path: &Path, data: &[u8]) -> Result<FileContents, FileError> {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        if data.is_empty() {
            return Ok(FileContents::default());
        }
        return Err(FileError::NoHeader {
            path: path.to_owned(),
        });
    };
    let version = String::from_utf8_lossy(&data[..nul]);
    if version != VERSION {
        return Err(FileError::VersionMismatch {
            got: version.into_owned(),
        });
    }
    let body = &data[nul + 1..];
    let base = nul + 1;
    let mut r = Reader::with_base(body, base);
    let mut out = FileContents {
        valid_len: base as u64,
        ..FileContents::default()
    };
    while !r.is_empty() {
        let at = r.offset();
        match r.read_var_bytes_range("record") {
            Ok(range) => {
                out.updates.push(Bytes::copy_from_slice(&body[range]));
                out.valid_len = r.offset() as u64;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = at, error = %e, "ignoring a truncated final record");
                out.truncated_tail = true;
                break;
            }
        }
    }
    Ok(out)
}

/// Read an update file; a missing file reads as empty.
pub fn read(path: &Path) -> Result<FileContents, FileError> {
    match std::fs::read(path) {
        Ok(data) => parse(path, &data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileContents::default()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Cut the file at `len` (drops a truncated final record, so that later appends are
/// readable).
pub fn truncate(path: &Path, len: u64) -> Result<(), FileError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_data().map_err(io(path))
}

/// Append records to the file (writing the header first if the file is new or empty),
/// then `fsync`.
pub fn append(path: &Path, updates: &[Bytes]) -> Result<(), FileError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut buf = Vec::new();
    if len == 0 {
        buf.extend_from_slice(&header());
    }
    for u in updates {
        buf.extend_from_slice(&record(u));
    }
    f.write_all(&buf).map_err(io(path))?;
    f.sync_data().map_err(io(path))
}

/// Replace the file with the header and one record holding `state` (through a temporary
/// file in the same directory, `fsync` and `rename`).
pub fn squash(path: &Path, state: &[u8]) -> Result<(), FileError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&header())?;
        f.write_all(&record(state))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_records_and_truncated_tail() {
        let p = Path::new("x.y");
        let mut data = header();
        data.extend(record(&[1, 2, 3]));
        data.extend(record(&[4]));
        assert_eq!(&data[..6], b"0.0.1\0");
        let c = parse(p, &data).unwrap();
        assert_eq!(
            c.updates,
            [Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4])]
        );
        assert!(!c.truncated_tail);
        data.extend([5, 9, 9]);
        let c = parse(p, &data).unwrap();
        assert_eq!(c.updates.len(), 2);
        assert!(c.truncated_tail);
        assert_eq!(c.valid_len as usize, data.len() - 3);
        let e = parse(p, b"0.0.2\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "File version mismatch (got \"0.0.2\", expected \"0.0.1\")"
        );
        assert!(parse(p, b"").unwrap().updates.is_empty());
        assert!(matches!(
            parse(p, b"0.0.1"),
            Err(FileError::NoHeader { .. })
        ));
    }
}
