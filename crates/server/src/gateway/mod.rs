//! The gateway's WebSocket edge: `/gateway` (upgrade, Hello, Identify/Resume, heartbeats,
//! dispatch) and `GET /gateway/bot`. The session registry and its rules are
//! `nimbus_core::gateway`; this module owns the sockets and the HTTP routes.

mod conn;

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nimbus_proto::gateway::{parse_connect_query, MAX_PAYLOAD_BYTES};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use nimbus_core::gateway::*;

use crate::edge::EdgeMetrics;

/// What the gateway's HTTP routes need (their own state: the gateway does not know the
/// server's router).
#[derive(Clone)]
pub(crate) struct RouteState {
    /// The gateway, when at least one token is configured (else the routes answer 404).
    pub gateway: Option<Arc<Gateway>>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, for a graceful shutdown.
    pub tracker: TaskTracker,
    /// The edge's metrics (violations of the socket bounds).
    pub edge: Arc<EdgeMetrics>,
    /// The edge's bounds (the write-batching budget).
    pub bounds: Arc<arc_swap::ArcSwap<crate::edge::EdgeConfig>>,
    /// Static and signed tokens.
    pub auth: Arc<crate::auth::Auth>,
}

/// `/gateway`, `/gateway/` (WebSocket) and `GET /gateway/bot`.
pub(crate) fn routes(state: RouteState) -> Router {
    Router::new()
        .route("/gateway", get(upgrade))
        .route("/gateway/", get(upgrade))
        .route("/gateway/bot", get(bot))
        .with_state(state)
}

/// The `ws://host/gateway` URL clients reached us at (for READY and `/gateway/bot`).
fn public_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") | Some("wss") => "wss",
        _ => "ws",
    };
    format!("{scheme}://{host}/gateway")
}

async fn upgrade(
    State(app): State<RouteState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(gw) = app.gateway.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "gateway disabled: no --gateway-token\n",
        )
            .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            // Discord's GET /gateway: where to connect.
            let body = serde_json::json!({ "url": public_url(&headers) }).to_string();
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
    };
    let params = parse_connect_query(query.as_deref().unwrap_or(""));
    if params.encoding != "json" {
        return (
            StatusCode::BAD_REQUEST,
            "unsupported encoding (json only)\n",
        )
            .into_response();
    }
    let compress = match params.compress.as_deref() {
        None => false,
        Some("zlib-stream") => true,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "unsupported compress value (zlib-stream only)\n",
            )
                .into_response()
        }
    };
    let bad_version = params.version.is_some_and(|v| v != 10);
    let url = public_url(&headers);
    let RouteState {
        shutdown,
        tracker,
        edge,
        auth,
        bounds: edge_bounds,
        ..
    } = app;
    let batch = nimbus_proto::batch::Batch::new(
        edge_bounds.load().max_batch_delay,
        std::time::Duration::ZERO,
    );
    // Frames up to 64 KiB are read and answered with 4002 when over 4096 bytes; larger
    // ones fail in the WebSocket layer, also mapped to 4002.
    let max_dispatch = gw.config().max_dispatch_bytes;
    let bounds = crate::edge::ws::Bounds {
        max_message: MAX_PAYLOAD_BYTES * 16,
        read_buffer: 1024,
        // Replays and bursts are fed frame by frame and flushed once: let tungstenite
        // gather them into large writes.
        write_buffer: 64 * 1024,
        // A dispatch carries at most one cloud value or one document update.
        max_outgoing: max_dispatch,
    };
    crate::edge::ws::configure(ws, bounds).on_upgrade(move |socket| {
        tracker.track_future(conn::serve(
            socket,
            gw,
            url,
            bad_version,
            compress,
            shutdown,
            (edge, auth, batch),
        ))
    })
}

async fn bot(State(app): State<RouteState>, headers: HeaderMap) -> Response {
    let Some(gw) = app.gateway.clone() else {
        return (StatusCode::NOT_FOUND, "gateway disabled\n").into_response();
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The same check as Identify's.
    let Some(Allowed { bot, .. }) = allowed(&app.auth, &gw, auth) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"message\":\"401: Unauthorized\",\"code\":0}",
        )
            .into_response();
    };
    let l = gw.session_start_limit(&bot).await;
    let body = serde_json::json!({
        "url": public_url(&headers),
        "shards": 1,
        "session_start_limit": {
            "total": l.total,
            "remaining": l.remaining,
            "reset_after": l.reset_after_ms,
            "max_concurrency": l.max_concurrency,
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What a gateway token allows: whose identify budget it spends, its intents, and with a
/// signed token its rooms and expiry.
pub(crate) struct Allowed {
    /// The bot it speaks for: a signed token's issuer and subject (every token of one
    /// subject shares one budget, as a Discord bot's token does), or a static token itself.
    pub bot: String,
    pub intents: nimbus_proto::gateway::Intents,
    pub rooms: Option<RoomFilter>,
    pub expires: Option<tokio::time::Instant>,
}

/// What `token` (with or without `Bot `) allows, for Identify, Resume and `/gateway/bot`
/// alike: a signed token's grant, which must name some gateway rooms (a token valid for
/// other things may not take sessions nor spend an identify budget), or a static token's
/// intents; `None`: refused.
pub(crate) fn allowed(auth: &crate::auth::Auth, gw: &Gateway, token: &str) -> Option<Allowed> {
    let bare = nimbus_proto::gateway::strip_bot_prefix(token);
    match auth.verify(bare) {
        Some(Ok(identity)) => {
            let rooms = identity.rooms(nimbus_auth::Capability::Gateway).clone();
            if rooms.is_empty() {
                return None;
            }
            Some(Allowed {
                bot: format!(
                    "signed\u{0}{}\u{0}{}",
                    identity.issuer().unwrap_or(""),
                    identity.sub()
                ),
                intents: nimbus_proto::gateway::Intents(identity.gateway_intents()),
                rooms: Some(Arc::new(move |room: &str| rooms.contains(room))),
                expires: crate::auth::deadline(Some(identity.expires_at())),
            })
        }
        Some(Err(e)) => {
            tracing::debug!(reason = e.reason(), "gateway token refused");
            None
        }
        None => gw.check_token(token).map(|intents| Allowed {
            bot: format!("static\u{0}{bare}"),
            intents,
            rooms: None,
            expires: None,
        }),
    }
}
