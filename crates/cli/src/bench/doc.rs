//! `nimbus bench doc`: a Yjs document-room load generator for any y-websocket server.
//!
//! D documents × C editors. Every editor is a raw y-websocket protocol client (one
//! tokio-tungstenite connection, its own `yrs` document): it connects to `URL/ROOM`, does
//! the sync handshake (SyncStep1 / SyncStep2), then makes edits at R Hz on a fixed schedule
//! with a random phase. An edit is one transaction holding either a text insert at the end
//! of root text `t` or a set of key `e<editor>` in root map `m`; its content is the marker
//! `<editor>:<seq>:<send ns>;` (nanoseconds since the generator's epoch). Each update goes
//! out as one `[0, 2, update]` frame. Receivers apply every update to their document and
//! read the markers the application produced (text and map observers), so latency is
//! measured after applying. Only edits sent inside the measured window (after the warm-up)
//! count; expected deliveries = edits × (C − 1).
//!
//! `--apply one` (what `bench/doc.sh` runs) keeps that check on one editor per document
//! and lets the others read the markers straight from the update's bytes (a Yjs v1 update
//! carries an inserted string or a map value verbatim): applying every update 24,500 times
//! a second in the hot shape (50 receiving documents) cost the generator more than the
//! server it measures and made its own queue the tail. Every editor still edits its own
//! document, so the updates the server gets are the same kind either way.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use nimbus_doc::yrs;
use yrs::types::map::MapEvent;
use yrs::types::text::TextEvent;
use yrs::types::{Delta, EntryChange};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Doc, Map, MapRef, Observable, Out, ReadTxn, StateVector, Text, TextRef, Transact, Update,
};

/// Which receivers apply the updates they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApplyMode {
    /// Every editor applies every update and reads the markers from its document.
    All,
    /// The first editor of each document does; the others find the markers in the bytes.
    One,
}

/// What one edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EditKind {
    /// Insert the marker at the end of root text `t`.
    Text,
    /// Set key `e<editor>` of root map `m` to the marker.
    Map,
    /// Alternate: even sequence numbers insert text, odd ones set the map key.
    Mixed,
}

