//! `nimbus ipc request <endpoint> key=value ...`: call an IPC route.

use clap::{Args, Subcommand};
use nimbus_ipc::{ClientSession, IpcError};
use serde_json::{Map, Value};

/// `nimbus ipc` subcommands.
#[derive(Debug, Subcommand)]
pub enum IpcCmd {
    /// Call an endpoint of an IPC server and print the reply JSON (exit 1 on an error reply).
    Request(RequestArgs),
}

/// Arguments of `nimbus ipc request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Endpoint (route) name.
    endpoint: String,
    /// `key=value` data items; values are JSON when they parse, else strings.
    items: Vec<String>,
    /// Server host.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Main port; without it, ask the multicast port (port handshake).
    #[arg(long)]
    port: Option<u16>,
    /// Multicast port.
    #[arg(long, default_value_t = 20000)]
    multicast_port: u16,
    /// Shared secret.
    #[arg(long, env = "NIMBUS_IPC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

fn parse_items(items: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("expected key=value, got {it:?}"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        m.insert(k.to_owned(), v);
    }
    Ok(m)
}

/// Run `nimbus ipc ...`.
pub fn run(cmd: IpcCmd) -> anyhow::Result<()> {
    let IpcCmd::Request(a) = cmd;
    let data = Value::Object(parse_items(&a.items)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(async {
        let mut s = ClientSession::new(a.host, a.port, a.multicast_port, a.secret)
            .with_timeout(std::time::Duration::from_secs_f64(a.timeout.max(0.001)));
        let r = s.request(&a.endpoint, data).await;
        s.close().await;
        r
    });
    match res {
        Ok(v) => {
            println!("{v}");
            Ok(())
        }
        Err(
            e @ (IpcError::BadRequest { .. }
            | IpcError::Unauthorized
            | IpcError::Forbidden
            | IpcError::RouteFailed { .. }
            | IpcError::Other { .. }),
        ) => {
            eprintln!("error reply: {e}");
            std::process::exit(1)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_json_or_string() {
        let m = parse_items(&[
            "a=1".into(),
            "b=hello".into(),
            "c={\"x\":[1]}".into(),
            "d=".into(),
        ])
        .unwrap_or_default();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"a":1,"b":"hello","c":{"x":[1]},"d":""})
        );
        assert!(parse_items(&["nope".into()]).is_err());
    }
}
