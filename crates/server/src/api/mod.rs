//! The HTTP API of `nimbus serve` under `/api` (`docs/integrations.md`, "HTTP API"): cloud
//! variables ([`cloud`]) and document rooms ([`docs`]) read and written over HTTP, and
//! their OpenAPI description at `/api/openapi.json` ([`openapi`], generated from the
//! handlers' annotations).
//!
//! Every write goes through the same path as a client's: cloud changes through the room
//! actor and its `CloudReplication`, document updates through the room and its hooks
//! (`DocRooms`), so they are persisted, sent to connected clients, dispatched to the
//! gateway and replicated through Redis like any other.
//!
//! Every route checks `crate::http::api_access` (reads: a read grant; writes: a
//! read-write grant). Errors are JSON `{"error": "..."}` with a deliberate status.

mod cloud;
mod docs;
pub(crate) mod openapi;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::http::App;

/// Every `/api` route; `Server` merges them into `crate::http::router`'s (so `http`
/// does not depend on this module, which uses its `App` and `api_access`).
pub(crate) fn routes(app: &App) -> Router<App> {
    Router::new()
        .merge(cloud::routes(app))
        .merge(docs::routes(app))
        .route("/api/openapi.json", axum::routing::get(openapi::serve))
}

/// An error answer: `status` and a JSON `{"error": message}` body.
pub(crate) use crate::reply::json_error as error;

/// The JSON answer of a body-extraction failure (too large: 413; else 400).
fn body_rejected(rejection: axum::extract::rejection::BytesRejection) -> Response {
    let status = rejection.status();
    let why = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body too large".to_owned()
    } else {
        rejection.body_text()
    };
    error(status, why)
}

/// A JSON body answered with 200.
fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The error body the OpenAPI document describes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    /// Why the request was refused.
    error: String,
}
