//! `nimbus cloud ...` (owned by the client work; placeholder until it lands).
use clap::Subcommand;

/// `nimbus cloud` subcommands.
#[derive(Debug, Subcommand)]
pub enum CloudCmd {}

pub fn run(cmd: CloudCmd) -> anyhow::Result<()> {
    match cmd {}
}
