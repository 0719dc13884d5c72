//! The IPC request/response protocol (discord.py-style inter-process requests).
//!
//! The wire format is `/work/shared/protocols/ipc.md` (as implemented: `docs/ipc.md`).
//! One JSON object per WebSocket text frame. A server parses each frame with
//! [`parse_frame`], which applies the detection order of the spec: invalid
//! JSON / non-object → [`ErrorReply::InvalidRequest`]; `"connect": true` without
//! `endpoint` → [`Frame::Handshake`]; `secret` or `kwargs` without `headers` →
//! [`Frame::BetterIpc`]; anything else → [`Frame::Request`].
//!
//! ```
//! use nimbus_proto::ipc::{self, Authorization, ErrorReply, Frame};
//!
//! let f = ipc::parse_frame(r#"{"endpoint":"/stats","data":{"guild":1},"headers":{"Authorization":"k"}}"#).unwrap();
//! let Frame::Request(req) = f else { panic!() };
//! assert_eq!(req.route_name(), Some("stats"));
//! assert_eq!(req.authorization, Authorization::Present("k".into()));
//! assert_eq!(ErrorReply::UnknownEndpoint.encode(), r#"{"error":"Invalid endpoint provided","code":400}"#);
//! assert_eq!(ipc::encode_handshake_reply(8000), r#"{"message":"Connection success","port":8000,"code":200}"#);
//! ```

use serde_json::{json, Map, Value};

/// The `Authorization` header of a primary-dialect frame (or a handshake).
#[derive(Clone, PartialEq, Eq)]
pub enum Authorization {
    /// `headers` missing or not an object, `Authorization` missing, `null` or empty (→ 401).
    Missing,
    /// A non-empty value. A non-string value is kept as its JSON text (it can only be wrong → 403).
    Present(String),
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        match self {
            Authorization::Missing => f.write_str("Missing"),
            Authorization::Present(_) => f.write_str("Present(<redacted>)"),
        }
    }
}

/// A primary-dialect request (`{"endpoint", "data", "headers"}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The endpoint as sent, `None` when missing or not a string.
    pub endpoint: Option<String>,
    /// The `data` object (`{}` when missing; a non-object `data` is an invalid request).
    pub data: Map<String, Value>,
    /// The `headers` object (`{}` when missing or not an object).
    pub headers: Map<String, Value>,
    /// The `Authorization` header, classified.
    pub authorization: Authorization,
}

impl Request {
    /// The route name: the endpoint with one leading `/` stripped.
    pub fn route_name(&self) -> Option<&str> {
        self.endpoint.as_deref().map(route_name)
    }
}

/// A better-ipc 2.0.3 request (`{"endpoint", "secret", "kwargs"}`).
#[derive(Clone, PartialEq)]
pub struct BetterRequest {
    /// The endpoint, `None` when missing or not a string.
    pub endpoint: Option<String>,
    /// The `secret` (a client without a key sends the string `"None"`); `None` when absent.
    pub secret: Option<String>,
    /// The keyword arguments (`{}` when missing).
    pub kwargs: Map<String, Value>,
}

impl std::fmt::Debug for BetterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BetterRequest")
            .field("endpoint", &self.endpoint)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("kwargs", &self.kwargs)
            .finish()
    }
}

impl BetterRequest {
    /// The route name: the endpoint with one leading `/` stripped.
    pub fn route_name(&self) -> Option<&str> {
        self.endpoint.as_deref().map(route_name)
    }
}

/// One parsed request frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A primary-dialect request (§2).
    Request(Request),
    /// The multicast port handshake (§4): `{"connect": true, "headers": {...}}`.
    Handshake {
        /// The `Authorization` header.
        authorization: Authorization,
    },
    /// A better-ipc request (§6).
    BetterIpc(BetterRequest),
}

/// A primary-dialect error reply: `{"error": ..., "code": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorReply {
    /// Invalid JSON, not an object, not text, too large, or a malformed field (400).
    #[error("Invalid request")]
    InvalidRequest,
    /// No usable `Authorization` while a secret is configured (401).
    #[error("Unauthorized")]
    Unauthorized,
    /// A wrong `Authorization` (403).
    #[error("Unauthorized")]
    Forbidden,
    /// `endpoint` missing or not a string (400).
    #[error("No endpoint was set")]
    NoEndpoint,
    /// No route by that name (400).
    #[error("Invalid endpoint provided")]
    UnknownEndpoint,
    /// The route failed; the string is the kind of error (500).
    #[error("IPC route raised error of type {0}")]
    RouteFailed(String),
}

