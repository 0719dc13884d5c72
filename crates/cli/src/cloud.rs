//! `nimbus cloud watch|get|set`: talk to any cloud-variable server with the Rust
//! `CloudConnection`.
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use nimbus_client::{CloudConnection, CloudValue, Event, HostProfile};

/// `nimbus cloud` subcommands.
#[derive(Debug, Subcommand)]
pub enum CloudCmd {
    /// Print every variable change of a project, live (join values first).
    Watch {
        /// Project (room) id.
        project: String,
        /// Print JSON lines instead of `name<TAB>value`.
        #[arg(long)]
        json: bool,
        /// Exit after this many changes.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Print a variable's current value (exit 1 if the server has none).
    Get {
        /// Project (room) id.
        project: String,
        /// Variable name, with or without "☁ ".
        name: String,
        /// How long to wait for the server's join frame.
        #[arg(long, default_value = "2s", value_parser = humantime_ms)]
        wait: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Set a variable (numbers are sent as JSON numbers unless --string).
    Set {
        /// Project (room) id.
        project: String,
        /// Variable name, with or without "☁ ".
        name: String,
        /// The value (negative numbers need no `--`).
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// Send the value as a JSON string.
        #[arg(long)]
        string: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// Options shared by every `nimbus cloud` command.
#[derive(Debug, Args)]
pub struct Common {
    /// Server URL (ws://, wss://, or a bare host meaning wss://).
    #[arg(long, default_value = "ws://127.0.0.1:9080", env = "NIMBUS_CLOUD_HOST")]
    host: String,
    /// Username for the handshake [default: player + random digits].
    #[arg(long)]
    user: Option<String>,
    /// Value rules and send rate of the host.
    #[arg(long, value_enum, default_value_t = Profile::Turbowarp)]
    profile: Profile,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    Scratch,
    Turbowarp,
}

fn humantime_ms(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 2s, 500ms)"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs_f64(n)),
        "ms" => Ok(Duration::from_secs_f64(n / 1000.0)),
        _ => Err(format!("bad duration unit in {s:?} (s or ms)")),
    }
}

fn build(project: &str, common: &Common) -> anyhow::Result<CloudConnection> {
    let mut b = CloudConnection::builder(project)
        .cloud_host(&common.host)
        .profile(match common.profile {
            Profile::Scratch => HostProfile::SCRATCH,
            Profile::Turbowarp => HostProfile::TURBOWARP,
        })
        .reconnect(false);
    if let Some(u) = &common.user {
        b = b.username(u);
    }
    Ok(b.build()?)
}

fn value_of(raw: &str, as_string: bool) -> CloudValue {
    if !as_string && CloudValue::from_json(raw).is_ok_and(|v| matches!(v, CloudValue::Number(_))) {
        CloudValue::Number(raw.to_owned())
    } else {
        CloudValue::String(raw.to_owned())
    }
}

pub fn run(cmd: CloudCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        match cmd {
            CloudCmd::Watch {
                project,
                json,
                count,
                common,
            } => watch(&project, json, count, &common).await,
            CloudCmd::Get {
                project,
                name,
                wait,
                common,
            } => get(&project, &name, wait, &common).await,
            CloudCmd::Set {
                project,
                name,
                value,
                string,
                common,
            } => {
                let conn = build(&project, &common)?;
                conn.connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", common.host))?;
                conn.set_cloud_variable(&name, value_of(&value, string))
                    .await?;
                conn.close().await;
                Ok(())
            }
        }
    })
}

async fn watch(
    project: &str,
    json: bool,
    count: Option<usize>,
    common: &Common,
) -> anyhow::Result<()> {
    use std::io::Write;
    let conn = build(project, common)?;
    let mut events = conn.events();
    conn.connect()
        .await
        .with_context(|| format!("cannot connect to {}", common.host))?;
    let mut seen = 0;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = events.next().await {
        match ev {
            Event::Set(v) => {
                if json {
                    writeln!(
                        out,
                        "{{\"name\":{},\"value\":{}}}",
                        serde_json::to_string(&v.name)?,
                        v.value.to_json()
                    )?;
                } else {
                    writeln!(out, "{}\t{}", v.name, v.value)?;
                }
                out.flush()?;
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Event::Disconnect { code, reason } => bail!("disconnected ({code:?}): {reason}"),
            _ => {}
        }
    }
    conn.close().await;
    Ok(())
}

async fn get(project: &str, name: &str, wait: Duration, common: &Common) -> anyhow::Result<()> {
    let conn = build(project, common)?;
    let mut events = conn.events();
    conn.connect()
        .await
        .with_context(|| format!("cannot connect to {}", common.host))?;
    // The join frame arrives as one frame right after the handshake; wait for the
    // variable to appear in it (or live) up to `wait`.
    let found = tokio::time::timeout(wait, async {
        loop {
            if let Some(v) = conn.get_cloud_variable(name) {
                return Some(v);
            }
            match events.next().await {
                Some(Event::Disconnect { .. }) | None => return None,
                _ => {}
            }
        }
    })
    .await
    .ok()
    .flatten();
    conn.close().await;
    match found {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => bail!(
            "no variable {name:?} in project {project} on {}",
            common.host
        ),
    }
}
