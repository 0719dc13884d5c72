//! Parsing and encoding of cloud protocol lines.

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use super::name::{validate_username, UsernameError};
use super::value::{json_string, CloudValue, ValueError};

/// Split an incoming text frame into message lines: split on `"\n"`, strip one
/// trailing `"\r"` per line, skip empty lines.
///
/// ```
/// let lines: Vec<_> = nimbus_proto::cloud::split_frame("a\r\n\nb").collect();
/// assert_eq!(lines, ["a", "b"]);
/// ```
pub fn split_frame(frame: &str) -> impl Iterator<Item = &str> {
    frame
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// A line that is not a protocol message at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MalformedLine {
    /// Not valid JSON (this includes `Infinity` and `NaN`, which Python emits).
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// No `method`, or `method` is not a string.
    #[error("\"method\" is missing or not a string")]
    NoMethod,
}

/// A field of a message that is missing or of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// The field is absent (or `null`).
    #[error("field {0:?} is missing")]
    Missing(&'static str),
    /// The field has the wrong JSON type.
    #[error("field {0:?} has the wrong type")]
    WrongType(&'static str),
    /// The field's value is refused.
    #[error("field {field:?}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A handshake's fields, not yet validated (see [`Handshake::room`] and [`Handshake::user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    user: Result<String, FieldError>,
    project_id: Result<String, FieldError>,
}

impl Handshake {
    /// The room key: the project id as a decimal string of 1..=999 characters.
    /// Failure means close code 4000.
    pub fn room(&self) -> Result<&str, FieldError> {
        self.project_id.as_deref().map_err(Clone::clone)
    }

    /// The username, checked against the charset and `max_len`.
    /// Failure means close code 4002.
    pub fn user(&self, max_len: usize) -> Result<&str, UsernameError> {
        let user = self.user.as_deref().map_err(|_| UsernameError::Missing)?;
        validate_username(user, max_len)?;
        Ok(user)
    }
}

/// A message from a client, as parsed from one line.
///
/// Field-level problems are kept per field so the server can apply the
/// protocol's policy: a bad `set` is dropped, a bad handshake closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"method":"handshake","user":…,"project_id":…}`
    Handshake(Handshake),
    /// `{"method":"set","name":…,"value":…}`
    Set {
        /// The variable name (not yet validated against the name rules).
        name: Result<String, FieldError>,
        /// The value (type-checked, not yet checked against a profile).
        value: Result<CloudValue, FieldError>,
    },
    /// `{"method":"create","name":…,"value":…}`: treated like `set`.
    Create {
        /// The variable name.
        name: Result<String, FieldError>,
        /// The value.
        value: Result<CloudValue, FieldError>,
    },
    /// `{"method":"rename","name":…,"new_name":…}`
    Rename {
        /// The current name.
        name: Result<String, FieldError>,
        /// The new name.
        new_name: Result<String, FieldError>,
    },
    /// `{"method":"delete","name":…}`
    Delete {
        /// The variable name.
        name: Result<String, FieldError>,
    },
    /// Any other method (e.g. `get`, which some bots send): close 4000.
    Unknown {
        /// The method as sent.
        method: String,
    },
}

#[derive(Deserialize)]
struct WireLine<'a> {
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    project_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    new_name: Option<&'a RawValue>,
}

fn string_field(raw: Option<&RawValue>, field: &'static str) -> Result<String, FieldError> {
    let raw = raw.ok_or(FieldError::Missing(field))?.get();
    if !raw.starts_with('"') {
        return Err(FieldError::WrongType(field));
    }
    serde_json::from_str(raw).map_err(|_| FieldError::WrongType(field))
}

fn value_field(raw: Option<&RawValue>) -> Result<CloudValue, FieldError> {
    let raw = raw.ok_or(FieldError::Missing("value"))?.get();
    CloudValue::from_json(raw).map_err(|e: ValueError| FieldError::Invalid {
        field: "value",
        reason: e.to_string(),
    })
}

/// Maximum length of a room key (project id), in characters.
pub const MAX_PROJECT_ID_LEN: usize = 999;

