//! Prometheus metrics, served at `/metrics`: the registry (prefix `nimbus`) and its text.
//!
//! Each subsystem owns its metrics, next to its code, and registers them under its
//! prefix; [`Metrics`] only builds them into one registry and encodes it:
//!
//! | field | type | series |
//! | --- | --- | --- |
//! | `cloud` | [`CloudMetrics`] (`nimbus-core`) | `nimbus_cloud_*` |
//! | `doc` | [`DocMetrics`] (`nimbus-core`) | `nimbus_doc_*` |
//! | `gateway` | [`GatewayMetrics`] (`nimbus-core`) | `nimbus_gateway_*` |
//! | `backplane` | [`BackplaneMetrics`] (`nimbus-redis`) | `nimbus_redis_*` |
//! | `replication` | [`ReplicationMetrics`] (`nimbus-core`) | `nimbus_redis_resyncs` |
//! | `store` | [`StoreMetrics`] (`nimbus-core`) | `nimbus_store_*` |
//! | `edge` | [`EdgeMetrics`] (`edge/mod.rs`) | `nimbus_edge_*` |
//! | `webhook` | [`WebhookMetrics`] (`nimbus-webhook`) | `nimbus_webhook_*` |

use std::sync::Arc;

use nimbus_core::cloud::CloudMetrics;
use nimbus_core::doc::metrics::DocMetrics;
use nimbus_core::gateway::metrics::GatewayMetrics;
use nimbus_core::replication::ReplicationMetrics;
use nimbus_core::store::metrics::StoreMetrics;
use nimbus_redis::metrics::BackplaneMetrics;
use nimbus_webhook::WebhookMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::edge::EdgeMetrics;

/// Every subsystem's metrics, registered in one registry. Each subsystem is handed only
/// the parts it counts into (see `Server::bind`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Cloud connections and rooms (`nimbus_cloud_*`).
    pub cloud: Arc<CloudMetrics>,
    /// Document rooms (`nimbus_doc_*`).
    pub doc: Arc<DocMetrics>,
    /// The gateway (`nimbus_gateway_*`).
    pub gateway: Arc<GatewayMetrics>,
    /// The Redis backplane (`nimbus_redis_*`).
    pub backplane: Arc<BackplaneMetrics>,
    /// Catch-ups of a replicated order (`nimbus_redis_resyncs`).
    pub replication: ReplicationMetrics,
    /// The store's state (`nimbus_store_*`).
    pub store: Arc<StoreMetrics>,
    /// The edge (`nimbus_edge_*`).
    pub edge: Arc<EdgeMetrics>,
    /// Webhook delivery (`nimbus_webhook_*`).
    pub webhook: WebhookMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create every subsystem's metrics and register them.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nimbus");
        let gateway = Arc::new(GatewayMetrics::register(&mut registry));
        let cloud = Arc::new(CloudMetrics::register(&mut registry));
        let doc = Arc::new(DocMetrics::register(&mut registry));
        let backplane = Arc::new(BackplaneMetrics::register(&mut registry));
        let replication = ReplicationMetrics::register(&mut registry);
        let store = Arc::new(StoreMetrics::register(&mut registry));
        let edge = Arc::new(EdgeMetrics::default());
        edge.register(&mut registry);
        let webhook = WebhookMetrics::register(&mut registry);
        Metrics {
            registry,
            cloud,
            doc,
            gateway,
            backplane,
            replication,
            store,
            edge,
            webhook,
        }
    }

    /// Expose the document rooms' bound counters (`nimbus_doc_bounds_total{bound}`).
    pub(crate) fn register_doc_bounds(&mut self, stats: Arc<nimbus_doc::ServeStats>) {
        DocMetrics::register_bounds(&mut self.registry, stats);
    }

    /// Expose the store's state (`nimbus_store_*` but the refused writes), read from
    /// `store` at each scrape.
    pub(crate) fn register_store(&mut self, store: &crate::store::Store) {
        StoreMetrics::register_store(&mut self.registry, store.view());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exported series: its `# TYPE` and `# HELP` lines and, once each labelled family
    /// has been touched, its sample names with their label sets (values dropped), sorted.
    fn exposition() -> Vec<String> {
        let mut metrics = Metrics::new();
        metrics.register_doc_bounds(std::sync::Arc::new(nimbus_doc::ServeStats::default()));
        let store = crate::store::Store::spawn(
            crate::store::MemoryBackend::default(),
            std::time::Duration::from_millis(1),
        );
        metrics.register_store(&store);
        metrics.cloud.close(4000);
        metrics.cloud.dropped_set("invalid_name");
        metrics.doc.refused("unauthorized");
        metrics.doc.close(1008);
        metrics.gateway.close(4004);
        metrics.store.refused("cloud");
        metrics.edge.refused("too_many_connections");
        metrics.edge.violation("ping_flood");
        // One webhook endpoint creates every `nimbus_webhook_*` series (endpoint="0").
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in_rt = rt.enter();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let endpoint = nimbus_webhook::EndpointConfig::new("http://127.0.0.1:9/", vec![secret]);
        let _hooks =
            nimbus_webhook::Webhooks::start(vec![endpoint], &metrics.webhook).expect("webhooks");
        let mut lines: Vec<String> = metrics
            .encode()
            .lines()
            .map(|l| match l.starts_with('#') {
                true => l.to_string(),
                false => l
                    .rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_string(),
            })
            .collect();
        lines.sort();
        lines
    }

    /// The exposition pinned when the metrics moved to their subsystems (also read by
    /// `tests/metrics_names.rs`, against a running server).
    const PINNED: &str = include_str!("../tests/data/metrics_series.txt");

    #[test]
    fn exported_series_stay_the_same() {
        let now = exposition();
        let types: Vec<&String> = now.iter().filter(|l| l.starts_with("# TYPE")).collect();
        let pinned: Vec<&str> = PINNED.lines().filter(|l| !l.is_empty()).collect();
        let pinned_types: Vec<&str> = pinned
            .iter()
            .copied()
            .filter(|l| l.starts_with("# TYPE"))
            .collect();
        assert_eq!(types, pinned_types, "# TYPE lines:\n{}", now.join("\n"));
        assert_eq!(now, pinned, "exposition:\n{}", now.join("\n"));
    }
}