impl ErrorReply {
    /// The numeric `code` of this reply.
    pub fn code(&self) -> u16 {
        match self {
            ErrorReply::InvalidRequest | ErrorReply::NoEndpoint | ErrorReply::UnknownEndpoint => {
                400
            }
            ErrorReply::Unauthorized => 401,
            ErrorReply::Forbidden => 403,
            ErrorReply::RouteFailed(_) => 500,
        }
    }

    /// The reply as a JSON value.
    pub fn to_value(&self) -> Value {
        json!({"error": self.to_string(), "code": self.code()})
    }

    /// The reply frame text.
    pub fn encode(&self) -> String {
        self.to_value().to_string()
    }
}

/// Strip one leading `/` (`/stats` and `stats` name the same route).
pub fn route_name(endpoint: &str) -> &str {
    endpoint.strip_prefix('/').unwrap_or(endpoint)
}

fn classify_auth(headers: Option<&Value>) -> Authorization {
    match headers
        .and_then(Value::as_object)
        .and_then(|h| h.get("Authorization"))
    {
        None | Some(Value::Null) => Authorization::Missing,
        Some(Value::String(s)) if s.is_empty() => Authorization::Missing,
        Some(Value::String(s)) => Authorization::Present(s.clone()),
        Some(other) => Authorization::Present(other.to_string()),
    }
}

/// Parse one request frame (server side), in the detection order of §2.
pub fn parse_frame(text: &str) -> Result<Frame, ErrorReply> {
    let value: Value = serde_json::from_str(text).map_err(|_| ErrorReply::InvalidRequest)?;
    let Value::Object(mut obj) = value else {
        return Err(ErrorReply::InvalidRequest);
    };
    if obj.get("connect") == Some(&Value::Bool(true)) && !obj.contains_key("endpoint") {
        return Ok(Frame::Handshake {
            authorization: classify_auth(obj.get("headers")),
        });
    }
    let endpoint = match obj.remove("endpoint") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if (obj.contains_key("secret") || obj.contains_key("kwargs")) && !obj.contains_key("headers") {
        let secret = match obj.remove("secret") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        let kwargs = match obj.remove("kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ErrorReply::InvalidRequest),
        };
        return Ok(Frame::BetterIpc(BetterRequest {
            endpoint,
            secret,
            kwargs,
        }));
    }
    let authorization = classify_auth(obj.get("headers"));
    let headers = match obj.remove("headers") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let data = match obj.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ErrorReply::InvalidRequest),
    };
    Ok(Frame::Request(Request {
        endpoint,
        data,
        headers,
        authorization,
    }))
}

/// The handshake reply: `{"message":"Connection success","port":P,"code":200}`.
pub fn encode_handshake_reply(port: u16) -> String {
    json!({"message": "Connection success", "port": port, "code": 200}).to_string()
}

/// A primary-dialect success reply: the route value as is.
pub fn encode_success(value: &Value) -> String {
    value.to_string()
}

/// better-ipc replies (§6). Every reply carries `decoding`, `code` and `response`.
#[derive(Debug, Clone, PartialEq)]
pub enum BetterReply {
    /// A route returned a value.
    Success(Value),
    /// Bad or missing secret (403).
    Unauthorized,
    /// Unknown endpoint (404).
    UnknownEndpoint,
    /// The route failed (500) with a message.
    RouteFailed(String),
}

impl BetterReply {
    /// The reply as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            BetterReply::Success(Value::String(s)) => {
                json!({"decoding": null, "code": 200, "response": s})
            }
            BetterReply::Success(v) => {
                json!({"decoding": "JSON", "code": 200, "response": v.to_string()})
            }
            BetterReply::Unauthorized => json!({"decoding": null, "code": 403, "response": null,
                "error": "Unauthorized", "error_details": "Invalid or missing secret key"}),
            BetterReply::UnknownEndpoint => json!({"decoding": null, "code": 404, "response": null,
                "error": "Unknown endpoint!", "error_details": "Unknown endpoint"}),
            BetterReply::RouteFailed(m) => json!({"decoding": null, "code": 500, "response": null,
                "error": "Unexpected error occurred while calling the route!", "error_details": m}),
        }
    }

    /// The reply frame text.
    pub fn encode(&self) -> String {
        self.to_value().to_string()
    }
}

/// Encode a primary-dialect request (client side).
pub fn encode_request(endpoint: &str, data: &Value, secret: Option<&str>) -> String {
    json!({"endpoint": endpoint, "data": data, "headers": {"Authorization": secret}}).to_string()
}

/// Encode the port handshake (client side).
pub fn encode_handshake(secret: Option<&str>) -> String {
    json!({"connect": true, "headers": {"Authorization": secret}}).to_string()
}

