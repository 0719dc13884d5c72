//! The room actor against the replication seam: ordering, gap fill and resync with an
//! in-memory [`Fake`] of a shared replication (no Redis), and the single-node path with
//! [`InProcess`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use nimbus_proto::cloud::CloudValue;
use tokio::sync::oneshot;

use super::fake::{Fake, Proposed};
use super::ReplicationMetrics;
use super::{Change, CloudReplication, InProcess};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::settings::CloudLimits;
use crate::events::EventBus;
use crate::hub::Hub;
use crate::outbox::Outbox;
use crate::room::{RoomCmd, RoomContext, Subscriber};
use crate::store::metrics::StoreMetrics;
use crate::store::{MemoryBackend, Store};
use prometheus_client::registry::Registry;

const ROOM: &str = "7";

fn metrics() -> (Arc<CloudMetrics>, Arc<StoreMetrics>) {
    let mut registry = Registry::default();
    (
        Arc::new(CloudMetrics::register(&mut registry)),
        Arc::new(StoreMetrics::register(&mut registry)),
    )
}

fn context(repl: Arc<dyn CloudReplication>, metrics: Arc<CloudMetrics>) -> RoomContext {
    RoomContext {
        limits: Arc::new(CloudLimits::default()),
        replication: repl,
        metrics,
        replication_metrics: ReplicationMetrics::default(),
    }
}

fn hub_with(repl: Arc<dyn CloudReplication>, store: Store) -> Arc<Hub> {
    let (cloud, store_metrics) = metrics();
    Hub::new(
        store,
        context(repl, cloud),
        store_metrics,
        Arc::new(EventBus::default()),
    )
}

fn memory_store() -> Store {
    Store::spawn(MemoryBackend::default(), Duration::from_millis(1))
}

async fn join(hub: &Arc<Hub>, id: u64) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::default());
    let sub = Subscriber {
        id,
        user: format!("user{id}"),
        outbox: outbox.clone(),
    };
    hub.join(ROOM, sub).await.expect("join");
    outbox
}

/// The lines queued in `outbox` since the last call.
fn lines(outbox: &Outbox) -> Vec<String> {
    let mut items = VecDeque::new();
    outbox.drain(&mut items);
    items
        .into_iter()
        .map(|i| i.text.as_str().trim_end().to_owned())
        .collect()
}

/// The room's variables, once it handled everything sent before.
async fn variables(hub: &Arc<Hub>) -> Vec<(String, String)> {
    let (reply, rx) = oneshot::channel();
    let room = hub.get(ROOM).expect("room loaded");
    assert!(room.send(RoomCmd::Snapshot { reply }).await);
    rx.await
        .expect("snapshot")
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.as_str().to_owned()))
        .collect()
}

async fn send_set(hub: &Arc<Hub>, from: u64, name: &str, value: &str) {
    let room = hub.get(ROOM).expect("room loaded");
    assert!(
        room.send(RoomCmd::Set {
            from,
            name: name.to_owned(),
            value: CloudValue::Number(value.to_owned()),
        })
        .await
    );
}

fn set(name: &str, value: &str) -> Change {
    Change::Set {
        name: Arc::from(name),
        value: CloudValue::Number(value.to_owned()),
    }
}

fn line(name: &str, value: &str) -> String {
    nimbus_proto::cloud::encode_set(name, &CloudValue::Number(value.to_owned()))
        .trim_end()
        .to_owned()
}

