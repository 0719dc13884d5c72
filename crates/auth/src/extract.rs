//! Where a client put its token in the request head: [`extract_token`].
//!
//! Always looked at: the `?token=` query parameter (percent-decoded) and
//! `Authorization: Bearer TOKEN`. Only when [`Sources`] asks (browsers, which can set neither
//! header on a WebSocket): a cookie (default name [`DEFAULT_COOKIE`]) and a
//! `Sec-WebSocket-Protocol` entry `nimbus.token.TOKEN`. The same token in several places is
//! fine; different tokens are refused as ambiguous rather than guessed between.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};
use http::request::Parts;

use crate::MAX_TOKEN_BYTES;

/// The cookie looked at when none is named.
pub const DEFAULT_COOKIE: &str = "nimbus_token";

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token.
pub const SUBPROTOCOL_PREFIX: &str = "nimbus.token.";

/// A bare `Sec-WebSocket-Protocol` entry a client may offer beside its token entry: the
/// server then echoes this one instead of the token.
pub const SUBPROTOCOL_MARKER: &str = "nimbus.token";

/// Where to look beyond the query and `Authorization`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Look at this cookie (`None`: no cookie).
    pub cookie: Option<String>,
    /// Look at `Sec-WebSocket-Protocol` entries.
    pub subprotocol: bool,
}

impl Sources {
    /// Query and `Authorization` only (APIs, bots, native clients).
    pub fn headers_only() -> Sources {
        Sources::default()
    }

    /// Also the [`DEFAULT_COOKIE`] cookie and the WebSocket subprotocol (browsers).
    pub fn browser() -> Sources {
        Sources {
            cookie: Some(DEFAULT_COOKIE.to_owned()),
            subprotocol: true,
        }
    }
}

/// Where a token was found (the first of these, in this order, when it was in several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// `?token=`.
    Query,
    /// `Authorization: Bearer`.
    Bearer,
    /// The cookie.
    Cookie,
    /// A `Sec-WebSocket-Protocol` entry.
    Subprotocol,
}

/// A token found in a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The token.
    pub token: String,
    /// Where it was found.
    pub source: TokenSource,
    /// When the client offered a token subprotocol: the entry the server must echo in its
    /// `Sec-WebSocket-Protocol` response header (a browser fails the handshake otherwise).
    /// [`SUBPROTOCOL_MARKER`] when the client offered it, else the token entry itself.
    pub subprotocol: Option<String>,
}

/// Why no token could be taken from a request head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// Different tokens in different places (or twice in one).
    #[error("several different tokens in the request")]
    Ambiguous,
    /// A token place is present but unusable (empty, not UTF-8, bad percent-encoding).
    #[error("unreadable token in the request: {0}")]
    Malformed(&'static str),
    /// A token longer than [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES).
    #[error("token is longer than {max} bytes", max = crate::MAX_TOKEN_BYTES)]
    TooLong,
}

impl ExtractError {
    /// A short, stable reason for the client: `ambiguous_token`, `malformed_token`,
    /// `token_too_long`.
    pub fn reason(&self) -> &'static str {
        match self {
            ExtractError::Ambiguous => "ambiguous_token",
            ExtractError::Malformed(_) => "malformed_token",
            ExtractError::TooLong => "token_too_long",
        }
    }
}

/// The token of a request head, `Ok(None)` when it carries none.
pub fn extract_token(parts: &Parts, sources: &Sources) -> Result<Option<FoundToken>, ExtractError> {
    let mut found: Vec<(TokenSource, String)> = Vec::new();
    let mut subprotocol = None;

    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name != "token" {
                continue;
            }
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| ExtractError::Malformed("?token= is not UTF-8"))?;
            found.push((TokenSource::Query, checked(value, "?token= is empty")?));
        }
    }

    for value in parts.headers.get_all(AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ExtractError::Malformed("Authorization is not ASCII"))?;
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            found.push((
                TokenSource::Bearer,
                checked(Cow::Borrowed(rest.trim()), "empty bearer token")?,
            ));
        }
    }

    if let Some(name) = &sources.cookie {
        for value in parts.headers.get_all(COOKIE) {
            // A cookie header that is not ASCII holds no cookie of ours; others may.
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                let Some((n, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if n.trim() == name {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    found.push((
                        TokenSource::Cookie,
                        checked(Cow::Borrowed(v), "empty token cookie")?,
                    ));
                }
            }
        }
    }

    if sources.subprotocol {
        let mut marker = false;
        let mut entry = None;
        for value in parts.headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
            let value = value
                .to_str()
                .map_err(|_| ExtractError::Malformed("Sec-WebSocket-Protocol is not ASCII"))?;
            for proto in value.split(',').map(str::trim) {
                if proto == SUBPROTOCOL_MARKER {
                    marker = true;
                } else if let Some(token) = proto.strip_prefix(SUBPROTOCOL_PREFIX) {
                    found.push((
                        TokenSource::Subprotocol,
                        checked(Cow::Borrowed(token), "empty subprotocol token")?,
                    ));
                    entry.get_or_insert_with(|| proto.to_owned());
                }
            }
        }
        if entry.is_some() {
            subprotocol = if marker {
                Some(SUBPROTOCOL_MARKER.to_owned())
            } else {
                entry
            };
        }
    }

    let mut found = found.into_iter();
    let Some((source, token)) = found.next() else {
        return Ok(None);
    };
    if found.any(|(_, other)| other != token) {
        return Err(ExtractError::Ambiguous);
    }
    Ok(Some(FoundToken {
        token,
        source,
        subprotocol,
    }))
}

