//! `nimbus bench gateway`: an in-process `nimbus serve` (memory store) with its gateway on
//! 127.0.0.1, measured from raw WebSocket clients over loopback:
//!
//! 1. **dispatch throughput**: S shard sessions (`shard: [i, S]`) identify; the hub
//!    publishes N cloud sets spread over R rooms (each room maps to one shard by
//!    `shard_of`); the clock runs from the first set until every shard has received its
//!    share. Reports dispatches/s.
//! 2. **resume time**: one session disconnects, the hub publishes M (default 10,000)
//!    cloud sets, then the client reconnects and Resumes; the clock runs from the
//!    connect until RESUMED, after all M replayed dispatches.
//!
//! Each is run `--runs` times; the median is printed. Bounded: stops by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::cloud::CloudValue;
use nimbus_proto::gateway::shard_of;
use nimbus_server::hub::Hub;
use nimbus_server::store::{MemoryBackend, Store};
use nimbus_server::{Config, GatewayConfig, GatewayToken, Server};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `nimbus bench gateway`.
#[derive(Debug, Args)]
pub struct GatewayBenchArgs {
    /// Shard sessions (S).
    #[arg(long, short = 's', default_value_t = 4)]
    pub shards: u64,
    /// Cloud sets published for the throughput phase (N).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Rooms the sets are spread over (R).
    #[arg(long, default_value_t = 64)]
    pub rooms: u64,
    /// Events missed before the resume (M).
    #[arg(long, default_value_t = 10_000)]
    pub missed: u64,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Runtime worker threads (server and clients share them).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Run the server with this Redis backplane (`redis://127.0.0.1:6379/`): sessions and
    /// events go through Redis, as on several nodes.
    #[arg(long)]
    pub redis: Option<String>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TOKEN: &str = "bench";
const WAIT: Duration = Duration::from_secs(120);

async fn recv(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("gateway stalled")?
            .context("gateway closed")??;
        if let Message::Text(t) = msg {
            return Ok(serde_json::from_str(t.as_str())?);
        }
        if let Message::Close(c) = msg {
            bail!("gateway closed: {c:?}");
        }
    }
}

async fn hello(addr: SocketAddr) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/gateway?v=10&encoding=json");
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(super::ws_config()), false).await?;
    let h = recv(&mut ws).await?;
    anyhow::ensure!(h["op"] == 10, "expected Hello, got {h}");
    Ok(ws)
}

/// Identify as shard `[id, n]`; returns the socket and the session id.
async fn identify(addr: SocketAddr, id: u64, n: u64) -> anyhow::Result<(Ws, String)> {
    let mut ws = hello(addr).await?;
    let d = json!({"token": TOKEN, "intents": 1, "properties": {}, "shard": [id, n]});
    ws.send(Message::text(json!({"op": 2, "d": d}).to_string()))
        .await?;
    let ready = recv(&mut ws).await?;
    anyhow::ensure!(ready["t"] == "READY", "expected READY, got {ready}");
    let sid = ready["d"]["session_id"].as_str().unwrap_or("").to_owned();
    Ok((ws, sid))
}

/// Close with 1000: the server drops the session (it would keep buffering otherwise).
async fn close_session(ws: &mut Ws) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = ws.close(Some(frame)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn set(hub: &Arc<Hub>, room: &str, i: u64) -> anyhow::Result<()> {
    hub.set_variable(room, "☁ n", CloudValue::Number(i.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn throughput(addr: SocketAddr, hub: &Arc<Hub>, a: &GatewayBenchArgs) -> anyhow::Result<f64> {
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("bench-{r}")).collect();
    let mut per_shard = vec![0u64; usize::try_from(a.shards)?];
    for i in 0..a.events {
        let room = &rooms[usize::try_from(i % a.rooms)?];
        per_shard[usize::try_from(shard_of(room, a.shards))?] += 1;
    }
    let mut readers = Vec::new();
    for id in 0..a.shards {
        let (mut ws, _) = identify(addr, id, a.shards).await?;
        let want = per_shard[usize::try_from(id)?];
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            while got < want {
                let p = recv(&mut ws).await?;
                if p["op"] == 0 {
                    got += 1;
                }
            }
            let at = Instant::now();
            close_session(&mut ws).await;
            anyhow::Ok(at)
        }));
    }
    let start = Instant::now();
    for i in 0..a.events {
        set(hub, &rooms[usize::try_from(i % a.rooms)?], i).await?;
    }
    let mut end = start;
    for r in readers {
        end = end.max(r.await??);
    }
    Ok(a.events as f64 / (end - start).as_secs_f64())
}

