//! Open a wire-file, optionally append text to its root text `t`, print it as JSON:
//! `cargo run -p nimbus-doc --example file -- PATH [TEXT] [--squash]`.
#![allow(clippy::print_stdout)] // the result goes to stdout

use nimbus_doc::yrs::{Text, Transact};
use nimbus_doc::{connect, doc_to_json, ClientWire, ConnectOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let squash = args.iter().any(|a| a == "--squash");
    let mut rest = args.iter().filter(|a| *a != "--squash");
    let path = rest.next().ok_or("usage: file PATH [TEXT] [--squash]")?;
    let text = rest.next();
    let wire = ClientWire::File {
        path: path.into(),
        squash,
        write_delay: None,
    };
    let client = connect(wire, "", None, ConnectOptions::default()).await?;
    if let Some(text) = text {
        let t = client.doc().get_or_insert_text("t");
        let mut txn = client.doc().transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, text);
    }
    let out = doc_to_json(client.doc());
    client.close().await;
    println!("{out}");
    Ok(())
}
