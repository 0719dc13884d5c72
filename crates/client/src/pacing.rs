//! Send pacing and reconnect backoff.

use std::time::Duration;

use tokio::time::Instant;

/// Spaces sends at least `interval` apart, in call order (FIFO through a tokio mutex).
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    pub(crate) fn new(per_second: f64) -> Pacer {
        let interval = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            next: tokio::sync::Mutex::new(None),
        }
    }

    /// Wait for the next slot, then run `f` while still holding the slot (so order is kept).
    pub(crate) async fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut next = self.next.lock().await;
        if let Some(at) = *next {
            tokio::time::sleep_until(at).await;
        }
        let out = f();
        *next = Some(Instant::now() + self.interval);
        out
    }
}

pub use nimbus_proto::backoff::Backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sends_are_paced_in_order() {
        let p = std::sync::Arc::new(Pacer::new(10.0));
        let start = Instant::now();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                p.run(|| {
                    order
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, Instant::now()))
                })
                .await;
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("a pacing task panicked");
        }
        let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            order.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        for (n, (_, at)) in order.iter().enumerate() {
            assert_eq!(
                *at - start,
                Duration::from_millis(100) * n as u32,
                "virtual time"
            );
        }
    }
}
