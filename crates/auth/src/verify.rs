//! [`Verifier`]: a token in, an [`Identity`] or a [`TokenError`] out.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use crate::claims::{identity, Identity, RawClaims};
use crate::config::{check_kid, AuthConfig};
use crate::error::{KeyError, TokenError};
use crate::keys::{self, alg_name, parse_alg, Key, KeyInfo};
use crate::{MAX_KEYS, MAX_TOKEN_BYTES};

/// The latest `exp` accepted: 9999-12-31T23:59:59Z.
const MAX_DATE: u64 = 253_402_300_799;

/// Verifies tokens against a fixed set of keys and checks. Cheap to share (`Arc`); build a
/// new one to change keys ([`KeyStore`](crate::KeyStore) does that on reload).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The part of the header read before a key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    /// Any critical extension is one this verifier does not understand (RFC 7515 §4.1.11).
    crit: Option<serde::de::IgnoredAny>,
}

impl Verifier {
    /// Build from a config: its HS256 secrets, then the keys of its JWKS file (read now).
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, KeyError> {
        let mut keys = keys::hs256_keys(&config.hs256_secrets)?;
        if let Some(path) = &config.jwks_file {
            keys.extend(keys::jwks_file(path)?);
        }
        Verifier::new(keys, config)
    }

    /// Build from a config whose JWKS is given as text rather than read from its file.
    pub fn from_config_and_jwks(config: &AuthConfig, jwks: &str) -> Result<Verifier, KeyError> {
        let mut keys = keys::hs256_keys(&config.hs256_secrets)?;
        keys.extend(keys::jwks(jwks, &keys::inline_path())?);
        Verifier::new(keys, config)
    }

