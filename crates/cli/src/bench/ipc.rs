//! `nimbus bench ipc`: request/response throughput and latency against any IPC server.
//!
//! N connections share a concurrency of C requests in flight (each connection pipelines
//! about C/N requests; the protocol answers in order per socket). Prints requests/s and
//! p50/p99/max latency (HdrHistogram, µs) for the measured window after a warm-up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `nimbus bench ipc`.
#[derive(Debug, Args)]
pub struct IpcBenchArgs {
    /// Server URL (main or multicast port), e.g. `ws://127.0.0.1:8000/`.
    #[arg(long, default_value = "ws://127.0.0.1:8000/")]
    pub url: String,
    /// Shared secret sent as `Authorization`.
    #[arg(long, env = "NIMBUS_IPC_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Endpoint to call.
    #[arg(long, default_value = "echo")]
    pub endpoint: String,
    /// Request `data` (JSON object).
    #[arg(long, default_value = r#"{"n":1}"#)]
    pub data: String,
    /// Connections.
    #[arg(long, short = 'n', default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight in total (spread over the connections, at least one each).
    #[arg(long, short = 'c', default_value_t = 4)]
    pub concurrency: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up in seconds (not measured).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

struct ConnResult {
    hist: Histogram<u64>,
    done: u64,
    errors: u64,
}

async fn conn_task(
    url: String,
    frame: String,
    depth: usize,
    start_measure: Instant,
    end: Instant,
) -> anyhow::Result<ConnResult> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(super::ws_config()), false)
            .await
            .with_context(|| format!("connect {url}"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut done, mut errors) = (0u64, 0u64);
    let mut inflight = VecDeque::with_capacity(depth);
    for _ in 0..depth {
        ws.send(Message::text(frame.clone())).await?;
        inflight.push_back(Instant::now());
    }
    while let Some(sent) = inflight.front().copied() {
        let msg = tokio::time::timeout_at((end + Duration::from_secs(10)).into(), ws.next())
            .await
            .context("reply timeout")?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => anyhow::bail!("unexpected frame {m:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        };
        inflight.pop_front();
        let now = Instant::now();
        if sent >= start_measure && now <= end {
            let is_err = serde_json::from_str::<Value>(text.as_str())
                .ok()
                .and_then(|v| {
                    v.as_object()
                        .map(|o| o.contains_key("error") && o.contains_key("code"))
                })
                .unwrap_or(true);
            if is_err {
                errors += 1;
            } else {
                done += 1;
                let us = u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record(us.max(1));
            }
        }
        if now < end {
            ws.send(Message::text(frame.clone())).await?;
            inflight.push_back(Instant::now());
        }
    }
    let _ = ws.close(None).await;
    Ok(ConnResult { hist, done, errors })
}

/// Run the benchmark.
pub fn run(args: IpcBenchArgs) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    let frame = nimbus_proto::ipc::encode_request(&args.endpoint, &data, args.secret.as_deref());
    let n = args.connections.max(1);
    let c = args.concurrency.max(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let (hist, done, errors, secs) = rt.block_on(async {
        let t0 = Instant::now();
        let start_measure = t0 + Duration::from_secs_f64(args.warmup.max(0.0));
        let end = start_measure + Duration::from_secs_f64(args.duration.max(0.1));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let depth = c / n + usize::from(i < c % n);
            set.spawn(conn_task(
                args.url.clone(),
                frame.clone(),
                depth,
                start_measure,
                end,
            ));
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut done, mut errors) = (0u64, 0u64);
        while let Some(r) = set.join_next().await {
            let r = r??;
            hist.add(&r.hist)?;
            done += r.done;
            errors += r.errors;
        }
        anyhow::Ok((
            hist,
            done,
            errors,
            end.duration_since(start_measure).as_secs_f64(),
        ))
    })?;
    let rps = done as f64 / secs;
    let (p50, p99, max) = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"url": args.url, "connections": n, "concurrency": c, "duration_s": secs,
                "requests": done, "errors": errors, "rps": rps, "p50_us": p50, "p99_us": p99, "max_us": max})
        );
    } else {
        println!(
            "ipc {} n={n} c={c} {secs:.1}s: {rps:.0} req/s, p50 {p50} µs, p99 {p99} µs, max {max} µs, {done} ok, {errors} error replies",
            args.url
        );
    }
    if done == 0 {
        anyhow::bail!("no successful replies");
    }
    Ok(())
}