/// A reply as seen by a primary-dialect client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Any value that is not an error reply.
    Value(Value),
    /// An object with both `error` and an integer `code`.
    Error {
        /// The `code`.
        code: i64,
        /// The `error` text (its JSON text when not a string).
        message: String,
    },
}

/// Parse a reply frame (client side). `None` for invalid JSON.
pub fn parse_reply(text: &str) -> Option<Reply> {
    let v: Value = serde_json::from_str(text).ok()?;
    if let Value::Object(m) = &v {
        if let (Some(err), Some(code)) = (m.get("error"), m.get("code").and_then(Value::as_i64)) {
            let message = err.as_str().map_or_else(|| err.to_string(), str::to_owned);
            return Some(Reply::Error { code, message });
        }
    }
    Some(Reply::Value(v))
}

/// Parse a handshake reply: the `port`, or the error reply.
pub fn parse_handshake_reply(text: &str) -> Option<Result<u16, Reply>> {
    match parse_reply(text)? {
        Reply::Value(Value::Object(m)) => {
            let port = m.get("port")?.as_u64()?;
            u16::try_from(port).ok().map(Ok)
        }
        other => Some(Err(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_order() {
        assert_eq!(parse_frame("nope"), Err(ErrorReply::InvalidRequest));
        assert_eq!(parse_frame("[1]"), Err(ErrorReply::InvalidRequest));
        assert!(matches!(
            parse_frame(r#"{"connect":true}"#),
            Ok(Frame::Handshake {
                authorization: Authorization::Missing
            })
        ));
        assert!(matches!(
            parse_frame(r#"{"connect":true,"endpoint":"x"}"#),
            Ok(Frame::Request(_))
        ));
        let Ok(Frame::BetterIpc(b)) =
            parse_frame(r#"{"endpoint":"e","secret":"None","kwargs":{"a":1}}"#)
        else {
            panic!()
        };
        assert_eq!(b.secret.as_deref(), Some("None"));
        assert_eq!(b.kwargs["a"], 1);
        assert!(matches!(
            parse_frame(r#"{"endpoint":"e","secret":"s","headers":{}}"#),
            Ok(Frame::Request(_))
        ));
        assert_eq!(
            parse_frame(r#"{"endpoint":"e","data":3}"#),
            Err(ErrorReply::InvalidRequest)
        );
    }

    #[test]
    fn authorization_classes() {
        let auth = |s: &str| match parse_frame(s) {
            Ok(Frame::Request(r)) => r.authorization,
            _ => panic!(),
        };
        assert_eq!(auth(r#"{"endpoint":"e"}"#), Authorization::Missing);
        assert_eq!(
            auth(r#"{"endpoint":"e","headers":3}"#),
            Authorization::Missing
        );
        assert_eq!(
            auth(r#"{"endpoint":"e","headers":{"Authorization":null}}"#),
            Authorization::Missing
        );
        assert_eq!(
            auth(r#"{"endpoint":"e","headers":{"Authorization":""}}"#),
            Authorization::Missing
        );
        assert_eq!(
            auth(r#"{"endpoint":"e","headers":{"Authorization":5}}"#),
            Authorization::Present("5".into())
        );
        assert_eq!(
            format!("{:?}", Authorization::Present("secret".into())),
            "Present(<redacted>)"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            ErrorReply::Unauthorized.encode(),
            r#"{"error":"Unauthorized","code":401}"#
        );
        assert_eq!(ErrorReply::Forbidden.code(), 403);
        assert_eq!(
            ErrorReply::NoEndpoint.encode(),
            r#"{"error":"No endpoint was set","code":400}"#
        );
        assert_eq!(
            ErrorReply::RouteFailed("Timeout".into()).encode(),
            r#"{"error":"IPC route raised error of type Timeout","code":500}"#
        );
        assert_eq!(
            BetterReply::Success(json!("hi")).encode(),
            r#"{"decoding":null,"code":200,"response":"hi"}"#
        );
        assert_eq!(
            BetterReply::Success(json!({"a":1})).encode(),
            r#"{"decoding":"JSON","code":200,"response":"{\"a\":1}"}"#
        );
        assert_eq!(BetterReply::UnknownEndpoint.to_value()["code"], 404);
        assert_eq!(
            parse_reply(r#"{"error":"x","code":403}"#),
            Some(Reply::Error {
                code: 403,
                message: "x".into()
            })
        );
        assert_eq!(
            parse_reply(r#"{"error":"x"}"#),
            Some(Reply::Value(json!({"error":"x"})))
        );
        assert_eq!(
            parse_handshake_reply(&encode_handshake_reply(8000)),
            Some(Ok(8000))
        );
    }
}
