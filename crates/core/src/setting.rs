//! What every settings section shares: the error a section reports for a value out of
//! range, and the small helpers that resolve an optional setting against its default.
//!
//! A leaf module: each subsystem's `settings` module imports it, and `config` (which
//! composes the sections) imports them; no section imports `config`.

use std::time::Duration;

use thiserror::Error;

/// A setting out of range, found by the section that owns it (the config layer reports
/// it as `ConfigError::Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid setting {key}: {reason}")]
pub struct InvalidSetting {
    /// The setting (its file key).
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

/// `v`, or `default` when unset; zero is refused.
pub fn nonzero<T: PartialEq + Default>(
    key: &'static str,
    v: Option<T>,
    default: T,
) -> Result<T, InvalidSetting> {
    match v {
        Some(x) if x == T::default() => Err(InvalidSetting {
            key,
            reason: "must be at least 1".into(),
        }),
        Some(x) => Ok(x),
        None => Ok(default),
    }
}

/// A duration in milliseconds, or `default` when unset.
pub fn millis(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

/// A duration in milliseconds, or `default` when unset; zero is refused.
pub fn nonzero_millis(
    key: &'static str,
    v: Option<u64>,
    default: Duration,
) -> Result<Duration, InvalidSetting> {
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    nonzero(key, v, default).map(Duration::from_millis)
}

/// The largest write-batching budget accepted (`nimbus_proto::batch`), in microseconds:
/// beyond it an update is late, not batched.
pub const MAX_BATCH_DELAY_US: u64 = 100_000;

/// A write-batching budget in microseconds, 0 to [`MAX_BATCH_DELAY_US`] (0: no batching),
/// or `default` when unset.
pub fn batch_delay(
    key: &'static str,
    v: Option<u64>,
    default: Duration,
) -> Result<Duration, InvalidSetting> {
    match v {
        None => Ok(default),
        Some(us) if us <= MAX_BATCH_DELAY_US => Ok(Duration::from_micros(us)),
        Some(_) => Err(InvalidSetting {
            key,
            reason: format!("must be at most {MAX_BATCH_DELAY_US} (100 ms)"),
        }),
    }
}
