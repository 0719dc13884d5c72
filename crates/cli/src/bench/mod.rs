//! `nimbus bench ...`: load generators (see docs/benchmarks.md).
use clap::Subcommand;

mod cloud;

/// `nimbus bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Cloud-variable load: rooms × clients with paced publishers, or idle connections.
    Cloud(cloud::CloudBench),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Cloud(args) => cloud::run(args),
    }
}
