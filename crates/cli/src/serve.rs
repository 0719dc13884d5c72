//! `nimbus serve`: run the server until SIGTERM or Ctrl-C.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use nimbus_server::{Config, Server, Settings};
use tracing_subscriber::EnvFilter;

/// Arguments of `nimbus serve`. Every setting can also come from `NIMBUS_*`
/// environment variables or the TOML file given with `--config`
/// (precedence: flag > environment > file > default).
#[derive(Debug, Args)]
pub struct ServeCmd {
    /// TOML file with settings (keys as the long flags, with `_`).
    #[arg(long, env = "NIMBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines on stderr: `text` (colours only when stderr is a terminal) or `json` (one
    /// object per line, for log collectors). The level comes from `NIMBUS_LOG`.
    #[arg(long, env = "NIMBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: Settings,
}

/// How `nimbus serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`, `span`s.
    Json,
}

/// Install the global subscriber: level from `NIMBUS_LOG` (default `info`), to stderr.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

pub fn run(cmd: ServeCmd) -> anyhow::Result<()> {
    init_logging(cmd.log_format);
    // Each client holds a descriptor: the default soft limit (often 1024) would lock out
    // every new client long before memory runs out.
    nimbus_server::edge::raise_fd_limit();
    let file = match &cmd.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = Config::from_settings(cmd.settings.merge(file))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let server = Server::bind(config).await?;
        let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        tracing::info!(
            "nimbus listening on ws://{} (metrics: http://{}/metrics), storing in {}",
            server.local_addr(),
            server.local_addr(),
            data_dir.display()
        );
        server.run_until(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: closing connections and flushing the store");
}
