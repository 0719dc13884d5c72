//! `/metrics` of a running server: every series the server exports, whoever owns it
//! (cloud, doc, gateway, Redis backplane, store, edge, webhooks), is there with its type. The names
//! and types are pinned: dashboards depend on them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, TestServer};

/// The exposition pinned when the metrics moved to their subsystems (its `# TYPE` lines
/// are what matters here; `metrics::tests` checks the rest).
const PINNED: &str = include_str!("data/metrics_series.txt");

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
        // Labelled by endpoint: only with a configured webhook receiver.
        "nimbus_webhook_delivered_events",
        "nimbus_webhook_delivered_requests",
        "nimbus_webhook_delivery_latency_seconds",
        "nimbus_webhook_dropped_events",
        "nimbus_webhook_queue_bytes",
        "nimbus_webhook_queue_events",
        "nimbus_webhook_retried_requests",
    ];
    let all: Vec<&str> = PINNED.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let pinned: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| !empty.iter().any(|e| l.split(' ').nth(2) == Some(*e)))
        .collect();
    assert_eq!(all.len(), 57);
    assert_eq!(pinned.len(), all.len() - empty.len());
    assert_eq!(types, pinned, "{text}");
    srv.stop().await;
}
