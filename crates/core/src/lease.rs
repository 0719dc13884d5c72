//! Who performs a cluster-wide side effect (delivering webhooks) once per cluster rather
//! than once per node: the [`Leadership`] seam.
//!
//! On one node, [`AlwaysLeader`]: the node is always the leader. With `--redis`,
//! `nimbus_redis::lease::RedisLease`: a lease in Redis (`SET key node NX PX ttl`, renewed
//! by its holder); only the holder acts. The holder also records how far it got
//! ([`Leadership::progress`], the global id up to which every event is settled); a node that
//! takes the lease over learns it ([`Leadership::take_handover`]) and replays what it saw
//! after it, so a handover duplicates events (receivers de-duplicate by id) rather than
//! losing them (`docs/integrations.md`, Webhooks).

use futures_util::future::BoxFuture;
use nimbus_proto::backplane::StreamId;

/// See the module docs. Implementations answer from memory: they are asked inside room
/// actors and the backplane's subscription, which must never block.
pub trait Leadership: Send + Sync + std::fmt::Debug {
    /// Whether this node acts now.
    fn is_leader(&self) -> bool;

    /// Every event up to `gid` is settled: delivered, or dropped for good (shared with the
    /// next holder, which replays the events after it). Never an event still queued.
    fn progress(&self, gid: StreamId) {
        let _ = gid;
    }

    /// Once after this node took the lease over: the progress its previous holder had
    /// recorded (`None`: nothing to replay, or no previous holder).
    fn take_handover(&self) -> Option<StreamId> {
        None
    }

    /// Stop acting and let another node take over at once (at shutdown).
    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The single node: always the leader, nothing to hand over.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysLeader;

impl Leadership for AlwaysLeader {
    fn is_leader(&self) -> bool {
        true
    }
}
