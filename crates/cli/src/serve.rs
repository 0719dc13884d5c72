//! `nimbus serve` (owned by the server work; placeholder until it lands).
use clap::Args;

/// Arguments of `nimbus serve`.
#[derive(Debug, Args)]
pub struct ServeCmd {}

pub fn run(_cmd: ServeCmd) -> anyhow::Result<()> {
    anyhow::bail!("serve: not built yet")
}
