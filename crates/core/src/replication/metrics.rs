//! What following a replicated order costs: catch-ups (`nimbus_redis_resyncs`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counted by cloud and document rooms when they follow an order kept elsewhere.
#[derive(Debug, Clone, Default)]
pub struct ReplicationMetrics {
    /// Room catch-ups from the stream or the state (gaps, resubscriptions).
    pub resyncs: Counter,
}

impl ReplicationMetrics {
    /// Create the metrics and register them in `registry` under the prefix `redis` (the
    /// only implementation whose order can have gaps; the series exists, at 0, without it).
    pub fn register(registry: &mut Registry) -> ReplicationMetrics {
        let m = ReplicationMetrics::default();
        registry.sub_registry_with_prefix("redis").register(
            "resyncs",
            "Room catch-ups from the Redis stream or state",
            m.resyncs.clone(),
        );
        m
    }
}
