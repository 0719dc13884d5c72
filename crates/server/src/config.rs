//! Server configuration: flags, `NIMBUS_*` environment variables and a TOML file.
//!
//! Each subsystem owns its settings: a struct that clap parses (flags + env) and serde
//! reads (the `--config` file), every field optional so that the sources can be layered,
//! and the resolved type it hands to its subsystem, whose `Default` is the one place its
//! defaults are written and whose `from_settings` checks ranges:
//!
//! | settings | resolved | module |
//! | --- | --- | --- |
//! | [`StoreSettings`] | [`StoreConfig`] (`Config::data_dir`, `Config::flush_interval`) | `store` |
//! | [`CloudSettings`] | [`CloudLimits`] | `cloud` |
//! | [`DocSettings`] | [`DocLimits`] | `doc` |
//! | [`GatewaySettings`] | [`GatewayConfig`] | `gateway` |
//! | [`IpcSettings`] | `Option<`[`IpcConfig`]`>` | `ipc_routes` |
//! | [`BackplaneSettings`] | `Config::redis` | here (the backplane's) |
//! | [`EdgeSettings`] | [`EdgeConfig`] (the `[edge]` table) | `edge` |
//! | [`AuthSettings`] | [`AuthSetup`] | `auth` |
//! | [`HookSettings`] | [`HooksConfig`] | `hooks` |
//! | [`HistorySettings`] | [`Retention`] (`Config::history`) | `history` |
//!
//! [`Settings`] is their composition (plus `listen`): clap and serde flatten each section,
//! so flags, `NIMBUS_*` names and file keys stay flat. [`Settings::merge`] applies the
//! precedence flag > env > file (derived with [`merge::Merge`], once for every field) and
//! [`Config::from_settings`] resolves every section.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;

pub use crate::auth::{AuthSettings, AuthSetup};
pub use crate::cloud::settings::{CloudLimits, CloudSettings};
pub use crate::doc::settings::{DocLimits, DocSettings};
pub use crate::edge::{EdgeConfig, EdgeSettings};
pub use crate::gateway::{GatewayConfig, GatewaySettings};
pub use crate::history::HistorySettings;
pub use crate::hooks::{HookSettings, HooksConfig};
pub use crate::ipc_routes::{IpcConfig, IpcSettings};
pub use crate::setting::InvalidSetting;
pub use crate::store::{StoreConfig, StoreSettings};
pub use nimbus_core::history::Retention;

/// A configuration problem found at startup.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML for [`Settings`] (unknown keys are errors).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A key of the `--config` file has a value of the wrong type, or is unknown (the
    /// TOML parser cannot point at keys of the flattened sections, so they are named here).
    #[error("invalid config file {path}: {key}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value is out of range.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<InvalidSetting> for ConfigError {
    fn from(e: InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

/// Every setting of `nimbus serve`: the composition of the sections each subsystem owns.
/// Flags, `NIMBUS_*` variables and file keys are flat (clap and serde flatten the
/// sections), except the edge's, which are the `[edge]` table of the file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:9080].
    #[arg(long, env = "NIMBUS_LISTEN")]
    #[merge(strategy = merge::option::overwrite_none)]
    pub listen: Option<SocketAddr>,
    /// Log filter, e.g. `info` or `nimbus_server=debug,info` (re-read on SIGHUP from the
    /// config file) [default: info].
    #[arg(long, env = "NIMBUS_LOG")]
    #[merge(strategy = merge::option::overwrite_none)]
    pub log: Option<String>,
    /// The embedded store.
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreSettings,
    /// The cloud protocol.
    #[command(flatten)]
    #[serde(flatten)]
    pub cloud: CloudSettings,
    /// The IPC routes.
    #[command(flatten)]
    #[serde(flatten)]
    pub ipc: IpcSettings,
    /// Document rooms.
    #[command(flatten)]
    #[serde(flatten)]
    pub doc: DocSettings,
    /// The gateway.
    #[command(flatten)]
    #[serde(flatten)]
    pub gateway: GatewaySettings,
    /// The Redis backplane.
    #[command(flatten)]
    #[serde(flatten)]
    pub backplane: BackplaneSettings,
    /// Signed tokens.
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: AuthSettings,
    /// Webhooks.
    #[command(flatten)]
    #[serde(flatten)]
    pub hooks: HookSettings,
    /// Cloud history (`GET /logs`).
    #[command(flatten)]
    #[serde(flatten)]
    pub history: HistorySettings,
    /// Per-connection bounds of the edge (the `[edge]` table of the file).
    #[command(flatten)]
    #[serde(default)]
    pub edge: EdgeSettings,
    /// Refuses the file keys no section took. Must stay the last flattened field: serde
    /// hands each flattened section the keys the ones before it left.
    #[arg(skip)]
    #[serde(flatten)]
    #[merge(skip)]
    pub unknown_keys: DenyUnknownKeys,
}

