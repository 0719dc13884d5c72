//! Document rooms over HTTP: the document as JSON, as one Yjs v1 update, its v1 state
//! vector; apply an update; delete a room.
//!
//! Room names may contain `/`, so the routes are one wildcard, `/api/docs/{*path}`, split
//! on the raw (still percent-encoded) path: a trailing literal `/update` or
//! `/state-vector` names the sub-resource, the rest (percent-decoded) is the room. A room
//! whose name itself ends in `/update` is written with `%2F` (`/api/docs/a%2Fupdate`).
//!
//! A `POST`ed update is applied like a client's (`DocRooms::apply_update`: size limit,
//! validated in the room's replica first, then the room's hooks persist and replicate it
//! and its clients get it). `DELETE` closes the room's clients with 4410 and removes its
//! stored log; with `--redis` every node closes the room's clients (see
//! `DocReplication::delete`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{body_rejected, error, json};
use crate::auth::{Presented, Refusal};
use crate::doc::{validate_room_name, DeleteError, UpdateError};
use crate::http::App;

const PREFIX: &str = "/api/docs/";

pub(super) fn routes(app: &App) -> Router<App> {
    // Room names may contain `/`: one wildcard, split in `target`.
    let max_body = app.docs.limits.max_message_bytes;
    Router::new().route(
        "/api/docs/{*path}",
        get(dispatch_get)
            .post(dispatch_post)
            .delete(dispatch_delete)
            .layer(DefaultBodyLimit::max(max_body)),
    )
}

/// What a path under `/api/docs/` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Json,
    Update,
    StateVector,
}

/// The room and sub-resource of a request's raw path.
fn target(parts: &Parts) -> Result<(String, Resource), Box<Response>> {
    let raw = parts.uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let (room, what) = if let Some(room) = raw.strip_suffix("/update") {
        (room, Resource::Update)
    } else if let Some(room) = raw.strip_suffix("/state-vector") {
        (room, Resource::StateVector)
    } else {
        (raw, Resource::Json)
    };
    let room = percent_decode(room).ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the room name is not valid percent-encoded UTF-8",
        ))
    })?;
    Ok((room, what))
}

/// `%XX` sequences decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The document API's check: a valid room name, then the API's token check. A read the API lets
/// through without a credential (no signing key, no `--api-token`) must also pass the
/// room's static document rules (`--doc-token`), and a read refused by the API passes
/// with a token that opens the room at `/doc/{room}`: the read API shows no more than the
/// WebSocket would.
fn doc_check(app: &App, room: &str, parts: &Parts, write: bool) -> Result<(), Box<Response>> {
    validate_room_name(room).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e)))?;
    let refuse = |r: Refusal| Box::new(error(r.status, r.reason));
    // The token is read (and a signed one verified) once, for both checks.
    let (presented, _) = app.auth.present(parts, false).map_err(refuse)?;
    let api = app.auth.api(&presented, room, write);
    if write {
        return api.map_err(refuse);
    }
    let open = app.auth.api(&Presented::None, room, false).is_ok();
    if api.is_ok() && !open {
        return Ok(());
    }
    match (app.auth.doc(&app.docs.access(), room, &presented), api) {
        (Ok(_), _) => Ok(()),
        (Err(_), Err(r)) | (Err(r), Ok(())) => Err(refuse(r)),
    }
}

async fn dispatch_get(State(app): State<App>, parts: Parts) -> Response {
    let (room, what) = match target(&parts) {
        Ok(t) => t,
        Err(bad) => return *bad,
    };
    match what {
        Resource::Json => get_json(app, room, parts).await,
        Resource::Update => get_update(app, room, parts).await,
        Resource::StateVector => get_state_vector(app, room, parts).await,
    }
}

async fn dispatch_post(
    State(app): State<App>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match target(&parts) {
        Ok((room, Resource::Update)) => post_update(app, room, parts, body).await,
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            "POST goes to /api/docs/{room}/update",
        ),
        Err(bad) => *bad,
    }
}

async fn dispatch_delete(State(app): State<App>, parts: Parts) -> Response {
    let raw = parts.uri.path().strip_prefix(PREFIX).unwrap_or_default();
    match percent_decode(raw) {
        Some(room) => delete_doc(app, room, parts).await,
        None => error(
            StatusCode::BAD_REQUEST,
            "the room name is not valid percent-encoded UTF-8",
        ),
    }
}

