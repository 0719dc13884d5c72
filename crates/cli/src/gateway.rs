//! `nimbus gateway tail`: print a gateway's dispatches as JSON lines (nimbus's
//! `/gateway` or Discord's), with the Rust `GatewayClient`.
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use nimbus_client::gateway::{GatewayClient, GatewayOptions, Intents};

/// `nimbus gateway` subcommands.
#[derive(Debug, Subcommand)]
pub enum GatewayCmd {
    /// Connect, identify and print every dispatch as one JSON line `{"t":..,"d":..}`.
    Tail(TailArgs),
}

/// Arguments of `nimbus gateway tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Bot token (with or without `Bot `).
    #[arg(long, env = "NIMBUS_GATEWAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Intents: names (`cloud,rooms,doc`, `all`) or a number.
    #[arg(long, default_value = "cloud")]
    intents: String,
    /// This shard as `id/count`.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: (u64, u64),
    /// Gateway URL.
    #[arg(long, default_value = "ws://127.0.0.1:9080/gateway")]
    url: String,
    /// Ask for zlib-stream transport compression.
    #[arg(long)]
    compress: bool,
    /// Exit after this many room events (READY/RESUMED not counted).
    #[arg(long)]
    count: Option<usize>,
    /// Also print READY and RESUMED.
    #[arg(long)]
    all: bool,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("expected id/count, e.g. 0/1")?;
    let i: u64 = i.trim().parse().map_err(|_| "bad shard id")?;
    let n: u64 = n.trim().parse().map_err(|_| "bad shard count")?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need id < count"));
    }
    Ok((i, n))
}

pub fn run(cmd: GatewayCmd) -> anyhow::Result<()> {
    let GatewayCmd::Tail(args) = cmd;
    let intents = Intents::parse(&args.intents).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let client = GatewayClient::new(GatewayOptions {
            url: args.url.clone(),
            shard_id: args.shard.0,
            total_shards: args.shard.1,
            compress: args.compress,
            ..GatewayOptions::default()
        });
        client.start(&args.token, intents.0)?;
        let mut seen = 0usize;
        loop {
            let next = tokio::select! {
                e = client.next_event() => e,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some((t, d)) = next else { break };
            let meta = t == "READY" || t == "RESUMED";
            if !meta || args.all {
                println!("{}", serde_json::json!({ "t": t, "d": d }));
            }
            if !meta {
                seen += 1;
                if args.count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        client.close().await;
        if let Err(e) = client.wait().await {
            bail!("{e}");
        }
        anyhow::Ok(())
    })
}
