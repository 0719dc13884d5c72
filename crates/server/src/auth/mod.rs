//! Who a client is, at the edge: static tokens (the simple mode) and signed tokens (JWT,
//! `nimbus-auth`), checked before a WebSocket upgrade, and reloaded on SIGHUP.
//!
//! A token of the form `eyJ….….…` is a signed token when signing keys are configured;
//! any other token is a static one (`--doc-token`, `--gateway-token`, `--api-token`).
//! What each refusal answers (HTTP status, close code, reason) is in `docs/security.md`,
//! "Tokens".
//!
//! - Document rooms: a signed token's `doc` grant gives read-write or read-only; with
//!   signing keys configured every room needs a token (a room a static rule names accepts
//!   its static tokens too).
//! - Cloud rooms: with `--cloud-auth required`, a signed token with a `cloud` grant for the
//!   project; the username is its `sub`.
//! - Gateway: `Identify.token` may be signed: its `gateway` grant limits the rooms whose
//!   events it receives, and its `intents` the intents it may ask for.
//! - HTTP API: the `api` grant (read-only for reads).
//!
//! A connection admitted with a signed token is closed when the token expires (documents
//! and cloud: 4401 `token_expired`; gateway: 4004).

pub mod settings;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use axum::http::request::Parts;
use axum::http::StatusCode;
use nimbus_auth::{Capability, ExtractError, Identity, Mode, Sources, TokenError, Verifier};
pub use settings::{AuthSettings, AuthSetup, CloudAuth};
use subtle::ConstantTimeEq;

use crate::doc::{Access, AccessRules};

/// Close code of a document or cloud connection whose signed token expired.
pub const TOKEN_EXPIRED: u16 = 4401;

/// The close reason sent with [`TOKEN_EXPIRED`].
pub const TOKEN_EXPIRED_REASON: &str = "token_expired";

/// The token a request presents.
#[derive(Debug)]
pub enum Presented {
    /// None.
    None,
    /// A static token (compared with the configured ones).
    Static(String),
    /// A signed token that verified.
    Signed(Box<Identity>),
}

/// A request refused before the upgrade: its status and the body's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 (malformed), 401 (no or bad token) or 403 (the token does not grant this).
    pub status: StatusCode,
    /// A short stable reason (`docs/security.md`, "Tokens").
    pub reason: String,
}

impl Refusal {
    fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

/// What a document client may do, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Read-write or read-only.
    pub access: Access,
    /// When a signed token expires (the connection is closed then).
    pub expires: Option<SystemTime>,
}

/// The part of the settings a reload replaces at once.
#[derive(Debug)]
struct Current {
    verifier: Option<Arc<Verifier>>,
    cloud: CloudAuth,
    cookie: String,
    api_tokens: Vec<String>,
}

/// The edge's identity checks (one per server; [`Auth::reload`] swaps its keys).
#[derive(Debug)]
pub struct Auth {
    current: ArcSwap<Current>,
}

/// Whether `token` has the shape of a JWT (`eyJ` + two dots): then it is verified as a
/// signed token, never compared as a static one.
pub fn looks_signed(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|&b| b == b'.').count() == 2
}

impl Auth {
    /// The checks of `setup`; reads the JWKS file. Errors name the file and the cause.
    pub fn new(setup: &AuthSetup) -> Result<Auth, nimbus_auth::KeyError> {
        Ok(Auth {
            current: ArcSwap::from_pointee(Auth::build(setup)?),
        })
    }

    fn build(setup: &AuthSetup) -> Result<Current, nimbus_auth::KeyError> {
        let verifier = match &setup.keys {
            Some(config) => Some(Arc::new(Verifier::from_config(config)?)),
            None => None,
        };
        Ok(Current {
            verifier,
            cloud: setup.cloud,
            cookie: setup.cookie.clone(),
            api_tokens: setup.api_tokens.clone(),
        })
    }

    /// Replace the keys and the cloud policy (SIGHUP). A setup whose keys do not load is
    /// refused and the old one stays. Connections already admitted are not touched.
    pub fn reload(&self, setup: &AuthSetup) -> Result<(), nimbus_auth::KeyError> {
        self.current.store(Arc::new(Auth::build(setup)?));
        Ok(())
    }

    fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Whether signed tokens are accepted (signing keys are configured).
    pub fn signing(&self) -> bool {
        self.current().verifier.is_some()
    }

    /// The cloud identity policy.
    pub fn cloud_auth(&self) -> CloudAuth {
        self.current().cloud
    }

    /// Verify `token` if it is a signed one: `None` when it is not (a static token) or no
    /// signing key is configured.
    pub fn verify(&self, token: &str) -> Option<Result<Identity, TokenError>> {
        let current = self.current();
        let verifier = current.verifier.as_ref()?;
        looks_signed(token).then(|| verifier.verify(token, SystemTime::now()))
    }

