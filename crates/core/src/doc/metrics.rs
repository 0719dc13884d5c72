//! The document rooms' metrics (`nimbus_doc_*`), with `DocBounds`, the collector of
//! `nimbus_doc::ServeStats`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The document rooms' clients, rooms and updates, registered under `nimbus_doc_`.
#[derive(Debug, Default)]
pub struct DocMetrics {
    /// Connected document clients.
    pub clients: Gauge,
    /// Loaded document rooms.
    pub rooms: Gauge,
    /// Document updates applied (from clients or the server).
    pub updates: Counter,
    /// Bytes of applied document updates.
    pub update_bytes: Counter,
    /// Stored document records skipped on load because they did not decode.
    pub corrupt_records: Counter,
    /// Document log compactions run by the store.
    pub compactions: Counter,
    refused: Family<Labels, Counter>,
    closes: Family<Labels, Counter>,
}

impl DocMetrics {
    /// Create every metric and register it in `registry` (under the prefix `doc`).
    pub fn register(registry: &mut Registry) -> DocMetrics {
        let d = DocMetrics::default();
        let r = registry.sub_registry_with_prefix("doc");
        r.register("clients", "Connected document clients", d.clients.clone());
        r.register("rooms", "Loaded document rooms", d.rooms.clone());
        r.register("updates", "Document updates applied", d.updates.clone());
        r.register(
            "update_bytes",
            "Bytes of applied document updates",
            d.update_bytes.clone(),
        );
        r.register(
            "corrupt_records",
            "Stored document records skipped on load because they did not decode",
            d.corrupt_records.clone(),
        );
        r.register(
            "compactions",
            "Document log compactions run by the store",
            d.compactions.clone(),
        );
        r.register(
            "refused",
            "Document updates or connections refused, by reason",
            d.refused.clone(),
        );
        r.register(
            "closes",
            "Document connections closed by the server, by close code",
            d.closes.clone(),
        );
        d
    }

    /// Register [`DocBounds`] over `stats` (`nimbus_doc_bounds_total{bound}`).
    pub fn register_bounds(registry: &mut Registry, stats: Arc<nimbus_doc::ServeStats>) {
        registry.register_collector(Box::new(DocBounds(stats)));
    }

    /// Count a refused document update or connection (`reason`: a stable label).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Count a document connection closed by the server with `code`.
    pub fn close(&self, code: u16) {
        let label: &'static str = match code {
            1001 => "1001",
            1003 => "1003",
            1007 => "1007",
            1008 => "1008",
            1009 => "1009",
            1011 => "1011",
            _ => "other",
        };
        self.closes.get_or_create(&vec![("code", label)]).inc();
    }
}

/// `nimbus_doc_bounds_total{bound}`: what the document rooms' per-connection bounds did,
/// read from `nimbus_doc::ServeStats` at each scrape (the doc crate counts without knowing
/// about Prometheus).
#[derive(Debug)]
pub struct DocBounds(pub std::sync::Arc<nimbus_doc::ServeStats>);

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
