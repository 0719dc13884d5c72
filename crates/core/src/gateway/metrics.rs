//! The gateway's metrics (`nimbus_gateway_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The gateway's connections and sessions, registered under `nimbus_gateway_`.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Open gateway connections.
    pub connections: Gauge,
    /// Gateway sessions (attached or resumable).
    pub sessions: Gauge,
    /// Dispatches appended to gateway sessions (one per session).
    pub dispatches: Counter,
    /// Successful gateway Resumes.
    pub resumes: Counter,
    /// Op 9 (invalid session) sent.
    pub invalid_sessions: Counter,
    /// Gateway connections closed for missing heartbeats.
    pub heartbeat_timeouts: Counter,
    closes: Family<Labels, Counter>,
}

impl GatewayMetrics {
    /// Create every metric and register it in `registry` (under the prefix `gateway`).
    pub fn register(registry: &mut Registry) -> GatewayMetrics {
        let g = GatewayMetrics::default();
        let r = registry.sub_registry_with_prefix("gateway");
        r.register(
            "connections",
            "Open gateway connections",
            g.connections.clone(),
        );
        r.register(
            "sessions",
            "Gateway sessions, attached or resumable",
            g.sessions.clone(),
        );
        r.register(
            "dispatches",
            "Dispatches appended to gateway sessions",
            g.dispatches.clone(),
        );
        r.register("resumes", "Successful gateway resumes", g.resumes.clone());
        r.register(
            "invalid_sessions",
            "Invalid Session (op 9) payloads sent",
            g.invalid_sessions.clone(),
        );
        r.register(
            "heartbeat_timeouts",
            "Gateway connections closed for missing heartbeats",
            g.heartbeat_timeouts.clone(),
        );
        r.register(
            "closes",
            "Gateway connections closed by the server, by close code",
            g.closes.clone(),
        );
        g
    }

    /// Count a gateway close sent by the server (4000-4014).
    pub fn close(&self, code: u16) {
        const LABELS: [&str; 15] = [
            "4000", "4001", "4002", "4003", "4004", "4005", "4006", "4007", "4008", "4009", "4010",
            "4011", "4012", "4013", "4014",
        ];
        let label = code
            .checked_sub(4000)
            .and_then(|i| LABELS.get(usize::from(i)))
            .copied()
            .unwrap_or("other");
        self.closes.get_or_create(&vec![("code", label)]).inc();
    }
}
