//! The edge: where a socket meets the server, and where every per-connection bound lives.
//!
//! - `accept`: the TCP listener. Raises the fd soft limit, admits a connection against
//!   per-address caps (concurrent and new per second; refused with HTTP 429 before any
//!   upgrade), bounds the time from accept to a complete request head (which is also the
//!   keep-alive idle timeout) and serves HTTP/1.1 with upgrades.
//! - `ws`: the bounds every WebSocket gets (read/write buffers, message size, a write
//!   buffer that cannot grow with automatic pongs), the ping budget, the mapping of framing
//!   errors to close codes (1002, 1007, 1009), and the close sequence.
//! - `rate`: the per-connection token bucket for client writes (cloud sets).
//! - `budget`: the bytes of large HTTP response bodies held at once, server-wide (over it:
//!   503 with `Retry-After`).
//!
//! The bounds, their defaults and why, and the close code of each are in `docs/security.md`.

pub(crate) mod accept;
pub(crate) mod budget;
pub(crate) mod rate;
pub(crate) mod wire;
pub(crate) mod ws;

pub use accept::raise_fd_limit;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

pub use crate::setting::InvalidSetting;
use crate::setting::{batch_delay, nonzero, nonzero_millis};

/// The edge's settings (flags, `NIMBUS_*` environment, and the `[edge]` table of the
/// config file). Durations are in milliseconds.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct EdgeSettings {
    /// Open connections per client address (IPv6: per /64); more are refused with 429 [default: 512].
    #[arg(long, env = "NIMBUS_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<u32>,
    /// New connections per second per client address, sustained [default: 50].
    #[arg(long, env = "NIMBUS_NEW_CONNS_PER_IP_PER_SEC")]
    pub new_conns_per_ip_per_sec: Option<u32>,
    /// New connections per client address in a burst [default: 200].
    #[arg(long, env = "NIMBUS_NEW_CONNS_PER_IP_BURST")]
    pub new_conns_per_ip_burst: Option<u32>,
    /// Time from accept (or the end of the previous request) to a complete request head;
    /// also the keep-alive idle timeout [default: 10000].
    #[arg(long, env = "NIMBUS_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// A write to a client that makes no progress for this long cuts it (1008) [default: 10000].
    #[arg(long, env = "NIMBUS_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Bytes queued to one cloud client beyond its join snapshot before it is cut (1008) [default: 1048576].
    #[arg(long, env = "NIMBUS_OUTBOX_BYTES")]
    pub outbox_bytes: Option<usize>,
    /// Cloud sets per second per connection, sustained; sets beyond are dropped [default: 1000].
    #[arg(long, env = "NIMBUS_SETS_PER_SEC")]
    pub sets_per_sec: Option<u32>,
    /// Cloud sets per connection in a burst [default: 2000].
    #[arg(long, env = "NIMBUS_SETS_BURST")]
    pub sets_burst: Option<u32>,
    /// Apply the per-address caps to loopback clients too. Off by default: behind a
    /// reverse proxy on the same host every client arrives from loopback [default: false].
    #[arg(long, env = "NIMBUS_LIMIT_LOOPBACK")]
    pub limit_loopback: Option<bool>,
    /// Longest an update may wait to join a busy connection's next write, microseconds;
    /// an idle connection writes at once (docs/benchmarks.md) [default: 2000].
    #[arg(long, env = "NIMBUS_MAX_BATCH_DELAY_US")]
    pub max_batch_delay_us: Option<u64>,
}

/// The edge's resolved bounds.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Open connections per client address.
    pub max_conns_per_ip: u32,
    /// New connections per second per client address, sustained.
    pub new_conns_per_ip_per_sec: u32,
    /// New connections per client address in a burst.
    pub new_conns_per_ip_burst: u32,
    /// Accept (or end of the previous request) to a complete request head.
    pub header_timeout: Duration,
    /// Longest a write may make no progress.
    pub write_timeout: Duration,
    /// Bytes queued to one cloud client beyond its join snapshot.
    pub outbox_bytes: usize,
    /// Cloud sets per second per connection.
    pub sets_per_sec: u32,
    /// Cloud sets per connection in a burst.
    pub sets_burst: u32,
    /// Per-address caps apply to loopback clients too.
    pub limit_loopback: bool,
    /// Longest an update may wait to join a busy connection's next write (0: never wait).
    pub max_batch_delay: Duration,
    /// Longest any write of a connection may make no progress before the connection
    /// closes (HTTP responses included; `accept::WRITE_STALL`, 60 s). Not a setting.
    pub write_stall: Duration,
    /// Bytes of large HTTP response bodies held at once, server-wide
    /// (`budget::RESPONSE_BUDGET`, 256 MiB). Not a setting.
    pub response_budget: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            max_conns_per_ip: 512,
            new_conns_per_ip_per_sec: 50,
            new_conns_per_ip_burst: 200,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            outbox_bytes: 1 << 20,
            sets_per_sec: 1000,
            sets_burst: 2000,
            limit_loopback: false,
            max_batch_delay: Duration::from_micros(2000),
            write_stall: accept::WRITE_STALL,
            response_budget: budget::RESPONSE_BUDGET,
        }
    }
}

