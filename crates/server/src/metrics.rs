//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Counters per cloud method, resolved once so the hot path only increments.
#[derive(Debug, Clone)]
pub struct MethodCounters {
    /// `handshake` messages.
    pub handshake: Counter,
    /// `set` messages.
    pub set: Counter,
    /// `create` messages.
    pub create: Counter,
    /// `rename` messages.
    pub rename: Counter,
    /// `delete` messages.
    pub delete: Counter,
    /// Any other method.
    pub other: Counter,
}

/// All server metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The edge's own metrics (`nimbus_edge_*`).
    pub edge: std::sync::Arc<crate::edge::EdgeMetrics>,
    /// Bytes queued in cloud clients' send queues (all connections).
    pub outbox_bytes: Gauge,
    /// Connected cloud clients (after the WebSocket upgrade).
    pub clients: Gauge,
    /// Loaded rooms.
    pub rooms: Gauge,
    /// Incoming messages by method.
    pub messages: MethodCounters,
    closes: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    /// Connections cut because their send queue stayed full.
    pub slow_consumers: Counter,
    /// Lines after the handshake that were not protocol messages.
    pub malformed_lines: Counter,
    /// Messages queued to receivers (one per receiver).
    pub deliveries: Counter,
    /// Queued values replaced by a newer value of the same variable.
    pub coalesced: Counter,
    /// Peers dropped because they missed a keepalive ping.
    pub keepalive_timeouts: Counter,
    /// Connected document clients.
    pub doc_clients: Gauge,
    /// Loaded document rooms.
    pub doc_rooms: Gauge,
    /// Document updates applied (from clients or the server).
    pub doc_updates: Counter,
    /// Bytes of applied document updates.
    pub doc_update_bytes: Counter,
    /// Stored document records skipped on load because they did not decode.
    pub doc_corrupt_records: Counter,
    /// Document log compactions run by the store.
    pub doc_compactions: Counter,
    doc_refused: Family<Labels, Counter>,
    doc_closes: Family<Labels, Counter>,
    /// Open gateway connections.
    pub gateway_connections: Gauge,
    /// Gateway sessions (attached or resumable).
    pub gateway_sessions: Gauge,
    /// Dispatches appended to gateway sessions (one per session).
    pub gateway_dispatches: Counter,
    /// Successful gateway Resumes.
    pub gateway_resumes: Counter,
    /// Op 9 (invalid session) sent.
    pub gateway_invalid_sessions: Counter,
    /// Gateway connections closed for missing heartbeats.
    pub gateway_heartbeat_timeouts: Counter,
    gateway_closes: Family<Labels, Counter>,
    /// 1 while this node reaches its Redis backplane (`--redis`), else 0.
    pub redis_up: Gauge,
    /// Cloud changes Redis accepted from this node.
    pub redis_writes: Counter,
    /// Cloud changes that could not be written (Redis unreachable; sender closed with 1011).
    pub redis_write_failures: Counter,
    /// Changes received on the backplane subscription (every room, every node).
    pub redis_events: Counter,
    /// Successful (re)subscriptions to the backplane.
    pub redis_subscriptions: Counter,
    /// Room catch-ups from the stream or the state hash (gaps, resubscriptions).
    pub redis_resyncs: Counter,
    /// Age of the last change a room applied, origin clock to here, in ms.
    pub redis_lag_ms: Gauge,
    /// The store's state (see [`StoreMetrics`]).
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nimbus");
        let clients = Gauge::default();
        let rooms = Gauge::default();
        let messages: Family<Labels, Counter> = Family::default();
        let closes: Family<Labels, Counter> = Family::default();
        let dropped: Family<Labels, Counter> = Family::default();
        let slow_consumers = Counter::default();
        let malformed_lines = Counter::default();
        let deliveries = Counter::default();
        let coalesced = Counter::default();
        let keepalive_timeouts = Counter::default();
        let gateway_connections = Gauge::default();
        let gateway_sessions = Gauge::default();
        let gateway_dispatches = Counter::default();
        let gateway_resumes = Counter::default();
        let gateway_invalid_sessions = Counter::default();
        let gateway_heartbeat_timeouts = Counter::default();
        let gateway_closes: Family<Labels, Counter> = Family::default();
        registry.register(
            "gateway_connections",
            "Open gateway connections",
            gateway_connections.clone(),
        );
        registry.register(
            "gateway_sessions",
            "Gateway sessions, attached or resumable",
            gateway_sessions.clone(),
        );
        registry.register(
            "gateway_dispatches",
            "Dispatches appended to gateway sessions",
            gateway_dispatches.clone(),
        );
        registry.register(
            "gateway_resumes",
            "Successful gateway resumes",
            gateway_resumes.clone(),
        );
        registry.register(
            "gateway_invalid_sessions",
            "Invalid Session (op 9) payloads sent",
            gateway_invalid_sessions.clone(),
        );
        registry.register(
            "gateway_heartbeat_timeouts",
            "Gateway connections closed for missing heartbeats",
            gateway_heartbeat_timeouts.clone(),
        );
        registry.register(
            "gateway_closes",
            "Gateway connections closed by the server, by close code",
            gateway_closes.clone(),
        );
        registry.register("cloud_clients", "Connected cloud clients", clients.clone());
        registry.register("cloud_rooms", "Loaded cloud rooms", rooms.clone());
        registry.register(
            "cloud_messages",
            "Incoming cloud messages by method",
            messages.clone(),
        );
        registry.register(
            "cloud_closes",
            "Connections closed by the server, by close code",
            closes.clone(),
        );
        registry.register(
            "cloud_dropped_sets",
            "Sets dropped, by reason",
            dropped.clone(),
        );
        registry.register(
            "cloud_slow_consumers",
            "Connections cut because their send queue stayed full",
            slow_consumers.clone(),
        );
        registry.register(
            "cloud_malformed_lines",
            "Lines after the handshake that were not protocol messages",
            malformed_lines.clone(),
        );
        registry.register(
            "cloud_deliveries",
            "Messages queued to receivers",
            deliveries.clone(),
        );
        registry.register(
            "cloud_coalesced",
            "Queued values replaced by a newer value of the same variable",
            coalesced.clone(),
        );
        registry.register(
            "cloud_keepalive_timeouts",
            "Peers dropped for missing a keepalive ping",
            keepalive_timeouts.clone(),
        );
        let doc_clients = Gauge::default();
        let doc_rooms = Gauge::default();
        let doc_updates = Counter::default();
        let doc_update_bytes = Counter::default();
        let doc_corrupt_records = Counter::default();
        let doc_compactions = Counter::default();
        let doc_refused: Family<Labels, Counter> = Family::default();
        let doc_closes: Family<Labels, Counter> = Family::default();
        registry.register(
            "doc_clients",
            "Connected document clients",
            doc_clients.clone(),
        );
        registry.register("doc_rooms", "Loaded document rooms", doc_rooms.clone());
        registry.register(
            "doc_updates",
            "Document updates applied",
            doc_updates.clone(),
        );
        registry.register(
            "doc_update_bytes",
            "Bytes of applied document updates",
            doc_update_bytes.clone(),
        );
        registry.register(
            "doc_corrupt_records",
            "Stored document records skipped on load because they did not decode",
            doc_corrupt_records.clone(),
        );
        registry.register(
            "doc_compactions",
            "Document log compactions run by the store",
            doc_compactions.clone(),
        );
        registry.register(
            "doc_refused",
            "Document updates or connections refused, by reason",
            doc_refused.clone(),
        );
        registry.register(
            "doc_closes",
            "Document connections closed by the server, by close code",
            doc_closes.clone(),
        );
        let redis_up = Gauge::default();
        let redis_writes = Counter::default();
        let redis_write_failures = Counter::default();
        let redis_events = Counter::default();
        let redis_subscriptions = Counter::default();
        let redis_resyncs = Counter::default();
        let redis_lag_ms = Gauge::default();
        registry.register(
            "redis_up",
            "1 while the Redis backplane is reachable",
            redis_up.clone(),
        );
        registry.register(
            "redis_writes",
            "Cloud changes Redis accepted from this node",
            redis_writes.clone(),
        );
        registry.register(
            "redis_write_failures",
            "Cloud changes not written because Redis was unreachable",
            redis_write_failures.clone(),
        );
        registry.register(
            "redis_events",
            "Changes received on the backplane subscription",
            redis_events.clone(),
        );
        registry.register(
            "redis_subscriptions",
            "Successful subscriptions to the backplane",
            redis_subscriptions.clone(),
        );
        registry.register(
            "redis_resyncs",
            "Room catch-ups from the Redis stream or state",
            redis_resyncs.clone(),
        );
        registry.register(
            "redis_lag_ms",
            "Age in ms of the last backplane change applied (origin clock)",
            redis_lag_ms.clone(),
        );
        let store = StoreMetrics::register(&mut registry);
        let m = |name: &'static str| messages.get_or_create(&vec![("method", name)]).clone();
        let counters = MethodCounters {
            handshake: m("handshake"),
            set: m("set"),
            create: m("create"),
            rename: m("rename"),
            delete: m("delete"),
            other: m("other"),
        };
        let edge = std::sync::Arc::new(crate::edge::EdgeMetrics::default());
        edge.register(&mut registry);
        let outbox_bytes = Gauge::default();
        registry.register(
            "cloud_outbox_bytes",
            "Bytes queued in cloud clients' send queues",
            outbox_bytes.clone(),
        );
        Metrics {
            registry,
            edge,
            outbox_bytes,
            clients,
            rooms,
            messages: counters,
            closes,
            dropped,
            slow_consumers,
            malformed_lines,
            deliveries,
            coalesced,
            keepalive_timeouts,
            doc_clients,
            doc_rooms,
            doc_updates,
            doc_update_bytes,
            doc_corrupt_records,
            doc_compactions,
            doc_refused,
            doc_closes,
            gateway_connections,
            gateway_sessions,
            gateway_dispatches,
            gateway_resumes,
            gateway_invalid_sessions,
            gateway_heartbeat_timeouts,
            gateway_closes,
            redis_up,
            redis_writes,
            redis_write_failures,
            redis_events,
            redis_subscriptions,
            redis_resyncs,
            redis_lag_ms,
            store,
        }
    }

    /// Count a refused document update or connection (`reason`: a stable label).
    pub fn doc_refused(&self, reason: &'static str) {
        self.doc_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Count a document connection closed by the server with `code`.
    pub fn doc_close(&self, code: u16) {
        let label: &'static str = match code {
            1001 => "1001",
            1003 => "1003",
            1007 => "1007",
            1008 => "1008",
            1009 => "1009",
            1011 => "1011",
            _ => "other",
        };
        self.doc_closes.get_or_create(&vec![("code", label)]).inc();
    }

    /// Count a gateway close sent by the server (4000-4014).
    pub fn gateway_close(&self, code: u16) {
        const LABELS: [&str; 15] = [
            "4000", "4001", "4002", "4003", "4004", "4005", "4006", "4007", "4008", "4009", "4010",
            "4011", "4012", "4013", "4014",
        ];
        let label = code
            .checked_sub(4000)
            .and_then(|i| LABELS.get(usize::from(i)))
            .copied()
            .unwrap_or("other");
        self.gateway_closes
            .get_or_create(&vec![("code", label)])
            .inc();
    }

    /// Count a close sent by the server (`code`: the numeric code as text label, e.g. `4000`).
    pub fn close(&self, code: u16) {
        let label: &'static str = match code {
            1001 => "1001",
            1008 => "1008",
            1009 => "1009",
            1011 => "1011",
            4000 => "4000",
            4002 => "4002",
            4003 => "4003",
            4004 => "4004",
            4005 => "4005",
            4006 => "4006",
            _ => "other",
        };
        self.closes.get_or_create(&vec![("code", label)]).inc();
    }

    /// Count a dropped set (`reason`: a stable label such as `invalid_name`).
    pub fn dropped_set(&self, reason: &'static str) {
        self.dropped.get_or_create(&vec![("reason", reason)]).inc();
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

/// The store's state on `/metrics` (`nimbus_store_*`), brought up to date from the store's
/// own counters before each scrape.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// 1 while commits work and the last load worked, else 0.
    pub healthy: Gauge,
    /// 1 while commits fail (changes are refused), else 0.
    pub write_failing: Gauge,
    /// Accepted changes not committed yet (kept for a retry after a failure).
    pub pending_ops: Gauge,
    /// Commits that failed (each retry counts).
    pub commit_failures: Counter,
    /// Loads that failed.
    pub load_failures: Counter,
    /// Document compactions running on the compaction thread.
    pub compactions_running: Gauge,
    refused: Family<Labels, Counter>,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics::default();
        registry.register(
            "store_healthy",
            "1 while the store commits and loads, else 0",
            m.healthy.clone(),
        );
        registry.register(
            "store_write_failing",
            "1 while store commits fail and new changes are refused",
            m.write_failing.clone(),
        );
        registry.register(
            "store_pending_ops",
            "Accepted changes not committed yet",
            m.pending_ops.clone(),
        );
        registry.register(
            "store_commit_failures",
            "Store commits that failed (each retry counts)",
            m.commit_failures.clone(),
        );
        registry.register(
            "store_load_failures",
            "Store loads that failed",
            m.load_failures.clone(),
        );
        registry.register(
            "store_compactions_running",
            "Document compactions running off the writer thread",
            m.compactions_running.clone(),
        );
        registry.register(
            "store_refused_writes",
            "Changes refused because the store could not write, by wire",
            m.refused.clone(),
        );
        m
    }

    /// Count a change refused because the store cannot write (`wire`: `cloud`, `doc`, `api`).
    pub fn refused(&self, wire: &'static str) {
        self.refused.get_or_create(&vec![("wire", wire)]).inc();
    }

    /// Copy the store's health into the gauges and counters.
    pub fn refresh(&self, health: &crate::store::StoreHealth, running: u64) {
        let status = health.status();
        let ok = matches!(status, crate::store::StoreStatus::Ok);
        self.healthy.set(i64::from(ok));
        self.write_failing.set(i64::from(!health.can_write()));
        self.pending_ops
            .set(i64::try_from(health.pending_ops()).unwrap_or(i64::MAX));
        self.compactions_running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        for (counter, total) in [
            (&self.commit_failures, health.commit_failures()),
            (&self.load_failures, health.load_failures()),
        ] {
            let counted = counter.get();
            if total > counted {
                counter.inc_by(total - counted);
            }
        }
    }
}

