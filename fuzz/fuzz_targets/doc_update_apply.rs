//! Arbitrary bytes applied as a Yjs v1 update to a document that already holds content,
//! the way a room takes a client's update: screened and decoded by
//! `nimbus_doc::update::decode_update` (what every room does first), then applied. Finds
//! inputs that pass the screen but make yrs panic, loop or touch freed memory while
//! applying or encoding (see nimbus-doc's `update` module, which also validates updates in
//! a replica document).
//!
//! Since the screen (malformed layouts, client counts beyond the input, clocks past
//! `i32::MAX`) the inputs below are refused before yrs sees them; the target keeps them in
//! `fuzz/regressions/doc_update_apply/` and the unit tests of `nimbus_doc::update` pin
//! their verdicts.
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
//! - `apply_update` panics (`block_store.rs:317`, unwrap on `None` in `push` from
//!   `integrate_gc`) on `crash-193211b3…`. The room contains such panics in its validator
//!   replica (`crates/doc/src/update.rs`). So are panics while committing: dividing by
//!   zero in `block_store.rs:60` (`find_index`, from the garbage collection of
//!   `TransactionMut::commit`) on `crash-64970fd9…`.
//! - An update that applies and commits without error and then makes `Text::get_string`
//!   loop, appending without end (over 6 GB of RSS in 52 s): `timeout-56f81071…`, 50 bytes.
//!   The validator cannot contain that; any read of the text (the JSON API, `doc dump`)
//!   after such an update exhausts memory. Skipped in containment mode (below).
//! - Under ASan the commit-time divide by zero, the endless `get_string` and
//!   `crash-7021a630…` (a bare SIGSEGV without ASan) are one bug: a heap use-after-free. `BlockStore::push`
//!   (`block_store.rs:332`, from `integrate_gc` / `integrate_item`) drops a block other items
//!   still point to. No `catch_unwind` contains that. Details in `docs/security.md`
//!   (section Fuzzing).
//!
//! With `DOC_UPDATE_CONTAIN=1` in the environment the target does what the room does: a
//! panic while decoding, applying, committing or encoding is caught (a transaction that
//! panicked while applying is leaked with `mem::forget`, as the validator does) and the
//! input is skipped. What remains a crash
//! then is what the room cannot contain: an abort, a stack overflow, memory over
//! `-rss_limit_mb`, an input slower than `-timeout`, or a panic outside those calls.
#![no_main]

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use libfuzzer_sys::fuzz_target;
use yrs::{Doc, GetString, Map, ReadTxn, Text, Transact};

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Whether panics in yrs are contained (`DOC_UPDATE_CONTAIN=1`).
fn contain() -> bool {
    static CONTAIN: OnceLock<bool> = OnceLock::new();
    *CONTAIN.get_or_init(|| std::env::var_os("DOC_UPDATE_CONTAIN").is_some_and(|v| v == "1"))
}

/// Runs `f`; with containment on, a panic inside it returns `None` instead of aborting
/// (libfuzzer-sys's panic hook aborts, so it is skipped while `f` runs).
fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    if !contain() {
        return Some(f());
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let outer = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.get() {
                outer(info);
            }
        }));
    });
    CONTAINED.set(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(false);
    result.ok()
}

fuzz_target!(|data: &[u8]| {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    {
        let map = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        map.insert(&mut txn, "k", 1);
    }
    // The screen contains decoder panics itself; `contained` keeps libFuzzer's panic hook
    // from aborting on them first.
    let Some(decoded) = contained(|| nimbus_doc::update::decode_update(data)) else {
        return;
    };
    if let Ok(update) = decoded {
        let mut txn = doc.transact_mut();
        if contained(|| txn.apply_update(update)).is_none() {
            // Its Drop commits, which could panic again.
            std::mem::forget(txn);
            return;
        }
        let missing = txn.has_missing_updates();
        // Dropping the transaction commits it (and collects garbage), which can panic too.
        if contained(move || drop(txn)).is_none() || missing {
            return;
        }
    }
    // The document stays readable afterwards (the room encodes under `catch_unwind`).
    let txn = doc.transact();
    // Looped without end on `timeout-56f81071…` before the screen.
    let _ = text.get_string(&txn);
    let _ = contained(|| txn.encode_state_as_update_v1(&yrs::StateVector::default()));
});
