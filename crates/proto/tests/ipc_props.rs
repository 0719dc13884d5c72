//! Property tests for the IPC codec.
#![allow(clippy::unwrap_used)]

use nimbus_proto::ipc::{self, Authorization, BetterReply, ErrorReply, Frame, Reply};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        "[a-z ☁\"\\\\]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,64}") {
        let _ = ipc::parse_frame(&s);
        let _ = ipc::parse_reply(&s);
    }

    #[test]
    fn request_roundtrip(ep in "/?[a-z_]{1,12}", data in prop::collection::btree_map("[a-z]{1,4}", arb_json(), 0..4), key in proptest::option::of("[ -~]{1,16}")) {
        let data = Value::Object(data.into_iter().collect());
        let text = ipc::encode_request(&ep, &data, key.as_deref());
        let Ok(Frame::Request(r)) = ipc::parse_frame(&text) else { panic!("{text}") };
        prop_assert_eq!(r.endpoint.as_deref(), Some(ep.as_str()));
        prop_assert_eq!(r.route_name(), Some(ipc::route_name(&ep)));
        prop_assert_eq!(Value::Object(r.data), data);
        let expected = match key { Some(k) if !k.is_empty() => Authorization::Present(k), _ => Authorization::Missing };
        prop_assert_eq!(r.authorization, expected);
    }

    #[test]
    fn success_reply_is_value_unless_error_shaped(v in arb_json()) {
        let r = ipc::parse_reply(&ipc::encode_success(&v)).unwrap();
        prop_assert_eq!(r, Reply::Value(v));
    }

    #[test]
    fn better_success_decodes(v in arb_json()) {
        let reply = BetterReply::Success(v.clone()).to_value();
        prop_assert_eq!(&reply["code"], &json!(200));
        let decoded = match (&reply["decoding"], &reply["response"]) {
            (Value::Null, Value::String(s)) => Value::String(s.clone()),
            (d, Value::String(s)) if d == "JSON" => serde_json::from_str(s).unwrap(),
            _ => panic!("{reply}"),
        };
        prop_assert_eq!(decoded, v);
    }

    #[test]
    fn handshake_roundtrip(port in any::<u16>(), key in proptest::option::of("[a-z]{1,8}")) {
        prop_assert_eq!(ipc::parse_handshake_reply(&ipc::encode_handshake_reply(port)), Some(Ok(port)));
        let is_handshake = matches!(ipc::parse_frame(&ipc::encode_handshake(key.as_deref())), Ok(Frame::Handshake { .. }));
        prop_assert!(is_handshake);
    }
}

#[test]
fn error_replies_parse_back() {
    for e in [
        ErrorReply::InvalidRequest,
        ErrorReply::Unauthorized,
        ErrorReply::Forbidden,
        ErrorReply::NoEndpoint,
        ErrorReply::UnknownEndpoint,
        ErrorReply::RouteFailed("X".into()),
    ] {
        let Some(Reply::Error { code, .. }) = ipc::parse_reply(&e.encode()) else {
            panic!()
        };
        assert_eq!(code, i64::from(e.code()));
    }
}
