//! Signed per-user tokens (JWT) for nimbus: keys, verification, what a token grants, and
//! where a client puts its token. No IO but reading the JWKS file.
//!
//! - [`AuthConfig`] names the keys: HS256 shared secrets ([`Hs256Secret`], `KID:SECRET`) and
//!   a JWK Set file of public keys (RS256, ES256, EdDSA/Ed25519).
//! - [`Verifier::verify`] checks a token at a given time and gives an [`Identity`]: the user
//!   (`sub`), when the token expires, and per [`Capability`] (`cloud`, `doc`, `gateway`,
//!   `api`) the rooms it may use and how ([`Mode`]), plus the gateway intents. A refusal is a
//!   [`TokenError`] whose [`reason`](TokenError::reason) is fit for an HTTP 401 body or a
//!   WebSocket close reason.
//! - [`KeyStore`] holds the current verifier and swaps in a new one on
//!   [`reload`](KeyStore::reload) (SIGHUP); a failed reload keeps the old keys.
//! - [`extract_token`] finds the token in a request head (`?token=`,
//!   `Authorization: Bearer`, and for browsers a cookie or a WebSocket subprotocol).
//!
//! Every key is bound to one algorithm: a token's header `alg` must be that key's, so an
//! HS256 token never verifies against an RSA key's bytes and `alg: none` never verifies.
//! The claim layout, limits and refusal reasons are in `docs/tokens.md`.
//!
//! ```
//! use std::time::SystemTime;
//! use nimbus_auth::{AuthConfig, Capability, Verifier};
//!
//! let config = AuthConfig {
//!     hs256_secrets: vec!["k1:an-example-secret-of-32-bytes-or-more".parse()?],
//!     ..AuthConfig::default()
//! };
//! let verifier = Verifier::from_config(&config)?;
//! match verifier.verify("not-a-token", SystemTime::now()) {
//!     Ok(id) => println!("{} may write notes/a: {:?}", id.sub(), id.access(Capability::Doc, "notes/a")),
//!     Err(e) => assert_eq!(e.reason(), "malformed_token"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod claims;
mod config;
mod error;
mod extract;
mod keys;
mod store;
mod verify;

pub use claims::{Capability, Identity, Mode, Pattern, RoomSet};
pub use config::{AuthConfig, Hs256Secret, DEFAULT_LEEWAY};
pub use error::{KeyError, TokenError};
pub use extract::{
    extract_token, ExtractError, FoundToken, Sources, TokenSource, DEFAULT_COOKIE,
    SUBPROTOCOL_MARKER, SUBPROTOCOL_PREFIX,
};
pub use keys::KeyInfo;
pub use store::KeyStore;
pub use verify::Verifier;

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `sub`, in bytes.
pub const MAX_SUB_BYTES: usize = 128;

/// Most room patterns in one token, over all capabilities and modes.
pub const MAX_PATTERNS: usize = 256;

/// Longest room pattern, in bytes (a document room name is at most 512 bytes).
pub const MAX_PATTERN_BYTES: usize = 513;

/// Longest key id (`kid`), in bytes.
pub const MAX_KID_BYTES: usize = 128;

/// Most keys in one verifier (HS256 secrets and JWKS keys together). A token without a
/// `kid` is tried against each key of its algorithm, so this also bounds that work.
pub const MAX_KEYS: usize = 64;

/// Largest JWKS file read, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Shortest HS256 secret, in bytes: RFC 7518 §3.2 requires a key at least as long as the
/// hash (256 bits), and a shorter one can be brute-forced from any token it signed.
pub const MIN_SECRET_BYTES: usize = 32;

/// Smallest RSA modulus accepted in a JWKS, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
