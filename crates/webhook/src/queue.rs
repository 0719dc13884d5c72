//! An endpoint's bounded queue, filled by [`crate::Webhooks::publish`] and drained by the
//! endpoint's delivery task.
//!
//! - The queue holds at most `queue_events` events and `queue_bytes` bytes (each event
//!   counts its JSON element), the batch in flight included.
//! - A push that would exceed either bound first drops the oldest events that are not in
//!   flight (reason `queue_full`), so the newest events survive a dead receiver and memory
//!   stays bounded. Since the bounds are at least twice a batch, the new event then fits.
//! - The batch in flight is the head of the queue: it leaves only when the delivery task
//!   is done with it (a 2xx, a permanent failure, or giving up), so nothing is lost to a
//!   failed attempt (at-least-once).
//! - Drops are logged at most once per [`DROP_LOG_INTERVAL`], with the count since the last
//!   line.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::{DropReason, EndpointMetrics};
use crate::payload;

/// Shortest time between two "dropped events" log lines of one endpoint.
pub(crate) const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One published event, shared by every endpoint that takes it.
#[derive(Debug)]
pub(crate) struct Item {
    /// The caller's event id.
    pub(crate) id: String,
    /// The caller's order ([`crate::Event::order`]).
    pub(crate) order: Option<u128>,
    /// The event's element of `data.events`.
    pub(crate) fragment: Bytes,
    /// When it was published.
    pub(crate) published: Instant,
}

impl Item {
    fn cost(&self) -> usize {
        self.fragment.len()
    }
}

/// Batch limits (from the endpoint's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) queue_events: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) batch_events: usize,
    pub(crate) batch_bytes: usize,
    pub(crate) linger: Duration,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Arc<Item>>,
    bytes: usize,
    /// The first `inflight` items are the batch being delivered.
    inflight: usize,
    closing: bool,
    unlogged_drops: u64,
    last_drop_log: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    notify: Notify,
    limits: Limits,
    metrics: EndpointMetrics,
    index: usize,
}