/// Arguments of `nimbus bench doc`.
#[derive(Debug, Args)]
pub struct DocBench {
    /// Base URL of the document endpoint; a room's URL is BASE/ROOM. Repeat to spread the
    /// editors over several nodes (editor `n` connects to URL `n % count`, so each
    /// document's editors are on different nodes).
    #[arg(long, default_value = "ws://127.0.0.1:9080/doc")]
    url: Vec<String>,
    /// Documents (rooms).
    #[arg(long, default_value_t = 100)]
    docs: usize,
    /// Editors per document (each one connection, all of them editing).
    #[arg(long, default_value_t = 5)]
    editors: usize,
    /// Edits per second of each editor.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// What an edit changes.
    #[arg(long, value_enum, default_value_t = EditKind::Mixed)]
    kind: EditKind,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (edits made, not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds allowed for every connection to open and finish its first sync.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Process id of the server, to sample its RSS (and CPU) from /proc/PID.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Which receivers apply what they get (latency is measured after applying, or after
    /// reading the markers from the bytes).
    #[arg(long, value_enum, default_value_t = ApplyMode::All)]
    apply: ApplyMode,
    /// Idle-connection mode: connect and sync every editor, let each make
    /// `--idle-edits` edits (so every connection has sent and received), then hold all
    /// connections open for this many seconds without editing and report the server's
    /// RSS per connection ((idle − before) / connections). No latency is measured.
    #[arg(long)]
    idle: Option<f64>,
    /// Edits each editor makes before idling in `--idle` mode.
    #[arg(long, default_value_t = 1)]
    idle_edits: u64,
    /// Print one JSON line instead of the human summary.
    #[arg(long)]
    json: bool,
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

pub fn run(args: DocBench) -> anyhow::Result<()> {
    if args.editors < 2 {
        bail!("need at least 2 editors per document");
    }
    if args.rate.is_nan()
        || args.rate <= 0.0
        || args.duration.is_nan()
        || args.duration <= 0.0
        || args.warmup < 0.0
    {
        bail!("--rate and --duration must be > 0, --warmup >= 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(bench(args))
}

// ---------------------------------------------------------------- y-websocket messages

const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_QUERY_AWARENESS: u64 = 3;
const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;

fn write_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `[0, subtype, varUint8Array(data)]`: one sync message (one frame).
fn sync_frame(subtype: u64, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 8);
    write_var(&mut out, MSG_SYNC);
    write_var(&mut out, subtype);
    write_var(&mut out, data.len() as u64);
    out.extend_from_slice(data);
    Message::binary(out)
}

/// `[1, varUint8Array([0])]`: an awareness update with no states (the answer to a query).
fn empty_awareness_frame() -> Message {
    Message::binary(vec![MSG_AWARENESS as u8, 1, 0])
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn var(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.var()?).ok()?;
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn done(&self) -> bool {
        self.at >= self.buf.len()
    }
}

/// A message received from the server, as far as the generator cares.
#[derive(Debug, PartialEq)]
enum Incoming<'a> {
    Step1(&'a [u8]),
    /// SyncStep2 or Update: both are applied.
    Update {
        data: &'a [u8],
        step2: bool,
    },
    QueryAwareness,
    Other,
}

/// Every message of one frame (servers should send one per frame; several are accepted).
fn parse_frame(buf: &[u8]) -> Result<Vec<Incoming<'_>>, &'static str> {
    let mut r = Reader { buf, at: 0 };
    let mut out = Vec::new();
    while !r.done() {
        match r.var().ok_or("truncated message type")? {
            MSG_SYNC => {
                let sub = r.var().ok_or("truncated sync subtype")?;
                let data = r.bytes().ok_or("truncated sync payload")?;
                out.push(match sub {
                    SYNC_STEP1 => Incoming::Step1(data),
                    SYNC_STEP2 => Incoming::Update { data, step2: true },
                    SYNC_UPDATE => Incoming::Update { data, step2: false },
                    _ => return Err("unknown sync subtype"),
                });
            }
            MSG_AWARENESS => {
                r.bytes().ok_or("truncated awareness payload")?;
                out.push(Incoming::Other);
            }
            MSG_QUERY_AWARENESS => out.push(Incoming::QueryAwareness),
            // Auth (2) and anything else: the rest of the frame is opaque.
            _ => {
                out.push(Incoming::Other);
                break;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- markers

fn marker(editor: u32, seq: u64, ns: u64) -> String {
    format!("{editor}:{seq}:{ns};")
}

/// `(editor, seq, ns)` of every marker written verbatim in `bytes`: an encoded update, or
/// the strings a document's observers saw (markers one after the other). A marker is
/// `digits:digits:digits;` preceded by a byte that is not a digit (the string's length
/// prefix, under 48 for any marker); anything else is skipped, and a stray match in binary
/// fields is filtered by the caller (editor id and time window) and by de-duplication.
fn markers(bytes: &[u8]) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b';')
        .filter_map(move |(end, _)| {
            let mut fields = [0u64; 3];
            let mut at = end;
            for (i, field) in fields.iter_mut().rev().enumerate() {
                let digits_end = at;
                while at > 0 && bytes[at - 1].is_ascii_digit() && digits_end - at < 20 {
                    at -= 1;
                }
                let digits = std::str::from_utf8(&bytes[at..digits_end]).ok()?;
                *field = digits.parse().ok()?;
                if i < 2 {
                    (at > 0 && bytes[at - 1] == b':').then_some(())?;
                    at -= 1;
                } else if at > 0 && bytes[at - 1].is_ascii_digit() {
                    return None;
                }
            }
            let editor = u32::try_from(fields[0]).ok()?;
            Some((editor, fields[1], fields[2]))
        })
}

// ---------------------------------------------------------------- editors

/// One connected, synced editor.
struct Editor {
    id: u32,
    /// Whether it applies the updates it gets (else it reads their markers from the bytes).
    applies: bool,
    ws: Ws,
    doc: Doc,
    text: TextRef,
    map: MapRef,
    /// Strings the observers saw inserted by remote updates, drained after each apply.
    seen: Arc<Mutex<Vec<String>>>,
}

fn new_doc() -> (Doc, TextRef, MapRef, Arc<Mutex<Vec<String>>>) {
    // 32-bit client IDs, as Yjs (JS) draws them: pycrdt < 0.13 mis-decodes larger ones.
    let doc = Doc::with_client_id(u64::from(rand::random_range(1..u32::MAX)));
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    text.observe("bench", move |txn: &yrs::TransactionMut, e: &TextEvent| {
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        for d in e.delta(txn) {
            if let Delta::Inserted(Out::Any(Any::String(s)), _) = d {
                sink.push(s.to_string());
            }
        }
    });
    let sink = seen.clone();
    map.observe("bench", move |txn: &yrs::TransactionMut, e: &MapEvent| {
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        for change in e.keys(txn).values() {
            if let EntryChange::Inserted(Out::Any(Any::String(s)))
            | EntryChange::Updated(_, Out::Any(Any::String(s))) = change
            {
                sink.push(s.to_string());
            }
        }
    });
    (doc, text, map, seen)
}

fn apply(doc: &Doc, data: &[u8]) -> anyhow::Result<()> {
    let update = Update::decode_v1(data).context("undecodable update")?;
    doc.transact_mut()
        .apply_update(update)
        .context("update not applicable")?;
    Ok(())
}

fn step2_for(doc: &Doc, sv: &[u8]) -> anyhow::Result<Vec<u8>> {
    let sv = StateVector::decode_v1(sv).context("undecodable state vector")?;
    Ok(doc.transact().encode_diff_v1(&sv))
}

/// Connect, send SyncStep1, answer the server's SyncStep1, wait for its SyncStep2.
async fn connect_editor(
    addr: SocketAddr,
    url: String,
    id: u32,
    applies: bool,
) -> anyhow::Result<Editor> {
    let stream = TcpStream::connect(addr).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let config = super::ws_config();
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
            .await
            .with_context(|| format!("websocket handshake with {url}"))?;
    let (doc, text, map, seen) = new_doc();
    let sv = doc.transact().state_vector().encode_v1();
    ws.send(sync_frame(SYNC_STEP1, &sv)).await?;
    loop {
        let msg = ws.next().await.context("closed before the first sync")??;
        let Message::Binary(b) = msg else {
            if let Message::Close(f) = msg {
                bail!("closed before the first sync: {f:?}");
            }
            continue;
        };
        let mut synced = false;
        for m in parse_frame(&b).map_err(anyhow::Error::msg)? {
            match m {
                Incoming::Step1(sv) => {
                    let reply = step2_for(&doc, sv)?;
                    ws.send(sync_frame(SYNC_STEP2, &reply)).await?;
                }
                Incoming::Update { data, step2 } => {
                    apply(&doc, data)?;
                    synced |= step2;
                }
                Incoming::QueryAwareness => ws.send(empty_awareness_frame()).await?,
                Incoming::Other => {}
            }
        }
        if synced {
            seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
            return Ok(Editor {
                id,
                applies,
                ws,
                doc,
                text,
                map,
                seen,
            });
        }
    }
}

/// What one editor observed.
struct Seen {
    hist: Histogram<u64>,
    received: u64,
    sent: u64,
    apply_errors: u64,
    closed: Option<u16>,
}

struct Plan {
    epoch: Instant,
    window: (u64, u64),
    stop_at: Instant,
    drain_until: Instant,
    period: Duration,
    kind: EditKind,
    /// Editors per document: editor `n` edits document `n / editors`.
    editors: usize,
}

async fn run_editor(mut ed: Editor, plan: Arc<Plan>) -> Seen {
    let mut seen = Seen {
        hist: latency_histogram(),
        received: 0,
        sent: 0,
        apply_errors: 0,
        closed: None,
    };
    // Markers already counted: a server may echo, or resend in a step2.
    let mut counted: HashSet<(u32, u64)> = HashSet::new();
    let key = format!("e{}", ed.id);
    let mut seq = 0u64;
    let mut next = plan.epoch + plan.period.mul_f64(rand::random::<f64>());
    let drain = tokio::time::sleep_until(plan.drain_until);
    tokio::pin!(drain);
    loop {
        let editing = next < plan.stop_at;
        let tick = tokio::time::sleep_until(next);
        tokio::select! {
            () = tick, if editing => {
                let ns = plan.epoch.elapsed().as_nanos() as u64;
                let m = marker(ed.id, seq, ns);
                let as_text = match plan.kind {
                    EditKind::Text => true,
                    EditKind::Map => false,
                    EditKind::Mixed => seq.is_multiple_of(2),
                };
                let update = {
                    let mut txn = ed.doc.transact_mut();
                    if as_text {
                        let at = ed.text.len(&txn);
                        ed.text.insert(&mut txn, at, &m);
                    } else {
                        ed.map.insert(&mut txn, key.as_str(), m.as_str());
                    }
                    txn.encode_update_v1()
                };
                // our own observers fired too: not a delivery
                ed.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
                if ed.ws.send(sync_frame(SYNC_UPDATE, &update)).await.is_err() {
                    seen.closed.get_or_insert(1006);
                    break;
                }
                if ns >= plan.window.0 && ns < plan.window.1 {
                    seen.sent += 1;
                }
                seq += 1;
                next += plan.period;
            }
            msg = ed.ws.next() => {
                let b = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(f))) => {
                        seen.closed = Some(f.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        seen.closed.get_or_insert(1006);
                        break;
                    }
                };
                let Ok(msgs) = parse_frame(&b) else {
                    seen.apply_errors += 1;
                    continue;
                };
                for m in msgs {
                    match m {
                        Incoming::Update { data, .. } => {
                            let mut count = |now: u64, (editor, q, ns): (u32, u64, u64)| {
                                let same_doc = editor as usize / plan.editors == ed.id as usize / plan.editors;
                                if editor == ed.id || !same_doc || ns < plan.window.0 || ns >= plan.window.1 || ns > now {
                                    return;
                                }
                                if counted.insert((editor, q)) {
                                    seen.received += 1;
                                    let _ = seen.hist.record(now.saturating_sub(ns).max(1_000));
                                }
                            };
                            if !ed.applies {
                                let now = plan.epoch.elapsed().as_nanos() as u64;
                                markers(data).for_each(|m| count(now, m));
                                continue;
                            }
                            if apply(&ed.doc, data).is_err() {
                                seen.apply_errors += 1;
                                continue;
                            }
                            let now = plan.epoch.elapsed().as_nanos() as u64;
                            let strings = std::mem::take(&mut *ed.seen.lock().unwrap_or_else(|p| p.into_inner()));
                            for s in &strings {
                                markers(s.as_bytes()).for_each(|m| count(now, m));
                            }
                        }
                        Incoming::Step1(sv) => {
                            if let Ok(reply) = step2_for(&ed.doc, sv) {
                                let _ = ed.ws.send(sync_frame(SYNC_STEP2, &reply)).await;
                            }
                        }
                        Incoming::QueryAwareness => {
                            let _ = ed.ws.send(empty_awareness_frame()).await;
                        }
                        Incoming::Other => {}
                    }
                }
            }
            () = &mut drain => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ed.ws.close(None)).await;
    seen
}

// ---------------------------------------------------------------- the run

fn target(url: &str) -> anyhow::Result<SocketAddr> {
    let u = url::Url::parse(url).with_context(|| format!("bad url {url}"))?;
    if u.scheme() != "ws" {
        bail!("the generator speaks plain ws:// only (loopback benchmarks)");
    }
    u.socket_addrs(|| Some(80))?
        .into_iter()
        .next()
        .context("url has no address")
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process, in seconds (Linux).
fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ')'.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

async fn bench(args: DocBench) -> anyhow::Result<()> {
    let targets = args
        .url
        .iter()
        .map(|u| Ok((target(u)?, u.trim_end_matches('/').to_owned())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prefix: u32 = rand::random_range(100_000..1_000_000);
    let total = args.docs * args.editors;
    let server_stat = args.server_pid.map(|p| format!("/proc/{p}/stat"));
    let rss_before = args.server_pid.and_then(rss_kib);

    // Connect and sync everyone (bounded concurrency, bounded time).
    let t_connect = Instant::now();
    let deadline = Duration::from_secs_f64(args.connect_timeout);
    let mut editors = Vec::with_capacity(total);
    let connect_all = async {
        let mut i = 0;
        while i < total {
            let batch: Vec<_> = (i..total.min(i + 128))
                .map(|n| {
                    let (addr, base) = &targets[n % targets.len()];
                    let url = format!("{base}/bench-{prefix}-{}", n / args.editors);
                    let applies = args.apply == ApplyMode::All || n % args.editors == 0;
                    connect_editor(*addr, url, n as u32, applies)
                })
                .collect();
            for ed in futures_util::future::join_all(batch).await {
                editors.push(ed?);
            }
            i += 128;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(deadline, connect_all)
        .await
        .with_context(|| {
            format!(
                "connecting {total} editors took longer than {} s",
                args.connect_timeout
            )
        })??;
    let connect_s = t_connect.elapsed().as_secs_f64();
    let rss_connected = args.server_pid.and_then(rss_kib);
    if let Some(hold) = args.idle {
        return idle(&args, editors, hold, connect_s, rss_before, rss_connected).await;
    }
    if !args.json {
        eprintln!(
            "{total} editors connected and synced in {connect_s:.2} s; warm-up {} s, measuring {} s",
            args.warmup, args.duration
        );
    }

    let epoch = Instant::now();
    let plan = Arc::new(Plan {
        epoch,
        window: (
            Duration::from_secs_f64(args.warmup).as_nanos() as u64,
            Duration::from_secs_f64(args.warmup + args.duration).as_nanos() as u64,
        ),
        stop_at: epoch + Duration::from_secs_f64(args.warmup + args.duration),
        drain_until: epoch + Duration::from_secs_f64(args.warmup + args.duration + 2.0),
        period: Duration::from_secs_f64(1.0 / args.rate),
        kind: args.kind,
        editors: args.editors,
    });
    let tasks: Vec<_> = editors
        .into_iter()
        .map(|ed| tokio::spawn(run_editor(ed, plan.clone())))
        .collect();

    // Server RSS peak, sampled every 250 ms until the end of the window.
    let peak = Arc::new(AtomicU64::new(rss_connected.unwrap_or(0)));
    let sampler = args.server_pid.map(|pid| {
        let peak = peak.clone();
        let stop_at = plan.stop_at;
        tokio::spawn(async move {
            while Instant::now() < stop_at {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });

    tokio::time::sleep_until(epoch + Duration::from_secs_f64(args.warmup)).await;
    let gen0 = cpu_seconds_of("/proc/self/stat");
    let srv0 = server_stat.as_deref().and_then(cpu_seconds_of);
    tokio::time::sleep_until(plan.stop_at).await;
    let gen1 = cpu_seconds_of("/proc/self/stat");
    let srv1 = server_stat.as_deref().and_then(cpu_seconds_of);
    let rss_after = args.server_pid.and_then(rss_kib);
    if let Some(s) = sampler {
        let _ = s.await;
    }

    let mut hist = latency_histogram();
    let (mut received, mut sent, mut apply_errors) = (0u64, 0u64, 0u64);
    let mut closes: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        let s = t.await?;
        received += s.received;
        sent += s.sent;
        apply_errors += s.apply_errors;
        hist.add(&s.hist)?;
        if let Some(c) = s.closed {
            *closes.entry(c).or_default() += 1;
        }
    }
    let secs = args.duration;
    let expected = sent * (args.editors as u64 - 1);
    let ratio = if expected > 0 {
        received as f64 / expected as f64
    } else {
        0.0
    };
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", (b - a) / secs * 100.0),
        _ => "null".to_owned(),
    };
    let kib = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    let rss_peak = args
        .server_pid
        .map(|_| peak.load(Ordering::Relaxed).max(rss_after.unwrap_or(0)));
    let closes_json: Vec<String> = closes.iter().map(|(c, n)| format!("\"{c}\":{n}")).collect();
    let kind = format!("{:?}", args.kind).to_lowercase();
    let apply = format!("{:?}", args.apply).to_lowercase();
    if args.json {
        println!(
            "{{\"mode\":\"doc\",\"docs\":{},\"editors\":{},\"rate\":{},\"kind\":\"{kind}\",\"apply\":\"{apply}\",\"connect_s\":{connect_s:.3},\"edits_per_s\":{:.0},\"deliveries_per_s\":{:.0},\"expected\":{expected},\"received\":{received},\"delivery_ratio\":{ratio:.5},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"apply_errors\":{apply_errors},\"generator_cpu_pct\":{},\"server_cpu_pct\":{},\"server_rss_before_kib\":{},\"server_rss_connected_kib\":{},\"server_rss_after_kib\":{},\"server_rss_peak_kib\":{},\"closes\":{{{}}}}}",
            args.docs, args.editors, args.rate,
            sent as f64 / secs, received as f64 / secs,
            ms(0.5), ms(0.99), ms(0.999), hist.max() as f64 / 1e6,
            pct(gen0, gen1), pct(srv0, srv1),
            kib(rss_before), kib(rss_connected), kib(rss_after), kib(rss_peak),
            closes_json.join(",")
        );
    } else {
        println!(
            "{} docs × {} editors × {} edits/s ({kind}, apply {apply})\n  edits/s {:.0}  deliveries/s {:.0}  delivered {received}/{expected} ({:.2}%)  apply errors {apply_errors}\n  latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n  generator CPU {}%  server CPU {}%  server RSS before {} KiB, connected {} KiB, after {} KiB, peak {} KiB\n  closes {closes:?}",
            args.docs, args.editors, args.rate,
            sent as f64 / secs, received as f64 / secs, ratio * 100.0,
            ms(0.5), ms(0.99), ms(0.999), hist.max() as f64 / 1e6,
            pct(gen0, gen1), pct(srv0, srv1),
            kib(rss_before), kib(rss_connected), kib(rss_after), kib(rss_peak),
        );
    }
    Ok(())
}

/// `--idle`: every editor makes `idle_edits` edits one after the other (each waits until
/// every other editor of its document has it), then all connections stay open and
/// quiet for `hold` seconds; the server's RSS is sampled at the end of the hold.
async fn idle(
    args: &DocBench,
    editors: Vec<Editor>,
    hold: f64,
    connect_s: f64,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
) -> anyhow::Result<()> {
    let total = editors.len();
    let edits = args.idle_edits;
    let expected = edits * (args.editors as u64 - 1);
    let hold = Duration::from_secs_f64(hold.max(0.0));
    // Each editor: its edits, then read until it has every other editor's edits, then
    // keep reading (pings, nothing else) until the hold ends, then close.
    let quiet = Arc::new(tokio::sync::Barrier::new(total + 1));
    let release = Arc::new(tokio::sync::Notify::new());
    let tasks: Vec<_> = editors
        .into_iter()
        .map(|mut ed| {
            let (quiet, release) = (quiet.clone(), release.clone());
            tokio::spawn(async move {
                let mut got = 0u64;
                let mut failed = None;
                for seq in 0..edits {
                    let m = marker(ed.id, seq, 0);
                    let update = {
                        let mut txn = ed.doc.transact_mut();
                        let at = ed.text.len(&txn);
                        ed.text.insert(&mut txn, at, &m);
                        txn.encode_update_v1()
                    };
                    if ed.ws.send(sync_frame(SYNC_UPDATE, &update)).await.is_err() {
                        failed = Some("send failed");
                    }
                }
                ed.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let until = Instant::now() + Duration::from_secs(30);
                while failed.is_none() && got < expected {
                    let msg = tokio::time::timeout_at(until, ed.ws.next()).await;
                    let Ok(Some(Ok(Message::Binary(b)))) = msg else {
                        match msg {
                            Ok(Some(Ok(_))) => continue,
                            _ => {
                                failed = Some("closed or timed out before every edit arrived");
                                break;
                            }
                        }
                    };
                    for m in parse_frame(&b).unwrap_or_default() {
                        if let Incoming::Update { data, .. } = m {
                            let _ = apply(&ed.doc, data);
                        }
                    }
                    let strings =
                        std::mem::take(&mut *ed.seen.lock().unwrap_or_else(|p| p.into_inner()));
                    got += strings
                        .iter()
                        .map(|s| markers(s.as_bytes()).count() as u64)
                        .sum::<u64>();
                }
                quiet.wait().await;
                let released = release.notified();
                tokio::pin!(released);
                loop {
                    tokio::select! {
                        () = &mut released => break,
                        msg = ed.ws.next() => if !matches!(msg, Some(Ok(_))) {
                            failed.get_or_insert("closed while idle");
                            // Wait for the release all the same.
                            (&mut released).await;
                            break;
                        },
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), ed.ws.close(None)).await;
                failed
            })
        })
        .collect();
    quiet.wait().await;
    let gen0 = cpu_seconds_of("/proc/self/stat");
    let srv0 = args
        .server_pid
        .and_then(|p| cpu_seconds_of(&format!("/proc/{p}/stat")));
    tokio::time::sleep(hold).await;
    let rss_idle = args.server_pid.and_then(rss_kib);
    let gen1 = cpu_seconds_of("/proc/self/stat");
    let srv1 = args
        .server_pid
        .and_then(|p| cpu_seconds_of(&format!("/proc/{p}/stat")));
    release.notify_waiters();
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in tasks {
        if let Some(why) = t.await? {
            *failures.entry(why).or_default() += 1;
        }
    }
    let per_conn = |a: Option<u64>| match (rss_before, a) {
        (Some(b), Some(a)) if total > 0 => {
            format!("{:.0}", (a.saturating_sub(b) * 1024) as f64 / total as f64)
        }
        _ => "null".to_owned(),
    };
    let kib = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    let secs = hold.as_secs_f64().max(1e-9);
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", (b - a) / secs * 100.0),
        _ => "null".to_owned(),
    };
    let failures_json: Vec<String> = failures
        .iter()
        .map(|(w, n)| format!("\"{w}\":{n}"))
        .collect();
    if args.json {
        println!(
            "{{\"mode\":\"doc-idle\",\"docs\":{},\"editors\":{},\"connections\":{total},\"idle_edits\":{edits},\"connect_s\":{connect_s:.3},\"hold_s\":{},\"server_rss_before_kib\":{},\"server_rss_connected_kib\":{},\"server_rss_idle_kib\":{},\"bytes_per_connection_connected\":{},\"bytes_per_connection_idle\":{},\"server_cpu_idle_pct\":{},\"generator_cpu_idle_pct\":{},\"failures\":{{{}}}}}",
            args.docs, args.editors, hold.as_secs_f64(),
            kib(rss_before), kib(rss_connected), kib(rss_idle),
            per_conn(rss_connected), per_conn(rss_idle),
            pct(srv0, srv1), pct(gen0, gen1),
            failures_json.join(",")
        );
    } else {
        println!(
            "{} docs × {} editors = {total} idle connections ({edits} edits each first)\n  server RSS before {} KiB, connected {} KiB, idle {} KiB\n  per connection: {} B connected, {} B idle\n  failures {failures:?}",
            args.docs, args.editors,
            kib(rss_before), kib(rss_connected), kib(rss_idle),
            per_conn(rss_connected), per_conn(rss_idle),
        );
    }
    Ok(())
}

/// 1 µs .. 120 s at 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("constant bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::GetString;

    fn bytes(m: Message) -> Vec<u8> {
        m.into_data().to_vec()
    }

    #[test]
    fn frames_match_the_protocol_examples() {
        // empty document: step1 `00 00 01 00`, step2 `00 01 02 00 00`
        let doc = Doc::new();
        let sv = doc.transact().state_vector().encode_v1();
        assert_eq!(bytes(sync_frame(SYNC_STEP1, &sv)), [0, 0, 1, 0]);
        assert_eq!(
            bytes(sync_frame(
                SYNC_STEP2,
                &step2_for(&doc, &sv).unwrap_or_default()
            )),
            [0, 1, 2, 0, 0]
        );
        let mut v = Vec::new();
        write_var(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn concatenated_messages_are_all_read() {
        let mut frame = bytes(sync_frame(SYNC_STEP1, &[0]));
        frame.extend([1, 3, 1, 2, 3]); // awareness
        frame.extend(bytes(sync_frame(SYNC_UPDATE, &[0, 0])));
        frame.push(3); // query awareness
        assert_eq!(
            parse_frame(&frame),
            Ok(vec![
                Incoming::Step1(&[0]),
                Incoming::Other,
                Incoming::Update {
                    data: &[0, 0],
                    step2: false
                },
                Incoming::QueryAwareness,
            ])
        );
        assert!(parse_frame(&[0, 2, 5, 1]).is_err());
    }

    #[test]
    fn markers_round_trip_and_ignore_fragments() {
        let s = format!("{}{}junk:1;2:3", marker(7, 1, 99), marker(8, 2, 100));
        assert_eq!(
            markers(s.as_bytes()).collect::<Vec<_>>(),
            [(7, 1, 99), (8, 2, 100)]
        );
    }

    #[test]
    fn the_byte_scan_finds_exactly_the_marker_of_a_text_or_map_update() {
        let (a, at, am, _) = new_doc();
        for (editor, seq, ns) in [(0, 0, 1), (7, 12, 2_000_000_123), (499, 9, 59_999_999_999)] {
            let text = {
                let mut txn = a.transact_mut();
                let end = at.len(&txn);
                at.insert(&mut txn, end, &marker(editor, seq, ns));
                txn.encode_update_v1()
            };
            let map = {
                let mut txn = a.transact_mut();
                am.insert(
                    &mut txn,
                    format!("e{editor}"),
                    marker(editor, seq + 1, ns).as_str(),
                );
                txn.encode_update_v1()
            };
            assert_eq!(markers(&text).collect::<Vec<_>>(), [(editor, seq, ns)]);
            assert_eq!(markers(&map).collect::<Vec<_>>(), [(editor, seq + 1, ns)]);
        }
    }

    #[test]
    fn the_byte_scan_skips_fragments_and_digits_glued_to_a_marker() {
        assert_eq!(
            markers(b"\x05:1:2;\x061:2:3;9\x0512:3;\x01:2;:3;\x02x1:2:3;").collect::<Vec<_>>(),
            [(1, 2, 3), (1, 2, 3)]
        );
        // a digit right before the editor field makes the editor ambiguous: skipped
        assert_eq!(markers(b"71:2:3;").count(), 1);
        assert_eq!(markers(b"\x06123456789012345678901:2:3;").count(), 0);
    }

    #[test]
    fn a_remote_edit_is_seen_after_applying() {
        let (a, at, am, _) = new_doc();
        let (b, _, _, seen) = new_doc();
        let u1 = {
            let mut txn = a.transact_mut();
            at.insert(&mut txn, 0, &marker(1, 0, 5));
            txn.encode_update_v1()
        };
        let u2 = {
            let mut txn = a.transact_mut();
            am.insert(&mut txn, "e1", marker(1, 1, 6).as_str());
            txn.encode_update_v1()
        };
        apply(&b, &u1).unwrap_or_default();
        apply(&b, &u2).unwrap_or_default();
        let got: Vec<_> = seen
            .lock()
            .map(|v| {
                v.iter()
                    .flat_map(|s| markers(s.as_bytes()).collect::<Vec<_>>())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(got, [(1, 0, 5), (1, 1, 6)]);
        assert_eq!(
            b.get_or_insert_text("t").get_string(&b.transact()),
            "1:0:5;"
        );
    }
}
