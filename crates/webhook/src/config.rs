//! Endpoint configuration: a TOML `[[webhook]]` table ([`EndpointConfig`] with serde) or
//! the command-line short form ([`EndpointConfig::from_str`]).
//!
//! Durations are written in milliseconds in TOML (`linger_ms`, `timeout_ms`, ...), as in
//! the rest of nimbus's configuration; in Rust they are [`Duration`]s.
//!
//! The short form is the URL with options in its fragment (a fragment is never sent in an
//! HTTP request, so it cannot clash with the receiver's URL):
//!
//! ```text
//! https://hooks.example.com/nimbus#secret=whsec_...&secret=whsec_...&events=CLOUD_SET,DOC_CHANGED&rooms=lobby,game-*
//! ```
//!
//! Every other field takes its default. A secret on a command line is visible to other
//! local users (`ps`); prefer the TOML file for production.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::sign::{Secret, SecretError};

/// Default [`EndpointConfig::max_batch_events`].
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 100;
/// Default [`EndpointConfig::max_batch_bytes`] (256 KiB).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 256 * 1024;
/// Default [`EndpointConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(50);
/// Default [`EndpointConfig::queue_events`].
pub const DEFAULT_QUEUE_EVENTS: usize = 10_000;
/// Default [`EndpointConfig::queue_bytes`] (16 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Default [`EndpointConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`EndpointConfig::backoff_base`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default [`EndpointConfig::backoff_cap`].
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Default [`EndpointConfig::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;
/// Default [`EndpointConfig::max_retry_time`] (one hour).
pub const DEFAULT_MAX_RETRY_TIME: Duration = Duration::from_secs(3600);

/// One webhook receiver.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Where to POST: an `http://` or `https://` URL.
    pub url: String,
    /// Signing secrets (`whsec_<base64>`), at least one; every request carries one
    /// signature per secret (for rotation).
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Event kinds to deliver (`CLOUD_SET`, `DOC_CHANGED`, ...); empty: every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// Rooms to deliver: exact names, `prefix*`, or `*`; empty: every room.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Most events in one request.
    #[serde(default = "d_batch_events")]
    pub max_batch_events: usize,
    /// Largest request body, in bytes. An event that cannot fit in a request alone is
    /// dropped when published (reason `too_large`).
    #[serde(default = "d_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long the first queued event may wait for others to share its request.
    #[serde(default = "d_linger", rename = "linger_ms", with = "millis")]
    pub linger: Duration,
    /// Most events queued for this endpoint (in flight included); at least twice
    /// `max_batch_events`.
    #[serde(default = "d_queue_events")]
    pub queue_events: usize,
    /// Most bytes queued for this endpoint (in flight included); at least twice
    /// `max_batch_bytes`.
    #[serde(default = "d_queue_bytes")]
    pub queue_bytes: usize,
    /// Per-request timeout (connect, send, response).
    #[serde(default = "d_timeout", rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// First retry delay ceiling (doubles per attempt, equal jitter).
    #[serde(
        default = "d_backoff_base",
        rename = "backoff_base_ms",
        with = "millis"
    )]
    pub backoff_base: Duration,
    /// Largest retry delay ceiling.
    #[serde(default = "d_backoff_cap", rename = "backoff_cap_ms", with = "millis")]
    pub backoff_cap: Duration,
    /// Most attempts for one batch before it is dropped (reason `gave_up`).
    #[serde(default = "d_max_attempts")]
    pub max_attempts: u32,
    /// Longest time one batch is retried before it is dropped (reason `gave_up`).
    #[serde(
        default = "d_max_retry_time",
        rename = "max_retry_time_ms",
        with = "millis"
    )]
    pub max_retry_time: Duration,
}