impl Queue {
    pub(crate) fn new(index: usize, limits: Limits, metrics: EndpointMetrics) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits,
            metrics,
            index,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self, s: &State) {
        self.metrics
            .queue_events
            .set(i64::try_from(s.items.len()).unwrap_or(i64::MAX));
        self.metrics
            .queue_bytes
            .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
    }

    /// Whether an item this large can ever be sent (alone in a request).
    pub(crate) fn fits_a_request(&self, item: &Item) -> bool {
        payload::body_len(1, item.cost()) <= self.limits.batch_bytes
    }

    /// Append `item`, dropping the oldest waiting items if the queue is full. Never waits
    /// for anything but the queue's lock.
    pub(crate) fn push(&self, item: Arc<Item>) {
        if !self.fits_a_request(&item) {
            self.metrics.dropped(DropReason::TooLarge, 1);
            tracing::warn!(
                endpoint = self.index,
                event = %item.id,
                bytes = item.cost(),
                max_batch_bytes = self.limits.batch_bytes,
                "webhook: event larger than a request may be, dropped"
            );
            return;
        }
        let mut s = self.lock();
        if s.closing {
            drop(s);
            self.metrics.dropped(DropReason::Shutdown, 1);
            return;
        }
        let mut dropped = 0usize;
        while (s.items.len() >= self.limits.queue_events
            || s.bytes + item.cost() > self.limits.queue_bytes)
            && s.items.len() > s.inflight
        {
            let at = s.inflight;
            if let Some(old) = s.items.remove(at) {
                s.bytes -= old.cost();
                dropped += 1;
            }
        }
        let fits = s.items.len() < self.limits.queue_events
            && s.bytes + item.cost() <= self.limits.queue_bytes;
        if fits {
            s.bytes += item.cost();
            s.items.push_back(item);
        } else {
            // Only the batch in flight is left and the new event still does not fit: the
            // bounds being at least twice a batch, this needs a batch larger than half the
            // queue, which validation refuses; kept for safety.
            dropped += 1;
        }
        self.gauges(&s);
        if dropped > 0 {
            self.metrics.dropped(DropReason::QueueFull, dropped);
            s.unlogged_drops += dropped as u64;
            let now = Instant::now();
            if s.last_drop_log
                .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL)
            {
                let n = std::mem::take(&mut s.unlogged_drops);
                s.last_drop_log = Some(now);
                tracing::warn!(
                    endpoint = self.index,
                    dropped = n,
                    queued = s.items.len(),
                    queued_bytes = s.bytes,
                    "webhook: queue full, oldest events dropped (receiver slow or down)"
                );
            }
        }
        drop(s);
        self.notify.notify_one();
    }

    /// The order of the first tracked item still queued (the batch in flight included):
    /// items are queued in publish order, so it is the lowest pending here.
    pub(crate) fn oldest_order(&self) -> Option<u128> {
        self.lock().items.iter().find_map(|item| item.order)
    }

    /// Wait for the next batch: when enough events wait to fill a request, when the oldest
    /// has waited `linger`, or at once while closing. `None` once closing and empty.
    /// The batch stays at the head of the queue until [`Queue::complete`].
    pub(crate) async fn next_batch(&self) -> Option<Vec<Arc<Item>>> {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut s = self.lock();
                debug_assert_eq!(s.inflight, 0, "one batch at a time");
                match s.items.front() {
                    None if s.closing => return None,
                    None => None,
                    Some(first) => {
                        let due = first.published + self.limits.linger;
                        if s.closing || Instant::now() >= due || self.full_batch_waits(&s) {
                            return Some(self.take(&mut s));
                        }
                        Some(due)
                    }
                }
            };
            match wake_at {
                None => notified.await,
                Some(t) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(t)) => {}
                    }
                }
            }
        }
    }

    fn full_batch_waits(&self, s: &State) -> bool {
        s.items.len() >= self.limits.batch_events
            || payload::body_len(s.items.len(), s.bytes) > self.limits.batch_bytes
    }

    fn take(&self, s: &mut State) -> Vec<Arc<Item>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for item in &s.items {
            if batch.len() >= self.limits.batch_events
                || (!batch.is_empty()
                    && payload::body_len(batch.len() + 1, bytes + item.cost())
                        > self.limits.batch_bytes)
            {
                break;
            }
            bytes += item.cost();
            batch.push(item.clone());
        }
        s.inflight = batch.len();
        batch
    }

    /// The batch in flight is done with (delivered or dropped): remove it.
    pub(crate) fn complete(&self) {
        let mut s = self.lock();
        for _ in 0..s.inflight {
            if let Some(old) = s.items.pop_front() {
                s.bytes -= old.cost();
            }
        }
        s.inflight = 0;
        self.gauges(&s);
    }

    /// Stop accepting events and send what is queued without lingering.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.notify.notify_one();
    }

    /// Drop everything (at the shutdown deadline); returns how many events there were.
    pub(crate) fn clear(&self) -> usize {
        let mut s = self.lock();
        let n = s.items.len();
        s.items.clear();
        s.bytes = 0;
        s.inflight = 0;
        self.gauges(&s);
        n
    }

    /// Queued events (in flight included) and their bytes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.items.len(), s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WebhookMetrics;

    fn item(id: usize, size: usize) -> Arc<Item> {
        Arc::new(Item {
            id: id.to_string(),
            order: Some(id as u128),
            fragment: Bytes::from(vec![b'x'; size]),
            published: Instant::now(),
        })
    }

    fn queue(queue_events: usize, queue_bytes: usize, batch_events: usize) -> Queue {
        let limits = Limits {
            queue_events,
            queue_bytes,
            batch_events,
            batch_bytes: 4096,
            linger: Duration::ZERO,
        };
        Queue::new(0, limits, WebhookMetrics::default().endpoint(0))
    }

    fn ids(q: &Queue) -> Vec<String> {
        q.lock().items.iter().map(|i| i.id.clone()).collect()
    }

    #[tokio::test]
    async fn the_oldest_pending_order_is_the_batch_in_flight_until_it_completes() {
        let q = queue(10, 10_000, 2);
        assert_eq!(q.oldest_order(), None);
        q.push(Arc::new(Item {
            id: "untracked".into(),
            order: None,
            fragment: Bytes::from_static(b"x"),
            published: Instant::now(),
        }));
        for id in 1..=3 {
            q.push(item(id, 10));
        }
        // Untracked items do not count.
        assert_eq!(q.oldest_order(), Some(1));
        let batch = q.next_batch().await.expect("a batch");
        assert_eq!(batch.len(), 2);
        // In flight is not settled: a failed attempt is retried.
        assert_eq!(q.oldest_order(), Some(1));
        q.complete();
        assert_eq!(q.oldest_order(), Some(2));
        q.next_batch().await.expect("a batch");
        q.complete();
        assert_eq!(q.oldest_order(), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events_and_stays_within_both_bounds() {
        let q = queue(4, 10_000, 2);
        for i in 0..10 {
            q.push(item(i, 10));
        }
        assert_eq!(ids(&q), ["6", "7", "8", "9"]);
        let q = queue(100, 250, 2);
        for i in 0..10 {
            q.push(item(i, 100));
            assert!(q.depth().1 <= 250);
        }
        assert_eq!(ids(&q), ["8", "9"]);
        assert_eq!(q.metrics.queue_bytes.get(), 200);
        assert_eq!(q.metrics.queue_events.get(), 2);
    }

    #[tokio::test]
    async fn the_batch_in_flight_is_never_dropped_to_make_room() {
        let q = queue(4, 10_000, 2);
        for i in 0..4 {
            q.push(item(i, 10));
        }
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.len(), 2);
        for i in 4..10 {
            q.push(item(i, 10));
        }
        assert_eq!(ids(&q), ["0", "1", "8", "9"]);
        q.complete();
        assert_eq!(ids(&q), ["8", "9"]);
    }

    #[tokio::test]
    async fn batches_take_events_in_order_up_to_the_event_and_byte_limits() {
        let q = queue(100, 100_000, 3);
        for i in 0..7 {
            q.push(item(i, 1000));
        }
        let sizes: Vec<usize> = {
            let mut v = Vec::new();
            while let Some(b) = {
                if q.depth().0 == 0 {
                    None
                } else {
                    q.next_batch().await
                }
            } {
                // 4096-byte bodies hold three 1000-byte events.
                assert!(payload::body_len(b.len(), b.len() * 1000) <= 4096);
                v.push(b.len());
                q.complete();
            }
            v
        };
        assert_eq!(sizes, [3, 3, 1]);
    }

    #[tokio::test]
    async fn a_closed_queue_drains_then_ends_and_refuses_new_events() {
        let q = queue(10, 10_000, 5);
        q.push(item(1, 10));
        q.close();
        q.push(item(2, 10));
        assert_eq!(q.next_batch().await.map(|b| b.len()), Some(1));
        q.complete();
        assert!(q.next_batch().await.is_none());
    }

    #[test]
    fn an_event_too_large_for_any_request_is_dropped_at_once() {
        let q = queue(10, 10_000, 5);
        q.push(item(1, 5000));
        assert_eq!(q.depth(), (0, 0));
    }
}
