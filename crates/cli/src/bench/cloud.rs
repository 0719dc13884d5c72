//! `nimbus bench cloud`: a cloud-protocol load generator for any server.
//!
//! Pub/sub mode: R rooms × C clients; in each room P publishers send `set`s at H Hz,
//! paced on a fixed schedule. The value of every set is its send time (nanoseconds
//! since the generator started, digits only, valid in the Scratch profile), so each
//! receiver measures delivery latency. Only sets sent inside the measured window
//! (after the warm-up) count. Idle mode: N handshaken connections held open.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `nimbus bench cloud`.
#[derive(Debug, Args)]
pub struct CloudBench {
    /// Server URL; repeat to spread the clients over several nodes (client `n` connects
    /// to URL `n % count`, so each room's clients and publishers are spread over them).
    #[arg(long, default_value = "ws://127.0.0.1:9080/")]
    url: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Clients per room (publishers included).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Sets per second of each publisher.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Idle mode: open this many connections instead, hold them for --duration.
    #[arg(long)]
    idle: Option<usize>,
    /// Spread connections over this many source addresses 127.0.0.2.. (more than ~28k connections need > 1).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON line instead of the human summary.
    #[arg(long)]
    json: bool,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub fn run(args: CloudBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        match args.idle {
            Some(n) => idle(&args, n).await,
            None => pubsub(&args).await,
        }
    })
}

/// Every `--url` as (address, url).
fn targets(urls: &[String]) -> anyhow::Result<Vec<(SocketAddr, String)>> {
    urls.iter().map(|u| target(u)).collect()
}

fn target(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let u = url::Url::parse(url).with_context(|| format!("bad url {url}"))?;
    if u.scheme() != "ws" {
        bail!("the generator speaks plain ws:// only (loopback benchmarks)");
    }
    let addr = u
        .socket_addrs(|| Some(80))?
        .into_iter()
        .next()
        .context("url has no address")?;
    Ok((addr, url.to_owned()))
}

async fn open(addr: SocketAddr, url: &str, n: usize, source_ips: u8) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if source_ips > 1 {
        let ip = Ipv4Addr::new(127, 0, 0, 2 + (n % usize::from(source_ips)) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(super::ws_config())).await?;
    Ok(ws)
}

fn handshake(room: &str, user: &str) -> Message {
    Message::text(format!(
        "{{\"method\":\"handshake\",\"user\":\"{user}\",\"project_id\":\"{room}\"}}"
    ))
}

fn run_prefix() -> u32 {
    rand::random_range(100_000..1_000_000)
}

/// Open `count` connections with bounded concurrency; `f(i)` gives each its room/user.
async fn open_many(
    targets: &[(SocketAddr, String)],
    count: usize,
    source_ips: u8,
    who: impl Fn(usize) -> (String, String),
) -> anyhow::Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let batch: Vec<_> = (i..count.min(i + 256))
            .map(|n| {
                let (room, user) = who(n);
                let (addr, url) = targets[n % targets.len()].clone();
                async move {
                    let mut ws = open(addr, &url, n, source_ips).await?;
                    ws.send(handshake(&room, &user)).await?;
                    anyhow::Ok(ws)
                }
            })
            .collect();
        for ws in futures_util::future::join_all(batch).await {
            out.push(ws?);
        }
        i += 256;
    }
    Ok(out)
}

