//! Verification keys: HS256 secrets and public keys from a JWK Set, each bound to exactly
//! one algorithm.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{check_kid, Hs256Secret};
use crate::error::KeyError;
use crate::{MAX_JWKS_BYTES, MIN_RSA_BITS, MIN_SECRET_BYTES};

/// The algorithms a key can be bound to; a token's `alg` must be one of these and equal to
/// its key's.
pub(crate) fn parse_alg(alg: &str) -> Option<Algorithm> {
    match alg {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

/// One verification key and the one algorithm it verifies.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &alg_name(self.alg))
            .finish_non_exhaustive()
    }
}

/// A key as listed by [`Verifier::keys`](crate::Verifier::keys), for logs: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its `kid`, if any.
    pub kid: Option<String>,
    /// The one algorithm it verifies: `HS256`, `RS256`, `ES256` or `EdDSA`.
    pub alg: &'static str,
}

fn name(kid: Option<&str>, index: usize) -> String {
    match kid {
        Some(k) => format!("kid {k:?}"),
        None => format!("#{index}"),
    }
}

/// The HS256 keys of `secrets`.
pub(crate) fn hs256_keys(secrets: &[Hs256Secret]) -> Result<Vec<Key>, KeyError> {
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if let Some(kid) = &s.kid {
                check_kid(kid).map_err(|reason| KeyError::BadKid {
                    kid: kid.clone(),
                    reason,
                })?;
            }
            if s.secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError::SecretTooShort {
                    key: name(s.kid.as_deref(), i),
                    len: s.secret.len(),
                });
            }
            let key = DecodingKey::from_secret(s.secret.as_bytes()).map_err(|e| {
                KeyError::SecretTooShort {
                    key: format!("{} ({e})", name(s.kid.as_deref(), i)),
                    len: s.secret.len(),
                }
            })?;
            Ok(Key {
                kid: s.kid.clone(),
                alg: Algorithm::HS256,
                key,
            })
        })
        .collect()
}

/// Read and parse a JWKS file (at most [`MAX_JWKS_BYTES`]).
pub(crate) fn jwks_file(path: &Path) -> Result<Vec<Key>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() > MAX_JWKS_BYTES {
        return Err(KeyError::JwksTooLarge {
            path: path.to_owned(),
        });
    }
    jwks(&text, path)
}

/// Parse a JWK Set. Keys declared for encryption (`"use": "enc"`) are skipped; every other
/// key must be usable, or the whole set is refused.
pub(crate) fn jwks(text: &str, path: &Path) -> Result<Vec<Key>, KeyError> {
    let set_err = |reason: String| KeyError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| set_err(e.to_string()))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| set_err("no \"keys\" array".into()))?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, raw) in keys.iter().enumerate() {
        let kid = raw.get("kid").and_then(serde_json::Value::as_str);
        let bad = |reason: String| KeyError::BadJwk {
            path: path.to_owned(),
            key: name(kid, i),
            reason,
        };
        let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        match &jwk.common.public_key_use {
            Some(PublicKeyUse::Encryption) => continue,
            Some(PublicKeyUse::Signature) | None => {}
            Some(PublicKeyUse::Other(u)) => return Err(bad(format!("\"use\": {u:?} (sig)"))),
        }
        if let Some(kid) = &jwk.common.key_id {
            check_kid(kid).map_err(|why| bad(format!("kid is {why}")))?;
        }
        out.push(jwk_key(&jwk).map_err(bad)?);
    }
    Ok(out)
}

fn decoded_len(b64: &str) -> Result<usize, String> {
    URL_SAFE_NO_PAD
        .decode(b64)
        .map(|v| v.len())
        .map_err(|e| format!("not base64url: {e}"))
}

