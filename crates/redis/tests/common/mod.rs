//! A `redis-server` of the tests' own, on a free loopback port.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server(Child, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Start one; `None` (the test is skipped) without `redis-server` on the PATH, unless
/// `NIMBUS_REQUIRE_REDIS` is set. Also answers a connection and the URL.
pub fn redis() -> Option<(Server, redis::Connection, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("nimbus-redis-test-{port}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        assert!(
            std::env::var_os("NIMBUS_REQUIRE_REDIS").is_none(),
            "redis-server is required (NIMBUS_REQUIRE_REDIS) but not installed"
        );
        eprintln!("SKIPPED: redis-server not installed");
        return None;
    };
    let server = Server(child, dir);
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).expect("url");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = client.get_connection() {
            return Some((server, c, url));
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}
