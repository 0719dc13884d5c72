//! Delivery of nimbus room events to HTTP webhook receivers, signed per
//! [Standard Webhooks](https://www.standardwebhooks.com/) (`docs/webhooks.md`).
//!
//! The caller builds each event once ([`Event`]: an id, a room, a kind and its JSON body)
//! and hands it to [`Webhooks::publish`], which never blocks and never awaits: it appends
//! the event to the bounded queue of every endpoint whose filter matches. Each endpoint
//! has one task that batches its queue into signed POST requests, one at a time, retrying
//! failures with backoff (the policy is in `docs/webhooks.md`).
//!
//! - Delivery is **at-least-once**: a batch leaves its queue only after a 2xx (or when it
//!   is dropped: a permanent refusal, too many retries, a full queue, shutdown — each
//!   counted in [`WebhookMetrics`]). Receivers de-duplicate by event id.
//! - Events reach each endpoint **in publish order** (one request in flight per endpoint),
//!   hence in order per room.
//! - A dead receiver costs bounded memory (`queue_events`, `queue_bytes`): the oldest
//!   events are dropped first.
//!
//! [`Debouncer`] (IO-free) turns a stream of document changes into one `DOC_CHANGED`
//! per room per interval.
//!
//! HTTP client: `reqwest` (rustls, HTTP/1.1 only, no default features): widely used and
//! maintained, with per-request timeouts, connection pooling and TLS in one place, where
//! `hyper-util`'s legacy client would need the TLS connector and timeouts assembled by
//! hand. Its `rustls-tls` feature uses the `ring` provider and webpki roots, as the rest
//! of the workspace does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::task::JoinHandle;

pub mod config;
pub mod debounce;
mod delivery;
pub mod metrics;
mod payload;
mod queue;
pub mod sign;

pub use config::{ConfigError, EndpointConfig, RoomPattern};
pub use debounce::Debouncer;
pub use delivery::MAX_RETRY_AFTER;
pub use metrics::{DropReason, WebhookMetrics};
pub use sign::{Secret, SecretError};

use delivery::Endpoint;
use metrics::DropReason as Reason;

/// One room event, already built by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Stable and unique: receivers de-duplicate by it.
    pub id: String,
    /// Room key.
    pub room: String,
    /// Event kind: `CLOUD_SET`, `DOC_UPDATE`, `DOC_CHANGED`, ... (endpoints filter on it).
    pub kind: &'static str,
    /// The event's JSON body (one JSON value, embedded verbatim as the event's `data`; the
    /// caller guarantees it is valid JSON). Empty means `null`.
    pub body: Bytes,
    /// When it happened.
    pub at: SystemTime,
    /// The caller's order of the event, increasing in publish order (`None`: untracked).
    /// [`Webhooks::oldest_pending`] reports the lowest one still undelivered, so a caller
    /// knows up to where every event is settled.
    pub order: Option<u128>,
}

/// Why [`Webhooks::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An endpoint's configuration is invalid.
    #[error("webhook endpoint {index}: {source}")]
    Config {
        /// The endpoint's index.
        index: usize,
        /// The error (it names the field).
        source: ConfigError,
    },
    /// The HTTP client could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Not called within a Tokio runtime.
    #[error("webhooks need a Tokio runtime")]
    NoRuntime,
}

/// What [`Webhooks::shutdown`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Events still queued (or in flight) at the deadline, over every endpoint; they are
    /// counted as dropped (reason `shutdown`). An event in flight may still have reached
    /// its receiver.
    pub undelivered: usize,
}

/// The webhook sender: a handle, cheap to clone (see the crate docs).
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<Arc<Endpoint>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nothing can publish or shut down any more.
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Webhooks {
    /// Validate every endpoint and start one delivery task each (in the current Tokio
    /// runtime). Endpoint `i`'s series carry `endpoint="i"`.
    pub fn start(
        endpoints: Vec<EndpointConfig>,
        metrics: &WebhookMetrics,
    ) -> Result<Webhooks, StartError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let eps = endpoints
            .iter()
            .enumerate()
            .map(|(index, cfg)| {
                Endpoint::new(index, cfg, metrics.endpoint(index))
                    .map(Arc::new)
                    .map_err(|source| StartError::Config { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = delivery::client().map_err(StartError::Client)?;
        let tasks = eps
            .iter()
            .map(|ep| {
                tracing::info!(endpoint = ep.index, host = %ep.host, "webhook endpoint");
                rt.spawn(delivery::run(ep.clone(), client.clone()))
            })
            .collect();
        Ok(Webhooks {
            inner: Arc::new(Inner {
                endpoints: eps,
                tasks: Mutex::new(tasks),
                shut: AtomicBool::new(false),
            }),
        })
    }

    /// Whether any endpoint would take an event of `kind` in `room` (callers may skip
    /// building events nobody wants).
    pub fn wants(&self, kind: &str, room: &str) -> bool {
        self.inner
            .endpoints
            .iter()
            .any(|ep| ep.filter.matches(kind, room))
    }

    /// Queue `event` for every endpoint whose filter matches. Never blocks or awaits (it
    /// takes each matching queue's lock briefly); a full queue drops its oldest events.
    pub fn publish(&self, event: Event) {
        let mut item: Option<Arc<queue::Item>> = None;
        for ep in &self.inner.endpoints {
            if !ep.filter.matches(event.kind, &event.room) {
                continue;
            }
            if self.inner.shut.load(Ordering::Acquire) {
                ep.metrics.dropped(Reason::Shutdown, 1);
                continue;
            }
            let item = item.get_or_insert_with(|| {
                Arc::new(queue::Item {
                    fragment: payload::fragment(&event),
                    id: event.id.clone(),
                    order: event.order,
                    published: Instant::now(),
                })
            });
            ep.queue.push(item.clone());
        }
    }

    /// The lowest [`Event::order`] of the events still queued (or in flight) for any
    /// endpoint: every tracked event before it is settled (delivered, or dropped by a
    /// bound or a permanent failure). `None`: no tracked event is pending.
    pub fn oldest_pending(&self) -> Option<u128> {
        self.inner
            .endpoints
            .iter()
            .filter_map(|ep| ep.queue.oldest_order())
            .min()
    }

    /// Number of configured endpoints.
    pub fn endpoints(&self) -> usize {
        self.inner.endpoints.len()
    }

    /// Events queued for endpoint `index` (in flight included) and their bytes.
    pub fn queue_depth(&self, index: usize) -> Option<(usize, usize)> {
        self.inner.endpoints.get(index).map(|ep| ep.queue.depth())
    }

    /// Stop taking events, send what is queued (without lingering) until `deadline`, then
    /// stop every task. Events published from now on are dropped (reason `shutdown`).
    /// Safe to call more than once (later calls find nothing to do).
    pub async fn shutdown(&self, deadline: Instant) -> ShutdownReport {
        self.inner.shut.store(true, Ordering::Release);
        for ep in &self.inner.endpoints {
            ep.queue.close();
        }
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let deadline = tokio::time::Instant::from_std(deadline);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                // Wait for the abort so the queue is no longer touched.
                let _ = t.await;
            }
        }
        let mut undelivered = 0;
        for ep in &self.inner.endpoints {
            let n = ep.queue.clear();
            if n > 0 {
                ep.metrics.dropped(Reason::Shutdown, n);
                tracing::warn!(
                    endpoint = ep.index,
                    host = %ep.host,
                    events = n,
                    "webhook: undelivered at shutdown"
                );
            }
            undelivered += n;
        }
        ShutdownReport { undelivered }
    }
}
