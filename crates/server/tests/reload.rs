//! A config reload (what `nimbus serve` does on SIGHUP) changes the edge's limits for new
//! connections and leaves the open ones alone. Keys and tokens: `tests/tokens.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, http_get};
use nimbus_server::edge::EdgeConfig;
use nimbus_server::{Config, Server};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_reload_changes_the_per_address_cap_for_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let edge = |max| EdgeConfig {
        max_conns_per_ip: max,
        limit_loopback: true,
        ..EdgeConfig::default()
    };
    let base = config(dir.path());
    let server = Server::bind(Config {
        edge: edge(2),
        ..base.clone()
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    let reloader = server.reloader();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    // Two held connections fill the cap of 2: a third request is refused with 429.
    let held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(http_get(addr, "/healthz", &[]).await.0, 429);
    // Raised to 4: the held ones stay, a new one is admitted.
    reloader
        .apply(&Config {
            edge: edge(4),
            ..base.clone()
        })
        .unwrap();
    assert_eq!(http_get(addr, "/healthz", &[]).await.0, 200);
    drop(held);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
