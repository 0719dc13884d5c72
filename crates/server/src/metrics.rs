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
