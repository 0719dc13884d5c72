//! Error types.

/// An error a route returns; the server answers 500 (`IPC route raised error of type <kind>`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RouteError {
    /// The error kind reported on the wire (like a Python exception type name).
    pub kind: String,
    /// A human-readable message (sent only in better-ipc `error_details`).
    pub message: String,
}

impl RouteError {
    /// A route error of kind `RouteError` with a message.
    ///
    /// ```
    /// let e = nimbus_ipc::RouteError::new("boom");
    /// assert_eq!(e.kind, "RouteError");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind("RouteError", message)
    }

    /// A route error with an explicit kind (e.g. `ValueError`).
    pub fn with_kind(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Errors starting a [`crate::Server`].
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A non-loopback address was requested without a secret key.
    #[error("refusing to bind non-loopback address {0} without a secret key")]
    InsecureBind(String),
    /// Binding or resolving failed.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `start` was called on a running server.
    #[error("server already running")]
    AlreadyRunning,
}

/// Errors of [`crate::ClientSession::request`].
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// 400: invalid request, missing or unknown endpoint.
    #[error("bad request: {message}")]
    BadRequest {
        /// The server's `error` text.
        message: String,
    },
    /// 401: no secret sent while the server requires one.
    #[error("unauthorized (401)")]
    Unauthorized,
    /// 403: wrong secret.
    #[error("forbidden (403)")]
    Forbidden,
    /// 500: the route failed.
    #[error("route failed: {message}")]
    RouteFailed {
        /// The server's `error` text.
        message: String,
    },
    /// Another error code.
    #[error("error reply {code}: {message}")]
    Other {
        /// The code.
        code: i64,
        /// The `error` text.
        message: String,
    },
    /// No reply within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Connection failure.
    #[error("connection: {0}")]
    Io(String),
    /// The peer broke the protocol (binary frame, invalid JSON, missing port...).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl IpcError {
    pub(crate) fn from_reply(code: i64, message: String) -> Self {
        match code {
            400 => IpcError::BadRequest { message },
            401 => IpcError::Unauthorized,
            403 => IpcError::Forbidden,
            500 => IpcError::RouteFailed { message },
            _ => IpcError::Other { code, message },
        }
    }
}
