//! A local webhook receiver on 127.0.0.1 for the integration tests: it verifies every
//! request's Standard Webhooks signatures itself (hmac + sha2 + base64, not the crate's
//! signing code) and answers as told.

#![allow(dead_code, missing_docs)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nimbus_webhook::{Event, Secret};
use prometheus_client::registry::Registry;
use sha2::Sha256;
use tokio::net::TcpListener;

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// 204 after failing the first `n` requests with `status`.
    FailFirst(usize, u16),
    /// Always `status`.
    Always(u16),
    /// Read the request, never answer.
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub msg_id: String,
    pub body_len: usize,
    /// (id, type, room, data) of each event.
    pub events: Vec<(String, String, String, serde_json::Value)>,
    /// Answered with a 2xx.
    pub accepted: bool,
}

#[derive(Debug)]
pub struct Receiver {
    pub mode: Mode,
    keys: Vec<Vec<u8>>,
    pub requests: Mutex<Vec<Received>>,
    pub bad_signatures: Mutex<Vec<String>>,
}

impl Receiver {
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().expect("lock").clone()
    }

    /// Events of accepted requests, de-duplicated by id, in arrival order.
    pub fn events(&self) -> Vec<(String, String, String, serde_json::Value)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in self.requests().into_iter().filter(|r| r.accepted) {
            for e in r.events {
                if seen.insert(e.0.clone()) {
                    out.push(e);
                }
            }
        }
        out
    }

    pub fn assert_signatures_valid(&self) {
        let bad = self.bad_signatures.lock().expect("lock");
        assert!(bad.is_empty(), "bad signatures: {bad:?}");
    }

    fn verify(&self, headers: &hyper::HeaderMap, body: &[u8]) -> Result<String, String> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| format!("no {name}"))
        };
        let id = get("webhook-id")?;
        let ts = get("webhook-timestamp")?;
        let sigs = get("webhook-signature")?;
        let t: u64 = ts.parse().map_err(|_| format!("timestamp {ts:?}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        if now.abs_diff(t) > 300 {
            return Err(format!("timestamp {t} too far from {now}"));
        }
        let given: Vec<&str> = sigs.split(' ').collect();
        if given.len() != self.keys.len() {
            return Err(format!(
                "{} signatures for {} secrets",
                given.len(),
                self.keys.len()
            ));
        }
        for key in &self.keys {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            if !given.contains(&want.as_str()) {
                return Err(format!("no signature for one secret in {sigs:?}"));
            }
        }
        match headers.get("content-type").and_then(|v| v.to_str().ok()) {
            Some("application/json") => Ok(id),
            other => Err(format!("content-type {other:?}")),
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let headers = req.headers().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let msg_id = match self.verify(&headers, &body) {
            Ok(id) => id,
            Err(why) => {
                self.bad_signatures.lock().expect("lock").push(why);
                String::new()
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["type"], "nimbus.events", "{v}");
        let events = v["data"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or("").to_owned(),
                    e["type"].as_str().unwrap_or("").to_owned(),
                    e["room"].as_str().unwrap_or("").to_owned(),
                    e["data"].clone(),
                )
            })
            .collect();
        let status = {
            let mut reqs = self.requests.lock().expect("lock");
            let status = match self.mode {
                Mode::FailFirst(n, s) if reqs.len() < n => s,
                Mode::FailFirst(..) => 204,
                Mode::Always(s) => s,
                Mode::Hang => 0,
            };
            reqs.push(Received {
                path,
                msg_id,
                body_len: body.len(),
                events,
                accepted: (200..300).contains(&status),
            });
            status
        };
        if status == 0 {
            std::future::pending::<()>().await;
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        Ok(resp)
    }
}

/// Start a receiver; returns it and its base URL (`http://127.0.0.1:PORT`).
pub async fn receiver(mode: Mode, secrets: &[Secret]) -> (Arc<Receiver>, String) {
    let keys = secrets
        .iter()
        .map(|s| {
            let w = s.to_whsec();
            STANDARD
                .decode(w.trim_start_matches("whsec_"))
                .expect("base64 key")
        })
        .collect();
    let rx = Arc::new(Receiver {
        mode,
        keys,
        requests: Mutex::new(Vec::new()),
        bad_signatures: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let state = rx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| st.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (rx, url)
}

/// Poll `cond` every 10 ms for up to 30 s (a bound for correctness, not a speed check).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Await `f` for up to 30 s.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A metric's value from the registry's text exposition (`0` if absent).
pub fn metric(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub fn event(id: impl Into<String>, room: &str, kind: &'static str, body: &str) -> Event {
    Event {
        id: id.into(),
        room: room.into(),
        kind,
        body: Bytes::from(body.to_owned()),
        at: SystemTime::now(),
        order: None,
    }
}
