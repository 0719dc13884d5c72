//! [`KeyStore`]: the current [`Verifier`], replaced atomically on reload (SIGHUP).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::claims::Identity;
use crate::config::AuthConfig;
use crate::error::{KeyError, TokenError};
use crate::verify::Verifier;

/// Holds the configured key sources and the verifier built from them.
///
/// [`reload`](KeyStore::reload) reads the sources again (the JWKS file) and swaps the new
/// verifier in with one atomic store; a verification running meanwhile finishes with the
/// verifier it started with. A reload that fails leaves the old verifier in place and returns
/// why. Identities already handed out are not touched: whether a connection authenticated
/// with a retired key stays open is the server's business.
#[derive(Debug)]
pub struct KeyStore {
    /// The sources; the lock also serialises reloads.
    config: Mutex<AuthConfig>,
    current: ArcSwap<Verifier>,
}

impl KeyStore {
    /// Build the first verifier from `config`.
    pub fn new(config: AuthConfig) -> Result<KeyStore, KeyError> {
        let verifier = Verifier::from_config(&config)?;
        Ok(KeyStore {
            config: Mutex::new(config),
            current: ArcSwap::from_pointee(verifier),
        })
    }

    /// The current verifier.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.current.load_full()
    }

    /// Verify with the current verifier.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        self.current.load().verify(token, now)
    }

    /// Read the configured sources again and swap the result in; on error keep the old keys.
    pub fn reload(&self) -> Result<Arc<Verifier>, KeyError> {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Verifier::from_config(&config)?);
        self.current.store(Arc::clone(&next));
        Ok(next)
    }

    /// Take a new config (other secrets, another JWKS path, other checks), build from it and
    /// swap it in; on error keep the old config and keys.
    pub fn replace(&self, config: AuthConfig) -> Result<Arc<Verifier>, KeyError> {
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Verifier::from_config(&config)?);
        *current = config;
        self.current.store(Arc::clone(&next));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::{
        at, claims, hs, rsa_a, rsa_b, secret, JWKS, NOW, SECRET_A, SECRET_B,
    };
    use serde_json::Value;

    /// The test JWKS with only the keys named.
    fn jwks_with(kids: &[&str]) -> String {
        let mut v: Value = serde_json::from_str(JWKS).expect("jwks");
        let keys = v["keys"].as_array_mut().expect("keys");
        keys.retain(|k| kids.iter().any(|kid| k["kid"] == *kid));
        v.to_string()
    }

    #[test]
    fn rotation_old_and_new_kid_both_valid_then_old_removed_by_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_with(&["rsa-a"])).expect("write");
        let store = KeyStore::new(AuthConfig {
            jwks_file: Some(path.clone()),
            ..AuthConfig::default()
        })
        .expect("store");
        let old = rsa_a(&claims());
        let new = rsa_b(&claims());
        assert!(store.verify(&old, at(NOW)).is_ok());
        assert_eq!(store.verify(&new, at(NOW)), Err(TokenError::UnknownKey));

        // step 1: publish the new key beside the old one
        std::fs::write(&path, jwks_with(&["rsa-a", "rsa-b"])).expect("write");
        store.reload().expect("reload");
        assert!(store.verify(&old, at(NOW)).is_ok());
        assert!(store.verify(&new, at(NOW)).is_ok());

        // step 2: retire the old key
        std::fs::write(&path, jwks_with(&["rsa-b"])).expect("write");
        store.reload().expect("reload");
        assert_eq!(store.verify(&old, at(NOW)), Err(TokenError::UnknownKey));
        assert!(store.verify(&new, at(NOW)).is_ok());
    }

    #[test]
    fn failed_reload_keeps_the_old_keys_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_with(&["rsa-a"])).expect("write");
        let store = KeyStore::new(AuthConfig {
            jwks_file: Some(path.clone()),
            ..AuthConfig::default()
        })
        .expect("store");
        let before = store.verifier();
        std::fs::write(&path, "{ not json").expect("write");
        let err = store.reload().expect_err("broken file");
        assert!(err.to_string().contains("jwks.json"), "{err}");
        assert!(Arc::ptr_eq(&before, &store.verifier()));
        assert!(store.verify(&rsa_a(&claims()), at(NOW)).is_ok());

        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(store.reload(), Err(KeyError::Io { .. })));
        assert!(store.verify(&rsa_a(&claims()), at(NOW)).is_ok());
    }

    #[test]
    fn replace_rotates_hs256_secrets_and_a_bad_config_changes_nothing() {
        let store = KeyStore::new(AuthConfig {
            hs256_secrets: vec![secret(Some("k1"), SECRET_A)],
            ..AuthConfig::default()
        })
        .expect("store");
        let old = hs(Some("k1"), SECRET_A, &claims());
        let new = hs(Some("k2"), SECRET_B, &claims());
        assert!(store.verify(&old, at(NOW)).is_ok());
        store
            .replace(AuthConfig {
                hs256_secrets: vec![secret(Some("k1"), SECRET_A), secret(Some("k2"), SECRET_B)],
                ..AuthConfig::default()
            })
            .expect("both");
        assert!(store.verify(&old, at(NOW)).is_ok());
        assert!(store.verify(&new, at(NOW)).is_ok());
        let short = store.replace(AuthConfig {
            hs256_secrets: vec![secret(Some("k2"), "short")],
            ..AuthConfig::default()
        });
        assert!(matches!(short, Err(KeyError::SecretTooShort { .. })));
        assert!(store.verify(&old, at(NOW)).is_ok(), "old keys kept");
        store
            .replace(AuthConfig {
                hs256_secrets: vec![secret(Some("k2"), SECRET_B)],
                ..AuthConfig::default()
            })
            .expect("new only");
        assert_eq!(store.verify(&old, at(NOW)), Err(TokenError::UnknownKey));
        assert!(store.verify(&new, at(NOW)).is_ok());
        // a reload after replace reads the replaced config
        store.reload().expect("reload");
        assert!(store.verify(&new, at(NOW)).is_ok());
    }

    #[test]
    fn store_is_shared_across_threads() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<KeyStore>();
        is_send_sync::<Arc<Verifier>>();
    }
}
