//! One endpoint's delivery task.
//!
//! - **One request in flight per endpoint**, batches in queue order: events reach a
//!   receiver in publish order (so in order per room), and a batch is retried until it is
//!   acknowledged or dropped before the next one is sent. A slow receiver delays only its
//!   own endpoint.
//! - **Retried** (backoff from [`Backoff`], equal jitter, doubling from `backoff_base` to
//!   `backoff_cap`): connection errors, timeouts, 5xx, 408 and 429. A `Retry-After` (seconds
//!   or an HTTP date) lengthens the wait, up to [`MAX_RETRY_AFTER`].
//! - **Permanent** (the batch is dropped, reason `permanent`): any other 4xx, and 1xx/3xx
//!   (redirects are not followed: a receiver's URL is configured, not discovered).
//! - **Given up** (dropped, reason `gave_up`): after `max_attempts` attempts, or when the next
//!   attempt would start later than `max_retry_time` after the first.
//! - Every attempt of a batch sends the same body and `webhook-id`, with a fresh
//!   `webhook-timestamp` and signatures (receivers refuse stale timestamps).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use nimbus_proto::backoff::Backoff;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use crate::config::{EndpointConfig, Filter};
use crate::metrics::{DropReason, EndpointMetrics};
use crate::payload;
use crate::queue::{Item, Queue};
use crate::sign::{signature_header, Secret};

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// An endpoint: its configuration, queue and series.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) index: usize,
    /// `host[:port]`, for logs.
    pub(crate) host: String,
    url: url::Url,
    secrets: Vec<Secret>,
    pub(crate) filter: Filter,
    pub(crate) queue: Queue,
    pub(crate) metrics: EndpointMetrics,
    timeout: Duration,
    backoff: Backoff,
    max_attempts: u32,
    max_retry_time: Duration,
}

impl Endpoint {
    pub(crate) fn new(
        index: usize,
        cfg: &EndpointConfig,
        metrics: EndpointMetrics,
    ) -> Result<Endpoint, crate::config::ConfigError> {
        cfg.validate()?;
        let url = cfg.parsed_url()?;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_owned(),
        };
        let limits = crate::queue::Limits {
            queue_events: cfg.queue_events,
            queue_bytes: cfg.queue_bytes,
            batch_events: cfg.max_batch_events,
            batch_bytes: cfg.max_batch_bytes,
            linger: cfg.linger,
        };
        Ok(Endpoint {
            index,
            host,
            url,
            secrets: cfg.secrets.clone(),
            filter: Filter::new(cfg)?,
            queue: Queue::new(index, limits, metrics.clone()),
            metrics,
            timeout: cfg.timeout,
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            max_attempts: cfg.max_attempts,
            max_retry_time: cfg.max_retry_time,
        })
    }
}

/// How a batch ended.
#[derive(Debug)]
enum Outcome {
    Delivered,
    Permanent(StatusCode),
    GaveUp { attempts: u32, last: String },
}

/// What one attempt gave.
enum Attempt {
    Ok,
    Permanent(StatusCode),
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// The endpoint's task: batches until the queue is closed and empty.
pub(crate) async fn run(ep: Arc<Endpoint>, client: reqwest::Client) {
    while let Some(batch) = ep.queue.next_batch().await {
        let n = batch.len();
        match deliver(&ep, &client, &batch).await {
            Outcome::Delivered => {
                ep.metrics.delivered_requests.inc();
                ep.metrics.delivered_events.inc_by(n as u64);
                let now = Instant::now();
                for item in &batch {
                    ep.metrics
                        .latency
                        .observe(now.duration_since(item.published).as_secs_f64());
                }
            }
            Outcome::Permanent(status) => {
                ep.metrics.dropped(DropReason::Permanent, n);
                tracing::error!(
                    endpoint = ep.index,
                    host = %ep.host,
                    %status,
                    events = n,
                    "webhook: receiver refused a batch, dropped"
                );
            }
            Outcome::GaveUp { attempts, last } => {
                ep.metrics.dropped(DropReason::GaveUp, n);
                tracing::error!(
                    endpoint = ep.index,
                    host = %ep.host,
                    attempts,
                    last_error = %last,
                    events = n,
                    "webhook: gave up on a batch, dropped"
                );
            }
        }
        ep.queue.complete();
    }
}

async fn deliver(ep: &Endpoint, client: &reqwest::Client, batch: &[Arc<Item>]) -> Outcome {
    let msg_id = payload::message_id(batch.iter().map(|i| i.id.as_str()));
    let body = payload::body(batch.iter().map(|i| &i.fragment), SystemTime::now());
    let first = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let (why, retry_after) = match attempt_once(ep, client, &msg_id, &body).await {
            Attempt::Ok => return Outcome::Delivered,
            Attempt::Permanent(status) => return Outcome::Permanent(status),
            Attempt::Retry { why, retry_after } => (why, retry_after),
        };
        attempt += 1;
        let mut delay = ep.backoff.equal_jitter(attempt - 1, rand::random::<f64>());
        if let Some(ra) = retry_after {
            delay = delay.max(ra.min(MAX_RETRY_AFTER));
        }
        if attempt >= ep.max_attempts || first.elapsed() + delay > ep.max_retry_time {
            return Outcome::GaveUp {
                attempts: attempt,
                last: why,
            };
        }
        ep.metrics.retried_requests.inc();
        tracing::warn!(
            endpoint = ep.index,
            host = %ep.host,
            webhook_id = %msg_id,
            attempt,
            error = %why,
            retry_in_ms = delay.as_millis() as u64,
            "webhook: delivery failed, will retry"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn attempt_once(
    ep: &Endpoint,
    client: &reqwest::Client,
    msg_id: &str,
    body: &Bytes,
) -> Attempt {
    let ts = payload::unix_secs(SystemTime::now());
    let sig = signature_header(&ep.secrets, msg_id, ts, body);
    let sent = client
        .post(ep.url.clone())
        .timeout(ep.timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.clone())
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        // without_url: the URL may carry credentials.
        Err(e) => {
            return Attempt::Retry {
                why: error_chain(&e.without_url()),
                retry_after: None,
            }
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Ok;
    }
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Attempt::Retry {
            why: format!("HTTP {status}"),
            retry_after: resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        };
    }
    Attempt::Permanent(status)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The HTTP client shared by every endpoint: rustls, HTTP/1.1, no redirects.
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("nimbus-webhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
