//! Webhook metrics, registered under `webhook` (`nimbus_webhook_*` in the server's
//! registry), every series labelled `endpoint` (the endpoint's index in the configuration,
//! `"0"`, `"1"`, ...: bounded, and free of URLs or credentials).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `webhook_delivered_events_total` | counter | endpoint |
//! | `webhook_delivered_requests_total` | counter | endpoint |
//! | `webhook_retried_requests_total` | counter | endpoint |
//! | `webhook_dropped_events_total` | counter | endpoint, reason |
//! | `webhook_queue_events` | gauge | endpoint |
//! | `webhook_queue_bytes` | gauge | endpoint |
//! | `webhook_delivery_latency_seconds` | histogram | endpoint |
//!
//! Drop reasons: `queue_full` (the oldest queued events, to make room), `too_large` (an
//! event that cannot fit in a request alone), `permanent` (a 4xx other than 408/429, or a
//! 3xx), `gave_up` (retried for `max_attempts` or `max_retry_time`), `shutdown` (left when
//! [`crate::Webhooks::shutdown`]'s deadline passed, or published after it began).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to ~164 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Why events were dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Made room in a full queue (the oldest events go).
    QueueFull,
    /// Larger than a request may be.
    TooLarge,
    /// The receiver refused the batch (4xx other than 408/429, or 3xx).
    Permanent,
    /// Retried for too long or too often.
    GaveUp,
    /// Undelivered at shutdown.
    Shutdown,
}

impl DropReason {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TooLarge => "too_large",
            DropReason::Permanent => "permanent",
            DropReason::GaveUp => "gave_up",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The metric families; cheap to clone (every clone updates the same series).
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    delivered_events: Family<Labels, Counter>,
    delivered_requests: Family<Labels, Counter>,
    retried_requests: Family<Labels, Counter>,
    dropped_events: Family<Labels, Counter>,
    queue_events: Family<Labels, Gauge>,
    queue_bytes: Family<Labels, Gauge>,
    latency: HistogramFamily,
}

impl Default for WebhookMetrics {
    /// Unregistered families (for tests, or when nothing scrapes).
    fn default() -> Self {
        WebhookMetrics {
            delivered_events: Family::default(),
            delivered_requests: Family::default(),
            retried_requests: Family::default(),
            dropped_events: Family::default(),
            queue_events: Family::default(),
            queue_bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl WebhookMetrics {
    /// Create every family and register it in `registry` under the prefix `webhook`.
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics::default();
        let r = registry.sub_registry_with_prefix("webhook");
        r.register(
            "delivered_events",
            "Events delivered (acknowledged with a 2xx)",
            m.delivered_events.clone(),
        );
        r.register(
            "delivered_requests",
            "Webhook requests acknowledged with a 2xx",
            m.delivered_requests.clone(),
        );
        r.register(
            "retried_requests",
            "Webhook requests that failed and will be retried",
            m.retried_requests.clone(),
        );
        r.register(
            "dropped_events",
            "Events dropped undelivered, by reason",
            m.dropped_events.clone(),
        );
        r.register(
            "queue_events",
            "Events queued for an endpoint, in flight included",
            m.queue_events.clone(),
        );
        r.register(
            "queue_bytes",
            "Bytes of the events queued for an endpoint, in flight included",
            m.queue_bytes.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From publish to the 2xx that acknowledged the event",
            m.latency.clone(),
        );
        m
    }

    /// The series of endpoint `index`.
    pub(crate) fn endpoint(&self, index: usize) -> EndpointMetrics {
        let l = || vec![("endpoint", index.to_string())];
        let dropped = |r: DropReason| {
            self.dropped_events
                .get_or_create(&vec![
                    ("endpoint", index.to_string()),
                    ("reason", r.label().to_owned()),
                ])
                .clone()
        };
        EndpointMetrics {
            delivered_events: self.delivered_events.get_or_create(&l()).clone(),
            delivered_requests: self.delivered_requests.get_or_create(&l()).clone(),
            retried_requests: self.retried_requests.get_or_create(&l()).clone(),
            dropped: [
                dropped(DropReason::QueueFull),
                dropped(DropReason::TooLarge),
                dropped(DropReason::Permanent),
                dropped(DropReason::GaveUp),
                dropped(DropReason::Shutdown),
            ],
            queue_events: self.queue_events.get_or_create(&l()).clone(),
            queue_bytes: self.queue_bytes.get_or_create(&l()).clone(),
            latency: self.latency.get_or_create(&l()).clone(),
        }
    }
}

/// One endpoint's series, looked up once.
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) delivered_events: Counter,
    pub(crate) delivered_requests: Counter,
    pub(crate) retried_requests: Counter,
    dropped: [Counter; 5],
    pub(crate) queue_events: Gauge,
    pub(crate) queue_bytes: Gauge,
    pub(crate) latency: Histogram,
}

impl EndpointMetrics {
    pub(crate) fn dropped(&self, reason: DropReason, n: usize) {
        let i = match reason {
            DropReason::QueueFull => 0,
            DropReason::TooLarge => 1,
            DropReason::Permanent => 2,
            DropReason::GaveUp => 3,
            DropReason::Shutdown => 4,
        };
        self.dropped[i].inc_by(n as u64);
    }
}
