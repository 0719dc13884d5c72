//! The cloud subsystem's metrics (`nimbus_cloud_*`): connections, rooms, messages,
//! deliveries, send queues.

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

/// The cloud connections' and rooms' metrics, registered under `nimbus_cloud_`.
#[derive(Debug)]
pub struct CloudMetrics {
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
    /// Frames the rooms wrote to idle connections' sockets themselves (a fan-out's line, or
    /// the lines held for a busy connection's budget), instead of waking the connection.
    pub direct_writes: Counter,
    /// Peers dropped because they missed a keepalive ping.
    pub keepalive_timeouts: Counter,
    /// Bytes queued in cloud clients' send queues (all connections).
    pub outbox_bytes: Gauge,
}

impl CloudMetrics {
    /// Create every metric and register it in `registry` (under the prefix `cloud`).
    pub fn register(registry: &mut Registry) -> CloudMetrics {
        let messages: Family<Labels, Counter> = Family::default();
        let m = |name: &'static str| messages.get_or_create(&vec![("method", name)]).clone();
        let counters = MethodCounters {
            handshake: m("handshake"),
            set: m("set"),
            create: m("create"),
            rename: m("rename"),
            delete: m("delete"),
            other: m("other"),
        };
        let c = CloudMetrics {
            clients: Gauge::default(),
            rooms: Gauge::default(),
            messages: counters,
            closes: Family::default(),
            dropped: Family::default(),
            slow_consumers: Counter::default(),
            malformed_lines: Counter::default(),
            deliveries: Counter::default(),
            coalesced: Counter::default(),
            direct_writes: Counter::default(),
            keepalive_timeouts: Counter::default(),
            outbox_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("cloud");
        r.register("clients", "Connected cloud clients", c.clients.clone());
        r.register("rooms", "Loaded cloud rooms", c.rooms.clone());
        r.register("messages", "Incoming cloud messages by method", messages);
        r.register(
            "closes",
            "Connections closed by the server, by close code",
            c.closes.clone(),
        );
        r.register("dropped_sets", "Sets dropped, by reason", c.dropped.clone());
        r.register(
            "slow_consumers",
            "Connections cut because their send queue stayed full",
            c.slow_consumers.clone(),
        );
        r.register(
            "malformed_lines",
            "Lines after the handshake that were not protocol messages",
            c.malformed_lines.clone(),
        );
        r.register(
            "deliveries",
            "Messages queued to receivers",
            c.deliveries.clone(),
        );
        r.register(
            "coalesced",
            "Queued values replaced by a newer value of the same variable",
            c.coalesced.clone(),
        );
        r.register(
            "direct_writes",
            "Frames rooms wrote to idle connections' sockets themselves",
            c.direct_writes.clone(),
        );
        r.register(
            "keepalive_timeouts",
            "Peers dropped for missing a keepalive ping",
            c.keepalive_timeouts.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes queued in cloud clients' send queues",
            c.outbox_bytes.clone(),
        );
        c
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
}