    fn new(keys: Vec<Key>, config: &AuthConfig) -> Result<Verifier, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooManyKeys(keys.len()));
        }
        let mut seen = HashSet::new();
        for kid in keys.iter().filter_map(|k| k.kid.as_deref()) {
            if !seen.insert(kid) {
                return Err(KeyError::DuplicateKid(kid.to_owned()));
            }
        }
        Ok(Verifier {
            keys,
            leeway: config.leeway.as_secs(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// The keys (kid and algorithm, never the key material), for logs.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid.clone(),
                alg: alg_name(k.alg),
            })
            .collect()
    }

    /// Verify `token` at time `now`.
    ///
    /// In order: length ([`MAX_TOKEN_BYTES`]); shape (three base64url parts); header (`alg`
    /// one of HS256, RS256, ES256, EdDSA; no `crit`); key (the `kid`'s key, whose algorithm
    /// must be the header's; without a `kid`, each key of that algorithm in turn); signature;
    /// claims (JSON object, `exp` required, `nbf`, both with the leeway; `iss`, `aud`; `sub`;
    /// the `nimbus` grants).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header64), Some(payload64), Some(sig64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header64)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|_| TokenError::Malformed("header is not a JSON object with an alg"))?;
        let alg = parse_alg(&header.alg).ok_or(TokenError::UnsupportedAlgorithm)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed("critical header extensions"));
        }
        if let Some(kid) = &header.kid {
            check_kid(kid).map_err(|_| TokenError::Malformed("bad kid"))?;
        }
        if sig64.is_empty() || payload64.is_empty() {
            return Err(TokenError::Malformed("empty payload or signature"));
        }
        // Strict base64url (no padding, no stray bits): one signature has one spelling.
        URL_SAFE_NO_PAD
            .decode(sig64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let message = &token[..header64.len() + 1 + payload64.len()];
        let key = self.verify_signature(header.kid.as_deref(), alg, message, sig64)?;

        // Signed by `key`: from here on, what the token says is what its issuer said.
        let payload = URL_SAFE_NO_PAD
            .decode(payload64)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: RawClaims = serde_json::from_slice(&payload)
            .map_err(|e| TokenError::BadClaims(format!("claims: {e}")))?;
        self.check(claims, key, now)
    }

    /// The key that verifies `signature` over `message`, or why none does.
    fn verify_signature(
        &self,
        kid: Option<&str>,
        alg: jsonwebtoken::Algorithm,
        message: &str,
        sig64: &str,
    ) -> Result<&Key, TokenError> {
        let good = |k: &Key| {
            k.alg == alg
                && matches!(
                    jsonwebtoken::crypto::verify(sig64, message.as_bytes(), &k.key, k.alg),
                    Ok(true)
                )
        };
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(TokenError::UnknownKey)?;
                // The key's algorithm, not the header's, decides (checked in `good`).
                if good(key) {
                    Ok(key)
                } else {
                    Err(TokenError::BadSignature)
                }
            }
            None => {
                // At most every configured key (MAX_KEYS), each only for its own algorithm.
                let mut candidates = self.keys.iter().filter(|k| k.alg == alg).peekable();
                if candidates.peek().is_none() {
                    return Err(TokenError::UnknownKey);
                }
                candidates.find(|k| good(k)).ok_or(TokenError::BadSignature)
            }
        }
    }

    fn check(&self, c: RawClaims, key: &Key, now: SystemTime) -> Result<Identity, TokenError> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let exp = c
            .exp
            .ok_or_else(|| TokenError::BadClaims("exp is missing".into()))?
            .0;
        if exp > MAX_DATE {
            return Err(TokenError::BadClaims("exp is after the year 9999".into()));
        }
        if now >= exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = c.nbf {
            if now.saturating_add(self.leeway) < nbf.0 {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(want) = &self.issuer {
            if c.iss.as_deref() != Some(want.as_str()) {
                return Err(TokenError::WrongIssuer);
            }
        }
        match (&self.audience, &c.aud) {
            (Some(want), Some(aud)) if aud.contains(want) => {}
            (None, None) => {}
            _ => return Err(TokenError::WrongAudience),
        }
        identity(
            c.sub,
            UNIX_EPOCH + Duration::from_secs(exp),
            c.iss,
            key.kid.clone(),
            c.nimbus,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Capability, Hs256Secret, Mode};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    pub(crate) const SECRET_A: &str = "test-only-secret-a-0123456789abcdef";
    pub(crate) const SECRET_B: &str = "test-only-secret-b-0123456789abcdef";
    pub(crate) const JWKS: &str = include_str!("../tests/data/test_only_jwks.json");
    const RSA_A: &[u8] = include_bytes!("../tests/data/test_only_rsa_a.pem");
    const RSA_B: &[u8] = include_bytes!("../tests/data/test_only_rsa_b.pem");
    const RSA_STRANGER: &[u8] = include_bytes!("../tests/data/test_only_rsa_stranger.pem");
    const EC: &[u8] = include_bytes!("../tests/data/test_only_ec.pem");
    const ED: &[u8] = include_bytes!("../tests/data/test_only_ed.pem");
    const ED_STRANGER: &[u8] = include_bytes!("../tests/data/test_only_ed_stranger.pem");

    /// A fixed "now": 2026-01-01T00:00:00Z.
    pub(crate) const NOW: u64 = 1_767_225_600;

    pub(crate) fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    pub(crate) fn secret(kid: Option<&str>, secret: &str) -> Hs256Secret {
        Hs256Secret {
            kid: kid.map(str::to_owned),
            secret: secret.to_owned(),
        }
    }

    /// HS secrets `a` (kid "hs-a") and a kid-less `b`, plus the test JWKS.
    pub(crate) fn verifier() -> Verifier {
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(Some("hs-a"), SECRET_A), secret(None, SECRET_B)],
            ..AuthConfig::default()
        };
        Verifier::from_config_and_jwks(&cfg, JWKS).expect("verifier")
    }

    pub(crate) fn claims() -> Value {
        json!({
            "sub": "alice",
            "exp": NOW + 3600,
            "nimbus": {
                "doc": {"rw": ["notes/*"], "ro": ["public/*"]},
                "cloud": {"rw": ["12345"]},
                "gateway": {"ro": ["*"], "intents": 513},
                "api": {"rw": ["*"]}
            }
        })
    }

    pub(crate) fn mint(
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: &Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).expect("encode")
    }

    pub(crate) fn hs(kid: Option<&str>, secret: &str, claims: &Value) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
        mint(jsonwebtoken::Algorithm::HS256, kid, &key, claims)
    }

    pub(crate) fn rs(kid: Option<&str>, pem: &[u8], claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(pem).expect("rsa pem");
        mint(jsonwebtoken::Algorithm::RS256, kid, &key, claims)
    }

    fn es(kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(EC).expect("ec pem");
        mint(jsonwebtoken::Algorithm::ES256, kid, &key, claims)
    }

    fn ed(kid: Option<&str>, pem: &[u8], claims: &Value) -> String {
        let key = EncodingKey::from_ed_pem(pem).expect("ed pem");
        mint(jsonwebtoken::Algorithm::EdDSA, kid, &key, claims)
    }

    pub(crate) fn rsa_a(claims: &Value) -> String {
        rs(Some("rsa-a"), RSA_A, claims)
    }

    pub(crate) fn rsa_b(claims: &Value) -> String {
        rs(Some("rsa-b"), RSA_B, claims)
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn verify(token: &str) -> Result<Identity, TokenError> {
        verifier().verify(token, at(NOW))
    }

    fn with(mut c: Value, key: &str, v: Value) -> Value {
        c[key] = v;
        c
    }

    fn without(mut c: Value, key: &str) -> Value {
        c.as_object_mut().expect("object").remove(key);
        c
    }

    #[test]
    fn hs256_token_with_kid_verifies_and_grants_its_rooms() {
        let id = verify(&hs(Some("hs-a"), SECRET_A, &claims())).expect("valid");
        assert_eq!(id.sub(), "alice");
        assert_eq!(id.expires_at(), at(NOW + 3600));
        assert_eq!(id.key_id(), Some("hs-a"));
        assert_eq!(id.access(Capability::Doc, "notes/a"), Some(Mode::ReadWrite));
        assert_eq!(id.access(Capability::Doc, "public/x"), Some(Mode::ReadOnly));
        assert_eq!(id.access(Capability::Doc, "secret/x"), None);
        assert_eq!(id.access(Capability::Cloud, "12345"), Some(Mode::ReadWrite));
        assert_eq!(id.access(Capability::Cloud, "99999"), None);
        assert_eq!(id.access(Capability::Gateway, "any"), Some(Mode::ReadOnly));
        assert_eq!(id.gateway_intents(), 513);
        assert_eq!(id.access(Capability::Api, "any"), Some(Mode::ReadWrite));
    }

    #[test]
    fn hs256_token_without_kid_is_tried_against_every_hs_key() {
        assert!(verify(&hs(None, SECRET_A, &claims())).is_ok());
        let id = verify(&hs(None, SECRET_B, &claims())).expect("valid");
        assert_eq!(id.key_id(), None);
    }

    #[test]
    fn rs256_es256_and_eddsa_tokens_verify_with_their_jwks_keys() {
        assert_eq!(
            verify(&rsa_a(&claims())).expect("rs256").key_id(),
            Some("rsa-a")
        );
        assert_eq!(
            verify(&es(Some("ec-1"), &claims()))
                .expect("es256")
                .key_id(),
            Some("ec-1")
        );
        assert_eq!(
            verify(&ed(Some("ed-1"), ED, &claims()))
                .expect("eddsa")
                .key_id(),
            Some("ed-1")
        );
        // without a kid: each key of the algorithm
        assert!(verify(&rs(None, RSA_B, &claims())).is_ok());
        assert!(verify(&ed(None, ED, &claims())).is_ok());
    }

    #[test]
    fn token_signed_with_another_key_is_a_bad_signature() {
        let t = hs(
            Some("hs-a"),
            "another-secret-0123456789abcdefghij",
            &claims(),
        );
        assert_eq!(verify(&t), Err(TokenError::BadSignature));
        // the kid of one key, signed with another
        assert_eq!(
            verify(&hs(Some("hs-a"), SECRET_B, &claims())),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&rs(Some("rsa-a"), RSA_STRANGER, &claims())),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&rs(None, RSA_STRANGER, &claims())),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&ed(Some("ed-1"), ED_STRANGER, &claims())),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_is_refused_as_unknown_key() {
        assert_eq!(
            verify(&hs(Some("nope"), SECRET_A, &claims())),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            verify(&rs(Some("rsa-old"), RSA_A, &claims())),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn algorithm_without_any_key_is_refused_as_unknown_key() {
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(None, SECRET_A)],
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&cfg).expect("verifier");
        assert_eq!(
            v.verify(&rs(None, RSA_A, &claims()), at(NOW)),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let t = hs(Some("hs-a"), SECRET_A, &claims());
        let p = parts(&t);
        let evil = with(claims(), "sub", json!("root"));
        let forged = format!("{}.{}.{}", p[0], b64(&evil), p[2]);
        assert_eq!(verify(&forged), Err(TokenError::BadSignature));
        let r = rsa_a(&claims());
        let p = parts(&r);
        let forged = format!("{}.{}.{}", p[0], b64(&evil), p[2]);
        assert_eq!(verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_signature_is_a_bad_signature() {
        let t = rsa_a(&claims());
        let p = parts(&t);
        let mut sig = URL_SAFE_NO_PAD.decode(&p[2]).expect("sig");
        sig[10] ^= 1;
        let forged = format!("{}.{}.{}", p[0], p[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(verify(&forged), Err(TokenError::BadSignature));
    }

    /// The classic confusion: an RS256 token re-signed with HS256 using the RSA public key
    /// (as bytes) as the secret, its header's alg changed to HS256, the kid kept.
    #[test]
    fn header_alg_changed_to_hs256_on_an_rsa_kid_is_refused() {
        let jwks: Value = serde_json::from_str(JWKS).expect("jwks");
        let rsa_jwk = jwks["keys"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["kid"] == "rsa-a"))
            .expect("rsa-a")
            .to_string();
        let t = hs(Some("rsa-a"), &rsa_jwk, &claims());
        assert_eq!(verify(&t), Err(TokenError::BadSignature));
        // and only the header's alg changed, signature kept
        let r = rsa_a(&claims());
        let p = parts(&r);
        let header = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-a"}));
        assert_eq!(
            verify(&format!("{header}.{}.{}", p[1], p[2])),
            Err(TokenError::BadSignature)
        );
        // RS256 header on an HS kid
        let h = hs(Some("hs-a"), SECRET_A, &claims());
        let p = parts(&h);
        let header = b64(&json!({"alg": "RS256", "kid": "hs-a"}));
        assert_eq!(
            verify(&format!("{header}.{}.{}", p[1], p[2])),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let body = b64(&claims());
        assert_eq!(
            verify(&format!("{header}.{body}.")),
            Err(TokenError::UnsupportedAlgorithm)
        );
        let header = b64(&json!({"alg": "None"}));
        assert_eq!(
            verify(&format!("{header}.{body}.")),
            Err(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(
            verify(&format!("{header}.{body}")),
            Err(TokenError::Malformed("not three dot-separated parts"))
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let key = EncodingKey::from_secret(SECRET_A.as_bytes()).expect("key");
        let t = mint(
            jsonwebtoken::Algorithm::HS512,
            Some("hs-a"),
            &key,
            &claims(),
        );
        assert_eq!(verify(&t), Err(TokenError::UnsupportedAlgorithm));
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let h = hs(Some("hs-a"), SECRET_A, &claims());
        let p = parts(&h);
        let header = b64(&json!({"alg": "HS256", "kid": "hs-a", "crit": ["b64"], "b64": false}));
        assert!(matches!(
            verify(&format!("{header}.{}.{}", p[1], p[2])),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn expired_token_is_refused_after_the_leeway() {
        let v = verifier();
        let t = hs(Some("hs-a"), SECRET_A, &with(claims(), "exp", json!(NOW)));
        // 30 s of leeway by default
        assert!(v.verify(&t, at(NOW + 29)).is_ok());
        assert_eq!(v.verify(&t, at(NOW + 30)), Err(TokenError::Expired));
        assert_eq!(v.verify(&t, at(NOW + 86_400)), Err(TokenError::Expired));
    }

    #[test]
    fn leeway_is_configurable() {
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(None, SECRET_A)],
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&cfg).expect("verifier");
        let t = hs(None, SECRET_A, &with(claims(), "exp", json!(NOW)));
        assert!(v.verify(&t, at(NOW - 1)).is_ok());
        assert_eq!(v.verify(&t, at(NOW)), Err(TokenError::Expired));
    }

    #[test]
    fn token_before_nbf_is_not_yet_valid() {
        let v = verifier();
        let t = hs(
            Some("hs-a"),
            SECRET_A,
            &with(claims(), "nbf", json!(NOW + 100)),
        );
        assert_eq!(v.verify(&t, at(NOW)), Err(TokenError::NotYetValid));
        assert_eq!(v.verify(&t, at(NOW + 69)), Err(TokenError::NotYetValid));
        assert!(v.verify(&t, at(NOW + 70)).is_ok());
    }

    #[test]
    fn exp_is_required() {
        let t = hs(Some("hs-a"), SECRET_A, &without(claims(), "exp"));
        assert_eq!(verify(&t).map_err(|e| e.reason()), Err("bad_claims"));
    }

    #[test]
    fn fractional_dates_are_floored_and_bad_dates_refused() {
        let t = hs(
            Some("hs-a"),
            SECRET_A,
            &with(claims(), "exp", json!(NOW as f64 + 100.7)),
        );
        assert_eq!(verify(&t).expect("valid").expires_at(), at(NOW + 100));
        for bad in [json!(-1), json!("tomorrow"), json!(1e300), json!(null)] {
            let t = hs(Some("hs-a"), SECRET_A, &with(claims(), "exp", bad.clone()));
            assert_eq!(
                verify(&t).map_err(|e| e.reason()),
                Err("bad_claims"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sub_is_required_and_capped() {
        for c in [
            without(claims(), "sub"),
            with(claims(), "sub", json!("")),
            with(claims(), "sub", json!(7)),
            with(claims(), "sub", json!("a".repeat(crate::MAX_SUB_BYTES + 1))),
        ] {
            let t = hs(Some("hs-a"), SECRET_A, &c);
            assert_eq!(verify(&t).map_err(|e| e.reason()), Err("bad_claims"), "{c}");
        }
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let t = hs(
            None,
            SECRET_A,
            &with(claims(), "iss", json!("https://auth.example")),
        );
        let none = hs(None, SECRET_A, &claims());
        assert!(verify(&t).is_ok());
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(None, SECRET_A)],
            issuer: Some("https://auth.example".into()),
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&cfg).expect("verifier");
        assert_eq!(
            v.verify(&t, at(NOW)).expect("valid").issuer(),
            Some("https://auth.example")
        );
        assert_eq!(v.verify(&none, at(NOW)), Err(TokenError::WrongIssuer));
        let other = hs(
            None,
            SECRET_A,
            &with(claims(), "iss", json!("https://evil.example")),
        );
        assert_eq!(v.verify(&other, at(NOW)), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn audience_must_hold_the_configured_one() {
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(None, SECRET_A)],
            audience: Some("nimbus".into()),
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&cfg).expect("verifier");
        let t = |aud: Value| hs(None, SECRET_A, &with(claims(), "aud", aud));
        assert!(v.verify(&t(json!("nimbus")), at(NOW)).is_ok());
        assert!(v.verify(&t(json!(["other", "nimbus"])), at(NOW)).is_ok());
        assert_eq!(
            v.verify(&t(json!("other")), at(NOW)),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&t(json!([])), at(NOW)),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&hs(None, SECRET_A, &claims()), at(NOW)),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn token_with_aud_is_refused_when_no_audience_is_configured() {
        let t = hs(
            None,
            SECRET_A,
            &with(claims(), "aud", json!("someone-else")),
        );
        assert_eq!(verify(&t), Err(TokenError::WrongAudience));
    }

    #[test]
    fn unknown_grant_in_a_signed_token_is_bad_claims() {
        let c = with(
            claims(),
            "nimbus",
            json!({"doc": {"rw": ["*"]}, "files": {"rw": ["*"]}}),
        );
        let err = verify(&hs(Some("hs-a"), SECRET_A, &c)).expect_err("unknown grant");
        assert_eq!(err.reason(), "bad_claims");
        assert!(err.to_string().contains("files"), "{err}");
    }

    #[test]
    fn wrong_room_and_read_only_are_told_apart() {
        let id = verify(&hs(Some("hs-a"), SECRET_A, &claims())).expect("valid");
        assert_eq!(
            id.access(Capability::Doc, "public/readme"),
            Some(Mode::ReadOnly)
        );
        assert_eq!(id.access(Capability::Doc, "private/x"), None);
        assert!(!id.rooms(Capability::Doc).contains("private/x"));
    }

    #[test]
    fn duplicated_claim_is_refused() {
        // a JSON parser that keeps the last `sub` would see "root"; this one refuses both
        let header = b64(&json!({"alg": "HS256", "kid": "hs-a"}));
        let body = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"alice","sub":"root","exp":{}}}"#,
            NOW + 60
        ));
        let message = format!("{header}.{body}");
        let key = EncodingKey::from_secret(SECRET_A.as_bytes()).expect("key");
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .expect("sign");
        let err = verify(&format!("{message}.{sig}")).expect_err("duplicate");
        assert_eq!(err.reason(), "bad_claims");
    }

    #[test]
    fn too_long_token_is_refused_before_parsing() {
        let t = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify(&t), Err(TokenError::TooLong));
        let c = with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES)));
        assert_eq!(
            verify(&hs(Some("hs-a"), SECRET_A, &c)),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "eyJhbGciOiJIUzI1NiJ9.e30.!!!",
            "a b.c.d",
        ] {
            assert_eq!(
                verify(t).map_err(|e| e.reason()),
                Err("malformed_token"),
                "{t:?}"
            );
        }
    }

    #[test]
    fn duplicate_kids_and_no_keys_are_refused() {
        let cfg = AuthConfig {
            hs256_secrets: vec![secret(Some("k"), SECRET_A), secret(Some("k"), SECRET_B)],
            ..AuthConfig::default()
        };
        assert!(matches!(
            Verifier::from_config(&cfg),
            Err(KeyError::DuplicateKid(_))
        ));
        let dup = AuthConfig {
            hs256_secrets: vec![secret(Some("rsa-a"), SECRET_A)],
            ..AuthConfig::default()
        };
        assert!(matches!(
            Verifier::from_config_and_jwks(&dup, JWKS),
            Err(KeyError::DuplicateKid(_))
        ));
        assert!(matches!(
            Verifier::from_config(&AuthConfig::default()),
            Err(KeyError::NoKeys)
        ));
    }

    #[test]
    fn keys_lists_kids_and_algorithms_only() {
        let keys = verifier().keys();
        assert!(keys.contains(&KeyInfo {
            kid: Some("hs-a".into()),
            alg: "HS256"
        }));
        assert!(keys.contains(&KeyInfo {
            kid: Some("ed-1".into()),
            alg: "EdDSA"
        }));
        assert!(!format!("{:?}", verifier()).contains(SECRET_A));
    }

    fn mutate(token: &str, edits: &[(usize, u8)]) -> String {
        let mut bytes = token.as_bytes().to_vec();
        for (at, b) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at % bytes.len();
            bytes[i] = *b;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn verify_never_panics_on_arbitrary_strings(s in ".{0,300}") {
            let _ = verify(&s);
        }

        #[test]
        fn verify_never_panics_on_dotted_base64ish_strings(s in "[A-Za-z0-9_=.-]{0,400}") {
            let _ = verify(&s);
        }

        #[test]
        fn mutated_valid_tokens_never_panic_and_never_verify_changed(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            which in 0usize..3,
        ) {
            let token = match which {
                0 => hs(Some("hs-a"), SECRET_A, &claims()),
                1 => rsa_a(&claims()),
                _ => ed(Some("ed-1"), ED, &claims()),
            };
            let changed = mutate(&token, &edits);
            if verify(&changed).is_ok() {
                // only edits that wrote back the same bytes may pass
                prop_assert_eq!(&changed, &token);
            }
        }
    }
}