/// The Redis backplane's settings (kept here rather than in `backplane/`, which is being
/// reworked; it resolves to [`Config::redis`]).
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct BackplaneSettings {
    /// Share cloud rooms with every node connected to this Redis (`redis://host:port`);
    /// see docs/operations.md [default: none: single node, embedded store].
    #[arg(long, env = "NIMBUS_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
}

impl BackplaneSettings {
    /// The Redis URL, `None` (single node) when unset or blank.
    pub fn redis_url(&self) -> Option<String> {
        self.redis.clone().filter(|u| !u.trim().is_empty())
    }
}

/// A flattened catch-all that fails on any key it is given: [`Settings`] keeps its file
/// flat with sections flattened into it, and serde's `deny_unknown_fields` does not work
/// together with `flatten`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DenyUnknownKeys;

impl<'de> Deserialize<'de> for DenyUnknownKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = DenyUnknownKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no key other than the settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DenyUnknownKeys, A::Error> {
                let mut unknown = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    unknown.push(format!("`{key}`"));
                }
                match unknown.len() {
                    0 => Ok(DenyUnknownKeys),
                    1 => Err(A::Error::custom(format_args!(
                        "unknown field {}",
                        unknown[0]
                    ))),
                    _ => Err(A::Error::custom(format_args!(
                        "unknown fields {}",
                        unknown.join(", ")
                    ))),
                }
            }
        }
        d.deserialize_map(Keys)
    }
}

impl Settings {
    /// Read a TOML file of settings (same keys as the long flags, with `_`; the edge's in
    /// an `[edge]` table). Unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| match Settings::culprit(&text, &source) {
            Some((key, reason)) => ConfigError::Key {
                path: path.into(),
                key,
                reason,
            },
            None => ConfigError::Parse {
                path: path.into(),
                source: Box::new(source),
            },
        })
    }

    /// The key behind `error`, when the parser could not point at it: values of the
    /// flattened sections are checked after the whole table is read, so their errors span
    /// the whole document. Each top-level entry is then read alone to find the one at fault.
    fn culprit(text: &str, error: &toml::de::Error) -> Option<(String, String)> {
        if error.span().is_some_and(|s| s.start > 0) {
            return None;
        }
        let table: toml::Table = toml::from_str(text).ok()?;
        table.into_iter().find_map(|(key, value)| {
            let one = toml::Table::from_iter([(key.clone(), value)]);
            let e = Settings::deserialize(one).err()?;
            Some((key, e.message().to_string()))
        })
    }

    /// Layer two sets of settings: every value of `self` wins over `lower`'s.
    pub fn merge(mut self, lower: Settings) -> Settings {
        merge::Merge::merge(&mut self, lower);
        self
    }
}

/// The resolved configuration of a server.
///
/// ```
/// let mut config = nimbus_server::Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// config.cloud.max_clients_per_room = 2;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the embedded store ([`StoreConfig`]).
    pub data_dir: PathBuf,
    /// Group-commit window of the store ([`StoreConfig`]).
    pub flush_interval: Duration,
    /// Cloud protocol limits and policies.
    pub cloud: CloudLimits,
    /// Document room limits and policies.
    pub doc: DocLimits,
    /// IPC routes, when enabled.
    pub ipc: Option<IpcConfig>,
    /// The gateway at `/gateway` (served when it has tokens).
    pub gateway: GatewayConfig,
    /// Redis URL of the backplane (`--redis`); `None`: single node.
    pub redis: Option<String>,
    /// Per-connection bounds of the edge (`docs/security.md`).
    pub edge: EdgeConfig,
    /// Signed tokens and the cloud identity policy.
    pub auth: AuthSetup,
    /// Webhook receivers and the document-change debounce.
    pub hooks: HooksConfig,
    /// What each cloud room keeps of its history.
    pub history: Retention,
    /// The log filter (`NIMBUS_LOG` syntax); the binary applies it (and again on SIGHUP).
    pub log: String,
}

