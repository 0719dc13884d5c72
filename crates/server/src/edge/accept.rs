//! The listener: admission per client address, the request-head deadline, HTTP/1.1 with
//! upgrades, graceful shutdown.
//!
//! Order of checks for a new TCP connection:
//! 1. `accept` itself. Out of file descriptors → back off 50 ms (no busy loop), counted in
//!    `nimbus_edge_accept_errors_total`, logged at most once per second.
//! 2. [`Admission::admit`]: at most `max_conns_per_ip` open connections per address (IPv6:
//!    per /64) and `new_conns_per_ip_per_sec` new ones (burst `new_conns_per_ip_burst`).
//!    A refused connection gets `429 Too Many Requests` with `Retry-After` and is closed;
//!    at most [`MAX_REFUSING`] refusals are in flight, beyond that the socket is dropped.
//! 3. hyper reads the request head within `header_timeout` (the same deadline applies
//!    between keep-alive requests, so an idle keep-alive connection is closed too), with at
//!    most [`MAX_HEAD_BYTES`] buffered.
//!
//! An admitted connection keeps its slot until the socket closes, including after a
//! WebSocket upgrade (the slot travels with the IO object).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::ConnectInfo;
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::budget::ResponseBudget;
use super::wire::{DirectWire, Wire};
use super::{EdgeConfig, EdgeMetrics};

/// Refusals (429 answers) in flight at once; beyond, a refused socket is just dropped.
pub(crate) const MAX_REFUSING: usize = 256;
/// The most a request head may take in buffer, bytes (hyper's minimum is 8 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 64 << 10;
/// How long a refusal may take: writing the 429 and reading what the client sent.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Raise the open-file soft limit to the hard limit; log both. Returns (soft, hard).
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    let (soft_before, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    let soft = match rlimit::increase_nofile_limit(hard) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, soft = soft_before, hard, "cannot raise the open-file limit");
            soft_before
        }
    };
    tracing::info!(
        soft_before,
        soft,
        hard,
        "open-file limit (each client connection holds one)"
    );
    Some((soft, hard))
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many open connections from this address.
    TooMany,
    /// Too many new connections per second from this address.
    TooFast,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::TooMany => "too_many_connections",
            Refusal::TooFast => "too_many_new_connections",
        }
    }
}

/// The key an address is counted under: IPv4 address, or the IPv6 /64 (one host).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Per-address admission: open connections and new connections per second.
pub(crate) struct Admission {
    /// The current limits (replaced whole by [`Admission::set`] on a config reload).
    limits: ArcSwap<Limits>,
    open: Mutex<HashMap<IpAddr, u32>>,
    metrics: Arc<EdgeMetrics>,
}

/// What [`Admission`] checks, from an [`EdgeConfig`].
struct Limits {
    max_open: u32,
    /// [`EdgeConfig::write_stall`].
    write_stall: Duration,
    limit_loopback: bool,
    new: DefaultKeyedRateLimiter<IpAddr>,
}

