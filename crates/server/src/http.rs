//! The HTTP side of `nimbus serve`: WebSocket upgrade at `/`, `/metrics`,
//! `/healthz` and the JSON API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nimbus_proto::cloud::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CloudAuth, Grant, Refusal};
use crate::cloud::{self, Peer};
use crate::doc::{validate_room_name, DocRooms, SocketChannel};
use crate::hub::Hub;
use crate::reply::json_error;

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub hub: Arc<Hub>,
    pub docs: Arc<DocRooms>,
    /// The gateway, when at least one token is configured.
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The edge's bounds (replaced whole by a reload).
    pub edge: Arc<arc_swap::ArcSwap<crate::edge::EdgeConfig>>,
    /// Every subsystem's metrics (`/metrics`; the sockets count edge violations).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Who clients are (static and signed tokens).
    pub auth: Arc<crate::auth::Auth>,
    /// Cloud history (`GET /logs`).
    pub history: Arc<dyn nimbus_core::history::HistoryLog>,
}

pub(crate) fn router(app: App) -> Router {
    let gateway = crate::gateway::RouteState {
        gateway: app.gateway.clone(),
        shutdown: app.shutdown.clone(),
        tracker: app.tracker.clone(),
        edge: app.metrics.edge.clone(),
        bounds: app.edge.clone(),
        auth: app.auth.clone(),
    };
    let history = crate::history::routes(crate::history::RouteState {
        history: app.history.clone(),
        auth: app.auth.clone(),
    });
    Router::new()
        .route("/", get(upgrade))
        .route("/doc/{*room}", get(doc_upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
        .merge(crate::gateway::routes(gateway))
        .merge(history)
}

/// Name and token checks shared by the document endpoints (`docs/security.md`, "Tokens").
fn doc_access(app: &App, room: &str, parts: &Parts) -> Result<Grant, (StatusCode, String)> {
    let docs = &app.docs;
    validate_room_name(room).map_err(|e| {
        docs.metrics().refused("bad_room_name");
        (StatusCode::BAD_REQUEST, e)
    })?;
    let refused = |r: Refusal| {
        docs.metrics().refused("unauthorized");
        (r.status, r.reason)
    };
    let (presented, _) = app.auth.present(parts, false).map_err(refused)?;
    app.auth
        .doc(&docs.access(), room, &presented)
        .map_err(refused)
}

/// The HTTP API's check: `write` needs a read-write grant (`docs/security.md`, "Tokens").
pub(crate) fn api_access(
    app: &App,
    room: &str,
    parts: &Parts,
    write: bool,
) -> Result<(), Box<Response>> {
    app.auth
        .check_api(parts, room, write)
        .map_err(|r| Box::new(json_error(r.status, r.reason)))
}

/// Read buffer of a document socket, bytes.
pub(crate) const DOC_READ_BUFFER: usize = 256;
/// Write buffer of a document socket, bytes: frames fed up to this are written at once.
pub(crate) const DOC_WRITE_BUFFER: usize = 16 << 10;

async fn doc_upgrade(
    State(app): State<App>,
    Path(room): Path<String>,
    parts: Parts,
    direct: Option<axum::Extension<crate::edge::wire::DirectWire>>,
    ws: WebSocketUpgrade,
) -> Response {
    let grant = match doc_access(&app, &room, &parts) {
        Ok(g) => g,
        Err((status, why)) => return json_error(status, why),
    };
    if let Err(e) = app.docs.admit(&room) {
        app.docs.metrics().refused("too_many_rooms");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    let App {
        hub,
        docs,
        shutdown,
        tracker,
        metrics,
        ..
    } = app;
    let bounds = crate::edge::ws::Bounds {
        max_message: docs.limits.max_message_bytes,
        // Small buffers, as the cloud route: tungstenite's default 128 KiB read buffer per
        // connection would dominate an idle document client's memory. Reads of 256 bytes
        // hold an update or two (a larger message still arrives: the buffer grows to it).
        read_buffer: DOC_READ_BUFFER,
        // Frames fed in one batch (Room::serve feeds every queued frame, then flushes)
        // gather up to this much before a write; the buffer starts empty and only grows
        // as far as a batch needs.
        write_buffer: DOC_WRITE_BUFFER,
        // The first SyncStep2 carries the whole document.
        max_outgoing: docs.limits.max_doc_bytes.saturating_add(1 << 20),
    };
    crate::edge::ws::configure(ws, bounds).on_upgrade(move |socket| {
        tracker.track_future(async move {
            let limits = &hub.limits;
            // The room writes updates to an idle client's socket itself (edge::wire).
            let direct = direct.map(|axum::Extension(d)| d);
            if let Some(d) = &direct {
                d.engage();
            }
            // Boxed: every level of the serving future holds the channel, so it holds a
            // pointer instead of the socket (an idle connection's task stays small).
            let channel = Box::new(
                SocketChannel::new(
                    socket,
                    shutdown,
                    limits.ping_interval,
                    limits.close_timeout,
                    metrics.edge.clone(),
                )
                .expire_at(crate::auth::deadline(grant.expires))
                .with_direct(direct),
            );
            docs.serve(&room, channel, grant.access).await;
        })
    })
}

/// Policy checks that only need the upgrade request's headers.
fn refuse(headers: &HeaderMap, hub: &Hub) -> Option<(CloseCode, &'static str)> {
    let limits = &hub.limits;
    if limits.reject_session_cookie
        && headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim_start().starts_with("scratchsessionsid="))
    {
        return Some((
            CloseCode::Security,
            "Closed to protect your security: do not send your Scratch session cookie to this server.",
        ));
    }
    if limits.require_user_agent
        && headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim().is_empty())
    {
        return Some((
            CloseCode::IdentifyYourself,
            "Identify yourself: send a User-Agent header that says what your client is and how to contact you.",
        ));
    }
    None
}

async fn upgrade(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    parts: Parts,
    direct: Option<axum::Extension<crate::edge::wire::DirectWire>>,
    mut ws: WebSocketUpgrade,
) -> Response {
    let headers = &parts.headers;
    let limits = &app.hub.limits;
    // With `--cloud-auth required`: a signed token, before the upgrade (401 otherwise).
    let (identity, token_protocol) = if app.auth.cloud_auth() == CloudAuth::Off {
        (None, None)
    } else {
        match app
            .auth
            .present(&parts, true)
            .and_then(|(presented, protocol)| Ok((app.auth.cloud(presented)?, protocol)))
        {
            Ok(found) => found,
            Err(r) => return json_error(r.status, r.reason),
        }
    };
    // Echo the subprotocol that carried the token, else the first offered one: Chromium
    // fails a handshake that selects none.
    let first = token_protocol
        .or_else(|| {
            headers
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
                .map(str::to_owned)
        })
        .and_then(|p| HeaderValue::from_str(&p).ok());
    if let Some(p) = first {
        ws.set_selected_protocol(p);
    }
    let peer = Peer {
        addr: Some(addr),
        refuse: refuse(headers, &app.hub),
        identity,
    };
    let App {
        hub,
        edge,
        shutdown,
        tracker,
        metrics,
        ..
    } = app.clone();
    let bounds = crate::edge::ws::Bounds {
        max_message: limits.max_frame_bytes,
        // Small buffers: an idle connection should cost a few KiB, not 256.
        read_buffer: 256,
        write_buffer: 0,
        max_outgoing: cloud::max_frame_out(limits),
    };
    crate::edge::ws::configure(ws, bounds).on_upgrade(move |socket| {
        // The room writes lines to an idle client's socket itself (edge::wire).
        let wire = direct.map(|axum::Extension(d)| {
            d.engage();
            Arc::new(d) as Arc<dyn crate::outbox::DirectLine>
        });
        tracker.track_future(cloud::serve(
            socket,
            hub,
            (edge.load_full(), metrics.edge.clone()),
            peer,
            wire,
            shutdown,
        ))
    })
}

/// Readiness: 200 while the store writes and loads; 503 with the reason while commits fail
/// (changes are refused), the last load failed (e.g. a corrupted database) or the writer
/// stopped. `/healthz` stays liveness only.
async fn readyz(State(app): State<App>) -> Response {
    use crate::store::StoreStatus;
    let health = app.hub.store.health();
    let status = health.status();
    let mut body = serde_json::json!({ "status": if status == StoreStatus::Ok { "ready" } else { "not_ready" }, "store": status.label() });
    match &status {
        StoreStatus::Ok => {
            let body = body.to_string() + "\n";
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        StoreStatus::WriteFailing {
            reason,
            pending_ops,
        } => {
            body["reason"] = format!("the store cannot write: {reason}").into();
            body["pending_ops"] = (*pending_ops).into();
        }
        StoreStatus::ReadFailing { reason } => {
            body["reason"] = format!("the store cannot read: {reason}").into();
        }
        StoreStatus::Stopped => body["reason"] = "the store writer has stopped".into(),
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    app.docs.refresh_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}
