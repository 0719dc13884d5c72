//! Cloud variables over HTTP: read a room, set / create / delete a variable, clear a room.
//!
//! A `PUT` is validated like a client's `set` (the name and value rules of
//! `nimbus_proto::cloud` with the hub's limits; a missing variable is created, like a
//! client's `create`) and goes through the room actor: connected clients get it as if a
//! client had set it. `DELETE /api/rooms/{id}` deletes the room's variables one by one
//! through the same path as a client's `delete` (the cloud protocol has no message for a
//! deletion: connected clients keep their copy until they set it again or reconnect).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use nimbus_proto::cloud::{normalize_name, CloudValue};

use super::{body_rejected, error, json};
use crate::http::{api_access, App};
use crate::hub::AdminError;

pub(super) fn routes(app: &App) -> Router<App> {
    // A value's JSON: every character escaped (`\uXXXX`), the quotes, some whitespace.
    let max_body = app
        .hub
        .limits
        .max_value_len
        .saturating_mul(6)
        .saturating_add(64);
    Router::new()
        .route("/api/rooms/{id}/variables", get(variables))
        .route(
            "/api/rooms/{id}/variables/{name}",
            axum::routing::put(put_variable)
                .delete(delete_variable)
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/api/rooms/{id}", delete(delete_room))
}

/// The cloud API's check, for reads and writes alike: the API's token check, then the
/// room key ([`check_room`]).
fn room_check(app: &App, id: &str, parts: &Parts, write: bool) -> Result<(), Box<Response>> {
    api_access(app, id, parts, write)?;
    check_room(app, id)
}

/// A room key by the wire's rule (`nimbus_proto::cloud::check_project_id`), and not one of
/// `--blocked-rooms` (403, as the cloud wire closes those with 4004).
fn check_room(app: &App, id: &str) -> Result<(), Box<Response>> {
    if app.hub.limits.blocked_rooms.iter().any(|b| b == id) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "project unavailable",
        )));
    }
    nimbus_proto::cloud::check_project_id(id)
        .map_err(|why| Box::new(error(StatusCode::BAD_REQUEST, why)))
}

fn admin_error(room: &str, e: AdminError) -> Response {
    let status = match e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::TooLong(_) => StatusCode::PAYLOAD_TOO_LARGE,
        AdminError::TooManyVariables => StatusCode::CONFLICT,
        AdminError::TooManyRooms | AdminError::Unavailable | AdminError::StoreUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(%room, error = %e, "cloud API refused a change");
    }
    error(status, e)
}

/// A cloud variable's value: a JSON number or string.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(example = json!(42))]
pub(crate) enum VariableValue {
    /// A number (its literal is kept, `1.50` stays `1.50`).
    Number(f64),
    /// A string (the value profile decides which strings are accepted).
    String(String),
}

/// The room's variables.
#[utoipa::path(
    get,
    path = "/api/rooms/{id}/variables",
    tag = "cloud",
    params(("id" = String, Path, description = "room key (project id)")),
    responses(
        (status = 200, description = "name → value, in insertion order", content_type = "application/json",
         body = std::collections::BTreeMap<String, VariableValue>),
        (status = 400, description = "bad room id", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or the room is in `--blocked-rooms`", body = super::ErrorBody),
        (status = 404, description = "the room has no variable", body = super::ErrorBody),
        (status = 503, description = "the store cannot be read", body = super::ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn variables(
    State(app): State<App>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response {
    if let Err(refused) = room_check(&app, &id, &parts, false) {
        return *refused;
    }
    match app.hub.variables(&id).await {
        Ok(Some(vars)) => {
            let mut body = String::from("{");
            for (i, (name, value)) in vars.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&serde_json::to_string(&**name).unwrap_or_default());
                body.push(':');
                value.write_json(&mut body);
            }
            body.push('}');
            json(body)
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown room"),
        Err(e) => {
            tracing::error!(room = %id, error = %e, "variables API failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

/// Set (or create) a variable, as a client's `set`.
#[utoipa::path(
    put,
    path = "/api/rooms/{id}/variables/{name}",
    tag = "cloud",
    params(
        ("id" = String, Path, description = "room key (project id)"),
        ("name" = String, Path, description = "variable name; `☁ ` is added when missing"),
    ),
    request_body(content = VariableValue, content_type = "application/json",
                 description = "the value: a JSON number or string"),
    responses(
        (status = 204, description = "set: connected clients got it, it is stored and replicated"),
        (status = 400, description = "the body is not a JSON number or string, or the name or value breaks the room's rules", body = super::ErrorBody),
        (status = 401, description = "no or unknown token (writes always need one)", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or only reads, or the room is in `--blocked-rooms`", body = super::ErrorBody),
        (status = 409, description = "the room holds `max_variables_per_room` variables", body = super::ErrorBody),
        (status = 413, description = "the value is longer than `max_value_len`", body = super::ErrorBody),
        (status = 503, description = "the store (or Redis) cannot keep it now, or too many rooms are loaded", body = super::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn put_variable(
    State(app): State<App>,
    Path((id, name)): Path<(String, String)>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(refused) = room_check(&app, &id, &parts, true) {
        return *refused;
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejected(rejection),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let value = match CloudValue::from_json(text) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{e}: send a JSON number or string"),
            )
        }
    };
    let name = normalize_name(&name);
    match app.hub.put_variable(&id, &name, value).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(&id, e),
    }
}

/// Delete a variable, as a client's `delete`.
#[utoipa::path(
    delete,
    path = "/api/rooms/{id}/variables/{name}",
    tag = "cloud",
    params(
        ("id" = String, Path, description = "room key (project id)"),
        ("name" = String, Path, description = "variable name; `☁ ` is added when missing"),
    ),
    responses(
        (status = 204, description = "deleted (stored, replicated, a `CLOUD_DELETE` event)"),
        (status = 400, description = "bad room id", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or only reads, or the room is in `--blocked-rooms`", body = super::ErrorBody),
        (status = 404, description = "the room has no such variable", body = super::ErrorBody),
        (status = 503, description = "the store (or Redis) cannot keep it now", body = super::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete_variable(
    State(app): State<App>,
    Path((id, name)): Path<(String, String)>,
    parts: Parts,
) -> Response {
    if let Err(refused) = room_check(&app, &id, &parts, true) {
        return *refused;
    }
    let name = normalize_name(&name);
    match app.hub.delete_variable(&id, &name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "unknown variable"),
        Err(e) => admin_error(&id, e),
    }
}

/// Delete every variable of a room, each as a client's `delete`.
#[utoipa::path(
    delete,
    path = "/api/rooms/{id}",
    tag = "cloud",
    params(("id" = String, Path, description = "room key (project id)")),
    responses(
        (status = 200, description = "`{\"deleted\": n}`: the variables deleted, one by one through the room", content_type = "application/json"),
        (status = 400, description = "bad room id", body = super::ErrorBody),
        (status = 401, description = "no or unknown token", body = super::ErrorBody),
        (status = 403, description = "the token does not grant this room, or only reads, or the room is in `--blocked-rooms`", body = super::ErrorBody),
        (status = 404, description = "the room has no variable", body = super::ErrorBody),
        (status = 503, description = "the store (or Redis) cannot keep it now", body = super::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete_room(
    State(app): State<App>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response {
    if let Err(refused) = room_check(&app, &id, &parts, true) {
        return *refused;
    }
    match app.hub.clear_room(&id).await {
        Ok(Some(n)) => json(format!("{{\"deleted\":{n}}}\n")),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown room"),
        Err(e) => admin_error(&id, e),
    }
}
