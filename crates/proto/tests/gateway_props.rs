//! Property tests for the gateway codec.
#![allow(clippy::unwrap_used)]

use nimbus_proto::gateway::{
    close_action, decode_client_payload, decode_payload, shard_of, CloseAction, CloseCode, Intents,
    OpCode, Payload, MAX_PAYLOAD_BYTES,
};
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
    fn decoding_never_panics(s in ".{0,256}") {
        let _ = decode_client_payload(&s);
        let _ = decode_payload(&s);
    }

    #[test]
    fn payload_roundtrip(op in 0u64..64, d in arb_json(), s in proptest::option::of(any::<u64>()), t in proptest::option::of("[A-Z_]{1,16}")) {
        let p = Payload { op, d, s, t };
        let text = p.encode();
        prop_assert_eq!(decode_payload(&text).unwrap(), p.clone());
        if text.len() <= MAX_PAYLOAD_BYTES {
            prop_assert_eq!(decode_client_payload(&text).unwrap(), p);
        } else {
            prop_assert!(decode_client_payload(&text).is_err());
        }
    }

    #[test]
    fn oversized_payloads_are_refused(extra in 1usize..2048) {
        let pad = "x".repeat(MAX_PAYLOAD_BYTES + extra);
        let text = Payload::new(OpCode::Heartbeat, Value::String(pad)).encode();
        prop_assert!(decode_client_payload(&text).is_err());
    }

    #[test]
    fn shard_of_is_in_range_and_stable(room in ".{0,24}", n in 1u64..64) {
        let s = shard_of(&room, n);
        prop_assert!(s < n);
        prop_assert_eq!(s, shard_of(&room, n));
    }

    #[test]
    fn snowflakes_follow_discord(id in (1u64 << 22)..u64::MAX, n in 1u64..64) {
        prop_assert_eq!(shard_of(&id.to_string(), n), (id >> 22) % n);
    }

    #[test]
    fn intents_accept_exactly_defined_bits(bits in any::<u64>()) {
        prop_assert_eq!(Intents::from_bits(bits).is_some(), bits & !7 == 0);
    }

    #[test]
    fn every_close_code_has_one_action(code in any::<u16>()) {
        let a = close_action(Some(code));
        match CloseCode::from_code(code) {
            Some(c) => {
                prop_assert_eq!(c.code(), code);
                prop_assert_eq!(c.is_fatal(), a == CloseAction::Fatal);
                prop_assert_eq!(c.is_resumable(), a == CloseAction::Resume);
            }
            None => prop_assert_eq!(a, CloseAction::Resume),
        }
    }
}
