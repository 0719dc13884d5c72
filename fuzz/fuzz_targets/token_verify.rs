//! Any text a client can present as a token: `Verifier::verify` never panics, and what it
//! accepts is bounded (a sub of at most 128 bytes, an expiry in the future of `now`).
//! Keys: an HS256 secret and the test-only JWKS of crates/auth (RS256, ES256, EdDSA).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use nimbus_auth::{AuthConfig, Hs256Secret, Verifier};

const JWKS: &str = include_str!("../../crates/auth/tests/data/test_only_jwks.json");

fn verifier() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let secret: Hs256Secret = "hs-a:test-only-secret-a-0123456789abcdef"
            .parse()
            .expect("secret");
        let config = AuthConfig {
            hs256_secrets: vec![secret],
            ..AuthConfig::default()
        };
        Verifier::from_config_and_jwks(&config, JWKS).expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        if let Ok(id) = verifier().verify(text, now) {
            assert!(!id.sub().is_empty() && id.sub().len() <= nimbus_auth::MAX_SUB_BYTES);
            assert!(id.expires_at() + Duration::from_secs(30) > now);
        }
    }
});