async fn idle(args: &CloudBench, n: usize) -> anyhow::Result<()> {
    let targets = targets(&args.url)?;
    let prefix = run_prefix();
    let started = Instant::now();
    let conns = open_many(&targets, n, args.source_ips, |i| {
        (format!("{prefix}{:05}", i / 100), format!("i{i}"))
    })
    .await?;
    let opened = conns.len();
    eprintln!(
        "opened {opened} connections in {:.1} s; holding {} s",
        started.elapsed().as_secs_f64(),
        args.duration
    );
    // Keep reading so pings are answered and nobody is dropped as dead.
    let alive = Arc::new(AtomicU64::new(opened as u64));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            let alive = alive.clone();
            tokio::spawn(async move {
                while let Some(Ok(_)) = ws.next().await {}
                alive.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let still = alive.load(Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    if args.json {
        println!("{{\"mode\":\"idle\",\"opened\":{opened},\"alive_at_end\":{still}}}");
    } else {
        println!("idle: opened {opened}, alive at end {still}");
    }
    Ok(())
}

/// What one client observed.
struct Seen {
    hist: Histogram<u64>,
    received: u64,
    closed: Option<u16>,
    /// The newest value seen of each publisher's variable (by publisher number).
    last: Vec<u64>,
}

/// The publisher number `N` of a `"name":"☁ pN"` line.
fn publisher_of(line: &str) -> Option<usize> {
    let at = line.find("\"name\":\"\u{2601} p")? + "\"name\":\"\u{2601} p".len();
    let digits = &line[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Nanoseconds in `"value":123}`-shaped lines; `None` for anything else.
fn sent_ns(line: &str) -> Option<u64> {
    let at = line.rfind("\"value\":")? + 8;
    let digits = line[at..].trim_start_matches('"');
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

async fn pubsub(args: &CloudBench) -> anyhow::Result<()> {
    if args.publishers > args.clients || args.clients < 2 {
        bail!("need at least 2 clients per room and no more publishers than clients");
    }
    let targets = targets(&args.url)?;
    let prefix = run_prefix();
    let clients = args.clients;
    let conns = open_many(&targets, args.rooms * clients, args.source_ips, |i| {
        (
            format!("{prefix}{:05}", i / clients),
            format!("b{}x{}", i / clients, i % clients),
        )
    })
    .await?;
    eprintln!(
        "{} connections open; warm-up {} s, measuring {} s",
        conns.len(),
        args.warmup,
        args.duration
    );

    let epoch = Instant::now();
    let window = (
        Duration::from_secs_f64(args.warmup).as_nanos() as u64,
        Duration::from_secs_f64(args.warmup + args.duration).as_nanos() as u64,
    );
    let stop_at = epoch + Duration::from_secs_f64(args.warmup + args.duration);
    let drain_until = stop_at + Duration::from_secs(2);
    let sent = Arc::new(AtomicU64::new(0));
    // The last value each publisher sent (by connection index), to check that every
    // receiver ends with the latest value of every variable.
    let last_sent: Arc<Vec<AtomicU64>> = Arc::new(
        (0..args.rooms * clients)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let publishers = args.publishers;
    let period = Duration::from_secs_f64(1.0 / args.rate);

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let is_pub = i % clients < args.publishers;
        if is_pub {
            let sent = sent.clone();
            let last_sent = last_sent.clone();
            let name = format!("\u{2601} p{}", i % clients);
            // Spread publishers' phases over one period.
            let phase = period.mul_f64(rand::random::<f64>());
            writers.push(tokio::spawn(async move {
                let mut next = epoch + phase;
                while next < stop_at {
                    tokio::time::sleep_until(next).await;
                    let now = epoch.elapsed().as_nanos() as u64;
                    let line =
                        format!("{{\"method\":\"set\",\"name\":\"{name}\",\"value\":{now}}}");
                    if sink.send(Message::text(line)).await.is_err() {
                        break;
                    }
                    last_sent[i].store(now, Ordering::Relaxed);
                    if now >= window.0 && now < window.1 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    next += period;
                }
                sink
            }));
        }
        readers.push(tokio::spawn(async move {
            let mut seen = Seen {
                hist: latency_histogram(),
                received: 0,
                closed: None,
                last: vec![0; publishers],
            };
            // One timer per reader, not one per received frame.
            let drain = tokio::time::sleep_until(drain_until);
            tokio::pin!(drain);
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    () = &mut drain => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let now = epoch.elapsed().as_nanos() as u64;
                        for line in t.as_str().split('\n') {
                            if let Some(ns) = sent_ns(line) {
                                if let Some(slot) =
                                    publisher_of(line).and_then(|p| seen.last.get_mut(p))
                                {
                                    *slot = (*slot).max(ns);
                                }
                                if ns >= window.0 && ns < window.1 {
                                    seen.received += 1;
                                    let _ = seen.hist.record(now.saturating_sub(ns).max(1_000));
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        seen.closed = Some(f.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        seen.closed.get_or_insert(1006);
                        break;
                    }
                }
            }
            seen
        }));
    }
    tokio::time::sleep_until(epoch + Duration::from_secs_f64(args.warmup)).await;
    let cpu_w0 = cpu_seconds();
    tokio::time::sleep_until(stop_at).await;
    let cpu_w1 = cpu_seconds();
    let mut total = latency_histogram();
    let mut received = 0u64;
    let mut closes: std::collections::BTreeMap<u16, u64> = Default::default();
    // Receiver × variable pairs that did not end with the variable's latest value.
    let mut stale = 0u64;
    for (i, r) in readers.into_iter().enumerate() {
        let seen = r.await?;
        let room = i / clients;
        for (p, &got) in seen.last.iter().enumerate() {
            let want = last_sent[room * clients + p].load(Ordering::Relaxed);
            if p != i % clients && got != want {
                stale += 1;
            }
        }
        received += seen.received;
        total.add(&seen.hist)?;
        if let Some(c) = seen.closed {
            *closes.entry(c).or_default() += 1;
        }
    }
    for w in writers {
        w.abort();
    }
    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * (args.clients as u64 - 1);
    let secs = args.duration;
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1e6;
    let ratio = if expected > 0 {
        received as f64 / expected as f64
    } else {
        0.0
    };
    let gen_cpu = (cpu_w1 - cpu_w0) / secs * 100.0;
    let closes_json: Vec<String> = closes.iter().map(|(c, n)| format!("\"{c}\":{n}")).collect();
    if args.json {
        println!(
            "{{\"mode\":\"pubsub\",\"rooms\":{},\"clients\":{},\"publishers\":{},\"rate\":{},\"sets_per_s\":{:.0},\"deliveries_per_s\":{:.0},\"expected\":{expected},\"received\":{received},\"delivery_ratio\":{ratio:.5},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"generator_cpu_pct\":{gen_cpu:.1},\"final_stale\":{stale},\"closes\":{{{}}}}}",
            args.rooms, args.clients, args.publishers, args.rate,
            sent as f64 / secs, received as f64 / secs,
            ms(0.5), ms(0.99), ms(0.999), total.max() as f64 / 1e6,
            closes_json.join(",")
        );
    } else {
        println!(
            "{} rooms × {} clients, {} publishers × {} Hz\n  sets/s {:.0}  deliveries/s {:.0}  delivered {received}/{expected} ({:.2}%)\n  latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n  generator CPU {gen_cpu:.0}%  closes {closes:?}\n  receivers not ending with a variable's latest value: {stale}",
            args.rooms, args.clients, args.publishers, args.rate,
            sent as f64 / secs, received as f64 / secs, ratio * 100.0,
            ms(0.5), ms(0.99), ms(0.999), total.max() as f64 / 1e6,
        );
    }
    Ok(())
}

/// 1 µs .. 120 s at 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("constant bounds are valid")
}

/// This process's user + system CPU seconds (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_read_from_number_and_string_values() {
        assert_eq!(
            sent_ns(r#"{"method":"set","name":"☁ p0","value":12345}"#),
            Some(12345)
        );
        assert_eq!(
            sent_ns(r#"{"method":"set","name":"☁ p0","value":"987"}"#),
            Some(987)
        );
        assert_eq!(sent_ns("garbage"), None);
        assert_eq!(sent_ns(""), None);
    }

    #[test]
    fn the_publisher_number_is_read_from_the_variable_name() {
        assert_eq!(
            publisher_of(r#"{"method":"set","name":"☁ p12","value":1}"#),
            Some(12)
        );
        assert_eq!(
            publisher_of(r#"{"method":"set","name":"☁ x","value":1}"#),
            None
        );
    }
}