fn pairs(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn changes_apply_in_the_replications_order_not_the_order_they_were_proposed() {
    let fake = Arc::new(Fake::default());
    let hub = hub_with(fake.clone(), memory_store());
    let (a, b, watcher) = (
        join(&hub, 1).await,
        join(&hub, 2).await,
        join(&hub, 3).await,
    );
    send_set(&hub, 1, "x", "1").await;
    send_set(&hub, 2, "x", "2").await;
    assert_eq!(
        variables(&hub).await,
        vec![],
        "nothing applies before it is ordered"
    );
    let proposed = fake.proposals();
    assert_eq!(
        proposed,
        vec![
            Proposed {
                change: set("x", "1"),
                from: 1
            },
            Proposed {
                change: set("x", "2"),
                from: 2
            },
        ]
    );
    // The replication orders b's change first.
    let first = fake.order(ROOM, proposed[1].change.clone(), 2);
    let second = fake.order(ROOM, proposed[0].change.clone(), 1);
    fake.deliver(first).await;
    fake.deliver(second).await;
    assert_eq!(variables(&hub).await, pairs(&[("x", "1")]));
    assert_eq!(lines(&watcher), vec![line("x", "2"), line("x", "1")]);
    assert_eq!(
        lines(&a),
        vec![line("x", "2")],
        "its own change is not echoed"
    );
    assert_eq!(lines(&b), vec![line("x", "1")]);
}

#[tokio::test]
async fn a_gap_is_filled_from_the_log_and_a_duplicate_is_ignored() {
    let fake = Arc::new(Fake::default());
    let hub = hub_with(fake.clone(), memory_store());
    let watcher = join(&hub, 3).await;
    let c1 = fake.order(ROOM, set("a", "1"), 9);
    let c2 = fake.order(ROOM, set("b", "2"), 9);
    let c3 = fake.order(ROOM, set("a", "3"), 9);
    fake.deliver(c1.clone()).await;
    // 2 is lost on the way: 3 reveals the gap, the log fills it.
    fake.deliver(c3.clone()).await;
    assert_eq!(variables(&hub).await, pairs(&[("a", "3"), ("b", "2")]));
    assert_eq!(
        lines(&watcher),
        vec![line("a", "1"), line("b", "2"), line("a", "3")]
    );
    assert_eq!(
        fake.asked(),
        (1, 1),
        "one fill, no reload (the first load only)"
    );
    // Late copies change nothing.
    fake.deliver(c2).await;
    fake.deliver(c3).await;
    fake.deliver(c1).await;
    assert_eq!(variables(&hub).await, pairs(&[("a", "3"), ("b", "2")]));
    assert_eq!(lines(&watcher), Vec::<String>::new());
    assert_eq!(fake.asked(), (1, 1));
}

#[tokio::test]
async fn a_gap_the_log_no_longer_covers_resyncs_from_the_state() {
    let fake = Arc::new(Fake::with_state("e1", 4, &[("a", "1"), ("b", "2")]));
    let hub = hub_with(fake.clone(), memory_store());
    let watcher = join(&hub, 3).await;
    assert_eq!(lines(&watcher), vec![line("a", "1"), line("b", "2")]);
    let _missed = fake.order(ROOM, set("a", "5"), 9);
    let c6 = fake.order(ROOM, set("c", "6"), 9);
    let c7 = fake.order(ROOM, set("c", "7"), 9);
    fake.trim_before(6);
    fake.deliver(c6).await;
    assert_eq!(
        variables(&hub).await,
        pairs(&[("a", "5"), ("b", "2"), ("c", "7")])
    );
    // Subscribers get every value that changed, once.
    assert_eq!(lines(&watcher), vec![line("a", "5"), line("c", "7")]);
    assert_eq!(fake.asked(), (1, 2));
    fake.deliver(c7).await;
    assert_eq!(lines(&watcher), Vec::<String>::new(), "7 is covered");
    let c8 = fake.order(ROOM, set("b", "8"), 9);
    fake.deliver(c8).await;
    assert_eq!(
        variables(&hub).await,
        pairs(&[("a", "5"), ("b", "8"), ("c", "7")])
    );
    assert_eq!(lines(&watcher), vec![line("b", "8")]);
}

#[tokio::test]
async fn an_epoch_change_resyncs_and_a_vanished_variable_is_dropped() {
    let fake = Arc::new(Fake::with_state("e1", 4, &[("a", "1"), ("b", "2")]));
    let hub = hub_with(fake.clone(), memory_store());
    let watcher = join(&hub, 3).await;
    lines(&watcher);
    // The order restarted (Redis lost the room): new epoch, other state.
    fake.reset("e2", 0, &[]);
    let c1 = fake.order(ROOM, set("a", "9"), 9);
    let c2 = fake.order(ROOM, set("c", "3"), 9);
    fake.deliver(c2).await;
    assert_eq!(variables(&hub).await, pairs(&[("a", "9"), ("c", "3")]));
    assert_eq!(lines(&watcher), vec![line("a", "9"), line("c", "3")]);
    assert_eq!(
        fake.asked(),
        (1, 2),
        "the log of a new epoch does not follow: reload"
    );
    fake.deliver(c1).await;
    let c3 = fake.order(ROOM, set("c", "4"), 9);
    fake.deliver(c3).await;
    assert_eq!(variables(&hub).await, pairs(&[("a", "9"), ("c", "4")]));
    assert_eq!(lines(&watcher), vec![line("c", "4")]);
}

#[tokio::test]
async fn a_resync_request_catches_up_without_a_change_arriving() {
    let fake = Arc::new(Fake::default());
    let hub = hub_with(fake.clone(), memory_store());
    let watcher = join(&hub, 3).await;
    let _ = fake.order(ROOM, set("a", "1"), 9);
    let _ = fake.order(ROOM, set("a", "2"), 9);
    let room = hub.get(ROOM).expect("room");
    assert!(room.send(RoomCmd::Resync).await);
    assert_eq!(variables(&hub).await, pairs(&[("a", "2")]));
    assert_eq!(lines(&watcher), vec![line("a", "1"), line("a", "2")]);
}

#[tokio::test]
async fn in_process_the_room_orders_at_once_and_the_store_keeps_the_changes() {
    let store = memory_store();
    let events = Arc::new(EventBus::default());
    let (cloud, store_metrics) = metrics();
    let limits = CloudLimits::default();
    let repl = Arc::new(InProcess::new(
        store.clone(),
        events.clone(),
        (cloud.clone(), store_metrics.clone()),
        limits.max_name_len,
    ));
    let hub = Hub::new(store.clone(), context(repl, cloud), store_metrics, events);
    let (a, watcher) = (join(&hub, 1).await, join(&hub, 3).await);
    send_set(&hub, 1, "x", "1").await;
    send_set(&hub, 1, "y", "2").await;
    send_set(&hub, 3, "x", "3").await;
    assert_eq!(variables(&hub).await, pairs(&[("x", "3"), ("y", "2")]));
    assert_eq!(lines(&watcher), vec![line("x", "1"), line("y", "2")]);
    assert_eq!(lines(&a), vec![line("x", "3")]);
    let (reply, rx) = oneshot::channel();
    let room = hub.get(ROOM).expect("room");
    assert!(
        room.send(RoomCmd::Rename {
            from: 0,
            name: "x".into(),
            new_name: "☁ z".into(),
            reply,
        })
        .await
    );
    assert_eq!(rx.await, Ok(true));
    store.flush().await.expect("flush");
    let stored: Vec<_> = store
        .load(ROOM)
        .await
        .expect("load")
        .into_iter()
        .map(|v| (v.name.to_string(), v.value.as_str().to_owned(), v.pos))
        .collect();
    assert_eq!(
        stored,
        vec![("☁ z".into(), "3".into(), 0), ("y".into(), "2".into(), 1)]
    );
}

#[tokio::test]
async fn a_held_line_is_written_by_the_rooms_timer_in_one_frame_without_waking_the_connection() {
    use futures_util::FutureExt;
    let fake = Arc::new(Fake::default());
    let hub = hub_with(fake.clone(), memory_store());
    let wire = crate::outbox::Scripted::answering(&[]);
    let batch = nimbus_proto::batch::Batch::new(Duration::from_millis(30), Duration::ZERO);
    let outbox = Arc::new(Outbox::default().with_wire(wire.clone(), batch, true));
    let sub = Subscriber {
        id: 2,
        user: "user2".into(),
        outbox: outbox.clone(),
    };
    hub.join(ROOM, sub).await.expect("join");
    // The connection task takes the join frame, as it would.
    lines(&outbox);
    outbox.wrote(tokio::time::Instant::now(), true);
    let _ = outbox.ready().now_or_never();
    // Three changes within one budget: the first is held (the join frame started the
    // budget), the others queue behind it.
    for (i, (name, value)) in [("x", "1"), ("y", "2"), ("x", "3")].into_iter().enumerate() {
        let change = fake.order(ROOM, set(name, value), 1);
        assert_eq!(change.seq, i as u64 + 1);
        fake.deliver(change).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let frames = loop {
        let frames = wire.taken();
        if !frames.is_empty() || tokio::time::Instant::now() > deadline {
            break frames;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let expected: String = [line("x", "1"), line("y", "2"), line("x", "3")]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(frames, vec![expected], "one frame, written by the room");
    assert!(
        outbox.ready().now_or_never().is_none(),
        "the connection task was never woken"
    );
    assert_eq!(outbox.bytes(), 0);
}
