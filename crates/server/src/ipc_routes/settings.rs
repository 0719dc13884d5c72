//! The IPC routes' settings ([`IpcSettings`]: flags, `NIMBUS_IPC*` environment, `ipc*` keys
//! of the config file), resolved into an [`IpcConfig`] (whose `Default` holds every default).

use serde::Deserialize;

use crate::setting::InvalidSetting;

/// The IPC routes' settings, each optional so that flags, environment and file can be
/// layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct IpcSettings {
    /// Serve the IPC routes (see docs/ipc.md) on their own ports [default: false].
    #[arg(long, env = "NIMBUS_IPC", num_args = 0..=1, default_missing_value = "true")]
    pub ipc: Option<bool>,
    /// IPC main port [default: 8000].
    #[arg(long, env = "NIMBUS_IPC_PORT")]
    pub ipc_port: Option<u16>,
    /// IPC multicast (discovery) port [default: 20000].
    #[arg(long, env = "NIMBUS_IPC_MULTICAST_PORT")]
    pub ipc_multicast_port: Option<u16>,
    /// IPC host; anything but loopback requires a secret [default: 127.0.0.1].
    #[arg(long, env = "NIMBUS_IPC_HOST")]
    pub ipc_host: Option<String>,
    /// IPC shared secret (the `Authorization` value clients send) [default: none].
    #[arg(long, env = "NIMBUS_IPC_SECRET", hide_env_values = true)]
    pub ipc_secret: Option<String>,
}

/// Where and how `nimbus serve` exposes its IPC routes.
#[derive(Clone)]
pub struct IpcConfig {
    /// Host to bind (loopback unless a secret is set).
    pub host: String,
    /// Main port (0: any free port).
    pub port: u16,
    /// Multicast (discovery) port (0: any free port).
    pub multicast_port: u16,
    /// Shared secret.
    pub secret: Option<String>,
}

impl std::fmt::Debug for IpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("multicast_port", &self.multicast_port)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            multicast_port: 20000,
            secret: None,
        }
    }
}

impl IpcConfig {
    /// Fill in defaults: `None` unless `ipc` is on (every value is valid today; a host
    /// that is not loopback without a secret is refused when the server binds).
    pub fn from_settings(s: &IpcSettings) -> Result<Option<IpcConfig>, InvalidSetting> {
        if !s.ipc.unwrap_or(false) {
            return Ok(None);
        }
        let d = IpcConfig::default();
        Ok(Some(IpcConfig {
            host: s.ipc_host.clone().unwrap_or(d.host),
            port: s.ipc_port.unwrap_or(d.port),
            multicast_port: s.ipc_multicast_port.unwrap_or(d.multicast_port),
            secret: s.ipc_secret.clone().filter(|k| !k.is_empty()),
        }))
    }
}
