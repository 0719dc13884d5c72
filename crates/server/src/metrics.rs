//! Prometheus metrics, served at `/metrics`: the registry (prefix `nimbus`) and its text.
//!
//! Each subsystem owns its metrics, next to its code, and registers them under its
//! prefix; [`Metrics`] only builds them into one registry and encodes it:
//!
//! | field | type | series |
//! | --- | --- | --- |
//! | `cloud` | [`CloudMetrics`] (`cloud/metrics.rs`) | `nimbus_cloud_*` |
//! | `doc` | [`DocMetrics`] (`doc/metrics.rs`) | `nimbus_doc_*` |
//! | `gateway` | [`GatewayMetrics`] (`gateway/metrics.rs`) | `nimbus_gateway_*` |
//! | `backplane` | [`BackplaneMetrics`] (`backplane/metrics.rs`) | `nimbus_redis_*` |
//! | `store` | [`StoreMetrics`] (`store/metrics.rs`) | `nimbus_store_*` |
//! | `edge` | [`EdgeMetrics`] (`edge/mod.rs`) | `nimbus_edge_*` |

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::backplane::metrics::BackplaneMetrics;
use crate::cloud::metrics::CloudMetrics;
use crate::doc::metrics::DocMetrics;
use crate::edge::EdgeMetrics;
use crate::gateway::metrics::GatewayMetrics;
use crate::store::metrics::StoreMetrics;

