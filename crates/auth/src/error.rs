//! Why a token is refused ([`TokenError`]) and why keys could not be loaded ([`KeyError`]).

use std::path::PathBuf;

/// Why a token was refused.
///
/// [`reason`](TokenError::reason) is a short, stable string meant for a client (an HTTP 401
/// body, a WebSocket close reason); it names the rule, never a key, a path or a secret.
/// The `Display` text adds a little context for the server's log (which claim, which limit),
/// taken from the token itself, never from the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES): refused before any parsing.
    #[error("token is longer than {max} bytes", max = crate::MAX_TOKEN_BYTES)]
    TooLong,
    /// Not a compact JWS (three base64url parts), or a header that cannot be read.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is `none` or an algorithm no key of this server can have.
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The header's `kid` names no configured key, or no key is configured for its `alg`.
    #[error("no key for this token (unknown kid, or no key for its alg)")]
    UnknownKey,
    /// The signature does not verify: another key, a changed header or payload, or an
    /// `alg` that is not the algorithm of the key the `kid` names.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` (plus the leeway) is past.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// An issuer is configured and `iss` is missing or another.
    #[error("token issuer is not the one configured")]
    WrongIssuer,
    /// An audience is configured and `aud` does not hold it, or `aud` is set and no
    /// audience is configured (RFC 7519 §4.1.3).
    #[error("token audience is not the one configured")]
    WrongAudience,
    /// Signed by a good key, but the claims break a rule (missing `sub`, bad pattern,
    /// unknown field in `nimbus`, too many patterns, …). The text says which.
    #[error("bad token claims: {0}")]
    BadClaims(String),
}

impl TokenError {
    /// A short, stable reason for the client: `token_too_long`, `malformed_token`,
    /// `unsupported_alg`, `unknown_key`, `bad_signature`, `token_expired`,
    /// `token_not_yet_valid`, `wrong_issuer`, `wrong_audience`, `bad_claims`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLong => "token_too_long",
            TokenError::Malformed(_) => "malformed_token",
            TokenError::UnsupportedAlgorithm => "unsupported_alg",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadClaims(_) => "bad_claims",
        }
    }
}

/// Why a set of keys could not be built. Each names the file and the key (its `kid`, or
/// its place in the file) and the cause; none prints a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The JWKS file could not be read.
    #[error("cannot read JWKS file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JWKS file is larger than [`MAX_JWKS_BYTES`](crate::MAX_JWKS_BYTES).
    #[error("JWKS file {path} is larger than {max} bytes", max = crate::MAX_JWKS_BYTES)]
    JwksTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The JWKS file is not a JWK Set (`{"keys":[...]}`).
    #[error("JWKS file {path} is not a JWK Set: {reason}")]
    Jwks {
        /// The file (`<inline>` for a string).
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// One key of the JWKS file cannot be used.
    #[error("JWKS file {path}, key {key}: {reason}")]
    BadJwk {
        /// The file.
        path: PathBuf,
        /// The key: `kid "…"`, or `#N` (its place, from 0) without a `kid`.
        key: String,
        /// The cause.
        reason: String,
    },
    /// An HS256 secret is shorter than [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES).
    #[error("HS256 secret {key} is {len} bytes long (at least {min})", min = crate::MIN_SECRET_BYTES)]
    SecretTooShort {
        /// The secret: `kid "…"`, or `#N` (its place in the list, from 0) without a `kid`.
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A `kid` that is not 1 to [`MAX_KID_BYTES`](crate::MAX_KID_BYTES) printable bytes.
    #[error("bad key id {kid:?}: {reason}")]
    BadKid {
        /// The key id.
        kid: String,
        /// The cause.
        reason: &'static str,
    },
    /// Two keys have the same `kid`: a token naming it could not tell them apart.
    #[error("two keys have the kid {0:?}")]
    DuplicateKid(String),
    /// More keys than [`MAX_KEYS`](crate::MAX_KEYS).
    #[error("{0} keys configured (at most {max})", max = crate::MAX_KEYS)]
    TooManyKeys(usize),
    /// No key at all: every token would be refused.
    #[error("no token keys configured (an HS256 secret or a JWKS file)")]
    NoKeys,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_short_stable_and_distinct() {
        let all = [
            TokenError::TooLong,
            TokenError::Malformed("x"),
            TokenError::UnsupportedAlgorithm,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::BadClaims("x".into()),
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(TokenError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        for r in reasons {
            assert!(r.len() <= 32 && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
