//! Where the keys come from and which claims are checked: [`AuthConfig`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::MAX_KID_BYTES;

/// Leeway on `exp` and `nbf` when none is configured, for clocks that disagree a little.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// One HS256 shared secret, with an optional key id.
///
/// On a command line: `KID:SECRET` or `SECRET`. The text up to the first `:` is the `kid`;
/// without a `:` the whole text is the secret and the key has no `kid`. A secret that itself
/// contains `:` and has no `kid` is written with an empty `kid`: `:SECRET`. A `kid` is 1 to
/// [`MAX_KID_BYTES`] printable ASCII bytes other than `:`. The secret is used as its UTF-8
/// bytes (what PyJWT and `jose` do with a string secret).
///
/// In a config file: the same string, or a table `{ kid = "…", secret = "…" }`.
#[derive(Clone, PartialEq, Eq)]
pub struct Hs256Secret {
    /// Key id that tokens signed with this secret carry in their header (`kid`).
    pub kid: Option<String>,
    /// The secret (at least [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES) bytes).
    pub secret: String,
}

impl fmt::Debug for Hs256Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hs256Secret")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Check a `kid` (configured or from a token's header): 1 to [`MAX_KID_BYTES`] bytes of
/// printable ASCII.
pub(crate) fn check_kid(kid: &str) -> Result<(), &'static str> {
    if kid.is_empty() {
        return Err("empty");
    }
    if kid.len() > MAX_KID_BYTES {
        return Err("too long");
    }
    if !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("not printable ASCII without spaces");
    }
    Ok(())
}

impl FromStr for Hs256Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kid, secret) = match s.split_once(':') {
            None => (None, s),
            Some(("", secret)) => (None, secret),
            Some((kid, secret)) => {
                check_kid(kid).map_err(|why| format!("the key id before `:` is {why}"))?;
                (Some(kid.to_owned()), secret)
            }
        };
        if secret.is_empty() {
            return Err("empty HS256 secret (KID:SECRET or SECRET)".into());
        }
        Ok(Hs256Secret {
            kid,
            secret: secret.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for Hs256Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Table { kid: Option<String>, secret: String },
        }
        match Form::deserialize(d)? {
            Form::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Form::Table { kid, secret } => Ok(Hs256Secret { kid, secret }),
        }
    }
}

/// Token keys and checks. `Default`: no keys, no issuer or audience, leeway
/// [`DEFAULT_LEEWAY`].
///
/// `exp` is always required (not configurable): a token that never expires can only be
/// revoked by retiring its key. Mint long-lived tokens with a far `exp` instead.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secrets.
    pub hs256_secrets: Vec<Hs256Secret>,
    /// A JWK Set file with public keys (RS256, ES256, EdDSA/Ed25519), read again on reload.
    pub jwks_file: Option<PathBuf>,
    /// Leeway on `exp` and `nbf`. In a file: whole seconds (`leeway = 30`).
    #[serde(deserialize_with = "seconds")]
    pub leeway: Duration,
    /// When set, `iss` must be exactly this.
    pub issuer: Option<String>,
    /// When set, `aud` (a string or an array) must hold this; when not set, a token with an
    /// `aud` is refused (RFC 7519 §4.1.3: it was meant for someone else).
    pub audience: Option<String>,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secrets: Vec::new(),
            jwks_file: None,
            leeway: DEFAULT_LEEWAY,
            issuer: None,
            audience: None,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secrets", &self.hs256_secrets)
            .field("jwks_file", &self.jwks_file)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_with_kid_splits_at_the_first_colon() {
        let s: Hs256Secret = "k1:abc:def".parse().expect("secret");
        assert_eq!(s.kid.as_deref(), Some("k1"));
        assert_eq!(s.secret, "abc:def");
    }

    #[test]
    fn secret_without_colon_has_no_kid() {
        let s: Hs256Secret = "just-a-secret".parse().expect("secret");
        assert_eq!(s.kid, None);
        assert_eq!(s.secret, "just-a-secret");
    }

    #[test]
    fn leading_colon_means_no_kid_and_keeps_later_colons() {
        let s: Hs256Secret = ":a:b".parse().expect("secret");
        assert_eq!(s.kid, None);
        assert_eq!(s.secret, "a:b");
    }

    #[test]
    fn empty_secret_or_bad_kid_is_refused() {
        assert!("k1:".parse::<Hs256Secret>().is_err());
        assert!("".parse::<Hs256Secret>().is_err());
        assert!("bad kid:secret".parse::<Hs256Secret>().is_err());
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let cfg = AuthConfig {
            hs256_secrets: vec!["k1:very-secret-value".parse().expect("secret")],
            ..AuthConfig::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(text.contains("k1"), "{text}");
    }

    #[test]
    fn config_reads_from_toml_like_json_with_both_secret_forms() {
        let cfg: AuthConfig = serde_json::from_str(
            r#"{"hs256_secrets": ["k1:s1", {"kid": "k2", "secret": "s2"}, {"secret": "s3"}],
                "jwks_file": "/etc/nimbus/jwks.json", "leeway": 5, "issuer": "me"}"#,
        )
        .expect("config");
        assert_eq!(cfg.hs256_secrets.len(), 3);
        assert_eq!(cfg.hs256_secrets[1].kid.as_deref(), Some("k2"));
        assert_eq!(cfg.hs256_secrets[2].kid, None);
        assert_eq!(cfg.leeway, Duration::from_secs(5));
        assert_eq!(cfg.issuer.as_deref(), Some("me"));
        assert_eq!(cfg.audience, None);
        let empty: AuthConfig = serde_json::from_str("{}").expect("config");
        assert_eq!(empty.leeway, DEFAULT_LEEWAY);
        assert!(serde_json::from_str::<AuthConfig>(r#"{"leway": 5}"#).is_err());
    }
}