fn d_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}
fn d_batch_bytes() -> usize {
    DEFAULT_MAX_BATCH_BYTES
}
fn d_linger() -> Duration {
    DEFAULT_LINGER
}
fn d_queue_events() -> usize {
    DEFAULT_QUEUE_EVENTS
}
fn d_queue_bytes() -> usize {
    DEFAULT_QUEUE_BYTES
}
fn d_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn d_backoff_base() -> Duration {
    DEFAULT_BACKOFF_BASE
}
fn d_backoff_cap() -> Duration {
    DEFAULT_BACKOFF_CAP
}
fn d_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn d_max_retry_time() -> Duration {
    DEFAULT_MAX_RETRY_TIME
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl EndpointConfig {
    /// A configuration with every default, for `url` signed with `secrets`.
    pub fn new(url: impl Into<String>, secrets: Vec<Secret>) -> EndpointConfig {
        EndpointConfig {
            url: url.into(),
            secrets,
            events: Vec::new(),
            rooms: Vec::new(),
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            linger: DEFAULT_LINGER,
            queue_events: DEFAULT_QUEUE_EVENTS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_retry_time: DEFAULT_MAX_RETRY_TIME,
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed_url()?;
        if self.secrets.is_empty() {
            return Err(ConfigError::new("secrets", "at least one secret is needed"));
        }
        for e in &self.events {
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(ConfigError::new(
                    "events",
                    format!("{e:?} is not an event kind (A-Z and _)"),
                ));
            }
        }
        for r in &self.rooms {
            RoomPattern::parse(r).map_err(|why| ConfigError::new("rooms", why))?;
        }
        positive("max_batch_events", self.max_batch_events)?;
        if self.max_batch_bytes < crate::payload::MIN_BATCH_BYTES {
            return Err(ConfigError::new(
                "max_batch_bytes",
                format!("at least {} bytes", crate::payload::MIN_BATCH_BYTES),
            ));
        }
        if self.queue_events < self.max_batch_events.saturating_mul(2) {
            return Err(ConfigError::new(
                "queue_events",
                "at least twice max_batch_events",
            ));
        }
        if self.queue_bytes < self.max_batch_bytes.saturating_mul(2) {
            return Err(ConfigError::new(
                "queue_bytes",
                "at least twice max_batch_bytes",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout_ms", "must be positive"));
        }
        if self.backoff_base.is_zero() {
            return Err(ConfigError::new("backoff_base_ms", "must be positive"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(ConfigError::new(
                "backoff_cap_ms",
                "must be at least backoff_base_ms",
            ));
        }
        positive("max_attempts", self.max_attempts as usize)?;
        Ok(())
    }

    /// The URL, checked: `http` or `https`, with a host, the fragment removed.
    pub(crate) fn parsed_url(&self) -> Result<url::Url, ConfigError> {
        let mut u = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::new("url", format!("not a URL: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(ConfigError::new("url", "only http:// and https:// URLs"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new("url", "no host"));
        }
        u.set_fragment(None);
        Ok(u)
    }
}

fn positive(field: &'static str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(field, "must be positive"));
    }
    Ok(())
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may itself carry credentials (user:password@, a token in the query):
        // only its scheme, host, port and path are shown.
        let url = match url::Url::parse(&self.url) {
            Ok(u) => format!(
                "{}://{}{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                u.path()
            ),
            Err(_) => String::from("<invalid>"),
        };
        f.debug_struct("EndpointConfig")
            .field("url", &url)
            .field("secrets", &self.secrets.len())
            .field("events", &self.events)
            .field("rooms", &self.rooms)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("linger", &self.linger)
            .field("queue_events", &self.queue_events)
            .field("queue_bytes", &self.queue_bytes)
            .field("timeout", &self.timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_time", &self.max_retry_time)
            .finish()
    }
}

/// `URL#secret=whsec_...&events=A,B&rooms=x,y*` (see the module docs); validated.
impl FromStr for EndpointConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<EndpointConfig, ConfigError> {
        let (url, fragment) = s.split_once('#').unwrap_or((s, ""));
        let mut cfg = EndpointConfig::new(url, Vec::new());
        for pair in fragment.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::new("webhook", format!("{pair:?} is not key=value")))?;
            let list = || v.split(',').filter(|x| !x.is_empty()).map(String::from);
            match k {
                "secret" => cfg.secrets.push(
                    v.parse()
                        .map_err(|e: SecretError| ConfigError::new("secrets", e.to_string()))?,
                ),
                "events" => cfg.events.extend(list()),
                "rooms" => cfg.rooms.extend(list()),
                other => {
                    return Err(ConfigError::new(
                        "webhook",
                        format!("unknown option {other:?} (secret, events, rooms)"),
                    ))
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook `{field}`: {reason}")]
pub struct ConfigError {
    /// The field (as written in TOML).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// One entry of [`EndpointConfig::rooms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    /// `*`: every room.
    Any,
    /// `prefix*`: rooms whose name starts with the prefix.
    Prefix(String),
    /// A room name.
    Exact(String),
}

impl RoomPattern {
    /// Parse `*`, `prefix*` or a name (a `*` anywhere else is refused).
    pub fn parse(s: &str) -> Result<RoomPattern, String> {
        if s.is_empty() {
            return Err(String::from("an empty room pattern"));
        }
        if s == "*" {
            return Ok(RoomPattern::Any);
        }
        let (head, star) = match s.strip_suffix('*') {
            Some(head) => (head, true),
            None => (s, false),
        };
        if head.contains('*') {
            return Err(format!("{s:?}: `*` only at the end"));
        }
        Ok(if star {
            RoomPattern::Prefix(head.to_owned())
        } else {
            RoomPattern::Exact(head.to_owned())
        })
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Any => true,
            RoomPattern::Prefix(p) => room.starts_with(p.as_str()),
            RoomPattern::Exact(r) => room == r,
        }
    }
}

/// An endpoint's compiled event and room filter.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    kinds: HashSet<String>,
    rooms: Vec<RoomPattern>,
}

impl Filter {
    pub(crate) fn new(cfg: &EndpointConfig) -> Result<Filter, ConfigError> {
        let rooms = cfg
            .rooms
            .iter()
            .map(|r| RoomPattern::parse(r).map_err(|why| ConfigError::new("rooms", why)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter {
            kinds: cfg.events.iter().cloned().collect(),
            rooms,
        })
    }

    pub(crate) fn matches(&self, kind: &str, room: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(kind))
            && (self.rooms.is_empty() || self.rooms.iter().any(|p| p.matches(room)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const S2: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn toml_table_with_only_url_and_secret_takes_every_default() {
        let cfg: EndpointConfig = toml::from_str(&format!(
            "url = \"https://h.example/x\"\nsecrets = [\"{S1}\"]\n"
        ))
        .expect("toml");
        cfg.validate().expect("valid");
        assert_eq!(cfg.max_batch_events, 100);
        assert_eq!(cfg.max_batch_bytes, 256 * 1024);
        assert_eq!(cfg.linger, Duration::from_millis(50));
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.max_retry_time, Duration::from_secs(3600));
        assert!(cfg.events.is_empty() && cfg.rooms.is_empty());
    }

    #[test]
    fn toml_durations_are_milliseconds_and_unknown_fields_are_refused() {
        let cfg: EndpointConfig = toml::from_str(&format!(
            "url = \"http://127.0.0.1:9/\"\nsecrets = [\"{S1}\", \"{S2}\"]\nlinger_ms = 5\n\
             timeout_ms = 1500\nevents = [\"CLOUD_SET\"]\nrooms = [\"game-*\"]\n"
        ))
        .expect("toml");
        assert_eq!(cfg.linger, Duration::from_millis(5));
        assert_eq!(cfg.timeout, Duration::from_millis(1500));
        assert_eq!(cfg.secrets.len(), 2);
        let err = toml::from_str::<EndpointConfig>(&format!(
            "url = \"http://x/\"\nsecrets = [\"{S1}\"]\nlinger = 5\n"
        ))
        .expect_err("unknown field");
        assert!(err.to_string().contains("linger"), "{err}");
        let err = toml::from_str::<EndpointConfig>("url = \"http://x/\"\nsecrets = [\"nope\"]\n")
            .expect_err("bad secret");
        assert!(err.to_string().contains("whsec_"), "{err}");
    }

    #[test]
    fn flag_form_reads_secrets_events_and_rooms_from_the_fragment() {
        let cfg: EndpointConfig =
            format!("https://h.example/hook?a=1#secret={S1}&secret={S2}&events=CLOUD_SET,DOC_CHANGED&rooms=lobby,game-*")
                .parse()
                .expect("flag");
        assert_eq!(cfg.url, "https://h.example/hook?a=1");
        assert_eq!(cfg.secrets.len(), 2);
        assert_eq!(cfg.events, ["CLOUD_SET", "DOC_CHANGED"]);
        assert_eq!(cfg.rooms, ["lobby", "game-*"]);
        assert_eq!(cfg.max_batch_events, DEFAULT_MAX_BATCH_EVENTS);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let field = |s: &str| s.parse::<EndpointConfig>().expect_err(s).field;
        assert_eq!(field(&format!("ftp://h/#secret={S1}")), "url");
        assert_eq!(field(&format!("not a url#secret={S1}")), "url");
        assert_eq!(field("http://h/"), "secrets");
        assert_eq!(field("http://h/#secret=whsec_AA"), "secrets");
        assert_eq!(
            field(&format!("http://h/#secret={S1}&events=cloud_set")),
            "events"
        );
        assert_eq!(field(&format!("http://h/#secret={S1}&rooms=a*b")), "rooms");
        assert_eq!(
            field(&format!("http://h/#secret={S1}&colour=red")),
            "webhook"
        );
        let mut cfg = EndpointConfig::new("http://h/", vec![S1.parse().expect("s")]);
        cfg.queue_events = cfg.max_batch_events;
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("queue_events"));
        cfg.queue_events = DEFAULT_QUEUE_EVENTS;
        cfg.queue_bytes = cfg.max_batch_bytes;
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("queue_bytes"));
        cfg.queue_bytes = DEFAULT_QUEUE_BYTES;
        cfg.max_batch_bytes = 10;
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("max_batch_bytes"));
        cfg.max_batch_bytes = DEFAULT_MAX_BATCH_BYTES;
        cfg.timeout = Duration::ZERO;
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("timeout_ms"));
    }

    #[test]
    fn debug_shows_neither_secrets_nor_url_credentials() {
        let cfg: EndpointConfig = format!("https://user:pw@h.example/p?token=abc#secret={S1}")
            .parse()
            .expect("flag");
        let shown = format!("{cfg:?}");
        for leak in ["MfKQ", "pw", "token", "abc"] {
            assert!(!shown.contains(leak), "{leak} in {shown}");
        }
        assert!(shown.contains("https://h.example/p"), "{shown}");
    }

    #[test]
    fn room_patterns_match_exact_names_prefixes_and_everything() {
        let p = |s: &str| RoomPattern::parse(s).expect(s);
        assert!(p("*").matches("anything"));
        assert!(p("game-*").matches("game-7"));
        assert!(p("game-*").matches("game-"));
        assert!(!p("game-*").matches("gam"));
        assert!(p("lobby").matches("lobby"));
        assert!(!p("lobby").matches("lobby2"));
        assert!(RoomPattern::parse("*a").is_err());
        assert!(RoomPattern::parse("").is_err());
    }

    #[test]
    fn empty_filters_match_everything_and_lists_match_any_entry() {
        let mut cfg = EndpointConfig::new("http://h/", vec![S1.parse().expect("s")]);
        let all = Filter::new(&cfg).expect("filter");
        assert!(all.matches("CLOUD_SET", "r"));
        cfg.events = vec!["CLOUD_SET".into(), "ROOM_JOIN".into()];
        cfg.rooms = vec!["a".into(), "b-*".into()];
        let f = Filter::new(&cfg).expect("filter");
        assert!(f.matches("CLOUD_SET", "a"));
        assert!(f.matches("ROOM_JOIN", "b-1"));
        assert!(!f.matches("DOC_UPDATE", "a"));
        assert!(!f.matches("CLOUD_SET", "c"));
    }
}