impl Limits {
    fn new(cfg: &EdgeConfig) -> Limits {
        let quota = Quota::per_second(
            NonZeroU32::new(cfg.new_conns_per_ip_per_sec).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(cfg.new_conns_per_ip_burst).unwrap_or(NonZeroU32::MIN));
        Limits {
            max_open: cfg.max_conns_per_ip,
            write_stall: cfg.write_stall,
            limit_loopback: cfg.limit_loopback,
            new: RateLimiter::keyed(quota),
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_open", &self.limits.load().max_open)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub(crate) fn new(cfg: &EdgeConfig, metrics: Arc<EdgeMetrics>) -> Arc<Admission> {
        Arc::new(Admission {
            limits: ArcSwap::from_pointee(Limits::new(cfg)),
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// New limits (a config reload): open connections stay; the new-connection rate starts
    /// afresh.
    pub(crate) fn set(&self, cfg: &EdgeConfig) {
        self.limits.store(Arc::new(Limits::new(cfg)));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a connection from `ip`, or say why not. Loopback clients are only counted
    /// unless `limit_loopback` (a reverse proxy on the same host is one address for all).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = client_key(ip);
        let limits = self.limits.load();
        if key.is_loopback() && !limits.limit_loopback {
            *self.lock().entry(key).or_insert(0) += 1;
        } else {
            let mut open = self.lock();
            let n = open.entry(key).or_insert(0);
            if *n >= limits.max_open {
                return Err(Refusal::TooMany);
            }
            if limits.new.check_key(&key).is_err() {
                if *n == 0 {
                    open.remove(&key);
                }
                return Err(Refusal::TooFast);
            }
            *n += 1;
        }
        self.metrics.connections.inc();
        Ok(Slot {
            adm: self.clone(),
            key,
        })
    }

    /// Forget rate state of addresses that have been quiet (bounds the limiter's map).
    pub(crate) fn prune(&self) {
        let limits = self.limits.load();
        limits.new.retain_recent();
        limits.new.shrink_to_fit();
    }

    /// Open connections counted for `ip`'s key.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.lock().get(&client_key(ip)).copied().unwrap_or(0)
    }
}

/// One admitted connection's place in its address's count; released on drop.
pub(crate) struct Slot {
    adm: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.adm.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
        drop(open);
        self.adm.metrics.connections.dec();
    }
}

/// The longest a connection's writes may make no progress at all: then the write fails and
/// the connection closes. It bounds how long an HTTP response to a client that never reads
/// is held (hyper has no write deadline of its own). WebSocket routes have shorter deadlines
/// of their own (`--write-timeout-ms`, the document send timeouts); the longest of those,
/// the 60 s allowance of a document's first SyncStep2, is a total, so it comes first.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(60);

/// A TCP stream that holds its [`Slot`] for as long as it lives (through an upgrade too),
/// and fails a write that makes no progress for [`WRITE_STALL`].
pub(crate) struct Admitted {
    read: tokio::net::tcp::OwnedReadHalf,
    wire: Arc<Wire>,
    slot: Slot,
    /// Armed while a write waits (allocated only then, so an idle connection pays one
    /// pointer; the bound is read from the admission's limits when armed).
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Admitted {
    /// A write that is pending arms the stall timer (once); one that completes disarms it;
    /// a pending write whose timer ran out fails.
    fn stall_check(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if r.is_ready() {
            self.stall = None;
            return r;
        }
        let after = self.slot.adm.limits.load().write_stall;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if stall.as_mut().poll(cx).is_ready() {
            self.stall = None;
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write made no progress: the peer does not read",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = this.wire.poll_write(cx, buf);
        this.stall_check(cx, r)
    }

    /// A flush waits only while the wire drains the rest of a whole write (`super::wire`):
    /// that wait is bounded like a write's; a finished flush leaves the timer to the writes.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.wire.poll_flush(cx) {
            Poll::Pending => this.stall_check(cx, Poll::Pending).map_ok(|_| ()),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.wire.poll_shutdown(cx) {
            Poll::Pending => this.stall_check(cx, Poll::Pending).map_ok(|_| ()),
            done => done,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = this.wire.poll_write_vectored(cx, bufs);
        this.stall_check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        // A TCP stream gathers (`writev`); an engaged wire takes one buffer at a time.
        true
    }
}

/// Answer 429 and close, within [`REFUSAL_TIME`]. The request is read (and discarded) after
/// the answer so that closing does not reset the connection before the client read it.
async fn refuse(mut tcp: TcpStream, why: Refusal) {
    let body = match why {
        Refusal::TooMany => "{\"error\":\"too many connections from your address\"}\n",
        Refusal::TooFast => "{\"error\":\"too many new connections from your address\"}\n",
    };
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left = 16usize;
        while left > 0 && tcp.read(&mut sink).await? > 0 {
            left -= 1;
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Accept and serve until `stop` is cancelled; then ask every HTTP connection to finish its
/// request and wait for them (upgraded sockets are the wires' business).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: Arc<ArcSwap<EdgeConfig>>,
    admission: Arc<Admission>,
    metrics: Arc<EdgeMetrics>,
    stop: CancellationToken,
) {
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Sized once: a reload does not resize it (it is not a setting).
    let budget = ResponseBudget::new(cfg.load().response_budget, metrics.clone());
    let conns = TaskTracker::new();
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_accept_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            _ = prune.tick() => {
                admission.prune();
                continue;
            }
            r = listener.accept() => r,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                metrics.accept_errors.inc();
                let now = tokio::time::Instant::now();
                if last_accept_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    last_accept_log = Some(now);
                    tracing::error!(error = %e, "accept failed (is the open-file limit reached?)");
                }
                // Out of descriptors: accepting again at once would spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Every wire writes small messages that must leave at once: without TCP_NODELAY a
        // write behind an unacknowledged one waits for the peer's delayed ACK (up to 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let slot = match admission.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics.refused(why.label());
                tracing::debug!(peer = %addr, reason = why.label(), "connection refused (429)");
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(tcp, why).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let (read, wire) = Wire::split(tcp);
        let io = Admitted {
            read,
            wire: Arc::new(wire),
            slot,
            stall: None,
        };
        let served = Served {
            router: router.clone(),
            budget: budget.clone(),
        };
        let stop = stop.clone();
        let header_timeout = cfg.load().header_timeout;
        conns.spawn(serve_connection(io, addr, served, header_timeout, stop));
    }
    conns.close();
    conns.wait().await;
}

/// What a connection's requests are served by: the routes, and the budget their large
/// response bodies are held in.
struct Served {
    router: Router,
    budget: ResponseBudget,
}

async fn serve_connection(
    io: Admitted,
    addr: SocketAddr,
    served: Served,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let direct = DirectWire(io.wire.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        // The document route writes to its socket from the room's task (`super::wire`).
        req.extensions_mut().insert(direct.clone());
        let answer = served
            .router
            .clone()
            .oneshot(req.map(axum::body::Body::new));
        let budget = served.budget.clone();
        async move { answer.await.map(|r| budget.admit(r)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %addr, error = %e, "http connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "http connection ended");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(max_open: u32, per_sec: u32, burst: u32) -> EdgeConfig {
        EdgeConfig {
            max_conns_per_ip: max_open,
            new_conns_per_ip_per_sec: per_sec,
            new_conns_per_ip_burst: burst,
            limit_loopback: true,
            ..EdgeConfig::default()
        }
    }

    #[test]
    fn loopback_is_counted_but_not_capped_unless_asked() {
        let mut c = cfg(1, 1, 1);
        c.limit_loopback = false;
        let adm = Admission::new(&c, Arc::default());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..5).map(|_| adm.admit(lo).unwrap()).collect();
        assert_eq!(adm.open(lo), 5);
        drop(slots);
        assert_eq!(adm.open(lo), 0);
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        let _one = adm.admit(other).unwrap();
        assert_eq!(adm.admit(other).err(), Some(Refusal::TooMany));
    }

    #[test]
    fn an_address_over_its_open_cap_is_refused_until_one_closes() {
        let adm = Admission::new(&cfg(2, 1000, 1000), Arc::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = adm.admit(ip).unwrap();
        let _b = adm.admit(ip).unwrap();
        assert_eq!(adm.admit(ip).err(), Some(Refusal::TooMany));
        // Another address is not affected.
        assert!(adm.admit("10.0.0.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(adm.admit(ip).is_ok());
    }

    #[test]
    fn an_address_over_its_new_connection_rate_is_refused() {
        let adm = Admission::new(&cfg(100, 1, 3), Arc::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..3).map(|_| adm.admit(ip).unwrap()).collect();
        assert_eq!(adm.admit(ip).err(), Some(Refusal::TooFast));
        assert_eq!(adm.open(ip), 3);
        drop(slots);
        assert_eq!(adm.open(ip), 0);
        assert!(
            adm.lock().is_empty(),
            "no entry is kept for an address with no connection"
        );
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
