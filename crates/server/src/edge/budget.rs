//! The bytes of large HTTP response bodies held at once, bounded for the whole server.
//!
//! A handler builds its whole response (a document's state or JSON, a history page, a
//! room's variables) before hyper writes it; a client that never reads keeps it in memory
//! until the connection's write stall ends it (`accept::WRITE_STALL`, 60 s). The per-address
//! connection cap does not bound that across many addresses, so every response body of at
//! least [`COUNTED_FROM`] bytes takes its size from one budget of [`RESPONSE_BUDGET`]
//! bytes, and gives it back when the body is dropped (written out, or the connection gone).
//!
//! Policy:
//! - a body under [`COUNTED_FROM`] bytes, or of unknown length (none of ours), is not counted;
//! - a counted body takes `min(size, budget)`, so one response larger than the whole budget
//!   still goes out when nothing else holds any of it;
//! - when the budget cannot cover it at once, the response is replaced by `503 Service
//!   Unavailable` with `Retry-After: 1` and the usual `{"error": …}` body (counted in
//!   `nimbus_edge_busy_responses`): nothing waits for the budget, so a waiting request
//!   holds nothing either.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::EdgeMetrics;

/// The bytes of counted response bodies held at once, server-wide.
pub(crate) const RESPONSE_BUDGET: usize = 256 << 20;
/// Bodies from this size up are counted.
pub(crate) const COUNTED_FROM: usize = 64 << 10;
/// The budget's unit (semaphore permits are `u32`).
const UNIT: usize = 1 << 10;

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ResponseBudget {
    units: Arc<Semaphore>,
    total: u32,
    metrics: Arc<EdgeMetrics>,
}

impl ResponseBudget {
    /// A budget of `bytes` (rounded up to KiB).
    pub(crate) fn new(bytes: usize, metrics: Arc<EdgeMetrics>) -> ResponseBudget {
        let total = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        ResponseBudget {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
            metrics,
        }
    }

    /// `response` with its body holding its share of the budget, or a 503 when the budget
    /// cannot cover it now.
    pub(crate) fn admit(&self, response: Response) -> Response {
        let Some(size) = response.body().size_hint().exact() else {
            return response;
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size < COUNTED_FROM {
            return response;
        }
        let want = u32::try_from(size.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total);
        match self.units.clone().try_acquire_many_owned(want) {
            Ok(permit) => response.map(|body| {
                Body::new(Held {
                    body,
                    rest: Bytes::new(),
                    _permit: permit,
                })
            }),
            Err(_) => {
                self.metrics.busy_responses.inc();
                let mut busy = crate::reply::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is sending too many large responses; retry",
                );
                busy.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                busy
            }
        }
    }

    /// Budget bytes free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// A response body and the budget it holds until it is dropped, handed to hyper in
/// pieces of at most [`PIECE`] bytes: hyper takes a frame into its write buffer whole and
/// drops a body once it has taken the last one, so a body of one large frame would give its
/// share back before any of it was written. In pieces, hyper takes another only while its
/// write buffer holds less than its `max_buf_size` (`accept::MAX_HEAD_BYTES`, 64 KiB), and
/// the share is held until the last piece is taken: after that a connection holds under
/// 128 KiB of the body.
struct Held {
    body: Body,
    /// What is left of the data frame being handed over.
    rest: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// The most a counted body hands to hyper at once.
const PIECE: usize = 64 << 10;

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        loop {
            if !this.rest.is_empty() {
                let n = this.rest.len().min(PIECE);
                return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn response(len: usize) -> Response {
        Response::new(Body::from(vec![b'x'; len]))
    }

    fn budget(bytes: usize) -> ResponseBudget {
        ResponseBudget::new(bytes, Arc::new(EdgeMetrics::default()))
    }

    #[test]
    fn small_bodies_are_not_counted() {
        let b = budget(1 << 20);
        let r = b.admit(response(COUNTED_FROM - 1));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(b.free(), 1 << 20);
    }

    #[tokio::test]
    async fn a_large_body_holds_its_size_until_it_is_written_out() {
        let b = budget(1 << 20);
        let r = b.admit(response(300 << 10));
        assert_eq!(b.free(), (1 << 20) - (300 << 10));
        let mut body = r.into_body();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= PIECE, "handed over in pieces");
            got.extend_from_slice(&data);
            if got.len() < 300 << 10 {
                assert_eq!(
                    b.free(),
                    (1 << 20) - (300 << 10),
                    "held until the last piece"
                );
            }
        }
        assert_eq!(got, vec![b'x'; 300 << 10], "the body itself is unchanged");
        drop(body);
        assert_eq!(b.free(), 1 << 20, "given back once written");
    }

    #[test]
    fn a_body_of_a_client_that_went_away_gives_its_share_back() {
        let b = budget(1 << 20);
        let r = b.admit(response(300 << 10));
        assert_eq!(b.free(), (1 << 20) - (300 << 10));
        drop(r);
        assert_eq!(b.free(), 1 << 20);
    }

    #[test]
    fn over_the_budget_a_response_becomes_a_503_with_retry_after() {
        let b = budget(1 << 20);
        let held = b.admit(response(800 << 10));
        let busy = b.admit(response(300 << 10));
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert_eq!(b.metrics.busy_responses.get(), 1);
        assert_eq!(
            b.free(),
            (1 << 20) - (800 << 10),
            "the refused one holds nothing"
        );
        drop(held);
        assert_eq!(b.admit(response(300 << 10)).status(), StatusCode::OK);
    }

    #[test]
    fn one_body_larger_than_the_whole_budget_goes_out_alone() {
        let b = budget(1 << 20);
        let big = b.admit(response(3 << 20));
        assert_eq!(big.status(), StatusCode::OK);
        assert_eq!(b.free(), 0);
        assert_eq!(
            b.admit(response(COUNTED_FROM)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(big);
        assert_eq!(b.free(), 1 << 20);
    }
}
