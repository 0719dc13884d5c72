//! The file wire: roundtrip, squash, a truncated tail, a version mismatch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{eventually, json_of};
use nimbus_doc::wire::file;
use nimbus_doc::yrs::{Doc, Map, Text, Transact};
use nimbus_doc::{connect, ClientWire, ConnectError, ConnectOptions};
use serde_json::json;

fn wire(path: &std::path::Path, squash: bool, write_delay: Option<Duration>) -> ClientWire {
    ClientWire::File {
        path: path.to_owned(),
        squash,
        write_delay,
    }
}

async fn open(path: &std::path::Path, squash: bool) -> nimbus_doc::Client {
    connect(
        wire(path, squash, None),
        "",
        None,
        ConnectOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_document_round_trips_through_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes_updates.y");
    let c = open(&path, false).await;
    let t = c.doc().get_or_insert_text("t");
    let m = c.doc().get_or_insert_map("m");
    t.insert(&mut c.doc().transact_mut(), 0, "hello");
    m.insert(&mut c.doc().transact_mut(), "k", "v");
    t.push(&mut c.doc().transact_mut(), " world");
    c.close().await;

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..6], b"0.0.1\0");
    let records = file::parse(&path, &bytes).unwrap();
    assert_eq!(records.updates.len(), 3, "one record per transaction");

    let again = open(&path, false).await;
    assert_eq!(
        json_of(again.doc()),
        json!({"m": {"k": "v"}, "t": "hello world"})
    );
    again.close().await;
}

#[tokio::test]
async fn a_given_document_adds_its_own_content_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.y");
    let c = open(&path, false).await;
    c.doc()
        .get_or_insert_text("t")
        .insert(&mut c.doc().transact_mut(), 0, "file");
    c.close().await;
    let doc = Doc::new();
    doc.get_or_insert_map("m")
        .insert(&mut doc.transact_mut(), "mine", 1);
    let c = connect(
        wire(&path, false, None),
        "",
        Some(doc),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(json_of(c.doc()), json!({"m": {"mine": 1}, "t": "file"}));
    c.close().await;
    let back = open(&path, false).await;
    assert_eq!(json_of(back.doc()), json!({"m": {"mine": 1}, "t": "file"}));
    back.close().await;
}

#[tokio::test]
async fn squash_keeps_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.y");
    // Three records written without squash...
    let c = open(&path, false).await;
    let t = c.doc().get_or_insert_text("t");
    for w in ["a", "b", "c"] {
        t.push(&mut c.doc().transact_mut(), w);
    }
    c.close().await;
    assert_eq!(file::read(&path).unwrap().updates.len(), 3);
    // ...become one on open with squash, and stay one on every write.
    let c = open(&path, true).await;
    assert_eq!(file::read(&path).unwrap().updates.len(), 1);
    let t = c.doc().get_or_insert_text("t");
    t.push(&mut c.doc().transact_mut(), "d");
    eventually("the squashed file holds the new text", || {
        let recs = file::read(&path).unwrap().updates;
        let doc = Doc::new();
        for r in &recs {
            use nimbus_doc::yrs::updates::decoder::Decode;
            doc.transact_mut()
                .apply_update(nimbus_doc::yrs::Update::decode_v1(r).unwrap())
                .unwrap();
        }
        recs.len() == 1 && json_of(&doc)["t"] == "abcd"
    })
    .await;
    c.close().await;
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["s.y"]);
}

#[tokio::test]
async fn write_delay_batches_writes_and_close_flushes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.y");
    let c = connect(
        wire(&path, false, Some(Duration::from_secs(3600))),
        "",
        None,
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let t = c.doc().get_or_insert_text("t");
    t.push(&mut c.doc().transact_mut(), "x");
    t.push(&mut c.doc().transact_mut(), "y");
    // Nothing is written before the delay (only the header of the new file).
    assert_eq!(file::read(&path).unwrap().updates.len(), 0);
    c.close().await;
    assert_eq!(file::read(&path).unwrap().updates.len(), 2);
    let back = open(&path, false).await;
    assert_eq!(json_of(back.doc())["t"], "xy");
    back.close().await;
}

#[tokio::test]
async fn a_truncated_final_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.y");
    let c = open(&path, false).await;
    c.doc()
        .get_or_insert_text("t")
        .push(&mut c.doc().transact_mut(), "safe");
    c.close().await;
    // A crash in the middle of an append: a length of 50 and 3 bytes.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[50, 1, 2, 3])
        .unwrap();
    let contents = file::read(&path).unwrap();
    assert!(contents.truncated_tail);
    let c = open(&path, false).await;
    assert_eq!(json_of(c.doc())["t"], "safe");
    // The broken tail is cut on open, so later records stay readable.
    c.doc()
        .get_or_insert_text("t")
        .push(&mut c.doc().transact_mut(), " and sound");
    c.close().await;
    let contents = file::read(&path).unwrap();
    assert!(!contents.truncated_tail);
    let c = open(&path, false).await;
    assert_eq!(json_of(c.doc())["t"], "safe and sound");
    c.close().await;
}

#[tokio::test]
async fn a_version_mismatch_is_refused_with_wiredbs_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.y");
    std::fs::write(&path, b"0.0.2\0\x02\x00\x00").unwrap();
    let err = connect(
        wire(&path, false, None),
        "",
        None,
        ConnectOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        ConnectError::File(file::FileError::VersionMismatch { .. })
    ));
    assert_eq!(
        err.to_string(),
        "File version mismatch (got \"0.0.2\", expected \"0.0.1\")"
    );
}

#[tokio::test]
async fn a_file_written_by_wiredbs_wire_file_reads_and_grows() {
    // Written by wire-file 0.7.1 (AsyncFileClient, pycrdt 0.12): `t += "py1;"`.
    let bytes = hex("302e302e3100120101b9fbefcb020004010174047079313b00");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.y");
    std::fs::write(&path, &bytes).unwrap();
    let c = open(&path, false).await;
    assert_eq!(json_of(c.doc()), json!({"t": "py1;"}));
    c.doc()
        .get_or_insert_text("t")
        .push(&mut c.doc().transact_mut(), "rust;");
    c.close().await;
    // Our record follows theirs, in the same format.
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..bytes.len()], &bytes[..]);
    assert_eq!(file::parse(&path, &after).unwrap().updates.len(), 2);
    // And new documents get 32-bit client ids, which pycrdt < 0.13 decodes correctly.
    assert!(c_id_fits(&after[bytes.len()..]));
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The first client id of a record (`varUint(len) ‖ update`, update = `varUint(clients)`,
/// `varUint(structs)`, `varUint(client)`, ...) is below 2^32.
fn c_id_fits(record: &[u8]) -> bool {
    use nimbus_proto::doc::lib0::Reader;
    let mut r = Reader::new(record);
    let update = r.read_var_bytes("record").unwrap();
    let mut u = Reader::new(update);
    let _clients = u.read_var_uint("clients").unwrap();
    let _structs = u.read_var_uint("structs").unwrap();
    u.read_var_uint("client").unwrap() < 1 << 32
}
