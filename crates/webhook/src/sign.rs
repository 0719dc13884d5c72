//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! A request carries three headers:
//!
//! - `webhook-id`: the message id, the same for every attempt of one batch (receivers may
//!   de-duplicate requests by it; nimbus receivers should de-duplicate *events* by their
//!   own ids, see `docs/webhooks.md`);
//! - `webhook-timestamp`: the attempt's time in unix seconds (receivers reject stale ones,
//!   so every attempt is signed afresh);
//! - `webhook-signature`: `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, one
//!   per secret, separated by spaces (several secrets let a receiver rotate its secret).
//!
//! A secret is written `whsec_<base64 of the key>`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a written secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest accepted key, in bytes (the spec's lower bound).
pub const MIN_SECRET_BYTES: usize = 24;
/// The longest accepted key, in bytes (the spec's upper bound).
pub const MAX_SECRET_BYTES: usize = 64;

/// Standard base64 that takes the key with or without its `=` padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing key. Its `Debug` shows only that it is a secret; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a webhook secret starts with `whsec_`")]
    Prefix,
    /// The rest is not base64.
    #[error("a webhook secret is `whsec_` followed by base64")]
    Base64,
    /// The key is shorter or longer than the spec allows.
    #[error("a webhook secret key has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {0}")]
    Length(usize),
}

impl Secret {
    /// A secret from raw key bytes (24 to 64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<Secret, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret { key: key.to_vec() })
    }

    /// A fresh random 32-byte secret.
    pub fn random() -> Secret {
        let key: [u8; 32] = rand::random();
        Secret { key: key.to_vec() }
    }

    /// The written form, `whsec_<base64>` (to hand to a receiver; never logged by nimbus).
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Secret, SecretError> {
        let b64 = s.strip_prefix(SECRET_PREFIX).ok_or(SecretError::Prefix)?;
        let key = LENIENT.decode(b64).map_err(|_| SecretError::Base64)?;
        Secret::from_bytes(&key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_<redacted>)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[Secret], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut out = String::new();
    for s in secrets {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&s.sign(msg_id, timestamp, body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries (its Python library's
    /// `Webhook.sign` gives the same value: checked with standardwebhooks 1.3.0).
    #[test]
    fn signing_matches_the_standard_webhooks_test_vector() {
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn several_secrets_give_space_separated_signatures_in_order() {
        let a = Secret::from_bytes(&[1; 24]).expect("a");
        let b = Secret::from_bytes(&[2; 32]).expect("b");
        let h = signature_header(&[a.clone(), b.clone()], "msg_1", 5, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(
            parts,
            [a.sign("msg_1", 5, b"{}"), b.sign("msg_1", 5, b"{}")]
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn secrets_parse_with_or_without_padding_and_round_trip() {
        let s = Secret::from_bytes(&[7; 25]).expect("secret");
        let written = s.to_whsec();
        assert!(written.ends_with('='));
        assert_eq!(written.parse::<Secret>().expect("padded"), s);
        let bare = written.trim_end_matches('=');
        assert_eq!(bare.parse::<Secret>().expect("unpadded"), s);
        assert_eq!(
            Secret::random().to_whsec().parse::<Secret>().map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn malformed_secrets_are_refused_with_the_reason() {
        assert_eq!("MfKQ9r8G".parse::<Secret>(), Err(SecretError::Prefix));
        assert_eq!("whsec_!!!!".parse::<Secret>(), Err(SecretError::Base64));
        assert_eq!("whsec_AAAA".parse::<Secret>(), Err(SecretError::Length(3)));
        let long = format!("whsec_{}", STANDARD.encode([0u8; 65]));
        assert_eq!(long.parse::<Secret>(), Err(SecretError::Length(65)));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let shown = format!("{s:?} {:?}", vec![s.clone()]);
        assert!(!shown.contains("MfKQ"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
