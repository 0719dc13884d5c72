//! A small IPC server for interop tests and benchmarks: routes `echo`, `add`, `fail`, `slow`.
//!
//! `cargo run -p nimbus-ipc --example echo_server -- --port 8000 --multicast-port 20000 --secret KEY`
#![allow(clippy::print_stdout)]

use std::time::Duration;

use clap::Parser;
use nimbus_ipc::{Request, RouteError, Server};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Host to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Main port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Multicast port.
    #[arg(long, default_value_t = 20000)]
    multicast_port: u16,
    /// Secret key (none: loopback only).
    #[arg(long, env = "NIMBUS_IPC_SECRET")]
    secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let a = Args::parse();
    let server = Server::new(a.host, a.port, a.secret, true, a.multicast_port)?;
    server.route("echo", |r: Request| async move {
        Ok(Value::Object(r.data().clone()))
    });
    server.route("add", |r: Request| async move {
        let n = |k| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let s = n("a") + n("b");
        Ok(if s.fract() == 0.0 && s.abs() < 9e15 {
            json!(s as i64)
        } else {
            json!(s)
        })
    });
    server.route("fail", |_r: Request| async move {
        Err(RouteError::with_kind(
            "ValueError",
            "this route always fails",
        ))
    });
    server.route("slow", |r: Request| async move {
        let ms = r.get("ms").and_then(Value::as_u64).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({"slept_ms": ms}))
    });
    server.start().await?;
    println!(
        "ready main={} multicast={}",
        server
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        server
            .multicast_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    tokio::signal::ctrl_c().await?;
    server.terminate_server().await;
    Ok(())
}
