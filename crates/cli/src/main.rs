//! The `nimbus` binary: `serve`, `cloud`, `doc`, `gateway`, `ipc`, `bench`.
#![forbid(unsafe_code)]
// A command-line tool prints results on stdout; the libraries keep the lint.
#![allow(clippy::print_stdout)]

mod bench;
mod cloud;
mod doc;
mod gateway;
mod ipc;
mod serve;

use clap::{Parser, Subcommand};

/// nimbus: a real-time room server (Scratch/TurboWarp cloud variables) and its tools.
#[derive(Debug, Parser)]
#[command(name = "nimbus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (WebSocket cloud protocol at `/`, metrics, HTTP API).
    Serve(Box<serve::ServeCmd>),
    /// Talk to any cloud-variable server (nimbus, TurboWarp, ...).
    #[command(subcommand)]
    Cloud(cloud::CloudCmd),
    /// Load generators (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Read, follow and edit Yjs document rooms on any y-websocket server.
    #[command(subcommand)]
    Doc(doc::DocCmd),
    /// Discord-v10-style gateway tools (nimbus `/gateway` or Discord).
    #[command(subcommand)]
    Gateway(gateway::GatewayCmd),
    /// Call routes of an IPC server (discord-ext-ipc / better-ipc compatible).
    #[command(subcommand)]
    Ipc(ipc::IpcCmd),
}

/// jemalloc, configured at build time (`.cargo/config.toml`: a background thread returns
/// freed pages to the system after a second). See docs/operations.md, "Memory allocator".
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cmd) => serve::run(*cmd),
        Command::Cloud(cmd) => cloud::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Doc(cmd) => doc::run(cmd),
        Command::Ipc(cmd) => ipc::run(cmd),
        Command::Gateway(cmd) => gateway::run(cmd),
    }
}
