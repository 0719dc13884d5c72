//! Webhook settings ([`HookSettings`]: `--webhook` (repeatable, `NIMBUS_WEBHOOKS`
//! space-separated), `[[webhook]]` tables of the config file, `--webhook-doc-interval-ms`,
//! `--webhook-doc-snapshot`), resolved into a [`HooksConfig`].

use std::str::FromStr;
use std::time::Duration;

use nimbus_webhook::EndpointConfig;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::setting::InvalidSetting;

/// Default [`HooksConfig::doc_interval`].
pub const DEFAULT_DOC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest accepted `webhook_doc_interval_ms` (one hour).
pub const MAX_DOC_INTERVAL: Duration = Duration::from_secs(3600);

/// One endpoint, from the short form (`URL#secret=whsec_...&events=...&rooms=...`, a flag
/// or a string in the file) or a `[[webhook]]` table (`docs/webhooks.md`, Configuration).
#[derive(Debug, Clone)]
pub struct EndpointSpec(pub EndpointConfig);

impl FromStr for EndpointSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EndpointConfig::from_str(s)
            .map(EndpointSpec)
            .map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> Visitor<'de> for Spec {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a webhook table or `URL#secret=whsec_...`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                EndpointConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndpointSpec)
            }
        }
        d.deserialize_any(Spec)
    }
}

/// The webhook settings, each optional so that flags, environment and file can be layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct HookSettings {
    /// Deliver room events to a webhook receiver: `URL#secret=whsec_...[&events=A,B][&rooms=x,y*]`
    /// (repeatable; space-separated in the variable; `[[webhook]]` tables in the file, see
    /// docs/webhooks.md) [default: none].
    #[arg(
        long = "webhook",
        env = "NIMBUS_WEBHOOKS",
        value_delimiter = ' ',
        hide_env_values = true
    )]
    pub webhook: Option<Vec<EndpointSpec>>,
    /// At most one DOC_CHANGED webhook event per document room per this many ms
    /// [default: 1000].
    #[arg(long, env = "NIMBUS_WEBHOOK_DOC_INTERVAL_MS")]
    pub webhook_doc_interval_ms: Option<u64>,
    /// Include the document as JSON in DOC_CHANGED events [default: false].
    #[arg(
        long,
        env = "NIMBUS_WEBHOOK_DOC_SNAPSHOT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub webhook_doc_snapshot: Option<bool>,
}

/// What the webhook settings resolve to.
#[derive(Debug, Clone)]
pub struct HooksConfig {
    /// The receivers (none: webhooks off).
    pub endpoints: Vec<EndpointConfig>,
    /// Debounce interval of `DOC_CHANGED`.
    pub doc_interval: Duration,
    /// Whether `DOC_CHANGED` carries the document as JSON.
    pub doc_snapshot: bool,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            endpoints: Vec::new(),
            doc_interval: DEFAULT_DOC_INTERVAL,
            doc_snapshot: false,
        }
    }
}

impl HooksConfig {
    /// Whether any receiver is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Fill in defaults and check every endpoint (the error names the endpoint's field).
    pub fn from_settings(s: &HookSettings) -> Result<HooksConfig, InvalidSetting> {
        let d = HooksConfig::default();
        let mut endpoints = Vec::new();
        for (i, spec) in s.webhook.iter().flatten().enumerate() {
            spec.0.validate().map_err(|e| InvalidSetting {
                key: "webhook",
                reason: format!("endpoint {i}: {e}"),
            })?;
            endpoints.push(spec.0.clone());
        }
        let doc_interval = s
            .webhook_doc_interval_ms
            .map_or(d.doc_interval, Duration::from_millis);
        if doc_interval.is_zero() || doc_interval > MAX_DOC_INTERVAL {
            return Err(InvalidSetting {
                key: "webhook_doc_interval_ms",
                reason: format!("1 to {} ms", MAX_DOC_INTERVAL.as_millis()),
            });
        }
        Ok(HooksConfig {
            endpoints,
            doc_interval,
            doc_snapshot: s.webhook_doc_snapshot.unwrap_or(d.doc_snapshot),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn tables_and_short_forms_both_resolve_and_bad_values_name_their_key() {
        let s: HookSettings = toml::from_str(&format!(
            "webhook_doc_interval_ms = 250\nwebhook_doc_snapshot = true\n\
             [[webhook]]\nurl = \"http://127.0.0.1:9/a\"\nsecrets = [\"{SECRET}\"]\nevents = [\"CLOUD_SET\"]\n\
             [[webhook]]\nurl = \"http://127.0.0.1:9/b\"\nsecrets = [\"{SECRET}\"]\nlinger_ms = 5\n"
        ))
        .expect("toml");
        let c = HooksConfig::from_settings(&s).expect("valid");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].events, ["CLOUD_SET"]);
        assert_eq!(c.endpoints[1].linger, Duration::from_millis(5));
        assert_eq!(c.doc_interval, Duration::from_millis(250));
        assert!(c.doc_snapshot);

        let short: EndpointSpec = format!("http://h.example/x#secret={SECRET}&rooms=lobby")
            .parse()
            .expect("short form");
        assert_eq!(short.0.rooms, ["lobby"]);
        // A valid secret: the scheme is what is refused.
        assert!(format!("ftp://h/x#secret={SECRET}")
            .parse::<EndpointSpec>()
            .is_err());

        let d = HooksConfig::from_settings(&HookSettings::default()).expect("valid");
        assert!(!d.enabled());
        assert_eq!(d.doc_interval, DEFAULT_DOC_INTERVAL);

        let bad = HookSettings {
            webhook_doc_interval_ms: Some(0),
            ..HookSettings::default()
        };
        assert_eq!(
            HooksConfig::from_settings(&bad).expect_err("zero").key,
            "webhook_doc_interval_ms"
        );
        let bad: HookSettings = toml::from_str(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/a\"\nsecrets = [\"{SECRET}\"]\nqueue_events = 1\n"
        ))
        .expect("toml");
        let e = HooksConfig::from_settings(&bad).expect_err("queue too small");
        assert_eq!(e.key, "webhook");
        assert!(e.reason.contains("queue_events"), "{}", e.reason);
        assert!(toml::from_str::<HookSettings>(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/a\"\nbogus = 1\n"
        )
        .is_err());
    }
}