fn binary(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

fn store_failed(room: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(%room, error = %e, "document API failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

/// A binary Yjs v1 update or state vector.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub(crate) struct Binary(Vec<u8>);

/// The document as JSON (root name → string, object or array).
#[utoipa::path(
    get,
    path = "/api/docs/{room}",
    tag = "docs",
    params(("room" = String, Path, description = "document room name (percent-encoded; may contain `/`)")),
    responses(
        (status = 200, description = "the document as JSON", content_type = "application/json", body = Object),
        (status = 400, description = "bad room name", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room", body = super::ErrorBody),
        (status = 404, description = "nothing is stored for this room", body = super::ErrorBody),
        (status = 503, description = "the store cannot be read", body = super::ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn get_json(app: App, room: String, parts: Parts) -> Response {
    if let Err(refused) = doc_check(&app, &room, &parts, false) {
        return *refused;
    }
    match app.docs.to_json(&room).await {
        Ok(Some(doc)) => json(doc.to_string() + "\n"),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown document room"),
        Err(e) => store_failed(&room, &e),
    }
}

/// The whole document as one Yjs update (v1 encoding).
#[utoipa::path(
    get,
    path = "/api/docs/{room}/update",
    tag = "docs",
    params(("room" = String, Path, description = "document room name (percent-encoded; may contain `/`)")),
    responses(
        (status = 200, description = "the state as one v1 update (`Y.applyUpdate` on an empty document gives the room's content)",
         content_type = "application/octet-stream", body = Binary),
        (status = 400, description = "bad room name", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room", body = super::ErrorBody),
        (status = 404, description = "nothing is stored for this room", body = super::ErrorBody),
        (status = 503, description = "the store cannot be read", body = super::ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn get_update(app: App, room: String, parts: Parts) -> Response {
    if let Err(refused) = doc_check(&app, &room, &parts, false) {
        return *refused;
    }
    binary_or_404(&room, app.docs.state(&room).await)
}

/// A binary answer, 404 when the room has no document, 503 when the store failed.
fn binary_or_404(room: &str, read: Result<Option<Vec<u8>>, crate::store::StoreError>) -> Response {
    match read {
        Ok(Some(bytes)) => binary(bytes),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown document room"),
        Err(e) => store_failed(room, &e),
    }
}

/// The document's state vector (v1 encoding).
#[utoipa::path(
    get,
    path = "/api/docs/{room}/state-vector",
    tag = "docs",
    params(("room" = String, Path, description = "document room name (percent-encoded; may contain `/`)")),
    responses(
        (status = 200, description = "the v1 state vector (`Y.encodeStateAsUpdate(doc, sv)` gives what the room lacks)",
         content_type = "application/octet-stream", body = Binary),
        (status = 400, description = "bad room name", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room", body = super::ErrorBody),
        (status = 404, description = "nothing is stored for this room", body = super::ErrorBody),
        (status = 503, description = "the store cannot be read", body = super::ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn get_state_vector(app: App, room: String, parts: Parts) -> Response {
    if let Err(refused) = doc_check(&app, &room, &parts, false) {
        return *refused;
    }
    binary_or_404(&room, app.docs.state_vector(&room).await)
}

/// Apply a Yjs v1 update, as a client's update.
#[utoipa::path(
    post,
    path = "/api/docs/{room}/update",
    tag = "docs",
    params(("room" = String, Path, description = "document room name (percent-encoded; may contain `/`)")),
    request_body(content = Binary, content_type = "application/octet-stream",
                 description = "a Yjs update, v1 encoding (`Y.encodeStateAsUpdate`, `Y.encodeStateAsUpdateV1`)"),
    responses(
        (status = 204, description = "applied: connected clients got it, it is stored and replicated"),
        (status = 400, description = "bad room name, or the update does not decode or apply (the room is unchanged)", body = super::ErrorBody),
        (status = 401, description = "no or unknown token (writes always need one)", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or only reads", body = super::ErrorBody),
        (status = 413, description = "the body is over `doc_max_message_bytes`, or the document would go over `doc_max_bytes`", body = super::ErrorBody),
        (status = 503, description = "the store (or Redis) cannot keep it now, or too many rooms are loaded", body = super::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn post_update(
    app: App,
    room: String,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(refused) = doc_check(&app, &room, &parts, true) {
        return *refused;
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejected(rejection),
    };
    let (docs, r) = (app.docs.clone(), room.clone());
    let Some(applied) = detached(async move { docs.apply_update(&r, &body).await }).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the update task failed");
    };
    match applied {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ UpdateError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ UpdateError::TooLarge(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ (UpdateError::Unavailable(_) | UpdateError::TooManyRooms)) => {
            tracing::warn!(%room, error = %e, "document API refused an update");
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
    }
}

/// Run `work` to its end even if the client hangs up (hyper drops the handler then): a
/// write that loaded a room unloads it again, a delete that closed the room's clients
/// removes its log. `None` if the task panicked.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    tokio::spawn(work).await.ok()
}

/// Delete a document room: close its clients (4410), remove its stored log.
#[utoipa::path(
    delete,
    path = "/api/docs/{room}",
    tag = "docs",
    params(("room" = String, Path, description = "document room name (percent-encoded; may contain `/`)")),
    responses(
        (status = 204, description = "deleted: connected clients were closed with 4410 `room deleted`, the stored log is gone"),
        (status = 400, description = "bad room name", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or only reads", body = super::ErrorBody),
        (status = 404, description = "nothing is loaded or stored for this room", body = super::ErrorBody),
        (status = 503, description = "the store cannot write now", body = super::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete_doc(app: App, room: String, parts: Parts) -> Response {
    if let Err(refused) = doc_check(&app, &room, &parts, true) {
        return *refused;
    }
    let (docs, r) = (app.docs.clone(), room.clone());
    let Some(deleted) = detached(async move { docs.delete(&r).await }).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the delete task failed");
    };
    match deleted {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "unknown document room"),
        // The store or Redis cannot write now.
        Err(DeleteError::Refused(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(DeleteError::Store(e)) => store_failed(&room, &e),
    }
}
