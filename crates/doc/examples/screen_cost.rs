//! What the update screen costs (`docs/security.md`, "The screen in front of yrs"): the
//! time to decode a client update with and without it, for a keystroke, a paste of 1 KiB
//! and a first sync of 1 MiB.
//!
//! `cargo run --release -p nimbus-doc --example screen_cost`
#![allow(clippy::print_stdout)] // the table goes to stdout

use std::hint::black_box;
use std::time::{Duration, Instant};

use nimbus_doc::update::decode_update;
use nimbus_doc::yrs::updates::decoder::Decode;
use nimbus_doc::yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

/// An update of `doc` inserting `s` into its text.
fn edit(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let before = doc.transact().state_vector();
    text.push(&mut doc.transact_mut(), s);
    let update = doc.transact().encode_diff_v1(&before);
    update
}

/// Median time of `f` over `runs` runs of `batch` calls, per call.
fn median(runs: usize, batch: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed() / batch
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let doc = Doc::with_client_id(7);
    edit(&doc, &"a".repeat(4096));
    let cases = [
        ("keystroke", edit(&doc, "x"), 20_000),
        ("paste 1 KiB", edit(&doc, &"p".repeat(1024)), 5_000),
        (
            "first sync 1 MiB",
            {
                let big = Doc::with_client_id(9);
                for i in 0..1024 {
                    edit(&big, &format!("{i:04}{}", "b".repeat(1020)));
                }
                let state = big
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                state
            },
            20,
        ),
    ];
    println!("| update | bytes | decode | screened decode | extra |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, bytes, batch) in cases {
        let plain = median(7, batch, || {
            black_box(Update::decode_v1(black_box(&bytes)).ok());
        });
        let screened = median(7, batch, || {
            black_box(decode_update(black_box(&bytes)).ok());
        });
        println!(
            "| {name} | {} | {plain:.2?} | {screened:.2?} | {:.2?} |",
            bytes.len(),
            screened.saturating_sub(plain)
        );
    }
}