/// Every subsystem's metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Cloud connections and rooms (`nimbus_cloud_*`).
    pub cloud: CloudMetrics,
    /// Document rooms (`nimbus_doc_*`).
    pub doc: DocMetrics,
    /// The gateway (`nimbus_gateway_*`).
    pub gateway: GatewayMetrics,
    /// The Redis backplane (`nimbus_redis_*`).
    pub backplane: BackplaneMetrics,
    /// The store's state (`nimbus_store_*`).
    pub store: StoreMetrics,
    /// The edge (`nimbus_edge_*`).
    pub edge: Arc<EdgeMetrics>,
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
        let gateway = GatewayMetrics::register(&mut registry);
        let cloud = CloudMetrics::register(&mut registry);
        let doc = DocMetrics::register(&mut registry);
        let backplane = BackplaneMetrics::register(&mut registry);
        let store = StoreMetrics::register(&mut registry);
        let edge = Arc::new(EdgeMetrics::default());
        edge.register(&mut registry);
        Metrics {
            registry,
            cloud,
            doc,
            gateway,
            backplane,
            store,
            edge,
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

    /// The series as they were before the metrics moved to their subsystems (dashboards
    /// and tests depend on every name, type, label and help text).
    const PINNED: &str = r#"# EOF
# HELP nimbus_cloud_clients Connected cloud clients.
# HELP nimbus_cloud_closes Connections closed by the server, by close code.
# HELP nimbus_cloud_coalesced Queued values replaced by a newer value of the same variable.
# HELP nimbus_cloud_deliveries Messages queued to receivers.
# HELP nimbus_cloud_dropped_sets Sets dropped, by reason.
# HELP nimbus_cloud_keepalive_timeouts Peers dropped for missing a keepalive ping.
# HELP nimbus_cloud_malformed_lines Lines after the handshake that were not protocol messages.
# HELP nimbus_cloud_messages Incoming cloud messages by method.
# HELP nimbus_cloud_outbox_bytes Bytes queued in cloud clients' send queues.
# HELP nimbus_cloud_rooms Loaded cloud rooms.
# HELP nimbus_cloud_slow_consumers Connections cut because their send queue stayed full.
# HELP nimbus_doc_bounds What the document rooms' per-connection bounds did, by bound
# HELP nimbus_doc_clients Connected document clients.
# HELP nimbus_doc_closes Document connections closed by the server, by close code.
# HELP nimbus_doc_compactions Document log compactions run by the store.
# HELP nimbus_doc_corrupt_records Stored document records skipped on load because they did not decode.
# HELP nimbus_doc_refused Document updates or connections refused, by reason.
# HELP nimbus_doc_rooms Loaded document rooms.
# HELP nimbus_doc_update_bytes Bytes of applied document updates.
# HELP nimbus_doc_updates Document updates applied.
# HELP nimbus_edge_accept_errors Failed accept calls (e.g. out of file descriptors).
# HELP nimbus_edge_connections Open TCP connections admitted by the listener.
# HELP nimbus_edge_rate_limited Client writes dropped by the per-connection rate limit.
# HELP nimbus_edge_refused Connections refused before the upgrade, by reason.
# HELP nimbus_edge_violations Connections closed by an edge bound, by bound.
# HELP nimbus_edge_write_timeouts Connections cut because a write made no progress in time.
# HELP nimbus_gateway_closes Gateway connections closed by the server, by close code.
# HELP nimbus_gateway_connections Open gateway connections.
# HELP nimbus_gateway_dispatches Dispatches appended to gateway sessions.
# HELP nimbus_gateway_heartbeat_timeouts Gateway connections closed for missing heartbeats.
# HELP nimbus_gateway_invalid_sessions Invalid Session (op 9) payloads sent.
# HELP nimbus_gateway_resumes Successful gateway resumes.
# HELP nimbus_gateway_sessions Gateway sessions, attached or resumable.
# HELP nimbus_redis_events Changes received on the backplane subscription.
# HELP nimbus_redis_lag_ms Age in ms of the last backplane change applied (origin clock).
# HELP nimbus_redis_resyncs Room catch-ups from the Redis stream or state.
# HELP nimbus_redis_subscriptions Successful subscriptions to the backplane.
# HELP nimbus_redis_up 1 while the Redis backplane is reachable.
# HELP nimbus_redis_write_failures Cloud changes not written because Redis was unreachable.
# HELP nimbus_redis_writes Cloud changes Redis accepted from this node.
# HELP nimbus_store_commit_failures Store commits that failed (each retry counts).
# HELP nimbus_store_compactions_running Document compactions running off the writer thread.
# HELP nimbus_store_healthy 1 while the store commits and loads, else 0.
# HELP nimbus_store_load_failures Store loads that failed.
# HELP nimbus_store_pending_ops Accepted changes not committed yet.
# HELP nimbus_store_refused_writes Changes refused because the store could not write, by wire.
# HELP nimbus_store_write_failing 1 while store commits fail and new changes are refused.
# TYPE nimbus_cloud_clients gauge
# TYPE nimbus_cloud_closes counter
# TYPE nimbus_cloud_coalesced counter
# TYPE nimbus_cloud_deliveries counter
# TYPE nimbus_cloud_dropped_sets counter
# TYPE nimbus_cloud_keepalive_timeouts counter
# TYPE nimbus_cloud_malformed_lines counter
# TYPE nimbus_cloud_messages counter
# TYPE nimbus_cloud_outbox_bytes gauge
# TYPE nimbus_cloud_rooms gauge
# TYPE nimbus_cloud_slow_consumers counter
# TYPE nimbus_doc_bounds counter
# TYPE nimbus_doc_clients gauge
# TYPE nimbus_doc_closes counter
# TYPE nimbus_doc_compactions counter
# TYPE nimbus_doc_corrupt_records counter
# TYPE nimbus_doc_refused counter
# TYPE nimbus_doc_rooms gauge
# TYPE nimbus_doc_update_bytes counter
# TYPE nimbus_doc_updates counter
# TYPE nimbus_edge_accept_errors counter
# TYPE nimbus_edge_connections gauge
# TYPE nimbus_edge_rate_limited counter
# TYPE nimbus_edge_refused counter
# TYPE nimbus_edge_violations counter
# TYPE nimbus_edge_write_timeouts counter
# TYPE nimbus_gateway_closes counter
# TYPE nimbus_gateway_connections gauge
# TYPE nimbus_gateway_dispatches counter
# TYPE nimbus_gateway_heartbeat_timeouts counter
# TYPE nimbus_gateway_invalid_sessions counter
# TYPE nimbus_gateway_resumes counter
# TYPE nimbus_gateway_sessions gauge
# TYPE nimbus_redis_events counter
# TYPE nimbus_redis_lag_ms gauge
# TYPE nimbus_redis_resyncs counter
# TYPE nimbus_redis_subscriptions counter
# TYPE nimbus_redis_up gauge
# TYPE nimbus_redis_write_failures counter
# TYPE nimbus_redis_writes counter
# TYPE nimbus_store_commit_failures counter
# TYPE nimbus_store_compactions_running gauge
# TYPE nimbus_store_healthy gauge
# TYPE nimbus_store_load_failures counter
# TYPE nimbus_store_pending_ops gauge
# TYPE nimbus_store_refused_writes counter
# TYPE nimbus_store_write_failing gauge
nimbus_cloud_clients
nimbus_cloud_closes_total{code="4000"}
nimbus_cloud_coalesced_total
nimbus_cloud_deliveries_total
nimbus_cloud_dropped_sets_total{reason="invalid_name"}
nimbus_cloud_keepalive_timeouts_total
nimbus_cloud_malformed_lines_total
nimbus_cloud_messages_total{method="create"}
nimbus_cloud_messages_total{method="delete"}
nimbus_cloud_messages_total{method="handshake"}
nimbus_cloud_messages_total{method="other"}
nimbus_cloud_messages_total{method="rename"}
nimbus_cloud_messages_total{method="set"}
nimbus_cloud_outbox_bytes
nimbus_cloud_rooms
nimbus_cloud_slow_consumers_total
nimbus_doc_bounds_total{bound="awareness_abuse_closes"}
nimbus_doc_bounds_total{bound="awareness_invalid_json"}
nimbus_doc_bounds_total{bound="awareness_room_full"}
nimbus_doc_bounds_total{bound="awareness_state_too_big"}
nimbus_doc_bounds_total{bound="awareness_throttled"}
nimbus_doc_bounds_total{bound="awareness_too_many_ids"}
nimbus_doc_bounds_total{bound="rate_closes"}
nimbus_doc_bounds_total{bound="slow_queue_bytes"}
nimbus_doc_bounds_total{bound="slow_queue_frames"}
nimbus_doc_bounds_total{bound="slow_send_timeout"}
nimbus_doc_bounds_total{bound="updates_throttled"}
nimbus_doc_clients
nimbus_doc_closes_total{code="1008"}
nimbus_doc_compactions_total
nimbus_doc_corrupt_records_total
nimbus_doc_refused_total{reason="unauthorized"}
nimbus_doc_rooms
nimbus_doc_update_bytes_total
nimbus_doc_updates_total
nimbus_edge_accept_errors_total
nimbus_edge_connections
nimbus_edge_rate_limited_total
nimbus_edge_refused_total{reason="too_many_connections"}
nimbus_edge_violations_total{bound="ping_flood"}
nimbus_edge_write_timeouts_total
nimbus_gateway_closes_total{code="4004"}
nimbus_gateway_connections
nimbus_gateway_dispatches_total
nimbus_gateway_heartbeat_timeouts_total
nimbus_gateway_invalid_sessions_total
nimbus_gateway_resumes_total
nimbus_gateway_sessions
nimbus_redis_events_total
nimbus_redis_lag_ms
nimbus_redis_resyncs_total
nimbus_redis_subscriptions_total
nimbus_redis_up
nimbus_redis_write_failures_total
nimbus_redis_writes_total
nimbus_store_commit_failures_total
nimbus_store_compactions_running
nimbus_store_healthy
nimbus_store_load_failures_total
nimbus_store_pending_ops
nimbus_store_refused_writes_total{wire="cloud"}
nimbus_store_write_failing"#;

    #[test]
    fn exported_series_stay_the_same() {
        let now = exposition();
        let types: Vec<&String> = now.iter().filter(|l| l.starts_with("# TYPE")).collect();
        let pinned: Vec<&str> = PINNED.lines().collect();
        let pinned_types: Vec<&str> = pinned
            .iter()
            .copied()
            .filter(|l| l.starts_with("# TYPE"))
            .collect();
        assert_eq!(types, pinned_types, "# TYPE lines:\n{}", now.join("\n"));
        assert_eq!(now, pinned, "exposition:\n{}", now.join("\n"));
    }
}
