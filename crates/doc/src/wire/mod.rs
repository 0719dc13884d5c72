//! Wires: the transports rooms and clients talk over.
//!
//! - [`memory`]: an in-process pair (tests, embedding), [`memory::Listener`] /
//!   [`memory::Connector`].
//! - [`websocket`]: WebSocket client and server channels (tokio-tungstenite, rustls for
//!   `wss://`), with the 30 s keepalive ping.
//! - [`file`](mod@file): the wire-file on-disk format (a client that syncs a document with a file).

pub mod file;
pub mod memory;
pub mod websocket;

/// Percent-decode a URL path (`%2F` → `/`); invalid escapes are kept as they are.
pub(crate) fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The room id for a request target: the percent-decoded path without the query string,
/// with its leading `/` (as wiredb reports it).
pub(crate) fn room_id_from_target(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path);
    if decoded.starts_with('/') {
        decoded
    } else {
        format!("/{decoded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_decoded_paths_with_the_slash() {
        assert_eq!(room_id_from_target("/ROOM"), "/ROOM");
        assert_eq!(room_id_from_target("/doc/a%2Fb?token=x"), "/doc/a/b");
        assert_eq!(room_id_from_target("/"), "/");
        assert_eq!(room_id_from_target(""), "/");
        assert_eq!(room_id_from_target("/%zz%4"), "/%zz%4");
        assert_eq!(room_id_from_target("/%C3%A9"), "/é");
    }
}
