//! Precedence flag > `NIMBUS_*` environment > file > default, for one setting of every
//! section. A test binary of its own: it sets environment variables, which every clap parse
//! in the same process would read.

use clap::{Args, FromArgMatches};
use nimbus_server::{Config, IpcConfig, Settings};

/// Parse `args` as `nimbus serve` would (flags and the current environment).
fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
    let command = Settings::augment_args(clap::Command::new("serve").no_binary_name(true));
    Settings::from_arg_matches(&command.try_get_matches_from(args)?)
}

fn file(text: &str) -> Settings {
    toml::from_str(text).expect("valid toml")
}

/// One setting of each section, set by a flag, the environment and the file: the flag
/// wins, then the environment, then the file, then the default.
#[test]
fn precedence_is_flag_then_env_then_file_for_every_section() {
    // (flag, env var, file line, the resolved value)
    type Get = fn(&Config) -> u64;
    let cases: [(&str, &str, &str, Get); 7] = [
        ("--max-rooms", "NIMBUS_MAX_ROOMS", "max_rooms = 1", |c| {
            c.cloud.max_rooms as u64
        }),
        (
            "--doc-max-rooms",
            "NIMBUS_DOC_MAX_ROOMS",
            "doc_max_rooms = 1",
            |c| c.doc.max_rooms as u64,
        ),
        (
            "--gateway-replay-buffer",
            "NIMBUS_GATEWAY_REPLAY_BUFFER",
            "gateway_replay_buffer = 1",
            |c| c.gateway.replay_buffer as u64,
        ),
        (
            "--ipc-port",
            "NIMBUS_IPC_PORT",
            "ipc = true\nipc_port = 1",
            |c| u64::from(c.ipc.as_ref().map_or(0, |i| i.port)),
        ),
        (
            "--flush-interval-ms",
            "NIMBUS_FLUSH_INTERVAL_MS",
            "flush_interval_ms = 1",
            |c| c.flush_interval.as_millis() as u64,
        ),
        (
            "--max-conns-per-ip",
            "NIMBUS_MAX_CONNS_PER_IP",
            "[edge]\nmax_conns_per_ip = 1",
            |c| u64::from(c.edge.max_conns_per_ip),
        ),
        (
            "--listen",
            "NIMBUS_LISTEN",
            "listen = \"127.0.0.1:1\"",
            |c| u64::from(c.listen.port()),
        ),
    ];
    for (flag, var, line, get) in cases {
        let value = |n: u64| {
            if flag == "--listen" {
                format!("127.0.0.1:{n}")
            } else {
                n.to_string()
            }
        };
        let resolve = |flag_value: Option<u64>, env: Option<u64>, with_file: bool| {
            match env {
                Some(n) => std::env::set_var(var, value(n)),
                None => std::env::remove_var(var),
            }
            let mut args = vec!["--ipc".to_string()];
            if let Some(n) = flag_value {
                args.extend([flag.to_string(), value(n)]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let flags = parse(&args).expect("valid flags");
            std::env::remove_var(var);
            let file = if with_file {
                file(line)
            } else {
                Settings::default()
            };
            get(&Config::from_settings(flags.merge(file)).expect("valid"))
        };
        assert_eq!(resolve(Some(3), Some(2), true), 3, "{flag}: the flag wins");
        assert_eq!(resolve(None, Some(2), true), 2, "{var}: env over file");
        assert_eq!(resolve(None, None, true), 1, "{line}: the file");
        assert_eq!(
            resolve(None, None, false),
            get(&Config {
                ipc: Some(IpcConfig::default()),
                ..Config::default()
            }),
            "{flag}: the default"
        );
    }
}
