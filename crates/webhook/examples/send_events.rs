//! Publish a scripted sequence of room events to one webhook receiver and wait for it to
//! be delivered (used by `tests/interop/webhooks.sh`).
//!
//! ```text
//! cargo run -p nimbus-webhook --example send_events -- \
//!     --url http://127.0.0.1:8080/hook --secret whsec_... [--secret whsec_...] \
//!     [--events 90] [--manifest published.jsonl]
//! ```
//!
//! The events go round three rooms (`lobby`, `game-1`, `game-2`): per room a
//! `ROOM_JOIN` and a `CLOUD_CREATE`, then `CLOUD_SET`s, and the `DOC_CHANGED`s a
//! [`Debouncer`] (100 ms) fed by the sets emits. Every body carries the room's `seq`
//! (1, 2, 3, ...) so a receiver can check the order. `--manifest` writes every published
//! event as a JSON line (`id`, `room`, `type`, `seq`), in publish order. Exits 1 if any
//! event is left undelivered after 60 s.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use nimbus_webhook::{Debouncer, EndpointConfig, Event, Secret, WebhookMetrics, Webhooks};

struct Args {
    url: String,
    secrets: Vec<Secret>,
    events: usize,
    manifest: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        secrets: Vec::new(),
        events: 90,
        manifest: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--secret" => a
                .secrets
                .push(value()?.parse().map_err(|e| format!("--secret: {e}"))?),
            "--events" => a.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--manifest" => a.manifest = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.url.is_empty() || a.secrets.is_empty() {
        return Err(String::from(
            "usage: send_events --url URL --secret whsec_... [--secret ...] [--events N] [--manifest FILE]",
        ));
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = EndpointConfig::new(a.url, a.secrets);
    cfg.max_batch_events = 10;
    cfg.backoff_base = Duration::from_millis(200);
    cfg.backoff_cap = Duration::from_secs(2);
    let metrics = WebhookMetrics::default();
    let hooks = match Webhooks::start(vec![cfg], &metrics) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };

    let mut s = Script {
        hooks: hooks.clone(),
        manifest: Vec::new(),
        seq: [0; 3],
    };
    let mut debounce = Debouncer::new(Duration::from_millis(100), 16);
    for (i, room) in ROOMS.iter().enumerate() {
        s.publish(
            room,
            "ROOM_JOIN",
            format!(r#"{{"room":"{room}","user":"player{i}","conn":{i},"seq":"@seq"}}"#),
        );
        s.publish(
            room,
            "CLOUD_CREATE",
            format!(
                r#"{{"room":"{room}","name":"☁ score","value":0,"user":"player{i}","seq":"@seq"}}"#
            ),
        );
    }
    let mut i = 0usize;
    while s.manifest.len() < a.events.saturating_sub(ROOMS.len()) {
        let room = ROOMS[i % ROOMS.len()];
        s.publish(
            room,
            "CLOUD_SET",
            format!(r#"{{"room":"{room}","name":"☁ score","value":{i},"user":null,"seq":"@seq"}}"#),
        );
        if let Some(early) = debounce.touch(room, Instant::now()) {
            s.publish(&early, "DOC_CHANGED", doc_changed(&early));
        }
        for room in debounce.due(Instant::now()) {
            s.publish(&room, "DOC_CHANGED", doc_changed(&room));
        }
        i += 1;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The rooms still pending: their last DOC_CHANGED (as if their interval had passed).
    for room in debounce.due(Instant::now() + Duration::from_secs(1)) {
        s.publish(&room, "DOC_CHANGED", doc_changed(&room));
    }
    let manifest = s.manifest;

    if let Some(path) = &a.manifest {
        let mut text = String::new();
        for m in &manifest {
            text.push_str(&m.to_string());
            text.push('\n');
        }
        if let Err(e) = std::fs::File::create(path).and_then(|mut f| f.write_all(text.as_bytes())) {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    }
    let report = hooks
        .shutdown(Instant::now() + Duration::from_secs(60))
        .await;
    eprintln!(
        "send_events: published {} events, {} undelivered",
        manifest.len(),
        report.undelivered
    );
    if report.undelivered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

const ROOMS: [&str; 3] = ["lobby", "game-1", "game-2"];

/// The publisher and its record of what it published.
struct Script {
    hooks: Webhooks,
    manifest: Vec<serde_json::Value>,
    seq: [u64; 3],
}

impl Script {
    /// Publish one event; `"@seq"` in `body` becomes the room's next sequence number.
    fn publish(&mut self, room: &str, kind: &'static str, body: String) {
        let id = format!("evt_{:05}", self.manifest.len());
        let ri = ROOMS.iter().position(|r| *r == room).unwrap_or(0);
        self.seq[ri] += 1;
        let seq = self.seq[ri];
        self.manifest
            .push(serde_json::json!({"id": id, "room": room, "type": kind, "seq": seq}));
        self.hooks.publish(Event {
            id,
            room: room.to_owned(),
            kind,
            body: Bytes::from(body.replace("\"@seq\"", &seq.to_string())),
            at: SystemTime::now(),
            order: None,
        });
    }
}

fn doc_changed(room: &str) -> String {
    format!(r#"{{"room":"{room}","seq":"@seq"}}"#)
}