/// The one rule for a room key (project id), on the cloud wire, the HTTP API and `GET /logs`
/// alike: 1 to [`MAX_PROJECT_ID_LEN`] characters, none of them a control character. `Err`
/// says why, for the refusal.
pub fn check_project_id(id: &str) -> Result<(), String> {
    let len = id.chars().count();
    if len == 0 || len > MAX_PROJECT_ID_LEN {
        return Err(format!(
            "a project id is 1 to {MAX_PROJECT_ID_LEN} characters, got {len}"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("a project id has no control characters".into());
    }
    Ok(())
}

fn project_id_field(raw: Option<&RawValue>) -> Result<String, FieldError> {
    const F: &str = "project_id";
    let raw = raw.ok_or(FieldError::Missing(F))?.get();
    let id = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|_| FieldError::WrongType(F))?
    } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        // An integer literal (scratchattach sends ints): its decimal string.
        raw.to_owned()
    } else {
        return Err(FieldError::WrongType(F));
    };
    check_project_id(&id).map_err(|reason| FieldError::Invalid { field: F, reason })?;
    Ok(id)
}

/// Parse one line (as produced by [`split_frame`]) from a client.
pub fn parse_client_line(line: &str) -> Result<ClientMessage, MalformedLine> {
    let wire: WireLine<'_> = match serde_json::from_str(line) {
        Ok(w) => w,
        Err(e) if e.is_data() => return Err(MalformedLine::NotObject),
        Err(e) => return Err(MalformedLine::NotJson(e.to_string())),
    };
    let method = string_field(wire.method, "method").map_err(|_| MalformedLine::NoMethod)?;
    Ok(match method.as_str() {
        "handshake" => ClientMessage::Handshake(Handshake {
            user: string_field(wire.user, "user"),
            project_id: project_id_field(wire.project_id),
        }),
        "set" => ClientMessage::Set {
            name: string_field(wire.name, "name"),
            value: value_field(wire.value),
        },
        "create" => ClientMessage::Create {
            name: string_field(wire.name, "name"),
            value: value_field(wire.value),
        },
        "rename" => ClientMessage::Rename {
            name: string_field(wire.name, "name"),
            new_name: string_field(wire.new_name, "new_name"),
        },
        "delete" => ClientMessage::Delete {
            name: string_field(wire.name, "name"),
        },
        _ => ClientMessage::Unknown { method },
    })
}

/// Encode the one message a server sends: `{"method":"set","name":…,"value":…}\n`.
pub fn encode_set(name: &str, value: &CloudValue) -> String {
    let name = json_string(name);
    let mut out = String::with_capacity(32 + name.len() + value.as_str().len());
    out.push_str("{\"method\":\"set\",\"name\":");
    out.push_str(&name);
    out.push_str(",\"value\":");
    value.write_json(&mut out);
    out.push_str("}\n");
    out
}

/// A message from a server, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A variable's new value.
    Set {
        /// Variable name, with its prefix.
        name: String,
        /// New value.
        value: CloudValue,
    },
    /// Some other method with a name (e.g. `create`, `delete` from servers that broadcast them).
    Other {
        /// The method.
        method: String,
        /// The variable name, if any.
        name: Option<String>,
        /// The value, if any and if it is a number or string.
        value: Option<CloudValue>,
    },
}

