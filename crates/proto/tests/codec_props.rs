//! Property tests for the cloud codec: whatever bytes arrive, parsing never
//! panics, and every value the server encodes parses back to itself.
#![allow(clippy::unwrap_used)]
use nimbus_proto::cloud::{
    encode_set, parse_client_line, parse_server_line, split_frame, CloudValue, ServerMessage,
    ValueProfile,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn parsing_arbitrary_frames_never_panics(frame in ".{0,512}") {
        for line in split_frame(&frame) {
            let _ = parse_client_line(line);
            let _ = parse_server_line(line);
        }
    }

    #[test]
    fn split_strips_one_cr_and_skips_blank_lines(frame in "[a\r\n{}\"]{0,64}") {
        let expected: Vec<&str> = frame
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect();
        let got: Vec<&str> = split_frame(&frame).collect();
        for line in &got {
            prop_assert!(!line.contains('\n'));
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn encoded_sets_parse_back_identically(name in "\u{2601} .{1,40}", digits in "-?[0-9]{1,30}(\\.[0-9]{1,10})?", as_number: bool) {
        let value = if as_number && !digits.starts_with("-0") && !digits.trim_start_matches('-').starts_with('0') {
            CloudValue::Number(digits.clone())
        } else {
            CloudValue::String(digits.clone())
        };
        prop_assert!(value.validate(ValueProfile::TurboWarp, 100_000).is_ok());
        let line = encode_set(&name, &value);
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1);
        let parsed = parse_server_line(line.trim_end_matches('\n')).unwrap();
        prop_assert_eq!(parsed, ServerMessage::Set { name, value });
    }

    #[test]
    fn any_client_set_value_round_trips_through_the_server_encoding(v in "[0-9]{1,20}") {
        let line = format!("{{\"method\":\"set\",\"name\":\"\u{2601} a\",\"value\":\"{v}\"}}");
        let msg = parse_client_line(&line).unwrap();
        let nimbus_proto::cloud::ClientMessage::Set { value: Ok(value), .. } = msg else { panic!() };
        let out = encode_set("\u{2601} a", &value);
        prop_assert_eq!(out, format!("{line}\n"));
    }
}
