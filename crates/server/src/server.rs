//! [`Server`]: bind, run, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use nimbus_core::history::{HistoryLog, StoreHistory};
use nimbus_core::lease::{AlwaysLeader, Leadership};
use nimbus_redis::cloud::RedisReplication;
use nimbus_redis::doc::RedisDocs;
use nimbus_redis::gateway::RedisSessionLog;
use nimbus_redis::history::RedisHistory;
use nimbus_redis::identify::RedisIdentify;
use nimbus_redis::lease::RedisLease;
use nimbus_redis::RedisBackplane;

use crate::auth::Auth;
use crate::config::Config;
use crate::doc::replication::{DocReplication, LocalDocs};
use crate::doc::rooms::DocRoomsMetrics;
use crate::doc::DocRooms;
use crate::events::EventBus;
use crate::gateway::log::SessionLog;
use crate::gateway::{Gateway, IdentifyBudget};
use crate::http::{router, App};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::replication::{CloudReplication, InProcess};
use crate::room::RoomContext;
use crate::store::{Store, StoreError};

/// How long shutdown waits for connections to send their close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for queued webhook events to be delivered.
const WEBHOOK_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A server failure.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The signing keys could not be loaded (a JWKS file that cannot be read or parsed).
    #[error("signing keys: {0}")]
    Keys(#[from] nimbus_auth::KeyError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed to open or flush.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The IPC server could not start.
    #[error("ipc: {0}")]
    Ipc(#[from] nimbus_ipc::ServerError),
    /// The Redis backplane could not be reached at startup.
    #[error("redis backplane: {0}")]
    Backplane(#[from] nimbus_redis::BackplaneError),
    /// The webhook senders could not start.
    #[error(transparent)]
    Webhooks(#[from] nimbus_webhook::StartError),
    /// The accept loop failed.
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, not yet running, nimbus server.
///
/// ```no_run
/// # async fn demo() -> Result<(), nimbus_server::ServerError> {
/// let mut config = nimbus_server::Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// let server = nimbus_server::Server::bind(config).await?;
/// println!("listening on {}", server.local_addr());
/// server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    hub: Arc<Hub>,
    docs: Arc<DocRooms>,
    ipc: Option<nimbus_ipc::Server>,
    gateway: Option<Arc<Gateway>>,
    /// With `--redis`: stopped at shutdown.
    backplane: Option<Arc<RedisBackplane>>,
    /// The edge's bounds, replaced whole by a reload (new connections get the new ones).
    edge: Arc<ArcSwap<crate::edge::EdgeConfig>>,
    /// Per-address admission (its limits follow `edge`).
    admission: Arc<crate::edge::accept::Admission>,
    /// Every subsystem's metrics (served at `/metrics`).
    metrics: Arc<Metrics>,
    /// Who clients are (static and signed tokens); reloaded on SIGHUP.
    auth: Arc<Auth>,
    /// Webhooks, when receivers are configured (flushed at shutdown).
    hooks: Option<Arc<crate::hooks::Hooks>>,
    /// Cloud history (`GET /logs`).
    history: Arc<dyn HistoryLog>,
}

/// What a running server takes from a new config on SIGHUP: the signing keys and the cloud
/// identity policy, the static tokens of documents, the gateway and the API, and the edge's
/// limits (`[edge]`: per-address caps and rates, request-head deadline, send-queue bytes,
/// write timeout, cloud set rate; new connections get them). Connections already admitted
/// stay. Everything else (listen address, room limits, Redis) needs a restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    auth: Arc<Auth>,
    edge: Arc<ArcSwap<crate::edge::EdgeConfig>>,
    admission: Arc<crate::edge::accept::Admission>,
    docs: Arc<DocRooms>,
    gateway: Option<Arc<Gateway>>,
}

impl Reloader {
    /// Apply `config`. Keys that do not load refuse the whole reload: nothing changes.
    pub fn apply(&self, config: &Config) -> Result<(), ServerError> {
        self.auth.reload(&config.auth)?;
        self.docs
            .set_access(crate::doc::AccessRules::new(config.doc.tokens.clone()));
        if let Some(gw) = &self.gateway {
            gw.set_tokens(config.gateway.tokens.clone());
        }
        self.edge.store(Arc::new(config.edge.clone()));
        self.admission.set(&config.edge);
        Ok(())
    }
}

impl Server {
    /// The handle that applies a reloaded config (SIGHUP) to this server.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            auth: self.auth.clone(),
            edge: self.edge.clone(),
            admission: self.admission.clone(),
            docs: self.docs.clone(),
            gateway: self.gateway.clone(),
        }
    }

    /// Open the store and bind the listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let store = crate::store::open_store(
            &config.data_dir,
            config.flush_interval,
            config.doc.compaction,
        )?;
        Server::bind_with_store(config, store).await
    }

    /// Like [`Server::bind`] with a store of your choice (e.g. in memory).
    pub async fn bind_with_store(config: Config, store: Store) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        let edge = Arc::new(ArcSwap::from_pointee(config.edge.clone()));
        let auth = Arc::new(Auth::new(&config.auth)?);
        let mut metrics = Metrics::new();
        metrics.register_doc_bounds(config.doc.stats.clone());
        metrics.register_store(&store);
        let metrics = Arc::new(metrics);
        // The composition root: cloud rooms replicate in process, or through Redis.
        let events = Arc::new(EventBus::default());
        let max_name_len = config.cloud.max_name_len;
        let (replication, backplane): (Arc<dyn CloudReplication>, _) = match &config.redis {
            None => (
                Arc::new(InProcess::new(
                    store.clone(),
                    events.clone(),
                    (metrics.cloud.clone(), metrics.store.clone()),
                    max_name_len,
                )),
                None,
            ),
            Some(url) => {
                let counted = nimbus_redis::metrics::Metrics {
                    backplane: metrics.backplane.clone(),
                    cloud: metrics.cloud.clone(),
                    doc: metrics.doc.clone(),
                };
                let bp = RedisBackplane::connect(url, Arc::new(counted)).await?;
                let repl = RedisReplication::new(bp.clone(), events.clone(), max_name_len);
                (Arc::new(repl), Some(bp))
            }
        };
        let rooms = RoomContext {
            limits: Arc::new(config.cloud),
            replication,
            metrics: metrics.cloud.clone(),
            replication_metrics: metrics.replication.clone(),
        };
        let hub = Hub::new(store.clone(), rooms, metrics.store.clone(), events);
        // Document rooms keep their updates in the store, or in Redis (shared).
        let doc_replication: Arc<dyn DocReplication> = match &backplane {
            None => Arc::new(LocalDocs::new(store.clone(), hub.events.clone())),
            Some(bp) => Arc::new(RedisDocs::new(bp.clone())),
        };
        let doc_metrics = DocRoomsMetrics {
            doc: metrics.doc.clone(),
            store: metrics.store.clone(),
            replication: metrics.replication.clone(),
        };
        // Cloud history: the store fed from the event bus, or Redis (written by the cloud
        // script).
        let history: Arc<dyn HistoryLog> = match &backplane {
            None => {
                let h = StoreHistory::new(store.clone(), config.history);
                h.attach(&hub.events);
                Arc::new(h)
            }
            Some(bp) => Arc::new(RedisHistory::new(bp.clone(), config.history)),
        };
        let docs = Arc::new(DocRooms::with_replication(
            store,
            Arc::new(config.doc),
            doc_metrics,
            doc_replication,
        ));
        docs.attach();
        let ipc = match config.ipc {
            Some(c) => {
                let mut builder = nimbus_ipc::Server::builder()
                    .host(c.host)
                    .port(c.port)
                    .multicast(true)
                    .multicast_port(c.multicast_port);
                if let Some(secret) = c.secret {
                    builder = builder.secret_key(secret);
                }
                if config.auth.keys.is_some() {
                    // A signed token whose `api` grant covers every room, read-write, may
                    // call every route (they reach any room).
                    let auth = auth.clone();
                    builder = builder.also_accept(move |token| {
                        matches!(auth.verify(token), Some(Ok(id))
                            if id.access(nimbus_auth::Capability::Api, "*")
                                == Some(nimbus_auth::Mode::ReadWrite))
                    });
                }
                let server = builder.build()?;
                crate::ipc_routes::register(&server, hub.clone(), docs.clone());
                server.start().await?;
                tracing::info!(addr = ?server.local_addr(), multicast = ?server.multicast_addr(), "IPC routes listening");
                Some(server)
            }
            None => None,
        };
        // Gateway sessions live in memory, or in Redis (resumable on any node); so do the
        // bots' identify budgets (one budget per bot across the nodes).
        let (session_log, budget): (Arc<dyn SessionLog>, Arc<dyn IdentifyBudget>) = match &backplane
        {
            None => (
                crate::gateway::log::in_memory(),
                Gateway::local_budget(&config.gateway),
            ),
            Some(bp) => (
                Arc::new(RedisSessionLog::new(bp.clone())),
                Arc::new(RedisIdentify::new(
                    bp.clone(),
                    config.gateway.max_concurrency,
                    config.gateway.identify_window,
                    config.gateway.session_start_limit,
                )),
            ),
        };
        // Served with static tokens, or with signing keys (signed tokens identify).
        let gateway = (config.gateway.enabled() || config.auth.keys.is_some()).then(|| {
            Gateway::new(
                &hub.events,
                metrics.gateway.clone(),
                config.gateway.clone(),
                session_log,
                budget,
            )
        });
        // Webhooks: delivered by this node, or by the holder of the lease in Redis.
        let hooks = if config.hooks.enabled() {
            let leader: Arc<dyn Leadership> = match &backplane {
                None => Arc::new(AlwaysLeader),
                Some(bp) => RedisLease::start(bp.clone(), nimbus_redis::lease::DEFAULT_TTL),
            };
            Some(crate::hooks::Hooks::start(
                config.hooks,
                &metrics.webhook,
                &hub.events,
                leader,
                backplane.is_some(),
                docs.clone(),
            )?)
        } else {
            None
        };
        Ok(Server {
            listener,
            addr,
            hub,
            docs,
            ipc,
            gateway,
            backplane,
            admission: crate::edge::accept::Admission::new(&config.edge, metrics.edge.clone()),
            edge,
            metrics,
            auth,
            hooks,
            history,
        })
    }

    /// The IPC main port's address, when `--ipc` is on.
    pub fn ipc_addr(&self) -> Option<SocketAddr> {
        self.ipc.as_ref().and_then(nimbus_ipc::Server::local_addr)
    }

    /// The IPC multicast (discovery) port's address, when `--ipc` is on.
    pub fn ipc_multicast_addr(&self) -> Option<SocketAddr> {
        self.ipc
            .as_ref()
            .and_then(nimbus_ipc::Server::multicast_addr)
    }

    /// The hub (rooms, event bus), e.g. to publish events or set variables in tests.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` resolves, then: stop accepting, close every client
    /// with 1001, and flush the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let app = App {
            hub: self.hub.clone(),
            docs: self.docs.clone(),
            gateway: self.gateway.clone(),
            shutdown: token.clone(),
            tracker: tracker.clone(),
            edge: self.edge.clone(),
            metrics: self.metrics.clone(),
            auth: self.auth.clone(),
            history: self.history.clone(),
        };
        let stop = CancellationToken::new();
        let serving = crate::edge::accept::serve(
            self.listener,
            router(app.clone()).merge(crate::api::routes(&app).with_state(app)),
            self.edge.clone(),
            self.admission,
            self.metrics.edge.clone(),
            stop.clone(),
        );
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {}
            () = shutdown => {
                // Upgraded sockets close with 1001 while HTTP requests finish.
                token.cancel();
                stop.cancel();
                serving.await;
            }
        }
        token.cancel();
        if let Some(ipc) = &self.ipc {
            ipc.terminate_server().await;
        }
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
        }
        if let Some(hooks) = &self.hooks {
            hooks
                .shutdown(std::time::Instant::now() + WEBHOOK_FLUSH_TIMEOUT)
                .await;
        }
        if let Some(bp) = &self.backplane {
            bp.shutdown();
        }
        // Changes accepted before the store failed are retried until here: say how many
        // are lost if it still cannot write.
        match self.hub.store.flush().await {
            Ok(()) => {
                tracing::info!("shut down cleanly");
                Ok(())
            }
            Err(e) => {
                match &e {
                    StoreError::Unflushed { ops, reason } => tracing::error!(
                        ops,
                        %reason,
                        "shutdown: {ops} accepted changes could not be stored and are lost"
                    ),
                    other => {
                        tracing::error!(error = %other, "shutdown: the store could not be flushed; accepted changes may be lost")
                    }
                }
                Err(ServerError::Store(e))
            }
        }
    }
}
