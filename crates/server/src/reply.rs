//! The one shape of every error the HTTP side answers: a status and a JSON
//! `{"error": message}` body (refusals before an upgrade, the HTTP API, `/logs`).

use std::fmt::Display;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `status` with the body `{"error": message}`.
pub(crate) fn json_error(status: StatusCode, message: impl Display) -> Response {
    let body = serde_json::json!({ "error": message.to_string() }).to_string() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