    /// The token `parts` presents (`?token=`, `Authorization: Bearer`, and with `browser`
    /// also the cookie and a `nimbus.token.<TOKEN>` subprotocol), verified when signed.
    /// The second value is the subprotocol to select when the token came in one.
    pub fn present(
        &self,
        parts: &Parts,
        browser: bool,
    ) -> Result<(Presented, Option<String>), Refusal> {
        let current = self.current();
        let sources = if browser {
            Sources {
                cookie: Some(current.cookie.clone()),
                subprotocol: true,
            }
        } else {
            Sources::headers_only()
        };
        let found = nimbus_auth::extract_token(parts, &sources).map_err(|e| match e {
            ExtractError::TooLong => Refusal::unauthorized(e.reason()),
            _ => Refusal {
                status: StatusCode::BAD_REQUEST,
                reason: e.reason().to_owned(),
            },
        })?;
        let Some(found) = found else {
            return Ok((Presented::None, None));
        };
        let presented = match (&current.verifier, looks_signed(&found.token)) {
            (Some(v), true) => match v.verify(&found.token, SystemTime::now()) {
                Ok(id) => Presented::Signed(Box::new(id)),
                Err(e) => return Err(Refusal::unauthorized(e.reason())),
            },
            _ => Presented::Static(found.token),
        };
        Ok((presented, found.subprotocol))
    }

    /// What `presented` may do in document room `room` under the static `rules`.
    pub fn doc(
        &self,
        rules: &AccessRules,
        room: &str,
        presented: &Presented,
    ) -> Result<Grant, Refusal> {
        match presented {
            Presented::Signed(id) => match id.access(Capability::Doc, room) {
                Some(mode) => Ok(Grant {
                    access: access(mode),
                    expires: Some(id.expires_at()),
                }),
                None => Err(Refusal::forbidden("room_not_granted")),
            },
            Presented::Static(token) => {
                if self.signing() && !rules.governs(room) {
                    // No static rule names the room: only a signed token opens it.
                    return Err(Refusal::unauthorized("unknown_token"));
                }
                static_grant(rules, room, Some(token))
            }
            Presented::None => {
                if self.signing() && !rules.governs(room) {
                    return Err(Refusal::unauthorized("token_required"));
                }
                static_grant(rules, room, None)
            }
        }
    }

    /// The identity of a cloud client: `None` with `--cloud-auth off`; with `required`, the
    /// signed token's identity, which must grant the project (checked at the handshake).
    pub fn cloud(&self, presented: Presented) -> Result<Option<Box<Identity>>, Refusal> {
        match (self.cloud_auth(), presented) {
            (CloudAuth::Off, _) => Ok(None),
            (CloudAuth::Required, Presented::Signed(id)) => Ok(Some(id)),
            (CloudAuth::Required, Presented::Static(_)) => {
                Err(Refusal::unauthorized("signed_token_required"))
            }
            (CloudAuth::Required, Presented::None) => Err(Refusal::unauthorized("token_required")),
        }
    }

    /// The HTTP API's check of a request: its token (`?token=` or `Authorization: Bearer`)
    /// may read (`write == false`) or change room `room` ([`Auth::api`]).
    pub fn check_api(&self, parts: &Parts, room: &str, write: bool) -> Result<(), Refusal> {
        let (presented, _) = self.present(parts, false)?;
        self.api(&presented, room, write)
    }

    /// Whether `presented` may read (`write == false`) or change room `room` through the
    /// HTTP API: a static admin token (`--api-token`) may do everything; a signed token
    /// what its `api` grant says. Without signing keys and admin tokens the read API is
    /// open, as before, and writes are refused.
    pub fn api(&self, presented: &Presented, room: &str, write: bool) -> Result<(), Refusal> {
        let current = self.current();
        let guarded = current.verifier.is_some() || !current.api_tokens.is_empty();
        match presented {
            Presented::Static(token) if !current.api_tokens.is_empty() => {
                // Compare against every admin token, without stopping early.
                let mut ok = false;
                for t in &current.api_tokens {
                    ok |= bool::from(t.as_bytes().ct_eq(token.as_bytes()));
                }
                return if ok {
                    Ok(())
                } else {
                    Err(Refusal::unauthorized("unknown_token"))
                };
            }
            _ => {}
        }
        match presented {
            Presented::Signed(id) => match id.access(Capability::Api, room) {
                Some(Mode::ReadWrite) => Ok(()),
                Some(Mode::ReadOnly) if !write => Ok(()),
                Some(Mode::ReadOnly) => Err(Refusal::forbidden("read_only")),
                None => Err(Refusal::forbidden("room_not_granted")),
            },
            _ if !guarded && !write => Ok(()),
            Presented::Static(_) => Err(Refusal::unauthorized("unknown_token")),
            Presented::None => Err(Refusal::unauthorized("token_required")),
        }
    }
}

fn access(mode: Mode) -> Access {
    match mode {
        Mode::ReadWrite => Access::ReadWrite,
        Mode::ReadOnly => Access::ReadOnly,
    }
}

fn static_grant(rules: &AccessRules, room: &str, token: Option<&str>) -> Result<Grant, Refusal> {
    rules
        .check(room, token)
        .map(|access| Grant {
            access,
            expires: None,
        })
        .map_err(|e| Refusal::unauthorized(e.to_string()))
}

/// How long until `at`, from now, as a tokio deadline (`None`: never).
pub fn deadline(at: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let at = at?;
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(std::time::Duration::ZERO);
    Some(tokio::time::Instant::now() + left)
}
