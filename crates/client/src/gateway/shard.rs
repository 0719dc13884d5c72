//! [`ShardManager`]: start N shards sharing one [`IdentifyQueue`] (`max_concurrency`
//! buckets, one Identify each per window), and merge their events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    GatewayBot, GatewayClient, GatewayError, GatewayOptions, IdentifyQueue, SessionStartLimit,
    ShardState,
};

/// How a [`ShardManager`] starts its shards.
#[derive(Debug, Clone)]
pub struct ShardManagerConfig {
    /// Options every shard shares (`shard_id` / `total_shards` are set per shard).
    pub options: GatewayOptions,
    /// Number of shards.
    pub total_shards: u64,
    /// `session_start_limit.max_concurrency`: shards whose ids differ mod this value are in
    /// different identify buckets and may identify together.
    pub max_concurrency: u64,
    /// Time between groups (Discord: 5 s).
    pub identify_window: Duration,
    /// From `/gateway/bot`: when `remaining` is 0, the start waits `reset_after` first.
    pub session_start_limit: Option<SessionStartLimit>,
}

impl ShardManagerConfig {
    /// Shards, buckets and limits from a `/gateway/bot` answer; `options.url` becomes its
    /// `url` (where fresh Identifies go).
    pub fn from_gateway_bot(options: GatewayOptions, bot: &GatewayBot) -> ShardManagerConfig {
        ShardManagerConfig {
            options: GatewayOptions {
                url: bot.url.clone(),
                ..options
            },
            total_shards: bot.shards.max(1),
            max_concurrency: bot.session_start_limit.max_concurrency.max(1),
            identify_window: Duration::from_secs(nimbus_proto::gateway::IDENTIFY_WINDOW_SECS),
            session_start_limit: Some(bot.session_start_limit),
        }
    }
}

/// N shards started bucket by bucket (see the module docs).
///
/// Shards `k·c .. (k+1)·c` (c = `max_concurrency`) fall in distinct buckets, so group k
/// identifies together, then the manager waits until the group is READY before starting
/// the next. Every fresh Identify of every shard, including re-identifies long after the
/// start, also waits for its bucket in the shared [`IdentifyQueue`].
#[derive(Debug)]
pub struct ShardManager {
    shards: Vec<Arc<GatewayClient>>,
    events: tokio::sync::Mutex<mpsc::Receiver<(u64, String, Value)>>,
}

impl ShardManager {
    /// Start every shard with `token` and `intents`.
    pub async fn start(
        config: ShardManagerConfig,
        token: &str,
        intents: u64,
    ) -> Result<ShardManager, GatewayError> {
        if let Some(l) = config.session_start_limit {
            if l.remaining == 0 {
                tracing::warn!(
                    reset_after_ms = l.reset_after,
                    "session start limit used up: waiting for its reset"
                );
                tokio::time::sleep(Duration::from_millis(l.reset_after)).await;
            } else if l.remaining < config.total_shards {
                tracing::warn!(
                    remaining = l.remaining,
                    shards = config.total_shards,
                    "fewer identifies left than shards"
                );
            }
        }
        let total = config.total_shards.max(1);
        let per_group = config.max_concurrency.max(1);
        let queue = config
            .options
            .identify_queue
            .clone()
            .unwrap_or_else(|| Arc::new(IdentifyQueue::new(per_group, config.identify_window)));
        // Bounded like each shard's own queue: a consumer that stops taking events stops
        // the forwarders, then the shards (each closes and resumes later, see
        // `GatewayOptions::max_pending_events`).
        let (tx, rx) = mpsc::channel(config.options.max_pending_events.max(2));
        let mut shards = Vec::new();
        let mut id = 0;
        while id < total {
            let group: Vec<u64> = (id..(id + per_group).min(total)).collect();
            for &sid in &group {
                let client = Arc::new(GatewayClient::new(GatewayOptions {
                    shard_id: sid,
                    total_shards: total,
                    identify_queue: Some(queue.clone()),
                    ..config.options.clone()
                }));
                client.start(token, intents)?;
                let (c, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    while let Some((t, d)) = c.next_event().await {
                        if tx.send((sid, t, d)).await.is_err() {
                            break;
                        }
                    }
                });
                shards.push(client);
            }
            id += per_group;
            if id < total {
                // Wait for the group to be READY (or end); the queue spaces the windows.
                for s in &shards[shards.len() - group.len()..] {
                    while !matches!(
                        s.state(),
                        ShardState::Active | ShardState::FatallyClosed(_) | ShardState::Closed
                    ) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if let ShardState::FatallyClosed(c) = s.state() {
                        return Err(GatewayError::Fatal(c));
                    }
                }
            }
        }
        Ok(ShardManager {
            shards,
            events: tokio::sync::Mutex::new(rx),
        })
    }

    /// The shards, by id.
    pub fn shards(&self) -> &[Arc<GatewayClient>] {
        &self.shards
    }

    /// The next event of any shard, as `(shard_id, t, d)`.
    pub async fn next_event(&self) -> Option<(u64, String, Value)> {
        self.events.lock().await.recv().await
    }

    /// Close every shard.
    pub async fn close(&self) {
        for s in &self.shards {
            s.close().await;
        }
    }
}
