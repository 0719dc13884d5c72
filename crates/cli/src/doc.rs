//! `nimbus doc dump|watch|edit`: read, follow and edit a Yjs document room on any
//! y-websocket server (nimbus, @y/websocket-server, pycrdt-websocket, ...) with the
//! `nimbus-doc` client.
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use nimbus_doc::yrs::{self, Any, Array, Map, ReadTxn, StateVector, Text, Transact};
use nimbus_doc::{connect, doc_to_json, Client, ClientWire, ConnectOptions, Status};

/// `nimbus doc` subcommands.
#[derive(Debug, Subcommand)]
pub enum DocCmd {
    /// Print the document as one line of JSON (root name → string, object or array).
    Dump {
        /// Room name.
        room: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print the document as a JSON line now and after every change (until Ctrl-C).
    Watch {
        /// Room name.
        room: String,
        /// Exit after this many changes.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Apply edits, wait until the server holds them, exit.
    Edit {
        /// Room name.
        room: String,
        /// Append STRING at the end of root text NAME (`NAME=STRING`); repeatable.
        #[arg(long = "text", value_name = "NAME=STRING")]
        texts: Vec<String>,
        /// Set KEY of root map NAME to a JSON value (`NAME.KEY=JSON`); repeatable.
        #[arg(long = "map", value_name = "NAME.KEY=JSON")]
        maps: Vec<String>,
        /// Push a JSON value onto root array NAME (`NAME=JSON`); repeatable.
        #[arg(long = "array", value_name = "NAME=JSON")]
        arrays: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// Options shared by every `nimbus doc` command.
#[derive(Debug, Args)]
pub struct Common {
    /// Server base URL; the room URL is `<server>/<room>`.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:9080/doc",
        env = "NIMBUS_DOC_SERVER"
    )]
    server: String,
    /// Access token (sent as `?token=` and `Authorization: Bearer`).
    #[arg(long, env = "NIMBUS_DOC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long to wait for the connection and the first sync.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    timeout: u64,
}

impl Common {
    async fn connect(&self, room: &str, reconnect: bool) -> anyhow::Result<Client> {
        let opts = ConnectOptions {
            token: self.token.clone(),
            reconnect,
            connect_timeout: Duration::from_secs(self.timeout),
            ..ConnectOptions::default()
        };
        let wire = ClientWire::WebSocket {
            url: self.server.clone(),
        };
        connect(wire, room, None, opts)
            .await
            .with_context(|| format!("cannot sync room {room:?} on {}", self.server))
    }
}

/// One edit of `nimbus doc edit`.
#[derive(Debug, Clone, PartialEq)]
enum Edit {
    Text {
        root: String,
        append: String,
    },
    Map {
        root: String,
        key: String,
        value: Any,
    },
    Array {
        root: String,
        value: Any,
    },
}

fn json_any(s: &str) -> anyhow::Result<Any> {
    Any::from_json(s).map_err(|e| anyhow::anyhow!("{s:?} is not JSON: {e}"))
}

fn parse_edits(texts: &[String], maps: &[String], arrays: &[String]) -> anyhow::Result<Vec<Edit>> {
    let mut edits = Vec::new();
    for t in texts {
        let (root, append) = t
            .split_once('=')
            .with_context(|| format!("--text {t:?} is not NAME=STRING"))?;
        edits.push(Edit::Text {
            root: root.into(),
            append: append.into(),
        });
    }
    for m in maps {
        let (path, json) = m
            .split_once('=')
            .with_context(|| format!("--map {m:?} is not NAME.KEY=JSON"))?;
        let (root, key) = path
            .split_once('.')
            .with_context(|| format!("--map {m:?} is not NAME.KEY=JSON"))?;
        edits.push(Edit::Map {
            root: root.into(),
            key: key.into(),
            value: json_any(json)?,
        });
    }
    for a in arrays {
        let (root, json) = a
            .split_once('=')
            .with_context(|| format!("--array {a:?} is not NAME=JSON"))?;
        edits.push(Edit::Array {
            root: root.into(),
            value: json_any(json)?,
        });
    }
    if edits.is_empty() {
        bail!("nothing to do: give at least one --text, --map or --array");
    }
    Ok(edits)
}

fn apply(doc: &yrs::Doc, edits: &[Edit]) {
    // Root types first: declaring one needs its own write transaction.
    for e in edits {
        match e {
            Edit::Text { root, .. } => drop(doc.get_or_insert_text(root.as_str())),
            Edit::Map { root, .. } => drop(doc.get_or_insert_map(root.as_str())),
            Edit::Array { root, .. } => drop(doc.get_or_insert_array(root.as_str())),
        }
    }
    let texts: Vec<_> = edits
        .iter()
        .map(|e| match e {
            Edit::Text { root, .. } => Some(doc.get_or_insert_text(root.as_str())),
            _ => None,
        })
        .collect();
    let maps: Vec<_> = edits
        .iter()
        .map(|e| match e {
            Edit::Map { root, .. } => Some(doc.get_or_insert_map(root.as_str())),
            _ => None,
        })
        .collect();
    let arrays: Vec<_> = edits
        .iter()
        .map(|e| match e {
            Edit::Array { root, .. } => Some(doc.get_or_insert_array(root.as_str())),
            _ => None,
        })
        .collect();
    let mut txn = doc.transact_mut();
    for (i, e) in edits.iter().enumerate() {
        match (e, &texts[i], &maps[i], &arrays[i]) {
            (Edit::Text { append, .. }, Some(t), _, _) => t.push(&mut txn, append),
            (Edit::Map { key, value, .. }, _, Some(m), _) => {
                m.insert(&mut txn, key.as_str(), value.clone());
            }
            (Edit::Array { value, .. }, _, _, Some(a)) => {
                a.push_back(&mut txn, value.clone());
            }
            _ => {}
        }
    }
}

/// `true` once `probe` has every change of `ours` (all its clients' clocks).
fn has_all(probe: &StateVector, ours: &StateVector) -> bool {
    ours.iter()
        .all(|(client, clock)| probe.get(client) >= *clock)
}

/// Wait until the server holds `sv`: y-sync has no acknowledgement, so a fresh connection
/// syncs and compares state vectors (bounded by `timeout`).
async fn confirm(common: &Common, room: &str, sv: &StateVector) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(common.timeout);
    loop {
        let probe = common.connect(room, false).await?;
        let held = has_all(&probe.doc().transact().state_vector(), sv);
        probe.close().await;
        if held {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the server did not confirm the edits within {}s",
                common.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn run(cmd: DocCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        match cmd {
            DocCmd::Dump { room, common } => {
                let client = common.connect(&room, false).await?;
                println!("{}", doc_to_json(client.doc()));
                client.close().await;
                Ok(())
            }
            DocCmd::Watch {
                room,
                count,
                common,
            } => watch(&room, count, &common).await,
            DocCmd::Edit {
                room,
                texts,
                maps,
                arrays,
                common,
            } => {
                let edits = parse_edits(&texts, &maps, &arrays)?;
                let client = common.connect(&room, false).await?;
                let mut events = client.events();
                apply(client.doc(), &edits);
                let sv = client.doc().transact().state_vector();
                confirm(&common, &room, &sv).await?;
                // A refusal (read-only token, size limit) arrives before the probe's sync.
                while let Ok(ev) = events.try_recv() {
                    if let Status::PermissionDenied { reason } = ev {
                        client.close().await;
                        bail!("the server refused the edit: {reason}");
                    }
                }
                client.close().await;
                Ok(())
            }
        }
    })
}

async fn watch(room: &str, count: Option<usize>, common: &Common) -> anyhow::Result<()> {
    let client = common.connect(room, true).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client
        .doc()
        .observe_update_v1("nimbus-cli/watch", move |_, _| {
            let _ = tx.send(());
        })
        .map_err(|e| anyhow::anyhow!("cannot observe the document: {e}"))?;
    println!("{}", doc_to_json(client.doc()));
    let mut seen = 0usize;
    loop {
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    break;
                }
                while rx.try_recv().is_ok() {}
                println!("{}", doc_to_json(client.doc()));
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_parse_and_bad_ones_say_why() {
        let edits = parse_edits(
            &["t=hi=there".into()],
            &["m.k=[1,\"x\"]".into()],
            &["a={\"n\":1}".into()],
        )
        .unwrap_or_default();
        assert_eq!(edits.len(), 3);
        assert_eq!(
            edits[0],
            Edit::Text {
                root: "t".into(),
                append: "hi=there".into()
            }
        );
        assert!(parse_edits(&[], &["m=1".into()], &[]).is_err());
        assert!(parse_edits(&[], &[], &["a=not json".into()]).is_err());
        assert!(parse_edits(&[], &[], &[]).is_err());
    }

    #[test]
    fn applied_edits_show_in_the_json() {
        let doc = yrs::Doc::new();
        let edits = parse_edits(&["t=ab".into()], &["m.k=2".into()], &["a=true".into()])
            .unwrap_or_default();
        apply(&doc, &edits);
        apply(&doc, &edits);
        assert_eq!(
            doc_to_json(&doc),
            serde_json::json!({"a": [true, true], "m": {"k": 2}, "t": "abab"})
        );
    }
}
