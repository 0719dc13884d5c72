//! [`IdentifyQueue`]: the identify buckets shared by shards (Discord: `shard_id %
//! max_concurrency`, one Identify per bucket per 5 s). Every fresh Identify of a shard that
//! has a queue waits here first, so restarts and re-identifies after op 9 respect the limit
//! too, not only the initial start. Resumes do not wait.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub struct IdentifyQueue {
    window: Duration,
    buckets: Vec<Mutex<Option<Instant>>>,
}

impl IdentifyQueue {
    /// `max_concurrency` buckets (at least 1), one Identify each per `window`.
    pub fn new(max_concurrency: u64, window: Duration) -> IdentifyQueue {
        let n = usize::try_from(max_concurrency.max(1)).unwrap_or(1);
        IdentifyQueue {
            window,
            buckets: (0..n).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Number of buckets.
    pub fn max_concurrency(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Wait until shard `shard_id` may identify, and take the slot (FIFO per bucket).
    pub async fn wait(&self, shard_id: u64) {
        let i = usize::try_from(shard_id % self.max_concurrency()).unwrap_or(0);
        let Some(bucket) = self.buckets.get(i) else {
            return;
        };
        let mut last = bucket.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.window).await;
        }
        *last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_identify_per_bucket_per_window() {
        let q = IdentifyQueue::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        q.wait(0).await;
        q.wait(1).await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "two buckets identify together"
        );
        q.wait(2).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(5),
            "bucket 0 again: one window later"
        );
        q.wait(3).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(5),
            "bucket 1 was free since t0 + 0"
        );
    }
}
