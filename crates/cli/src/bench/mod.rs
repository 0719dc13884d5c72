//! `nimbus bench ...` (owned by the benchmark work; placeholder until it lands).
use clap::Subcommand;

/// `nimbus bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {}
}