impl EdgeConfig {
    /// Fill in defaults and check ranges.
    pub fn from_settings(s: &EdgeSettings) -> Result<EdgeConfig, InvalidSetting> {
        let d = EdgeConfig::default();
        let ms = nonzero_millis;
        Ok(EdgeConfig {
            max_conns_per_ip: nonzero("max_conns_per_ip", s.max_conns_per_ip, d.max_conns_per_ip)?,
            new_conns_per_ip_per_sec: nonzero(
                "new_conns_per_ip_per_sec",
                s.new_conns_per_ip_per_sec,
                d.new_conns_per_ip_per_sec,
            )?,
            new_conns_per_ip_burst: nonzero(
                "new_conns_per_ip_burst",
                s.new_conns_per_ip_burst,
                d.new_conns_per_ip_burst,
            )?,
            header_timeout: ms("header_timeout_ms", s.header_timeout_ms, d.header_timeout)?,
            write_timeout: ms("write_timeout_ms", s.write_timeout_ms, d.write_timeout)?,
            outbox_bytes: nonzero("outbox_bytes", s.outbox_bytes, d.outbox_bytes)?,
            sets_per_sec: nonzero("sets_per_sec", s.sets_per_sec, d.sets_per_sec)?,
            sets_burst: nonzero("sets_burst", s.sets_burst, d.sets_burst)?,
            limit_loopback: s.limit_loopback.unwrap_or(d.limit_loopback),
            max_batch_delay: batch_delay(
                "max_batch_delay_us",
                s.max_batch_delay_us,
                d.max_batch_delay,
            )?,
            write_stall: d.write_stall,
            response_budget: d.response_budget,
        })
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// The edge's metrics, registered under `nimbus_edge_`.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    /// Open TCP connections admitted by the listener (HTTP and upgraded).
    pub connections: Gauge,
    refused: Family<Labels, Counter>,
    violations: Family<Labels, Counter>,
    /// Accept calls that failed (e.g. out of file descriptors).
    pub accept_errors: Counter,
    /// Cloud sets dropped by the per-connection rate limit.
    pub rate_limited: Counter,
    /// Writes cut because they made no progress within the write timeout.
    pub write_timeouts: Counter,
    /// Large HTTP responses answered 503 because the response budget was spent.
    pub busy_responses: Counter,
}

impl EdgeMetrics {
    /// Register every metric in `registry` (under the prefix `edge`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("edge");
        r.register(
            "connections",
            "Open TCP connections admitted by the listener",
            self.connections.clone(),
        );
        r.register(
            "refused",
            "Connections refused before the upgrade, by reason",
            self.refused.clone(),
        );
        r.register(
            "violations",
            "Connections closed by an edge bound, by bound",
            self.violations.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept calls (e.g. out of file descriptors)",
            self.accept_errors.clone(),
        );
        r.register(
            "rate_limited",
            "Client writes dropped by the per-connection rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "write_timeouts",
            "Connections cut because a write made no progress in time",
            self.write_timeouts.clone(),
        );
        r.register(
            "busy_responses",
            "Large HTTP responses answered 503 because the server-wide response budget was spent",
            self.busy_responses.clone(),
        );
    }

    /// Count a connection refused before the upgrade.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Count a connection closed by an edge bound.
    pub(crate) fn violation(&self, bound: &'static str) {
        self.violations.get_or_create(&vec![("bound", bound)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::setting::MAX_BATCH_DELAY_US;

    #[test]
    fn the_batch_budget_is_bounded_and_zero_turns_it_off() {
        let set = |us| EdgeSettings {
            max_batch_delay_us: Some(us),
            ..EdgeSettings::default()
        };
        let cfg = EdgeConfig::from_settings(&set(0)).map(|c| c.max_batch_delay);
        assert_eq!(cfg, Ok(Duration::ZERO));
        let cfg = EdgeConfig::from_settings(&set(MAX_BATCH_DELAY_US)).map(|c| c.max_batch_delay);
        assert_eq!(cfg, Ok(Duration::from_millis(100)));
        let err =
            EdgeConfig::from_settings(&set(MAX_BATCH_DELAY_US + 1)).map(|c| c.max_batch_delay);
        assert_eq!(err.map_err(|e| e.key), Err("max_batch_delay_us"));
        let default =
            EdgeConfig::from_settings(&EdgeSettings::default()).map(|c| c.max_batch_delay);
        assert_eq!(default, Ok(Duration::from_millis(2)));
    }
}
