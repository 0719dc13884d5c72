//! The Redis backplane's metrics (`nimbus_redis_*`; `nimbus_redis_resyncs` is the core's
//! `ReplicationMetrics`, counted by the rooms that follow).

use std::sync::Arc;

use nimbus_core::cloud::CloudMetrics;
use nimbus_core::doc::metrics::DocMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The backplane's connection, writes and subscription, registered under `nimbus_redis_`
/// (registered, at 0, without `--redis` too).
#[derive(Debug, Default)]
pub struct BackplaneMetrics {
    /// 1 while this node reaches its Redis backplane (`--redis`), else 0.
    pub up: Gauge,
    /// Cloud changes Redis accepted from this node.
    pub writes: Counter,
    /// Cloud changes that could not be written (Redis unreachable; sender closed with 1011).
    pub write_failures: Counter,
    /// Changes received on the backplane subscription (every room, every node).
    pub events: Counter,
    /// Successful (re)subscriptions to the backplane.
    pub subscriptions: Counter,
    /// Age of the last change a room applied, origin clock to here, in ms.
    pub lag_ms: Gauge,
    /// Gateway identify budgets answered from this node's own because Redis did not answer.
    pub identify_fallbacks: Counter,
}

impl BackplaneMetrics {
    /// Create every metric and register it in `registry` (under the prefix `redis`).
    pub fn register(registry: &mut Registry) -> BackplaneMetrics {
        let b = BackplaneMetrics::default();
        let r = registry.sub_registry_with_prefix("redis");
        r.register(
            "up",
            "1 while the Redis backplane is reachable",
            b.up.clone(),
        );
        r.register(
            "writes",
            "Cloud changes Redis accepted from this node",
            b.writes.clone(),
        );
        r.register(
            "write_failures",
            "Cloud changes not written because Redis was unreachable",
            b.write_failures.clone(),
        );
        r.register(
            "events",
            "Changes received on the backplane subscription",
            b.events.clone(),
        );
        r.register(
            "subscriptions",
            "Successful subscriptions to the backplane",
            b.subscriptions.clone(),
        );
        r.register(
            "lag_ms",
            "Age in ms of the last backplane change applied (origin clock)",
            b.lag_ms.clone(),
        );
        r.register(
            "identify_fallbacks",
            "Gateway identify budgets answered from this node's own (Redis did not answer)",
            b.identify_fallbacks.clone(),
        );
        b
    }
}

/// What the backplane counts into: its own metrics, and the cloud's and the documents'
/// where it decides for them (a set refused by Redis, a compaction done in Redis).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `nimbus_redis_*`.
    pub backplane: Arc<BackplaneMetrics>,
    /// `nimbus_cloud_*`.
    pub cloud: Arc<CloudMetrics>,
    /// `nimbus_doc_*`.
    pub doc: Arc<DocMetrics>,
}
