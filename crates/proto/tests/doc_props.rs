//! Property tests for the y-sync codec: every message round-trips, concatenations decode to
//! the same messages, and no byte string makes the decoders panic.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use nimbus_proto::doc::lib0::{write_var_uint, Reader, MAX_VAR_UINT};
use nimbus_proto::doc::{decode_frame, AuthMessage, AwarenessEntry, AwarenessUpdate, Message};
use proptest::prelude::*;

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_bytes().prop_map(Message::SyncStep1),
        arb_bytes().prop_map(Message::SyncStep2),
        arb_bytes().prop_map(Message::Update),
        arb_bytes().prop_map(Message::Awareness),
        ".{0,40}".prop_map(|r| Message::Auth(AuthMessage::PermissionDenied(r))),
        Just(Message::Auth(AuthMessage::PermissionGranted)),
        Just(Message::QueryAwareness),
        (4..=MAX_VAR_UINT, arb_bytes())
            .prop_map(|(kind, payload)| Message::Custom { kind, payload }),
    ]
}

fn arb_awareness() -> impl Strategy<Value = AwarenessUpdate> {
    prop::collection::vec(
        (
            0..=MAX_VAR_UINT,
            0..=MAX_VAR_UINT,
            prop::option::of("[a-z{}\":0-9 ]{0,30}".prop_filter("not null", |s| s != "null")),
        )
            .prop_map(|(client_id, clock, state)| AwarenessEntry {
                client_id,
                clock,
                state,
            }),
        0..8,
    )
    .prop_map(|entries| AwarenessUpdate { entries })
}

proptest! {
    #[test]
    fn every_message_round_trips(m in arb_message()) {
        let frame = m.encode();
        prop_assert_eq!(decode_frame(&frame).unwrap(), vec![m]);
    }

    #[test]
    fn concatenated_messages_decode_in_order(ms in prop::collection::vec(arb_message(), 1..6)) {
        let mut buf = Vec::new();
        for m in &ms {
            m.encode_into(&mut buf);
        }
        prop_assert_eq!(decode_frame(&Bytes::from(buf)).unwrap(), ms);
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic(m in arb_message(), cut in any::<prop::sample::Index>()) {
        let frame = m.encode();
        let cut = cut.index(frame.len());
        let short = frame.slice(..cut);
        // A prefix can decode only if it is itself a whole message sequence.
        if let Ok(msgs) = decode_frame(&short) {
            prop_assert!(!msgs.is_empty());
        }
    }

    #[test]
    fn any_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let frame = Bytes::from(data);
        match decode_frame(&frame) {
            Ok(msgs) => {
                // Whatever decoded re-encodes to something that decodes the same.
                let mut buf = Vec::new();
                for m in &msgs {
                    m.encode_into(&mut buf);
                }
                prop_assert_eq!(decode_frame(&Bytes::from(buf)).unwrap(), msgs);
            }
            Err(e) => prop_assert!(e.offset() <= frame.len()),
        }
        let _ = AwarenessUpdate::decode(&frame);
    }

    #[test]
    fn awareness_updates_round_trip(u in arb_awareness()) {
        prop_assert_eq!(AwarenessUpdate::decode(&u.encode()).unwrap(), u);
    }

    #[test]
    fn var_uints_round_trip(v in 0..=MAX_VAR_UINT) {
        let mut buf = Vec::new();
        write_var_uint(&mut buf, v);
        let mut r = Reader::new(&buf);
        prop_assert_eq!(r.read_var_uint("v").unwrap(), v);
        prop_assert!(r.is_empty());
    }

    #[test]
    fn var_uints_above_2_pow_53_are_refused(v in (MAX_VAR_UINT + 1)..=u64::MAX) {
        let mut buf = Vec::new();
        write_var_uint(&mut buf, v);
        prop_assert!(Reader::new(&buf).read_var_uint("v").is_err());
    }
}
