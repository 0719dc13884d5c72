//! One Rust y-sync client, shaped like `tests/interop/doc/yjs_agent.mjs`:
//!
//! ```text
//! cargo run -p nimbus-doc --example agent -- --url ws://127.0.0.1:PORT/doc --room ROOM \
//!     --name rust [--edit] [--expect js,rust] [--timeout 20] [--linger 0.5]
//! ```
//!
//! Connects (the socket URL is `url + "/" + room`), waits for the first sync, with `--edit`
//! makes its edits in one transaction (`t += "[NAME]"`, `m.NAME = "NAME"`,
//! `m["n_NAME"] = <sum of the name's char codes>`, `a.push("NAME")`), waits until every
//! `--expect` client's contributions are there, lingers, and prints the document as JSON.

#![allow(clippy::print_stdout)] // the result goes to stdout

use std::time::Duration;

use nimbus_doc::yrs::{Array, Map, Text, Transact};
use nimbus_doc::{connect, doc_to_json, ClientWire, ConnectOptions};
use serde_json::Value;

fn number_for(name: &str) -> i64 {
    name.chars().map(|c| c as i64).sum()
}

fn has(doc: &Value, who: &str) -> bool {
    doc["t"]
        .as_str()
        .is_some_and(|t| t.contains(&format!("[{who}]")))
        && doc["m"][who] == *who
        && doc["m"][format!("n_{who}")].as_i64() == Some(number_for(who))
        && doc["a"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from(who)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut url, mut room, mut name) = (String::new(), String::new(), "rust".to_owned());
    let (mut edit, mut expect, mut timeout, mut linger) = (false, Vec::new(), 20.0, 0.5);
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let mut v = || args.next().ok_or(format!("missing value for {k}"));
        match k.as_str() {
            "--url" => url = v()?,
            "--room" => room = v()?,
            "--name" => name = v()?,
            "--edit" => edit = true,
            "--expect" => {
                expect = v()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--timeout" => timeout = v()?.parse()?,
            "--linger" => linger = v()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let client = connect(
        ClientWire::WebSocket { url },
        &room,
        None,
        ConnectOptions::default(),
    )
    .await?;
    let doc = client.doc();
    let (t, m, a) = (
        doc.get_or_insert_text("t"),
        doc.get_or_insert_map("m"),
        doc.get_or_insert_array("a"),
    );
    if edit {
        let mut txn = doc.transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, &format!("[{name}]"));
        m.insert(&mut txn, name.clone(), name.clone());
        m.insert(&mut txn, format!("n_{name}"), number_for(&name));
        a.push_back(&mut txn, name.clone());
    }
    let waited = tokio::time::timeout(Duration::from_secs_f64(timeout), async {
        while !expect.iter().all(|e| has(&doc_to_json(doc), e)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        return Err(format!("timed out; doc: {}", doc_to_json(doc)).into());
    }
    tokio::time::sleep(Duration::from_secs_f64(linger)).await;
    let out = doc_to_json(doc);
    client.close().await;
    println!("{out}");
    Ok(())
}