/// `nimbus_doc_bounds_total{bound}`: what the document rooms' per-connection bounds did,
/// read from `nimbus_doc::ServeStats` at each scrape (the doc crate counts without knowing
/// about Prometheus).
#[derive(Debug)]
pub(crate) struct DocBounds(pub std::sync::Arc<nimbus_doc::ServeStats>);

impl prometheus_client::collector::Collector for DocBounds {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0;
        let rows: [(&'static str, u64); 11] = [
            ("slow_queue_bytes", s.slow_queue_bytes.load(Relaxed)),
            ("slow_queue_frames", s.slow_queue_frames.load(Relaxed)),
            ("slow_send_timeout", s.slow_send_timeout.load(Relaxed)),
            ("updates_throttled", s.updates_throttled.load(Relaxed)),
            ("awareness_throttled", s.awareness_throttled.load(Relaxed)),
            ("rate_closes", s.rate_closes.load(Relaxed)),
            (
                "awareness_state_too_big",
                s.awareness_state_too_big.load(Relaxed),
            ),
            (
                "awareness_too_many_ids",
                s.awareness_too_many_ids.load(Relaxed),
            ),
            ("awareness_room_full", s.awareness_room_full.load(Relaxed)),
            (
                "awareness_abuse_closes",
                s.awareness_abuse_closes.load(Relaxed),
            ),
            (
                "awareness_invalid_json",
                s.awareness_invalid_json.load(Relaxed),
            ),
        ];
        let mut family = encoder.encode_descriptor(
            "doc_bounds",
            "What the document rooms' per-connection bounds did, by bound",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (bound, n) in rows {
            let labels = [("bound", bound)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Expose the document rooms' bound counters (`nimbus_doc_bounds_total{bound}`).
    pub(crate) fn register_doc_bounds(&mut self, stats: std::sync::Arc<nimbus_doc::ServeStats>) {
        self.registry.register_collector(Box::new(DocBounds(stats)));
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
        metrics.close(4000);
        metrics.dropped_set("invalid_name");
        metrics.doc_refused("unauthorized");
        metrics.doc_close(1008);
        metrics.gateway_close(4004);
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
