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
    /// object per line, for log collectors). The level is `--log` / `NIMBUS_LOG` / `log`.
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

/// The log filter of a running server: replaced on SIGHUP.
type LogHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Install the global subscriber: level from `log` (flag `--log`, `NIMBUS_LOG`, file key
/// `log`; default `info`), to stderr. A filter that does not parse is an error.
fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<LogHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = log_filter(level)?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_current_span(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .context("cannot install the logger")?;
    Ok(handle)
}

fn log_filter(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(level).with_context(|| format!("invalid log filter {level:?}"))
}

pub fn run(cmd: ServeCmd) -> anyhow::Result<()> {
    // Flags and environment are fixed for the process; the file is re-read on SIGHUP.
    let (flags, path) = (cmd.settings, cmd.config);
    let read = move || -> anyhow::Result<Config> {
        let file = match &path {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Ok(Config::from_settings(flags.clone().merge(file))?)
    };
    let config = read()?;
    let log = init_logging(cmd.log_format, &config.log)?;
    // Each client holds a descriptor: the default soft limit (often 1024) would lock out
    // every new client long before memory runs out.
    nimbus_server::edge::raise_fd_limit();
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
        let reloader = server.reloader();
        let reload = move || -> anyhow::Result<()> {
            let config = read()?;
            let filter = log_filter(&config.log)?;
            reloader.apply(&config)?;
            log.reload(filter)
                .context("cannot replace the log filter")?;
            Ok(())
        };
        tokio::spawn(reload_on_sighup(reload));
        server.run_until(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Reload on every SIGHUP: keys, static tokens, the cloud identity policy and the log
/// filter. A config that does not parse (or keys that do not load) is refused, logged, and
/// the running config stays.
async fn reload_on_sighup(reload: impl Fn() -> anyhow::Result<()>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: no live reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match reload() {
                Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "SIGHUP: reload refused, the running configuration stays"
                    )
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
    }
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