/// The key and its one algorithm: RSA → RS256 (at least [`MIN_RSA_BITS`]), EC P-256 →
/// ES256, OKP Ed25519 → EdDSA. An `alg` in the JWK must agree.
fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    let (alg, want) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|e| format!("n is not base64url: {e}"))?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |first| (n.len() - first) * 8);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of about {bits} bits (at least {MIN_RSA_BITS})"
                ));
            }
            decoded_len(&p.e)?;
            (Algorithm::RS256, KeyAlgorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            if p.curve != EllipticCurve::P256 {
                return Err(format!("EC curve {:?} (P-256 for ES256)", p.curve));
            }
            if decoded_len(&p.x)? != 32 || decoded_len(&p.y)? != 32 {
                return Err("P-256 x and y are 32 bytes each".into());
            }
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("OKP curve {:?} (Ed25519 for EdDSA)", p.curve));
            }
            if decoded_len(&p.x)? != 32 {
                return Err("an Ed25519 x is 32 bytes".into());
            }
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "a symmetric (oct) key does not belong in a public JWKS file: configure it \
                 as an HS256 secret"
                    .into(),
            )
        }
        _ => return Err("unsupported key type (RSA, EC P-256, OKP Ed25519)".into()),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        if declared != want {
            return Err(format!(
                "alg {declared} is not supported for this key (only {})",
                alg_name(alg)
            ));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    // An invalid point or key fails here rather than on every token.
    if jsonwebtoken::crypto::verify("AA", b"probe", &key, alg).is_err() {
        return Err(format!("not a valid {} public key", alg_name(alg)));
    }
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Where the keys of a config came from, for errors: the JWKS path or `<inline>`.
pub(crate) fn inline_path() -> PathBuf {
    PathBuf::from("<inline>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Key>, KeyError> {
        jwks(text, &inline_path())
    }

    const TEST_JWKS: &str = include_str!("../tests/data/test_only_jwks.json");

    #[test]
    fn test_jwks_loads_with_one_algorithm_per_key() {
        let keys = parse(TEST_JWKS).expect("test jwks");
        let by_kid = |kid: &str| {
            keys.iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.alg)
        };
        assert_eq!(by_kid("rsa-a"), Some(Algorithm::RS256));
        assert_eq!(by_kid("ec-1"), Some(Algorithm::ES256));
        assert_eq!(by_kid("ed-1"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn not_a_jwk_set_is_refused() {
        assert!(matches!(parse("[]"), Err(KeyError::Jwks { .. })));
        assert!(matches!(parse("{"), Err(KeyError::Jwks { .. })));
    }

    #[test]
    fn symmetric_key_in_jwks_is_refused() {
        let err =
            parse(r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#).expect_err("oct refused");
        assert!(err.to_string().contains("kid \"s\""), "{err}");
    }

    #[test]
    fn unknown_key_type_is_refused() {
        assert!(parse(r#"{"keys":[{"kty":"XYZ","kid":"x"}]}"#).is_err());
    }

    #[test]
    fn declared_alg_must_match_the_key_type() {
        let mut v: serde_json::Value = serde_json::from_str(TEST_JWKS).expect("json");
        let keys = v["keys"].as_array_mut().expect("keys");
        let rsa = keys
            .iter_mut()
            .find(|k| k["kty"] == "RSA")
            .expect("rsa key");
        rsa["alg"] = "PS256".into();
        let text = serde_json::json!({ "keys": [rsa] }).to_string();
        assert!(parse(&text).is_err());
    }

    #[test]
    fn short_rsa_key_is_refused() {
        // a 1024-bit modulus
        let n = URL_SAFE_NO_PAD.encode([0xC3u8; 128]);
        let text = format!(r#"{{"keys":[{{"kty":"RSA","kid":"small","n":"{n}","e":"AQAB"}}]}}"#);
        let err = parse(&text).expect_err("small");
        assert!(err.to_string().contains("2048"), "{err}");
    }

    #[test]
    fn invalid_ec_point_is_refused_at_load() {
        let xy = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let text = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"bad","x":"{xy}","y":"{xy}"}}]}}"#
        );
        assert!(parse(&text).is_err());
    }

    #[test]
    fn encryption_keys_are_skipped() {
        let mut v: serde_json::Value = serde_json::from_str(TEST_JWKS).expect("json");
        let all = v["keys"].as_array_mut().expect("keys");
        let n = all.len();
        all[0]["use"] = "enc".into();
        let keys = parse(&v.to_string()).expect("jwks");
        assert_eq!(keys.len(), n - 1);
    }

    #[test]
    fn short_secret_is_refused() {
        let s: Hs256Secret = "k:0123456789012345678901234567890".parse().expect("secret");
        let err = hs256_keys(&[s]).expect_err("31 bytes");
        assert!(matches!(err, KeyError::SecretTooShort { len: 31, .. }));
        let s: Hs256Secret = "k:01234567890123456789012345678901"
            .parse()
            .expect("secret");
        assert_eq!(hs256_keys(&[s]).expect("32 bytes").len(), 1);
    }

    #[test]
    fn missing_jwks_file_names_the_file() {
        let err = jwks_file(Path::new("/nonexistent/jwks.json")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/jwks.json"), "{err}");
    }

    #[test]
    fn oversized_jwks_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.json");
        std::fs::write(&path, " ".repeat(MAX_JWKS_BYTES + 1)).expect("write");
        assert!(matches!(
            jwks_file(&path),
            Err(KeyError::JwksTooLarge { .. })
        ));
    }
}
