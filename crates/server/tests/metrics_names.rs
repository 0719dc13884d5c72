//! `/metrics` of a running server: every series the server exports, whoever owns it
//! (cloud, doc, gateway, Redis backplane, store, edge), is there with its type. The names
//! and types are pinned: dashboards depend on them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, TestServer};

/// The `# TYPE` lines of `/metrics` before the metrics moved to their subsystems, sorted.
const TYPES: &str = "
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
";

#[tokio::test]
async fn metrics_exports_every_series_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let (status, text) = srv.http_get("/metrics").await;
    assert_eq!(status, 200);
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    types.sort();
    // A labelled family shows once its first label value is counted (prometheus-client
    // leaves out empty families); a fresh server has counted none of these.
    let empty = [
        "nimbus_cloud_closes",
        "nimbus_cloud_dropped_sets",
        "nimbus_doc_closes",
        "nimbus_doc_refused",
        "nimbus_edge_refused",
        "nimbus_edge_violations",
        "nimbus_gateway_closes",
        "nimbus_store_refused_writes",
    ];
    let pinned: Vec<&str> = TYPES
        .lines()
        .filter(|l| !l.is_empty())
        .filter(|l| !empty.iter().any(|e| l.split(' ').nth(2) == Some(*e)))
        .collect();
    assert_eq!(
        pinned.len(),
        TYPES.lines().filter(|l| !l.is_empty()).count() - empty.len()
    );
    assert_eq!(types, pinned, "{text}");
    srv.stop().await;
}
