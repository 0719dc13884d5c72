//! `nimbus bench ...`: load generators (see docs/benchmarks.md).
use clap::Subcommand;

mod cloud;
mod ipc;

/// `nimbus bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Cloud-variable load: rooms × clients with paced publishers, or idle connections.
    Cloud(cloud::CloudBench),
    /// IPC request/response throughput and latency against any IPC server.
    Ipc(ipc::IpcBenchArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Cloud(args) => cloud::run(args),
        BenchCmd::Ipc(args) => ipc::run(args),
    }
}