impl Config {
    /// The default log filter.
    pub const DEFAULT_LOG: &'static str = "info";

    /// The default of `listen`.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9080));
}

impl Default for Config {
    fn default() -> Self {
        let store = StoreConfig::default();
        Config {
            listen: Config::DEFAULT_LISTEN,
            data_dir: store.data_dir,
            flush_interval: store.flush_interval,
            cloud: CloudLimits::default(),
            doc: DocLimits::default(),
            ipc: None,
            gateway: GatewayConfig::default(),
            redis: None,
            edge: EdgeConfig::default(),
            auth: AuthSetup::default(),
            hooks: HooksConfig::default(),
            history: Retention::default(),
            log: Config::DEFAULT_LOG.into(),
        }
    }
}

impl Config {
    /// Resolve every section: fill in defaults and check ranges.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let store = StoreConfig::from_settings(&s.store)?;
        let doc = DocLimits::from_settings(&s.doc)?;
        let cloud = CloudLimits::from_settings(&s.cloud)?;
        let mut gateway = GatewayConfig::from_settings(&s.gateway, doc.max_message_bytes)?;
        // One close timeout for every wire.
        gateway.close_timeout = cloud.close_timeout;
        Ok(Config {
            listen: s.listen.unwrap_or(Config::DEFAULT_LISTEN),
            data_dir: store.data_dir,
            flush_interval: store.flush_interval,
            cloud,
            gateway,
            doc,
            ipc: IpcConfig::from_settings(&s.ipc)?,
            redis: s.backplane.redis_url(),
            edge: EdgeConfig::from_settings(&s.edge)?,
            auth: AuthSetup::from_settings(&s.auth)?,
            hooks: HooksConfig::from_settings(&s.hooks)?,
            history: s.history.retention()?,
            log: s.log.unwrap_or_else(|| Config::DEFAULT_LOG.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};
    use nimbus_proto::cloud::ValueProfile;

    use super::*;

    // Parsing flags reads the environment: the test of precedence, which sets variables,
    // is `tests/settings_precedence.rs`, a process of its own.

    fn command() -> clap::Command {
        Settings::augment_args(clap::Command::new("serve").no_binary_name(true))
    }

    /// Parse `args` as `nimbus serve` would (flags and the current environment).
    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let m = command().try_get_matches_from(args)?;
        Settings::from_arg_matches(&m)
    }

    fn file(text: &str) -> Settings {
        toml::from_str(text).expect("valid toml")
    }

    fn invalid_key(s: Settings) -> &'static str {
        match Config::from_settings(s) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file = file("listen = \"127.0.0.1:1\"\nmax_rooms = 5\nvalue_profile = \"scratch\"\n");
        let flags = Settings {
            listen: Some("127.0.0.1:2".parse().expect("addr")),
            ..Settings::default()
        };
        let c = Config::from_settings(flags.merge(file)).expect("valid");
        assert!(!c.gateway.enabled(), "no token: no gateway");
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.cloud.max_rooms, 5);
        assert_eq!(c.cloud.profile, ValueProfile::Scratch);
        assert_eq!(c.cloud.max_value_len, 256, "scratch profile default length");
        assert_eq!(c.cloud.max_clients_per_room, 128);
    }

    #[test]
    fn doc_token_rules_come_from_flags_env_lists_and_files() {
        let c = Config::from_settings(file(
            "doc_tokens = [\"notes:ro:abc\", \"*:rw:root\"]\ndoc_max_bytes = 10\n",
        ))
        .expect("valid");
        assert_eq!(c.doc.tokens.len(), 2);
        assert_eq!(c.doc.tokens[0].access, crate::doc::Access::ReadOnly);
        assert_eq!(c.doc.max_doc_bytes, 10);
        assert!(toml::from_str::<Settings>("doc_tokens = [\"notes:xx:abc\"]").is_err());
    }

    #[test]
    fn doc_connection_bounds_come_from_settings_and_reach_the_serve_options() {
        let c = Config::from_settings(file(
            "doc_queue_bytes = 1000\ndoc_update_rate = 0\ndoc_awareness_burst = 5\n\
             doc_awareness_max_states = 3\ndoc_send_timeout_ms = 1500\n",
        ))
        .expect("valid");
        let opts = c.doc.serve_options(true);
        assert!(opts.read_only);
        assert_eq!(opts.queue_bytes, 1000);
        assert_eq!(opts.update_rate.per_second, 0);
        assert_eq!(opts.awareness_rate.burst, 5);
        assert_eq!(opts.send_timeout, Duration::from_millis(1500));
        assert_eq!(opts.sync_send_timeout, Duration::from_secs(60));
        assert_eq!(c.doc.room_options().awareness.max_states, 3);
        assert_eq!(
            invalid_key(file("doc_queue_bytes = 0\n")),
            "doc_queue_bytes"
        );
    }

    #[test]
    fn gateway_settings() {
        let c = Config::from_settings(Settings::default().merge(file(
            "gateway_token = [\"a\", \"b=cloud\"]\ngateway_replay_buffer = 7\n",
        )))
        .expect("valid");
        assert!(c.gateway.enabled());
        assert_eq!(c.gateway.tokens.len(), 2);
        assert_eq!(c.gateway.replay_buffer, 7);
        let bad = file("gateway_token = [\"x=nope\"]\n");
        assert_eq!(invalid_key(bad), "gateway_token");
        let c = Config::from_settings(file("doc_max_message_bytes = 100000000\n")).expect("valid");
        assert_eq!(
            c.gateway.max_dispatch_bytes,
            GatewayConfig::dispatch_bound(100_000_000),
            "the largest dispatch follows the document rooms' largest message"
        );
    }

    #[test]
    fn redis_is_off_by_default_and_a_flag_wins_over_the_file() {
        assert_eq!(
            Config::from_settings(Settings::default())
                .expect("valid")
                .redis,
            None
        );
        let file = file("redis = \"redis://file:6379/\"\n");
        let c = Config::from_settings(Settings::default().merge(file.clone())).expect("valid");
        assert_eq!(c.redis.as_deref(), Some("redis://file:6379/"));
        let with_redis = |url: &str| Settings {
            backplane: BackplaneSettings {
                redis: Some(url.into()),
            },
            ..Settings::default()
        };
        let c = Config::from_settings(with_redis("redis://flag:6379/").merge(file)).expect("valid");
        assert_eq!(c.redis.as_deref(), Some("redis://flag:6379/"));
        assert_eq!(
            Config::from_settings(with_redis("  "))
                .expect("valid")
                .redis,
            None
        );
    }

    #[test]
    fn unknown_file_keys_are_errors_that_name_the_key() {
        for (text, key) in [
            ("listn = \"x\"", "listn"),
            ("max_rooms = 5\ndoc_max_roms = 1\n", "doc_max_roms"),
            ("gateway_tokens = [\"a\"]", "gateway_tokens"),
            ("[edge]\nmax_conns_per_ipp = 1\n", "max_conns_per_ipp"),
            ("[cloud]\nmax_rooms = 1\n", "cloud"),
        ] {
            let e = toml::from_str::<Settings>(text).expect_err(text);
            assert!(e.to_string().contains(&format!("`{key}`")), "{text}: {e}");
        }
        // Every key of every section, at the top level (the edge's in `[edge]`), is known.
        let mut text = String::new();
        let mut edge = String::from("[edge]\n");
        for arg in command().get_arguments() {
            let id = arg.get_id().as_str();
            let value = match id {
                "listen" => "\"127.0.0.1:1\"".to_string(),
                "data_dir" | "ipc_host" | "ipc_secret" | "redis" | "log" | "token_jwks"
                | "token_issuer" | "token_audience" | "token_cookie" => "\"x\"".into(),
                "cloud_auth" => "\"off\"".into(),
                "webhook" => {
                    "[\"http://127.0.0.1:9/x#secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]"
                        .into()
                }
                "value_profile" => "\"scratch\"".into(),
                "blocked_rooms" | "gateway_token" | "token_secret" | "api_token" => {
                    "[\"x\"]".into()
                }
                "doc_tokens" => "[\"x:rw:y\"]".into(),
                _ if arg.get_long().is_some_and(|l| {
                    [
                        "unique-usernames",
                        "require-user-agent",
                        "reject-session-cookie",
                    ]
                    .contains(&l)
                        || l.starts_with("allow-")
                        || l.ends_with("-frame")
                        || l == "ipc"
                        || l == "webhook-doc-snapshot"
                        || l == "limit-loopback"
                }) =>
                {
                    "true".into()
                }
                _ => "7".into(),
            };
            let is_edge = EdgeSettings::augment_args(clap::Command::new("e"))
                .get_arguments()
                .any(|a| a.get_id() == arg.get_id());
            let line = format!("{id} = {value}\n");
            if is_edge {
                edge.push_str(&line);
            } else {
                text.push_str(&line);
            }
        }
        text.push_str(&edge);
        let s: Settings = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(s.doc.doc_awareness_chunk_bytes, Some(7));
        assert_eq!(s.edge.max_conns_per_ip, Some(7));
        assert_eq!(
            s.gateway.gateway_token.as_deref(),
            Some(&["x".to_string()][..])
        );
    }

    #[test]
    fn file_errors_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nimbus.toml");
        let read = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Settings::from_file(&path).expect_err(text).to_string()
        };
        let e = read("listen = \"127.0.0.1:1\"\nmax_rooms = 3\ndoc_max_rooms = \"x\"\n");
        assert!(e.contains("doc_max_rooms: invalid type"), "{e}");
        let e = read("max_rooms = 3\nlistn = 1\n");
        assert!(e.contains("listn: unknown field `listn`"), "{e}");
        let e = read("[edge]\nmax_conns_per_ip = \"x\"\n");
        assert!(e.contains("line 2") && e.contains("expected u32"), "{e}");
        let e = read("max_rooms = \n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_key() {
        // Zero for every numeric flag: refused ones must name their own key.
        let mut refused = Vec::new();
        for arg in command().get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let Ok(s) = parse(&[&format!("--{long}"), "0"]) else {
                continue; // not a number
            };
            if let Err(e) = Config::from_settings(s) {
                match e {
                    ConfigError::Invalid { key, .. } => assert_eq!(key, id, "--{long} 0"),
                    other => panic!("--{long} 0: {other}"),
                }
                refused.push(id.to_string());
            }
        }
        for key in [
            "max_rooms",
            "max_clients_per_room",
            "max_frame_bytes",
            "max_username_len",
            "outbox_capacity",
            "ping_interval_ms",
            "doc_max_message_bytes",
            "doc_max_bytes",
            "doc_max_rooms",
            "doc_awareness_timeout_ms",
            "doc_compact_updates",
            "doc_compact_bytes",
            "doc_queue_bytes",
            "doc_send_timeout_ms",
            "doc_sync_send_timeout_ms",
            "doc_rate_abuse_ms",
            "doc_awareness_max_ids",
            "doc_awareness_max_state_bytes",
            "doc_awareness_max_states",
            "doc_awareness_max_room_bytes",
            "doc_awareness_chunk_bytes",
            "gateway_heartbeat_interval_ms",
            "gateway_replay_buffer",
            "gateway_max_concurrency",
            "max_conns_per_ip",
            "header_timeout_ms",
            "sets_per_sec",
        ] {
            assert!(refused.iter().any(|k| k == key), "{key} = 0 is refused");
        }
        let s = file("coalesce_after = 10\noutbox_capacity = 5\n");
        assert_eq!(invalid_key(s), "coalesce_after");
        assert_eq!(invalid_key(file("[edge]\nsets_burst = 0\n")), "sets_burst");
    }

    /// Every flag documents its default in its help (`[default: …]`), and the documented
    /// value is the real one: resolving with the flag set to it changes nothing.
    #[test]
    fn every_flag_documents_its_real_default() {
        let resolve = |args: &[&str]| {
            let s = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let c = Config::from_settings(s).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            format!("{c:?}")
        };
        let mut checked = 0;
        for arg in command().get_arguments() {
            let long = arg.get_long().expect("every setting has a long flag");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string);
            let help = help.unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                panic!("--{long}: no [default: …] in {help:?}");
            };
            let value = rest
                .split([']', ' '])
                .next()
                .unwrap_or_default()
                .trim_end_matches([':', ',']);
            // `log`'s default is applied by the binary (Config keeps `None`).
            if value == "none" {
                continue;
            }
            // IPC on (but for `--ipc` itself), so that its port and host are resolved too.
            let base: &[&str] = if long == "ipc" { &[] } else { &["--ipc"] };
            let flag = format!("--{long}");
            assert_eq!(
                resolve(&[base, &[flag.as_str(), value]].concat()),
                resolve(base),
                "{flag}: documented default {value}"
            );
            checked += 1;
        }
        assert!(checked > 50, "{checked} defaults checked");
    }
}
