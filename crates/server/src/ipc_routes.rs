//! The IPC routes `nimbus serve --ipc` offers to the apps around it (a bot, a
//! dashboard). Wire format and client libraries: `docs/ipc.md`.
//!
//! | route | data | reply |
//! | --- | --- | --- |
//! | `stats` | — | `{"rooms", "clients", "doc_rooms", "doc_clients", "uptime_s"}` |
//! | `rooms` | — | loaded room keys, sorted |
//! | `cloud.get` | `room` | `{"☁ name": value, …}` (`{}` for an unknown room) |
//! | `cloud.set` | `room`, `name`, `value` | `true`; validated like a client's set, broadcast to the whole room |
//! | `cloud.delete` | `room`, `name` | `true` if it existed |
//! | `kick` | `room`, `user` | number of connections closed (with 4002) |
//! | `doc.get` | `room` | the document room as JSON (root name → string, object or array); `null` for an unknown room |
//! | `doc.rooms` | — | loaded document room names, sorted |

mod settings;

use std::sync::Arc;
use std::time::Instant;

use nimbus_ipc::{Request, RouteError};
use nimbus_proto::cloud::{normalize_name, CloudValue};
use serde_json::{json, Map, Value};

use crate::doc::DocRooms;
use crate::events::json_value;
use crate::hub::Hub;
pub use settings::{IpcConfig, IpcSettings};

fn text<'a>(req: &'a Request, key: &str) -> Result<&'a str, RouteError> {
    req.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RouteError::with_kind("BadRequest", format!("{key:?} must be a string")))
}

/// A room key given as a string or an integer, like a handshake's `project_id`.
fn room(req: &Request) -> Result<String, RouteError> {
    match req.get("room") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
        _ => Err(RouteError::with_kind(
            "BadRequest",
            "\"room\" must be a non-empty string or an integer",
        )),
    }
}

/// Register every route on `server`.
pub(crate) fn register(server: &nimbus_ipc::Server, hub: Arc<Hub>, docs: Arc<DocRooms>) {
    let started = Instant::now();
    let (h, d) = (hub.clone(), docs.clone());
    server.route("stats", move |_req: Request| {
        let (h, d) = (h.clone(), d.clone());
        async move {
            Ok(json!({
                "rooms": h.room_count(),
                "clients": h.metrics.clients.get(),
                "doc_rooms": d.room_ids().len(),
                "doc_clients": d.metrics().clients.get(),
                "uptime_s": started.elapsed().as_secs(),
            }))
        }
    });
    let h = hub.clone();
    server.route("rooms", move |_req: Request| {
        let h = h.clone();
        async move { Ok(json!(h.room_keys())) }
    });
    let h = hub.clone();
    server.route("cloud.get", move |req: Request| {
        let h = h.clone();
        async move {
            let room = room(&req)?;
            let vars = h
                .variables(&room)
                .await
                .map_err(|e| RouteError::with_kind("StoreError", e.to_string()))?
                .unwrap_or_default();
            let map: Map<String, Value> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), json_value(v)))
                .collect();
            Ok(Value::Object(map))
        }
    });
    let h = hub.clone();
    server.route("cloud.set", move |req: Request| {
        let h = h.clone();
        async move {
            let room = room(&req)?;
            let name = normalize_name(text(&req, "name")?);
            let value = match req.get("value") {
                Some(Value::Number(n)) => CloudValue::Number(n.to_string()),
                Some(Value::String(s)) => CloudValue::String(s.clone()),
                _ => {
                    return Err(RouteError::with_kind(
                        "BadRequest",
                        "\"value\" must be a number or a string",
                    ))
                }
            };
            // Answered once the room took it (like the API's PUT), so a set the room
            // refuses (its variable limit) or cannot keep is an error, not `true`.
            h.put_variable(&room, &name, value).await.map_err(|e| {
                use crate::hub::AdminError;
                let kind = match e {
                    AdminError::StoreUnavailable
                    | AdminError::Unavailable
                    | AdminError::TooManyRooms => "Unavailable",
                    AdminError::TooManyVariables => "TooManyVariables",
                    _ => "InvalidValue",
                };
                RouteError::with_kind(kind, e.to_string())
            })?;
            Ok(json!(true))
        }
    });
    let h = hub.clone();
    server.route("cloud.delete", move |req: Request| {
        let h = h.clone();
        async move {
            let room = room(&req)?;
            let name = normalize_name(text(&req, "name")?);
            let existed = h
                .delete_variable(&room, &name)
                .await
                .map_err(|e| RouteError::with_kind("Unavailable", e.to_string()))?;
            Ok(json!(existed))
        }
    });
    let h = hub;
    server.route("kick", move |req: Request| {
        let h = h.clone();
        async move {
            let room = room(&req)?;
            let user = text(&req, "user")?.to_owned();
            Ok(json!(h.kick(&room, &user).await))
        }
    });
    let d = docs.clone();
    server.route("doc.get", move |req: Request| {
        let d = d.clone();
        async move {
            let room = text(&req, "room")?.to_owned();
            crate::doc::validate_room_name(&room)
                .map_err(|e| RouteError::with_kind("BadRequest", e))?;
            let json = d
                .to_json(&room)
                .await
                .map_err(|e| RouteError::with_kind("StoreError", e.to_string()))?;
            Ok(json.unwrap_or(Value::Null))
        }
    });
    server.route("doc.rooms", move |_req: Request| {
        let d = docs.clone();
        async move { Ok(json!(d.room_ids())) }
    });
}
