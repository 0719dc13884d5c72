//! `RedisIdentify` against a real `redis-server`: two backplanes (two nodes) spend one
//! identify budget per bot, and a node whose Redis is gone answers from its own budgets.
//!
//! Needs `redis-server` on the PATH; without it the tests print `SKIPPED` and return,
//! unless `NIMBUS_REQUIRE_REDIS=1`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis;
use nimbus_core::gateway::limiter::{IdentifyBudget, DAY};
use nimbus_redis::identify::RedisIdentify;
use nimbus_redis::metrics::{BackplaneMetrics, Metrics};
use nimbus_redis::RedisBackplane;

async fn node(url: &str) -> (Arc<RedisBackplane>, Arc<BackplaneMetrics>) {
    let backplane = Arc::new(BackplaneMetrics::default());
    let metrics = Arc::new(Metrics {
        backplane: backplane.clone(),
        cloud: Arc::new(nimbus_core::cloud::CloudMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
        )),
        doc: Arc::default(),
    });
    let bp = RedisBackplane::connect(url, metrics)
        .await
        .expect("connect");
    (bp, backplane)
}

#[tokio::test]
async fn two_nodes_spend_one_budget_per_bot_its_buckets_and_its_daily_limit() {
    let Some((_server, _c, url)) = redis() else {
        return;
    };
    let ((a, ma), (b, mb)) = (node(&url).await, node(&url).await);
    let window = Duration::from_secs(30);
    let (on_a, on_b) = (
        RedisIdentify::new(a.clone(), 2, window, 3),
        RedisIdentify::new(b.clone(), 2, window, 3),
    );
    assert!(on_a.try_identify("bot", 0).await);
    assert!(
        !on_b.try_identify("bot", 2).await,
        "shard 2 is bucket 0, used on the other node within the window"
    );
    assert!(on_b.try_identify("bot", 1).await, "bucket 1 is free");
    assert!(
        on_a.try_identify("other", 0).await,
        "another bot's budget is its own"
    );
    let limit = on_b.snapshot("bot").await;
    assert_eq!(
        (limit.total, limit.remaining, limit.max_concurrency),
        (3, 1, 2)
    );
    assert!(limit.reset_after_ms > 0 && limit.reset_after_ms <= DAY.as_millis() as u64);
    assert_eq!(on_a.snapshot("never").await.remaining, 3);
    assert_eq!(on_a.snapshot("never").await.reset_after_ms, 0);

    // The daily limit across nodes (no window: only the limit refuses).
    let (daily_a, daily_b) = (
        RedisIdentify::new(a.clone(), 1, Duration::ZERO, 2),
        RedisIdentify::new(b.clone(), 1, Duration::ZERO, 2),
    );
    assert!(daily_a.try_identify("daily", 0).await);
    assert!(daily_b.try_identify("daily", 0).await);
    assert!(!daily_a.try_identify("daily", 0).await, "two starts today");
    assert!(!daily_b.try_identify("daily", 0).await, "on either node");
    assert_eq!(daily_b.snapshot("daily").await.remaining, 0);
    assert_eq!(
        (ma.identify_fallbacks.get(), mb.identify_fallbacks.get()),
        (0, 0),
        "every answer came from Redis"
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn a_node_whose_redis_is_gone_answers_from_its_own_budgets_and_counts_it() {
    let Some((server, _c, url)) = redis() else {
        return;
    };
    let (a, metrics) = node(&url).await;
    let budget = RedisIdentify::new(a.clone(), 1, Duration::from_secs(30), 5);
    drop(server);
    assert!(
        budget.try_identify("bot", 0).await,
        "the local budget is whole"
    );
    assert!(
        !budget.try_identify("bot", 0).await,
        "and keeps its own bucket"
    );
    assert_eq!(budget.snapshot("bot").await.remaining, 4);
    assert_eq!(metrics.identify_fallbacks.get(), 3);
    a.shutdown();
}
