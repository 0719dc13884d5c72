//! Broken updates never break a room: thousands of mutated (often still decodable)
//! updates are applied to a room with content; no panic escapes, the room stays open, its
//! state stays encodable and loadable, valid updates still apply, and clients keep syncing.
//!
//! What is *not* checked: that the accepted garbage reads the same everywhere. A decodable
//! update with hand-made origins can place items so that replicas which integrate it in a
//! different grouping order them differently (YATA trusts writers, as every Yjs server
//! does); see the `update` module docs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{eventually, json_of, Addr, Kind};
use nimbus_doc::yrs::updates::decoder::Decode;
use nimbus_doc::yrs::{Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update};
use nimbus_doc::{NoHooks, Room, RoomOptions, ServerOptions};

/// Valid incremental updates of a document with text, map, nested map and array content.
fn valid_updates() -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(77);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let arr = doc.get_or_insert_array("a");
    let mut ups = Vec::new();
    for i in 0..6u32 {
        let sv = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello");
            if i % 2 == 1 {
                text.remove_range(&mut txn, 1, 2);
                arr.remove(&mut txn, 0);
            }
            map.insert(&mut txn, format!("k{i}"), i);
            arr.push_back(&mut txn, "x");
            let nested = map.insert(&mut txn, "n", MapPrelim::default());
            nested.insert(&mut txn, "z", i);
        }
        ups.push(doc.transact().encode_state_as_update_v1(&sv));
    }
    ups
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(rng: &mut Rng, ups: &[Vec<u8>]) -> Vec<u8> {
    let mut u = ups[(rng.next() % ups.len() as u64) as usize].clone();
    for _ in 0..1 + rng.next() % 4 {
        let i = (rng.next() as usize) % u.len();
        match rng.next() % 4 {
            0 => u[i] = rng.next() as u8,
            1 => u[i] ^= 1 << (rng.next() % 8),
            2 => u[i] = u[i].wrapping_add(1),
            _ => u.truncate(i.max(1)),
        }
    }
    u
}

fn check_consistent(room: &Room) {
    // The room's full state loads into a fresh document (whose reading may differ for
    // accepted garbage, see the file docs).
    let state = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let copy = Doc::new();
    copy.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let _ = json_of(&copy);
    let _ = json_of(room.doc());
}

#[tokio::test]
async fn mutated_updates_are_refused_or_applied_and_never_break_the_room() {
    for validate in [true, false] {
        let room = Room::with_options(
            "/fuzz",
            Arc::new(NoHooks),
            RoomOptions {
                validate_updates: validate,
                ..RoomOptions::default()
            },
        );
        let ups = valid_updates();
        // Some content first.
        room.apply_update(&ups[0]).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..3000 {
            let u = mutate(&mut rng, &ups);
            match room.apply_update(&u) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
            assert!(
                !room.is_closed(),
                "an update made yrs panic (validate = {validate})"
            );
        }
        assert!(ok > 0 && refused > 0, "ok {ok} refused {refused}");
        check_consistent(&room);
        if validate {
            // Updates that build on content the room lacks are refused, so nothing is stashed.
            assert!(!room.doc().transact().has_missing_updates());
        }
        // Valid updates still apply after all that.
        for u in &ups {
            room.apply_update(u).unwrap();
        }
        check_consistent(&room);
    }
}

#[tokio::test]
async fn a_room_that_received_garbage_still_syncs_its_clients() {
    let addr = Addr::new(Kind::Memory);
    let s = common::serve_with(addr, |id: &str| Room::new(id), ServerOptions::default()).await;
    let a = s.client("g").await;
    let room = s.guard.manager().get("/g").unwrap();
    let ups = valid_updates();
    let mut rng = Rng(42);
    for _ in 0..500 {
        let _ = room.apply_update(&mutate(&mut rng, &ups));
    }
    let b = s.client("g").await;
    a.doc()
        .get_or_insert_text("mine")
        .push(&mut a.doc().transact_mut(), "still fine");
    eventually("a's new edit reaches the room and b", || {
        json_of(room.doc())["mine"] == "still fine" && json_of(b.doc())["mine"] == "still fine"
    })
    .await;
    b.doc()
        .get_or_insert_map("bm")
        .insert(&mut b.doc().transact_mut(), "k", 1);
    eventually("b's new edit reaches a", || {
        json_of(a.doc())["bm"] == serde_json::json!({"k": 1})
    })
    .await;
    a.close().await;
    b.close().await;
}

/// Found by `fuzz/fuzz_targets/doc_update_apply.rs`: decodes, applies (as a pending stash),
/// and then makes every `encode_state_as_update_v1` of the document panic in yrs 0.28.1.
fn poison() -> Vec<u8> {
    let mut p = vec![2u8; 80];
    p.push(10);
    p
}

/// A well-formed update that builds on an earlier one of its client the room never got.
fn orphan() -> Vec<u8> {
    let doc = Doc::with_client_id(77);
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "abc");
    let after_first = doc.transact().state_vector();
    text.insert(&mut doc.transact_mut(), 3, "d");
    let update = doc.transact().encode_diff_v1(&after_first);
    update
}

#[test]
fn the_poison_update_really_breaks_a_plain_yrs_document() {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "hello");
    if let Ok(u) = Update::decode_v1(&poison()) {
        let _ = doc.transact_mut().apply_update(u);
    }
    let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }));
    // If a yrs upgrade fixes this, the room test below still holds; this one documents why
    // the validator exists.
    assert!(
        encoded.is_err(),
        "yrs no longer panics on the poison update"
    );
}

#[tokio::test]
async fn an_update_that_would_poison_the_room_is_refused_and_the_room_keeps_serving() {
    let s = common::serve_with(
        Addr::new(Kind::Memory),
        |id: &str| Room::new(id),
        ServerOptions::default(),
    )
    .await;
    let a = s.client("poison").await;
    a.doc()
        .get_or_insert_text("t")
        .push(&mut a.doc().transact_mut(), "hello");
    let room = s.guard.manager().get("/poison").unwrap();
    eventually("the room has the text", || {
        json_of(room.doc())["t"] == "hello"
    })
    .await;
    // Through the API.
    assert!(room.apply_update(&poison()).is_err());
    assert!(room.apply_update(&orphan()).is_err());
    // From a client: that client is closed with 1007. The poison update puts one client's
    // blocks in two sections that yrs cannot even re-encode (refused by the screen before
    // it is applied); the
    // orphan is well formed but builds on content the room does not have (refused by the
    // validator replica).
    for (update, why) in [
        (
            poison(),
            "malformed update: its re-encoding does not decode",
        ),
        (orphan(), "depends on content the room does not have"),
    ] {
        let mut raw = common::Raw::open(&s.addr, "poison").await;
        raw.send(&nimbus_proto::doc::Message::Update(update.into()).encode())
            .await;
        match raw.until_close().await {
            common::Got::Close(code, reason) => {
                assert_eq!(code, 1007);
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The room still encodes its state: a late joiner syncs.
    let b = s.client("poison").await;
    assert_eq!(json_of(b.doc())["t"], "hello");
    assert!(!room.doc().transact().has_missing_updates());
    a.close().await;
    b.close().await;
}
