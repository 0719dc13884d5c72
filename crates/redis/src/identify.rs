//! [`RedisIdentify`]: the [`IdentifyBudget`] of `--redis`, so that a bot has one identify
//! budget however many nodes its shards connect to (as one Discord bot token does).
//!
//! Per bot (its name hashed: `H` = the first 32 hex digits of its SHA-256), two kinds of
//! keys in one hash slot:
//! - `nimbus:gwbot:{H}:starts`, a sorted set of the bot's Identifies of the last day, scored
//!   by Redis' clock in ms (so the nodes' clocks are never compared), expiring a day after
//!   the last one;
//! - `nimbus:gwbot:{H}:b:{n}`, bucket `n`'s last Identify, a key that expires after the
//!   identify window (`SET NX PX`).
//!
//! `lua/identify.lua` takes a start (or refuses, keeping nothing) in one atomic step;
//! `lua/identify_limit.lua` reads the limit for `GET /gateway/bot`. A bot's keys hold at
//! most `total` members (about 30 bytes each) and vanish a day after its last Identify.
//!
//! When Redis does not answer within [`TIMEOUT`] (down, or failing over), this node answers
//! from its own [`IdentifyLimiter`] (the budgets of one node, as without `--redis`),
//! counts it in `nimbus_redis_identify_fallbacks_total` and logs a warning: a gateway keeps
//! identifying while Redis is away, with a budget per node until it is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use nimbus_core::gateway::limiter::{IdentifyBudget, IdentifyLimiter, SessionStartLimit};
use sha2::{Digest, Sha256};

use crate::lua::{IDENTIFY_LIMIT_SCRIPT, IDENTIFY_SCRIPT};
use crate::RedisBackplane;

/// Longest wait for Redis before answering from this node's budgets.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// The scripts, hashed once (`EVALSHA`, loaded by redis-rs on `NOSCRIPT`).
static IDENTIFY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(IDENTIFY_SCRIPT));
static IDENTIFY_LIMIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(IDENTIFY_LIMIT_SCRIPT));

/// See the module docs.
#[derive(Debug)]
pub struct RedisIdentify {
    bp: Arc<RedisBackplane>,
    max_concurrency: u64,
    window: Duration,
    total: u32,
    /// This node's budgets, for when Redis does not answer.
    local: IdentifyLimiter,
    /// Makes each start's member unique (with the node id).
    next: AtomicU64,
}

/// A Redis call's answer, or why there is none (an error, or no answer within [`TIMEOUT`]).
async fn within<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// The key prefix of `bot`'s keys (its hash tag included).
fn bot_prefix(bot: &str) -> String {
    let digest = Sha256::digest(bot.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("nimbus:gwbot:{{{hex}}}")
}

impl RedisIdentify {
    /// Budgets of `max_concurrency` buckets of one Identify per `window` and `total` per
    /// day per bot, kept in `bp`'s Redis.
    pub fn new(
        bp: Arc<RedisBackplane>,
        max_concurrency: u64,
        window: Duration,
        total: u32,
    ) -> RedisIdentify {
        let max_concurrency = max_concurrency.max(1);
        RedisIdentify {
            bp,
            max_concurrency,
            window,
            total,
            local: IdentifyLimiter::new(max_concurrency, window, total),
            next: AtomicU64::new(0),
        }
    }

    async fn shared_identify(&self, bot: &str, shard_id: u64) -> Result<bool, String> {
        let prefix = bot_prefix(bot);
        let bucket = shard_id % self.max_concurrency;
        let member = format!(
            "{}:{}",
            self.bp.node(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.bp.conn.clone();
        let mut invocation = IDENTIFY.key(format!("{prefix}:starts"));
        invocation
            .key(format!("{prefix}:b:{bucket}"))
            .arg(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX))
            .arg(self.total)
            .arg(member);
        let taken: i64 = within(invocation.invoke_async(&mut conn)).await?;
        Ok(taken == 1)
    }

    async fn shared_snapshot(&self, bot: &str) -> Result<SessionStartLimit, String> {
        let mut conn = self.bp.conn.clone();
        let invocation = IDENTIFY_LIMIT.key(format!("{}:starts", bot_prefix(bot)));
        let (used, reset_ms): (u64, i64) = within(invocation.invoke_async(&mut conn)).await?;
        Ok(SessionStartLimit::of(
            self.total,
            used,
            u64::try_from(reset_ms).unwrap_or(0),
            self.max_concurrency,
        ))
    }

    fn fell_back(&self, what: &str, error: &str) {
        self.bp.metrics.backplane.identify_fallbacks.inc();
        tracing::warn!(%error, "gateway {what}: Redis did not answer, using this node's identify budgets");
    }
}

impl IdentifyBudget for RedisIdentify {
    fn try_identify<'a>(&'a self, bot: &'a str, shard_id: u64) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.shared_identify(bot, shard_id).await {
                Ok(taken) => taken,
                Err(e) => {
                    self.fell_back("identify", &e);
                    IdentifyBudget::try_identify(&self.local, bot, shard_id).await
                }
            }
        })
    }

    fn snapshot<'a>(&'a self, bot: &'a str) -> BoxFuture<'a, SessionStartLimit> {
        Box::pin(async move {
            match self.shared_snapshot(bot).await {
                Ok(limit) => limit,
                Err(e) => {
                    self.fell_back("session start limit", &e);
                    IdentifyBudget::snapshot(&self.local, bot).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bots_keys_share_one_hash_slot_and_never_hold_its_name() {
        let p = bot_prefix("issuer\u{0}subject with spaces and {braces}");
        assert!(p.starts_with("nimbus:gwbot:{") && p.ends_with('}'), "{p}");
        assert_eq!(p.len(), "nimbus:gwbot:{}".len() + 32);
        assert!(!p.contains("subject"));
        assert_ne!(bot_prefix("a"), bot_prefix("b"));
    }
}
