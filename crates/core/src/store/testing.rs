//! Helpers for tests of the store and of its backends (here and in the server): a text
//! document's updates, and the text a log restores. Not part of the API.

use std::sync::{Arc, Mutex};

use yrs::{GetString, Text, Transact};

use super::{apply_records, DocLog};

/// `n` edits of a text `t` as Yjs v1 updates, and the text they leave.
pub fn text_updates(n: usize) -> (String, Vec<bytes::Bytes>) {
    let doc = yrs::Doc::new();
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let observed = doc.observe_update_v1("test", move |_, e| {
        if let Ok(mut v) = sink.lock() {
            v.push(bytes::Bytes::from(e.update.clone()));
        }
    });
    let text = doc.get_or_insert_text("t");
    for i in 0..n {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &format!("{i},"));
        if i % 3 == 0 {
            text.remove_range(&mut txn, 0, 1);
        }
    }
    drop(observed);
    let s = text.get_string(&doc.transact());
    let updates = out.lock().map(|v| v.clone()).unwrap_or_default();
    (s, updates)
}

/// The text `t` that `log` restores (every record must apply).
pub fn text_of(log: &DocLog) -> String {
    let doc = yrs::Doc::new();
    let applied = apply_records("r", &mut doc.transact_mut(), log.records());
    assert_eq!(applied.skipped, 0, "a record did not apply");
    let text = doc.get_or_insert_text("t");
    let s = text.get_string(&doc.transact());
    s
}
