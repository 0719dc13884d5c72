//! The gateway's settings ([`GatewaySettings`]: flags, `NIMBUS_GATEWAY_*` environment,
//! `gateway_*` keys of the config file), resolved into a [`GatewayConfig`] (whose `Default`
//! holds every default).

use serde::Deserialize;

use super::{GatewayConfig, GatewayToken};
use crate::setting::{millis, nonzero, nonzero_millis, InvalidSetting};

/// The gateway's settings, each optional so that flags, environment and file can be
/// layered. Durations are in milliseconds.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct GatewaySettings {
    /// Bot token accepted by `/gateway` (repeatable; `TOKEN` or `TOKEN=cloud+rooms+doc` to
    /// limit its intents). The gateway is served only when at least one is set [default: none].
    #[arg(
        long = "gateway-token",
        env = "NIMBUS_GATEWAY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub gateway_token: Option<Vec<String>>,
    /// Gateway heartbeat interval sent in Hello [default: 41250].
    #[arg(long, env = "NIMBUS_GATEWAY_HEARTBEAT_INTERVAL_MS")]
    pub gateway_heartbeat_interval_ms: Option<u64>,
    /// How long a disconnected gateway session stays resumable [default: 180000].
    #[arg(long, env = "NIMBUS_GATEWAY_RESUME_WINDOW_MS")]
    pub gateway_resume_window_ms: Option<u64>,
    /// Dispatches kept per gateway session for Resume [default: 16384].
    #[arg(long, env = "NIMBUS_GATEWAY_REPLAY_BUFFER")]
    pub gateway_replay_buffer: Option<usize>,
    /// Gateway identify buckets (`shard_id % max_concurrency`), one Identify each per window [default: 1].
    #[arg(long, env = "NIMBUS_GATEWAY_MAX_CONCURRENCY")]
    pub gateway_max_concurrency: Option<u64>,
    /// Length of an identify bucket's window [default: 5000].
    #[arg(long, env = "NIMBUS_GATEWAY_IDENTIFY_WINDOW_MS")]
    pub gateway_identify_window_ms: Option<u64>,
    /// Time allowed between connecting and Identify/Resume (then 4009) [default: 20000].
    #[arg(long, env = "NIMBUS_GATEWAY_IDENTIFY_TIMEOUT_MS")]
    pub gateway_identify_timeout_ms: Option<u64>,
    /// Gateway Identifies per 24 h [default: 1000].
    #[arg(long, env = "NIMBUS_GATEWAY_SESSION_START_LIMIT")]
    pub gateway_session_start_limit: Option<u32>,
}

impl GatewayConfig {
    /// Fill in defaults and check ranges. `max_doc_message` is the document rooms' largest
    /// message, which bounds the largest dispatch ([`GatewayConfig::dispatch_bound`]).
    pub fn from_settings(
        s: &GatewaySettings,
        max_doc_message: usize,
    ) -> Result<GatewayConfig, InvalidSetting> {
        let d = GatewayConfig::default();
        let mut tokens = Vec::new();
        for spec in s
            .gateway_token
            .iter()
            .flatten()
            .filter(|t| !t.trim().is_empty())
        {
            tokens.push(
                GatewayToken::parse(spec.trim()).map_err(|reason| InvalidSetting {
                    key: "gateway_token",
                    reason,
                })?,
            );
        }
        Ok(GatewayConfig {
            tokens,
            heartbeat_interval: nonzero_millis(
                "gateway_heartbeat_interval_ms",
                s.gateway_heartbeat_interval_ms,
                d.heartbeat_interval,
            )?,
            resume_window: millis(s.gateway_resume_window_ms, d.resume_window),
            replay_buffer: nonzero(
                "gateway_replay_buffer",
                s.gateway_replay_buffer,
                d.replay_buffer,
            )?,
            max_concurrency: nonzero(
                "gateway_max_concurrency",
                s.gateway_max_concurrency,
                d.max_concurrency,
            )?,
            identify_window: millis(s.gateway_identify_window_ms, d.identify_window),
            identify_timeout: millis(s.gateway_identify_timeout_ms, d.identify_timeout),
            session_start_limit: s
                .gateway_session_start_limit
                .unwrap_or(d.session_start_limit),
            drain_grace: d.drain_grace,
            max_dispatch_bytes: GatewayConfig::dispatch_bound(max_doc_message),
            // The composition root sets the server's close timeout.
            close_timeout: d.close_timeout,
        })
    }
}
