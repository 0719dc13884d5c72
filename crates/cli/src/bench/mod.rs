//! `nimbus bench ...`: load generators (see docs/benchmarks.md).
use clap::Subcommand;

/// The WebSocket config of every generator socket (reads of
/// [`nimbus_proto::CLIENT_READ_BUFFER`]).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    nimbus_doc::wire::websocket::config(64 << 20)
}

mod cloud;
mod doc;
mod gateway;
mod ipc;

/// `nimbus bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Cloud-variable load: rooms × clients with paced publishers, or idle connections.
    Cloud(cloud::CloudBench),
    /// Yjs document rooms: D documents × C editors at a rate; deliveries/s, latency, server RSS.
    Doc(doc::DocBench),
    /// Gateway dispatch throughput to S shard sessions and resume time after missed events.
    Gateway(gateway::GatewayBenchArgs),
    /// IPC request/response throughput and latency against any IPC server.
    Ipc(ipc::IpcBenchArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Cloud(args) => cloud::run(args),
        BenchCmd::Doc(args) => doc::run(args),
        BenchCmd::Ipc(args) => ipc::run(args),
        BenchCmd::Gateway(args) => gateway::run(args),
    }
}