async fn resume_time(addr: SocketAddr, hub: &Arc<Hub>, missed: u64) -> anyhow::Result<Duration> {
    let (ws, session) = identify(addr, 0, 1).await?;
    drop(ws);
    // Values unique to this run (the room outlives runs, and in Redis also the process).
    let base = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )? * 100_000;
    for i in 0..missed {
        set(hub, "bench-resume", base + i).await?;
    }
    // The clock starts once the room has applied the last set: with --redis that is when
    // it came back from Redis, so the time is the resume's, not Redis working off a queue.
    let last = CloudValue::Number((base + missed.saturating_sub(1)).to_string());
    let deadline = Instant::now() + WAIT;
    loop {
        let vars = hub.variables("bench-resume").await?.unwrap_or_default();
        if vars.iter().any(|(n, v)| &**n == "☁ n" && *v == last) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the missed sets never applied");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let mut ws = hello(addr).await?;
    let d = json!({"token": TOKEN, "session_id": session, "seq": 1});
    ws.send(Message::text(json!({"op": 6, "d": d}).to_string()))
        .await?;
    // Until RESUMED and every missed event arrived (with --redis, an event still on its way
    // from the subscription to the session's log can come after RESUMED, as a live one).
    let (mut replayed, mut resumed) = (0u64, false);
    while !resumed || replayed < missed {
        let p = recv(&mut ws).await?;
        if p["op"] == 9 {
            bail!("resume refused (op 9): raise --missed's buffer");
        }
        if p["t"] == "RESUMED" {
            resumed = true;
        } else if p["op"] == 0 {
            replayed += 1;
        }
    }
    let took = start.elapsed();
    close_session(&mut ws).await;
    anyhow::ensure!(replayed == missed, "replayed {replayed} of {missed}");
    Ok(took)
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn run(a: GatewayBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.shards >= 1 && a.rooms >= 1 && a.runs >= 1,
        "shards, rooms, runs ≥ 1"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            gateway: GatewayConfig {
                tokens: vec![GatewayToken::parse(TOKEN).map_err(anyhow::Error::msg)?],
                replay_buffer: usize::try_from(a.missed + a.events + 16)?,
                identify_window: Duration::ZERO,
                session_start_limit: u32::MAX,
                ..GatewayConfig::default()
            },
            redis: a.redis.clone(),
            ..Config::default()
        };
        let store = Store::spawn(MemoryBackend::default(), Duration::from_millis(100));
        let server = Server::bind_with_store(config, store).await?;
        let addr = server.local_addr();
        let hub = server.hub();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        let mut rates = Vec::new();
        let mut resumes = Vec::new();
        for _ in 0..a.runs {
            rates.push(throughput(addr, &hub, &a).await?);
            resumes.push(resume_time(addr, &hub, a.missed).await?);
        }
        let rate = median(rates.clone());
        let resume = median(resumes.clone());
        if a.json {
            println!(
                "{}",
                json!({
                    "shards": a.shards, "events": a.events, "rooms": a.rooms, "runs": a.runs,
                    "redis": a.redis.is_some(),
                    "dispatch_per_s": rate.round(), "missed": a.missed,
                    "resume_ms": resume.as_secs_f64() * 1e3,
                    "all_dispatch_per_s": rates, "all_resume_ms": resumes.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                })
            );
        } else {
            println!(
                "gateway dispatch: {} shards, {} events over {} rooms: {:.0} dispatches/s (median of {})",
                a.shards, a.events, a.rooms, rate, a.runs
            );
            println!(
                "gateway resume after missing {} events: {:.1} ms to RESUMED (median of {})",
                a.missed,
                resume.as_secs_f64() * 1e3,
                a.runs
            );
        }
        let _ = stop.send(());
        task.await??;
        anyhow::Ok(())
    })
}
