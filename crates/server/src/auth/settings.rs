//! Signed tokens' settings ([`AuthSettings`]: flags, `NIMBUS_TOKEN_*` / `NIMBUS_CLOUD_AUTH`
//! environment, `token_*` / `cloud_auth` keys of the config file), resolved into an
//! [`AuthSetup`].

use std::path::PathBuf;
use std::time::Duration;

use nimbus_auth::{AuthConfig, Hs256Secret};
use serde::Deserialize;

use crate::setting::InvalidSetting;

/// Who a cloud client is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudAuth {
    /// The handshake's `user` (Scratch and TurboWarp clients cannot send a token).
    #[default]
    Off,
    /// A signed token with a `cloud` grant for the project is required before the upgrade;
    /// the username is the token's `sub`, whatever the handshake says.
    Required,
}

/// The signed-token settings, each optional so that flags, environment and file can be
/// layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct AuthSettings {
    /// HS256 secret for signed tokens, `KID:SECRET` or `SECRET` (repeatable; at least 32
    /// bytes; `:SECRET` for a secret containing `:` without a kid) [default: none].
    #[arg(
        long = "token-secret",
        env = "NIMBUS_TOKEN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_secret: Option<Vec<String>>,
    /// JWK Set file of public keys (RS256, ES256, EdDSA) for signed tokens; re-read on SIGHUP
    /// [default: none].
    #[arg(long, env = "NIMBUS_TOKEN_JWKS")]
    pub token_jwks: Option<PathBuf>,
    /// Clock leeway for `exp` and `nbf`, in seconds [default: 30].
    #[arg(long, env = "NIMBUS_TOKEN_LEEWAY_S")]
    pub token_leeway_s: Option<u64>,
    /// Required `iss` of signed tokens [default: not checked].
    #[arg(long, env = "NIMBUS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// Required `aud` of signed tokens [default: tokens with an `aud` are refused].
    #[arg(long, env = "NIMBUS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Cookie a browser cloud client may carry its token in [default: nimbus_token].
    #[arg(long, env = "NIMBUS_TOKEN_COOKIE")]
    pub token_cookie: Option<String>,
    /// Static admin token of the HTTP API (repeatable): may read and change every room
    /// [default: none].
    #[arg(
        long = "api-token",
        env = "NIMBUS_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_token: Option<Vec<String>>,
    /// Cloud identity: `off` (the handshake's user) or `required` (a signed token's `sub`)
    /// [default: off].
    #[arg(
        long,
        env = "NIMBUS_CLOUD_AUTH",
        value_enum,
        hide_possible_values = true
    )]
    pub cloud_auth: Option<CloudAuth>,
}

/// What the signed-token settings resolve to.
#[derive(Debug, Clone, Default)]
pub struct AuthSetup {
    /// The keys, when any is configured (else signed tokens are not accepted).
    pub keys: Option<AuthConfig>,
    /// Cloud identity.
    pub cloud: CloudAuth,
    /// The cookie name for browser cloud clients.
    pub cookie: String,
    /// Static admin tokens of the HTTP API.
    pub api_tokens: Vec<String>,
}

impl AuthSetup {
    /// Fill in defaults and check the values (the keys themselves are read when the server
    /// starts or reloads, so a JWKS file that does not parse is reported then).
    pub fn from_settings(s: &AuthSettings) -> Result<AuthSetup, InvalidSetting> {
        let mut secrets = Vec::new();
        for spec in s.token_secret.iter().flatten() {
            let secret: Hs256Secret = spec.parse().map_err(|e: String| InvalidSetting {
                key: "token_secret",
                reason: e.to_string(),
            })?;
            secrets.push(secret);
        }
        let keys = (!secrets.is_empty() || s.token_jwks.is_some()).then(|| AuthConfig {
            hs256_secrets: secrets,
            jwks_file: s.token_jwks.clone(),
            leeway: s
                .token_leeway_s
                .map_or(nimbus_auth::DEFAULT_LEEWAY, Duration::from_secs),
            issuer: s.token_issuer.clone(),
            audience: s.token_audience.clone(),
        });
        let cloud = s.cloud_auth.unwrap_or_default();
        if cloud == CloudAuth::Required && keys.is_none() {
            return Err(InvalidSetting {
                key: "cloud_auth",
                reason: "`required` needs signing keys (token_secret or token_jwks)".into(),
            });
        }
        let cookie = s
            .token_cookie
            .clone()
            .unwrap_or_else(|| nimbus_auth::DEFAULT_COOKIE.to_owned());
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"_-.".contains(&b);
        if cookie.is_empty() || !cookie.bytes().all(name_byte) {
            return Err(InvalidSetting {
                key: "token_cookie",
                reason: "a cookie name is letters, digits, `_`, `-` and `.`".into(),
            });
        }
        let api_tokens: Vec<String> = s
            .api_token
            .iter()
            .flatten()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if api_tokens
            .iter()
            .any(|t| t.len() < 16 || super::looks_signed(t))
        {
            return Err(InvalidSetting {
                key: "api_token",
                reason: "an API token is at least 16 bytes and not shaped like a JWT".into(),
            });
        }
        Ok(AuthSetup {
            keys,
            cloud,
            cookie,
            api_tokens,
        })
    }
}
