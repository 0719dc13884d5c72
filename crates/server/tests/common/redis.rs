//! A real `redis-server` on loopback for the backplane tests.
//!
//! Needs `redis-server` on the PATH (Debian: `apt-get install redis-server`; `.ci/run`
//! installs it). Without it a test prints `SKIPPED` and returns, unless
//! `NIMBUS_REQUIRE_REDIS=1`, which turns a missing `redis-server` into a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::WAIT;

/// A `redis-server` child on a free loopback port, with its data in a temp dir.
pub struct RedisProc {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_REDIS").is_none(),
            "redis-server is required (NIMBUS_REQUIRE_REDIS) but not installed"
        );
        eprintln!("SKIPPED: redis-server not installed (apt-get install redis-server)");
    }
    found
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisProc {
    /// Start with an append-only file fsynced on every write: what Redis accepted
    /// survives its own `kill -9`.
    pub async fn start(dir: &Path) -> RedisProc {
        let mut r = RedisProc {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.spawn().await;
        r
    }

    pub async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory and a Redis in it, or `None` (the test skips) without
/// `redis-server`.
pub async fn redis_in_tempdir() -> Option<(tempfile::TempDir, RedisProc)> {
    if !have_redis() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path()).await;
    Some((dir, redis))
}
