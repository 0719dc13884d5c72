//! A standalone document server: `cargo run -p nimbus-doc --example serve -- 127.0.0.1:8000`.
//! Rooms are in memory; the room id is the request path (`ws://127.0.0.1:8000/ROOM` →
//! `"/ROOM"`). Stops on Ctrl-C, printing each room's content as JSON.

use nimbus_doc::{bind, doc_to_json, Room, ServerOptions, ServerWire};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into())
        .parse()?;
    let server = bind(
        ServerWire::WebSocket { addr },
        |id: &str| Room::new(id),
        ServerOptions::default(),
    )
    .await?;
    eprintln!(
        "listening on ws://{}",
        server.local_addr().map_or(addr, |a| a)
    );
    tokio::signal::ctrl_c().await?;
    for id in server.manager().room_ids() {
        if let Some(room) = server.manager().get(&id) {
            eprintln!("{id}: {}", doc_to_json(room.doc()));
        }
    }
    server.shutdown().await;
    Ok(())
}