fn checked(token: Cow<'_, str>, empty: &'static str) -> Result<String, ExtractError> {
    if token.is_empty() {
        return Err(ExtractError::Malformed(empty));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ExtractError::TooLong);
    }
    Ok(token.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn get(
        uri: &str,
        headers: &[(&str, &str)],
        s: &Sources,
    ) -> Result<Option<FoundToken>, ExtractError> {
        extract_token(&parts(uri, headers), s)
    }

    fn token(uri: &str, headers: &[(&str, &str)], s: &Sources) -> (String, TokenSource) {
        let f = get(uri, headers, s).expect("ok").expect("a token");
        (f.token, f.source)
    }

    #[test]
    fn query_token_is_percent_decoded() {
        let (t, src) = token("/doc/a?x=1&token=ab%2Ecd.ef", &[], &Sources::default());
        assert_eq!((t.as_str(), src), ("ab.cd.ef", TokenSource::Query));
    }

    #[test]
    fn bearer_token_is_read_with_any_scheme_case() {
        let s = Sources::default();
        assert_eq!(token("/", &[("authorization", "Bearer abc")], &s).0, "abc");
        assert_eq!(
            token("/", &[("authorization", "bearer  abc ")], &s).0,
            "abc"
        );
        assert_eq!(
            get("/", &[("authorization", "Basic dXNlcjpwYXNz")], &s),
            Ok(None)
        );
    }

    #[test]
    fn no_token_anywhere_is_none() {
        assert_eq!(get("/doc/a?tok=x", &[], &Sources::browser()), Ok(None));
    }

    #[test]
    fn cookie_is_read_only_when_asked() {
        let h = [("cookie", "a=1; nimbus_token=abc; b=2")];
        assert_eq!(get("/", &h, &Sources::default()), Ok(None));
        assert_eq!(
            token("/", &h, &Sources::browser()),
            ("abc".into(), TokenSource::Cookie)
        );
        let named = Sources {
            cookie: Some("sess".into()),
            subprotocol: false,
        };
        assert_eq!(token("/", &[("cookie", "sess=\"xyz\"")], &named).0, "xyz");
    }

    #[test]
    fn subprotocol_token_is_read_only_when_asked_and_its_entry_echoed() {
        let h = [("sec-websocket-protocol", "chat, nimbus.token.abc.def.ghi")];
        assert_eq!(get("/", &h, &Sources::default()), Ok(None));
        let f = get("/", &h, &Sources::browser())
            .expect("ok")
            .expect("token");
        assert_eq!(f.token, "abc.def.ghi");
        assert_eq!(f.source, TokenSource::Subprotocol);
        assert_eq!(f.subprotocol.as_deref(), Some("nimbus.token.abc.def.ghi"));
    }

    #[test]
    fn subprotocol_marker_is_echoed_instead_of_the_token_when_offered() {
        let h = [("sec-websocket-protocol", "nimbus.token, nimbus.token.abc")];
        let f = get("/", &h, &Sources::browser())
            .expect("ok")
            .expect("token");
        assert_eq!(f.subprotocol.as_deref(), Some(SUBPROTOCOL_MARKER));
    }

    #[test]
    fn same_token_in_several_places_is_fine_and_the_echo_kept() {
        let h = [
            ("authorization", "Bearer abc"),
            ("sec-websocket-protocol", "nimbus.token.abc"),
        ];
        let f = get("/?token=abc", &h, &Sources::browser())
            .expect("ok")
            .expect("token");
        assert_eq!(f.source, TokenSource::Query);
        assert_eq!(f.subprotocol.as_deref(), Some("nimbus.token.abc"));
    }

    #[test]
    fn different_tokens_are_ambiguous() {
        let s = Sources::browser();
        let bearer = [("authorization", "Bearer abc")];
        assert_eq!(
            get("/?token=xyz", &bearer, &s),
            Err(ExtractError::Ambiguous)
        );
        assert_eq!(
            get("/?token=a&token=b", &[], &s),
            Err(ExtractError::Ambiguous)
        );
        let cookie_and_proto = [
            ("cookie", "nimbus_token=old"),
            ("sec-websocket-protocol", "nimbus.token.new"),
        ];
        assert_eq!(
            get("/", &cookie_and_proto, &s),
            Err(ExtractError::Ambiguous)
        );
        // a cookie the endpoint does not look at is no conflict
        let stale = [
            ("cookie", "nimbus_token=old"),
            ("authorization", "Bearer new"),
        ];
        assert_eq!(token("/", &stale, &Sources::default()).0, "new");
    }

    #[test]
    fn empty_or_undecodable_tokens_are_malformed() {
        let s = Sources::browser();
        assert!(matches!(
            get("/?token=", &[], &s),
            Err(ExtractError::Malformed(_))
        ));
        assert!(matches!(
            get("/?token=%FF", &[], &s),
            Err(ExtractError::Malformed(_))
        ));
        assert!(matches!(
            get("/", &[("authorization", "Bearer ")], &s),
            Err(ExtractError::Malformed(_))
        ));
        assert!(matches!(
            get("/", &[("cookie", "nimbus_token=")], &s),
            Err(ExtractError::Malformed(_))
        ));
    }

    #[test]
    fn overlong_token_is_refused() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let err = get(&format!("/?token={long}"), &[], &Sources::default());
        assert_eq!(err, Err(ExtractError::TooLong));
        assert_eq!(err.map_err(|e| e.reason()), Err("token_too_long"));
    }
}