/// Parse one line sent by a server.
pub fn parse_server_line(line: &str) -> Result<ServerMessage, MalformedLine> {
    let wire: WireLine<'_> = match serde_json::from_str(line) {
        Ok(w) => w,
        Err(e) if e.is_data() => return Err(MalformedLine::NotObject),
        Err(e) => return Err(MalformedLine::NotJson(e.to_string())),
    };
    let method = string_field(wire.method, "method").map_err(|_| MalformedLine::NoMethod)?;
    let name = string_field(wire.name, "name").ok();
    let value = value_field(wire.value).ok();
    Ok(match (method.as_str(), name, value) {
        ("set", Some(name), Some(value)) => ServerMessage::Set { name, value },
        (_, name, value) => ServerMessage::Other {
            method,
            name,
            value,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_handles_crlf_blank_lines_and_no_trailing_newline() {
        let v: Vec<_> = split_frame("a\r\n\r\n\nb\n").collect();
        assert_eq!(v, ["a", "b"]);
        assert_eq!(split_frame("\n").count(), 0);
        assert_eq!(split_frame("x").collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn handshake_accepts_string_or_integer_project_id() {
        let m = parse_client_line(r#"{"method":"handshake","user":"p","project_id":"123"}"#);
        let Ok(ClientMessage::Handshake(h)) = m else {
            panic!("{m:?}")
        };
        assert_eq!(h.room(), Ok("123"));
        assert_eq!(h.user(20), Ok("p"));
        let m = parse_client_line(r#"{"method":"handshake","user":"p","project_id":123}"#);
        let Ok(ClientMessage::Handshake(h)) = m else {
            panic!("{m:?}")
        };
        assert_eq!(h.room(), Ok("123"));
    }

    #[test]
    fn handshake_rejects_bad_project_ids() {
        for bad in [
            r#"{"method":"handshake","user":"p"}"#,
            r#"{"method":"handshake","user":"p","project_id":""}"#,
            r#"{"method":"handshake","user":"p","project_id":1.5}"#,
            r#"{"method":"handshake","user":"p","project_id":-1}"#,
            r#"{"method":"handshake","user":"p","project_id":[1]}"#,
            r#"{"method":"handshake","user":"p","project_id":"12\n3"}"#,
        ] {
            let Ok(ClientMessage::Handshake(h)) = parse_client_line(bad) else {
                panic!("{bad}")
            };
            assert!(h.room().is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"method":"handshake","user":"p","project_id":"{}"}}"#,
            "1".repeat(1000)
        );
        let Ok(ClientMessage::Handshake(h)) = parse_client_line(&long) else {
            panic!()
        };
        assert!(h.room().is_err());
    }

    #[test]
    fn one_project_id_rule_for_every_entry_point() {
        assert_eq!(check_project_id("1"), Ok(()));
        assert_eq!(
            check_project_id(&"é".repeat(MAX_PROJECT_ID_LEN)),
            Ok(()),
            "characters, not bytes"
        );
        assert!(check_project_id("").is_err());
        assert!(check_project_id(&"1".repeat(MAX_PROJECT_ID_LEN + 1)).is_err());
        assert!(check_project_id("a\u{0}b").is_err());
        assert!(check_project_id("a\tb").is_err());
    }

    #[test]
    fn set_keeps_number_literals_and_strings() {
        let m = parse_client_line(r#"{"method":"set","name":"\u2601 a","value":1.50,"user":"x"}"#);
        assert_eq!(
            m,
            Ok(ClientMessage::Set {
                name: Ok("☁ a".into()),
                value: Ok(CloudValue::Number("1.50".into()))
            })
        );
    }

    #[test]
    fn malformed_lines_are_classified() {
        assert!(matches!(
            parse_client_line("not json"),
            Err(MalformedLine::NotJson(_))
        ));
        assert!(matches!(
            parse_client_line(r#"{"method":"set","name":"☁ a","value":Infinity}"#),
            Err(MalformedLine::NotJson(_))
        ));
        assert_eq!(parse_client_line("[1]"), Err(MalformedLine::NotObject));
        assert_eq!(parse_client_line("1"), Err(MalformedLine::NotObject));
        assert_eq!(
            parse_client_line(r#"{"method":1}"#),
            Err(MalformedLine::NoMethod)
        );
        assert_eq!(parse_client_line("{}"), Err(MalformedLine::NoMethod));
    }

    #[test]
    fn unknown_methods_are_reported() {
        assert_eq!(
            parse_client_line(r#"{"method":"get","name":"☁ a"}"#),
            Ok(ClientMessage::Unknown {
                method: "get".into()
            })
        );
    }

    #[test]
    fn encode_set_is_compact_and_newline_terminated() {
        assert_eq!(
            encode_set("☁ a", &CloudValue::String("1".into())),
            "{\"method\":\"set\",\"name\":\"☁ a\",\"value\":\"1\"}\n"
        );
        assert_eq!(
            encode_set("☁ \"q\"", &CloudValue::Number("-2.5".into())),
            "{\"method\":\"set\",\"name\":\"☁ \\\"q\\\"\",\"value\":-2.5}\n"
        );
    }

    #[test]
    fn server_lines_round_trip() {
        let v = CloudValue::Number("7".into());
        let line = encode_set("☁ x", &v);
        assert_eq!(
            parse_server_line(line.trim_end()),
            Ok(ServerMessage::Set {
                name: "☁ x".into(),
                value: v
            })
        );
    }
}
