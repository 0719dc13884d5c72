//! The store's metrics (`nimbus_store_*`): refused writes, counted where a change is
//! refused, and the store's state, read from the store itself at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{StoreStatus, StoreView};

type Labels = Vec<(&'static str, &'static str)>;

/// The store's metrics, registered under `nimbus_store_`: the refused writes here, the
/// state (`healthy`, `write_failing`, `pending_ops`, `commit_failures`, `load_failures`,
/// `compactions_running`) read from the store's own counters when `/metrics` is encoded
/// (`Metrics::register_store`).
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    refused: Family<Labels, Counter>,
}

impl StoreMetrics {
    /// Create the refused-writes counter and register it in `registry` (prefix `store`).
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics::default();
        registry.sub_registry_with_prefix("store").register(
            "refused_writes",
            "Changes refused because the store could not write, by wire",
            m.refused.clone(),
        );
        m
    }

    /// Register the store's state, read from `store` at each scrape (prefix `store`).
    pub fn register_store(registry: &mut Registry, store: StoreView) {
        registry
            .sub_registry_with_prefix("store")
            .register_collector(Box::new(StoreState(store)));
    }

    /// Count a change refused because the store cannot write (`wire`: `cloud`, `doc`, `api`).
    pub fn refused(&self, wire: &'static str) {
        self.refused.get_or_create(&vec![("wire", wire)]).inc();
    }
}

/// The store's state as gauges and counters, read from its health and document
/// statistics at each scrape. (A collector's help text is written as is: the full stop
/// `Registry::register` adds is part of it.)
#[derive(Debug)]
struct StoreState(StoreView);

impl Collector for StoreState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let health = self.0.health();
        let ok = matches!(health.status(), StoreStatus::Ok);
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let gauges = [
            (
                "healthy",
                "1 while the store commits and loads, else 0.",
                ConstGauge::new(i64::from(ok)),
            ),
            (
                "write_failing",
                "1 while store commits fail and new changes are refused.",
                ConstGauge::new(i64::from(!health.can_write())),
            ),
            (
                "pending_ops",
                "Accepted changes not committed yet.",
                gauge(health.pending_ops() as u64),
            ),
            (
                "compactions_running",
                "Document compactions running off the writer thread.",
                gauge(self.0.doc_stats().running.load(Relaxed)),
            ),
        ];
        for (name, help, metric) in gauges {
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let counters = [
            (
                "commit_failures",
                "Store commits that failed (each retry counts).",
                health.commit_failures(),
            ),
            (
                "load_failures",
                "Store loads that failed.",
                health.load_failures(),
            ),
        ];
        for (name, help, n) in counters {
            ConstCounter::new(n).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}
