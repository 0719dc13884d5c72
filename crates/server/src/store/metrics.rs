//! The store's metrics (`nimbus_store_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

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
    /// Create every metric and register it in `registry` (under the prefix `store`).
    pub(crate) fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics::default();
        let registry = registry.sub_registry_with_prefix("store");
        registry.register(
            "healthy",
            "1 while the store commits and loads, else 0",
            m.healthy.clone(),
        );
        registry.register(
            "write_failing",
            "1 while store commits fail and new changes are refused",
            m.write_failing.clone(),
        );
        registry.register(
            "pending_ops",
            "Accepted changes not committed yet",
            m.pending_ops.clone(),
        );
        registry.register(
            "commit_failures",
            "Store commits that failed (each retry counts)",
            m.commit_failures.clone(),
        );
        registry.register(
            "load_failures",
            "Store loads that failed",
            m.load_failures.clone(),
        );
        registry.register(
            "compactions_running",
            "Document compactions running off the writer thread",
            m.compactions_running.clone(),
        );
        registry.register(
            "refused_writes",
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
    pub fn refresh(&self, health: &super::StoreHealth, running: u64) {
        let status = health.status();
        let ok = matches!(status, super::StoreStatus::Ok);
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
