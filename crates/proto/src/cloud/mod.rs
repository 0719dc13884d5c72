//! The Scratch / TurboWarp cloud-variable protocol.
//!
//! The wire format is described in `docs/protocols/cloud.md`. In short: a client
//! sends compact JSON objects, one per line, in WebSocket text frames; the first
//! one is a `handshake`, then `set` / `create` / `rename` / `delete`. The server
//! only ever sends `set` lines, each terminated by `"\n"`.
//!
//! ```
//! use nimbus_proto::cloud::{self, ClientMessage, ValueProfile};
//!
//! let frame = "{\"method\":\"handshake\",\"user\":\"player1\",\"project_id\":123}\n\
//!              {\"method\":\"set\",\"name\":\"☁ score\",\"value\":42}";
//! let msgs: Vec<_> = cloud::split_frame(frame).map(cloud::parse_client_line).collect();
//! let ClientMessage::Handshake(h) = msgs[0].as_ref().unwrap() else { panic!() };
//! assert_eq!(h.room().unwrap(), "123");
//! let ClientMessage::Set { name, value } = msgs[1].as_ref().unwrap() else { panic!() };
//! assert_eq!(value.as_ref().unwrap().to_string(), "42");
//! assert!(cloud::validate_name(name.as_ref().unwrap(), 1024).is_ok());
//!
//! let line = cloud::encode_set("☁ score", value.as_ref().unwrap());
//! assert_eq!(line, "{\"method\":\"set\",\"name\":\"☁ score\",\"value\":42}\n");
//! # let _ = ValueProfile::TurboWarp;
//! ```

mod close;
mod message;
mod name;
mod value;

pub use close::CloseCode;
pub use message::{
    check_project_id, encode_set, parse_client_line, parse_server_line, split_frame, ClientMessage,
    FieldError, Handshake, MalformedLine, ServerMessage, MAX_PROJECT_ID_LEN,
};
pub use name::{
    bare_name, normalize_name, validate_name, validate_username, NameError, UsernameError,
    CLOUD_PREFIX, CLOUD_PREFIX_ALT, CLOUD_PREFIX_EMOJI,
};
pub use value::{CloudValue, ValueError, ValueProfile};
