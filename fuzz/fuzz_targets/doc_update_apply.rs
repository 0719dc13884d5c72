//! Arbitrary bytes applied as a Yjs v1 update to a document that already holds content:
//! finds inputs that decode but make yrs panic while applying or encoding (see nimbus-doc's
//! `update` module, which validates updates in a replica document for that reason).
//!
//! Known (yrs 0.28.1): an update that leaves a pending stash can make every later
//! `encode_state_as_update_v1` panic in `merge_pending_v1` (input: 80 × `02`, then `0a`;
//! regression test in `crates/doc/tests/update_robustness.rs`). The room refuses updates
//! that leave missing dependencies, so this target skips them to look for other panics.
//!
//! Known (yrs 0.28.1), found by this target (inputs in `fuzz/regressions/doc_update_apply/`):
//! - Allocation bomb: `Update::decode` (and `StateVector::decode`) `try_reserve` a hash map
//!   for the client count the input declares. With Linux overcommit the reservation
//!   succeeds and hashbrown initialises one control byte per bucket: the 4 bytes
//!   `b0 ff ff 10` (35,651,504 clients) ask for 2.75 GB and touch 64 MiB before failing on
//!   the missing data (`oom-bc1063a0…`). This target skips inputs whose count exceeds
//!   their length (what a fix in the room must refuse) so the run goes on.
//! - A client id of 2^53 or more (`crash-2dd69b9c…`: `01 03 ff ff ff ff ff ff ff 3b`) trips
//!   a `debug_assert!` in `ClientID::new`; release builds (the server's) silently keep the
//!   low 53 bits. Build this target with `cargo fuzz build -O` (no debug assertions, like
//!   the server) to look past it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, Text, Transact, Update};

/// The leading varint of a v1 update: its number of clients.
fn declared_clients(data: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for (i, b) in data.iter().take(10).enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    // Each client takes at least 3 bytes (blocks, client, clock): a larger count is the
    // known allocation bomb.
    if declared_clients(data).is_some_and(|n| n > data.len() as u64) {
        return;
    }
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    {
        let map = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        map.insert(&mut txn, "k", 1);
    }
    if let Ok(update) = Update::decode_v1(data) {
        let mut txn = doc.transact_mut();
        let _ = txn.apply_update(update);
        if txn.has_missing_updates() {
            return;
        }
    }
    // The document stays readable afterwards.
    let txn = doc.transact();
    let _ = text.get_string(&txn);
    let _ = txn.encode_state_as_update_v1(&yrs::StateVector::default());
});
