//! The HTTP API's writes (`/api/rooms/...`, `/api/docs/...`) over real loopback sockets:
//! an API change reaches connected cloud and document clients like a client's, with
//! `--redis` on another node too; refusals answer deliberate statuses; the OpenAPI
//! document lists every route.
//!
//! The Redis test needs `redis-server` on the PATH (see `redis_nodes.rs`): without it it
//! prints `SKIPPED`, unless `NIMBUS_REQUIRE_REDIS=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::redis_in_tempdir;
use common::{config, Client, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::doc::{decode_frame, Message};
use nimbus_server::auth::{AuthSettings, AuthSetup};
use nimbus_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

const ADMIN: &str = "admin-token-0123456789";
const SECRET: &str = "a-signing-secret-of-at-least-32-bytes!!";

/// A config with an admin API token (and optionally a signing secret).
fn with_auth(dir: &std::path::Path, signing: bool) -> Config {
    let mut cfg = config(dir);
    cfg.auth = AuthSetup::from_settings(&AuthSettings {
        api_token: Some(vec![ADMIN.into()]),
        token_secret: signing.then(|| vec![SECRET.into()]),
        ..AuthSettings::default()
    })
    .unwrap();
    cfg.cloud.empty_join_frame = true;
    cfg
}

/// One HTTP/1.1 request; status and body bytes.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
    let mut body = buf[at..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + len]);
        b = &b[nl + 2 + len + 2..];
    }
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn error_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

/// A signed token whose `api` grant is `grant` (e.g. `{"rw": ["1"]}`).
fn signed(grant: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": "bot", "exp": exp, "nimbus": { "api": grant } });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

// ------------------------------------------------------------------ cloud variables

/// One request with the admin token; status and body bytes.
async fn admin(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http(addr, method, path, Some(ADMIN), body).await
}

/// `GET` `path` without a token, as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (_, body) = http(addr, "GET", path, None, b"").await;
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn a_put_reaches_a_connected_cloud_client_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let mut c = Client::join(&srv.url(), "1", "alice").await;
    assert_eq!(c.frame().await, "\n", "empty join frame");
    let (status, body) = admin(srv.addr, "PUT", "/api/rooms/1/variables/score", b"1.50").await;
    assert_eq!(status, 204, "{}", text_of(&body));
    assert_eq!(c.lines(1).await, [common::set_line("score", "1.50")]);
    // A string value, to a variable named with its prefix (percent-encoded).
    let (status, _) = admin(
        srv.addr,
        "PUT",
        "/api/rooms/1/variables/%E2%98%81%20name",
        b"\"42\"",
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(c.lines(1).await, [common::set_line("name", "\"42\"")]);
    let (status, body) = admin(srv.addr, "GET", "/api/rooms/1/variables", b"").await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&body), r#"{"☁ score":1.50,"☁ name":"42"}"#);
    srv.stop().await;
    // Stored: a restarted server has it.
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let (_, body) = admin(srv.addr, "GET", "/api/rooms/1/variables", b"").await;
    assert_eq!(text_of(&body), r#"{"☁ score":1.50,"☁ name":"42"}"#);
    srv.stop().await;
}

#[tokio::test]
async fn a_put_refuses_bodies_names_and_values_a_client_set_could_not_carry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_auth(dir.path(), false);
    cfg.cloud.max_name_len = 16;
    cfg.cloud.max_value_len = 8;
    cfg.cloud.max_variables_per_room = 1;
    let srv = TestServer::start(cfg).await;
    let put = |name: &'static str, body: &'static [u8]| {
        let addr = srv.addr;
        async move {
            http(
                addr,
                "PUT",
                &format!("/api/rooms/2/variables/{name}"),
                Some(ADMIN),
                body,
            )
            .await
        }
    };
    for bad in [
        &b"true"[..],
        b"null",
        b"[1]",
        b"{\"v\":1}",
        b"",
        b"1 2",
        b"\xff",
    ] {
        let (status, body) = put("x", bad).await;
        assert_eq!(status, 400, "{bad:?}: {}", text_of(&body));
        assert!(!error_of(&body).is_empty());
    }
    // A string the turbowarp profile refuses, a name over max_name_len.
    assert_eq!(put("x", b"\"hello\"").await.0, 400);
    assert_eq!(put("a-name-longer-than-16", b"1").await.0, 400);
    // A value over max_value_len; a body over the route's limit.
    assert_eq!(put("x", b"123456789").await.0, 413);
    let huge: &'static [u8] = Box::leak(vec![b'1'; 4096].into_boxed_slice());
    assert_eq!(put("x", huge).await.0, 413);
    // The variable limit: the second variable conflicts.
    assert_eq!(put("x", b"1").await.0, 204);
    let (status, body) = put("y", b"1").await;
    assert_eq!(status, 409, "{}", text_of(&body));
    let (_, body) = admin(srv.addr, "GET", "/api/rooms/2/variables", b"").await;
    assert_eq!(text_of(&body), r#"{"☁ x":1}"#);
    srv.stop().await;
}

#[tokio::test]
async fn delete_variable_removes_it_and_answers_404_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let mut c = Client::join(&srv.url(), "3", "alice").await;
    assert_eq!(c.frame().await, "\n");
    let mut watcher = Client::join(&srv.url(), "3", "bob").await;
    assert_eq!(watcher.frame().await, "\n");
    c.set("a", "1").await;
    c.set("b", "2").await;
    assert_eq!(watcher.lines(2).await.len(), 2, "the room applied both");
    let (status, _) = admin(srv.addr, "PUT", "/api/rooms/3/variables/c", b"3").await;
    assert_eq!(status, 204);
    let (status, _) = admin(srv.addr, "DELETE", "/api/rooms/3/variables/a", b"").await;
    assert_eq!(status, 204);
    let (status, body) = admin(srv.addr, "DELETE", "/api/rooms/3/variables/a", b"").await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body), "unknown variable");
    let (_, body) = admin(srv.addr, "GET", "/api/rooms/3/variables", b"").await;
    assert_eq!(text_of(&body), r#"{"☁ b":2,"☁ c":3}"#);
    srv.stop().await;
}

#[tokio::test]
async fn delete_room_deletes_every_variable_through_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    for (name, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        let (status, _) = admin(
            srv.addr,
            "PUT",
            &format!("/api/rooms/4/variables/{name}"),
            v.as_bytes(),
        )
        .await;
        assert_eq!(status, 204);
    }
    let mut c = Client::join(&srv.url(), "4", "alice").await;
    assert_eq!(c.lines(3).await.len(), 3);
    let (status, body) = admin(srv.addr, "DELETE", "/api/rooms/4", b"").await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&body).trim(), r#"{"deleted":3}"#);
    let (_, body) = admin(srv.addr, "GET", "/api/rooms/4/variables", b"").await;
    assert_eq!(text_of(&body), "{}", "the loaded room is empty");
    assert_eq!(
        http(srv.addr, "DELETE", "/api/rooms/4", Some(ADMIN), b"")
            .await
            .0,
        404
    );
    // A client joining now gets an empty room; the connected one can set again.
    let mut late = Client::join(&srv.url(), "4", "bob").await;
    assert_eq!(late.frame().await, "\n");
    c.set("a", "9").await;
    assert_eq!(late.lines(1).await, [common::set_line("a", "9")]);
    srv.stop().await;
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let (_, body) = admin(srv.addr, "GET", "/api/rooms/4/variables", b"").await;
    assert_eq!(text_of(&body), r#"{"☁ a":9}"#, "the deletes were stored");
    srv.stop().await;
}

#[tokio::test]
async fn with_redis_a_put_or_delete_on_node_a_reaches_the_clients_on_node_b() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut cfg = with_auth(&dir.path().join(format!("node{i}")), false);
        cfg.redis = Some(redis.url());
        nodes.push(TestServer::start(cfg).await);
    }
    let mut b = Client::join(&nodes[1].url(), "5", "bob").await;
    assert_eq!(b.frame().await, "\n");
    let (status, body) = http(
        nodes[0].addr,
        "PUT",
        "/api/rooms/5/variables/x",
        Some(ADMIN),
        b"7",
    )
    .await;
    assert_eq!(status, 204, "{}", text_of(&body));
    assert_eq!(b.lines(1).await, [common::set_line("x", "7")]);
    let (status, _) = http(
        nodes[0].addr,
        "DELETE",
        "/api/rooms/5/variables/x",
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = http(
        nodes[1].addr,
        "DELETE",
        "/api/rooms/5/variables/x",
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(status, 404, "the delete reached node B's room");
    // A document room deleted through node A: its clients on node B are closed with
    // 4410, and no node (nor Redis) keeps it.
    let (status, body) = http(
        nodes[0].addr,
        "POST",
        "/api/docs/r/update",
        Some(ADMIN),
        &text_update("hi"),
    )
    .await;
    assert_eq!(status, 204, "{}", text_of(&body));
    let mut on_b = Peer::join(nodes[1].addr, "r").await;
    assert_eq!(on_b.text(), "hi");
    let (status, body) = http(nodes[0].addr, "DELETE", "/api/docs/r", Some(ADMIN), b"").await;
    assert_eq!(status, 204, "{}", text_of(&body));
    assert_eq!(on_b.closed().await, 4410);
    for n in &nodes {
        assert_eq!(
            http(n.addr, "GET", "/api/docs/r", None, b"").await.0,
            404,
            "deleted for every node"
        );
    }
    // The room starts again empty, on any node.
    let fresh = Peer::join(nodes[1].addr, "r").await;
    assert_eq!(fresh.text(), "");
    for n in nodes {
        n.stop().await;
    }
}

// ------------------------------------------------------------------ documents

/// An update that makes text `t` of an empty document `s`.
fn text_update(s: &str) -> Vec<u8> {
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, s);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

/// A raw y-websocket client: its document, synced with the room.
struct Peer {
    ws: common::Ws,
    doc: yrs::Doc,
}

impl Peer {
    async fn join(addr: SocketAddr, room: &str) -> Peer {
        let req = format!("ws://{addr}/doc/{room}")
            .into_client_request()
            .unwrap();
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap();
        let doc = yrs::Doc::new();
        doc.get_or_insert_text("t");
        doc.get_or_insert_map("m");
        let mut p = Peer { ws, doc };
        let sv = p.doc.transact().state_vector().encode_v1();
        p.ws.send(Ws::Binary(Message::SyncStep1(sv.into()).encode()))
            .await
            .unwrap();
        p.until(|m| matches!(m, Message::SyncStep2(_))).await;
        p
    }

    async fn until(&mut self, pred: impl Fn(&Message) -> bool) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let Ws::Binary(b) = msg else {
                assert!(!matches!(msg, Ws::Close(_)), "closed: {msg:?}");
                continue;
            };
            for m in decode_frame(&b).unwrap() {
                match &m {
                    Message::SyncStep1(sv) => {
                        let sv = StateVector::decode_v1(sv).unwrap();
                        let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                        self.ws
                            .send(Ws::Binary(Message::SyncStep2(diff.into()).encode()))
                            .await
                            .unwrap();
                    }
                    Message::SyncStep2(u) | Message::Update(u) => {
                        self.doc
                            .transact_mut()
                            .apply_update(Update::decode_v1(u).unwrap())
                            .unwrap();
                    }
                    _ => {}
                }
                if pred(&m) {
                    return;
                }
            }
        }
    }

    fn text(&self) -> String {
        let t = self.doc.get_or_insert_text("t");
        t.get_string(&self.doc.transact())
    }

    async fn edit_text(&mut self, s: &str) {
        let before = self.doc.transact().state_vector();
        let t = self.doc.get_or_insert_text("t");
        let len = t.len(&self.doc.transact());
        t.insert(&mut self.doc.transact_mut(), len, s);
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        self.ws
            .send(Ws::Binary(Message::Update(update.into()).encode()))
            .await
            .unwrap();
    }

    async fn closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.unwrap() {
                Some(Ok(Ws::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_posted_update_reaches_a_connected_document_client_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let mut peer = Peer::join(srv.addr, "notes/a").await;
    let (status, body) = admin(
        srv.addr,
        "POST",
        "/api/docs/notes/a/update",
        &text_update("hello"),
    )
    .await;
    assert_eq!(status, 204, "{}", text_of(&body));
    peer.until(|m| matches!(m, Message::Update(_))).await;
    assert_eq!(peer.text(), "hello");
    let (status, body) = http(srv.addr, "GET", "/api/docs/notes/a", None, b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["t"],
        "hello"
    );
    srv.stop().await;
    // Stored: a room nobody had open also keeps a posted update.
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let doc = yrs::Doc::new();
    let m = doc.get_or_insert_map("m");
    m.insert(&mut doc.transact_mut(), "k", 1.0);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/idle/update",
            Some(ADMIN),
            &update
        )
        .await
        .0,
        204
    );
    srv.stop().await;
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    assert_eq!(get_json(srv.addr, "/api/docs/notes/a").await["t"], "hello");
    assert_eq!(get_json(srv.addr, "/api/docs/idle").await["m"]["k"], 1.0);
    srv.stop().await;
}

#[tokio::test]
async fn a_malformed_update_is_refused_with_400_and_the_room_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let mut peer = Peer::join(srv.addr, "m").await;
    peer.edit_text("kept").await;
    assert_eq!(
        admin(srv.addr, "POST", "/api/docs/m/update", &text_update("x"))
            .await
            .0,
        204
    );
    let (_, before) = http(srv.addr, "GET", "/api/docs/m/update", None, b"").await;
    // Garbage; a truncated update; an update that depends on content the room lacks.
    let good = text_update("more");
    let dependent = yrs::Doc::new();
    {
        let t = dependent.get_or_insert_text("t");
        t.insert(&mut dependent.transact_mut(), 0, "base");
    }
    let base_sv = dependent.transact().state_vector();
    {
        let t = dependent.get_or_insert_text("t");
        t.insert(&mut dependent.transact_mut(), 4, "-on-top");
    }
    let missing_base = dependent.transact().encode_state_as_update_v1(&base_sv);
    for bad in [
        &b"\xff\xff\xff\xff\xff"[..],
        &good[..good.len() - 3],
        &missing_base[..],
        b"\x05",
    ] {
        let (status, body) = admin(srv.addr, "POST", "/api/docs/m/update", bad).await;
        assert_eq!(status, 400, "{bad:?}: {}", text_of(&body));
        assert!(!error_of(&body).is_empty());
    }
    let (_, after) = http(srv.addr, "GET", "/api/docs/m/update", None, b"").await;
    assert_eq!(before, after, "the room is unchanged");
    // The room carries on: the client's next edit and the API's next update apply.
    peer.edit_text("!").await;
    assert_eq!(
        http(srv.addr, "POST", "/api/docs/m/update", Some(ADMIN), &good)
            .await
            .0,
        204
    );
    let (_, body) = http(srv.addr, "GET", "/api/docs/m", None, b"").await;
    let t = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["t"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        t.contains("kept!") && t.contains('x') && t.contains("more"),
        "{t}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_update_over_the_limits_is_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_auth(dir.path(), false);
    cfg.doc.max_message_bytes = 1024;
    cfg.doc.max_doc_bytes = 2048;
    let srv = TestServer::start(cfg).await;
    let (status, body) = admin(
        srv.addr,
        "POST",
        "/api/docs/big/update",
        &text_update(&"x".repeat(2000)),
    )
    .await;
    assert_eq!(status, 413, "{}", text_of(&body));
    for i in 0..3 {
        let (status, _) = admin(
            srv.addr,
            "POST",
            "/api/docs/big/update",
            &text_update(&"y".repeat(900)),
        )
        .await;
        assert_eq!(
            status,
            if i < 2 { 204 } else { 413 },
            "update {i}: the document limit"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn get_update_rebuilds_the_room_in_a_fresh_doc_and_the_state_vector_matches() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/s/update", None, b"")
            .await
            .0,
        404
    );
    let mut peer = Peer::join(srv.addr, "s").await;
    peer.edit_text("from a client").await;
    assert_eq!(
        admin(srv.addr, "POST", "/api/docs/s/update", &text_update("+api"))
            .await
            .0,
        204
    );
    peer.until(|m| matches!(m, Message::Update(_))).await;
    let (status, update) = http(srv.addr, "GET", "/api/docs/s/update", None, b"").await;
    assert_eq!(status, 200);
    let fresh = yrs::Doc::new();
    fresh
        .transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
    let t = fresh.get_or_insert_text("t");
    assert_eq!(t.get_string(&fresh.transact()), peer.text());
    assert_eq!(
        nimbus_doc::doc_to_json(&fresh)["t"],
        nimbus_doc::doc_to_json(&peer.doc)["t"]
    );
    let (status, sv) = http(srv.addr, "GET", "/api/docs/s/state-vector", None, b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        StateVector::decode_v1(&sv).unwrap(),
        peer.doc.transact().state_vector()
    );
    // A room name with `/update` in it is written with %2F.
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/s%2Fupdate/update",
            Some(ADMIN),
            &text_update("z")
        )
        .await
        .0,
        204
    );
    assert_eq!(get_json(srv.addr, "/api/docs/s%2Fupdate").await["t"], "z");
    srv.stop().await;
}

#[tokio::test]
async fn deleting_a_document_room_closes_its_clients_with_4410_and_removes_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    let mut peer = Peer::join(srv.addr, "gone").await;
    peer.edit_text("soon deleted").await;
    assert_eq!(
        admin(srv.addr, "POST", "/api/docs/gone/update", &text_update("!"))
            .await
            .0,
        204
    );
    let (status, body) = admin(srv.addr, "DELETE", "/api/docs/gone", b"").await;
    assert_eq!(status, 204, "{}", text_of(&body));
    assert_eq!(peer.closed().await, 4410);
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/gone", None, b"").await.0,
        404
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/docs/gone", Some(ADMIN), b"")
            .await
            .0,
        404
    );
    // A new client gets an empty room.
    let fresh = Peer::join(srv.addr, "gone").await;
    assert_eq!(fresh.text(), "");
    drop(fresh);
    srv.stop().await;
    let srv = TestServer::start(with_auth(dir.path(), false)).await;
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/gone", None, b"").await.0,
        404,
        "the log is gone from the store"
    );
    srv.stop().await;
}

// ------------------------------------------------------------------ authorization

#[tokio::test]
async fn without_keys_reads_stay_open_and_writes_are_401() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let (status, body) = http(srv.addr, "PUT", "/api/rooms/1/variables/x", None, b"1").await;
    assert_eq!(status, 401);
    assert_eq!(error_of(&body), "token_required");
    assert_eq!(
        http(
            srv.addr,
            "PUT",
            "/api/rooms/1/variables/x",
            Some(ADMIN),
            b"1"
        )
        .await
        .0,
        401
    );
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/d/update",
            None,
            &text_update("x")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/docs/d", None, b"").await.0,
        401
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/rooms/1", None, b"").await.0,
        401
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/rooms/1/variables", None, b"")
            .await
            .0,
        404,
        "reads are open"
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/d/update", None, b"")
            .await
            .0,
        404
    );
    srv.stop().await;
}

#[tokio::test]
async fn signed_tokens_need_the_room_and_read_write_for_writes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(with_auth(dir.path(), true)).await;
    let rw = signed(serde_json::json!({ "rw": ["1", "doc/*"] }));
    let ro = signed(serde_json::json!({ "ro": ["1", "doc/*"] }));
    let put = |token: Option<String>, room: &'static str| {
        let addr = srv.addr;
        async move {
            http(
                addr,
                "PUT",
                &format!("/api/rooms/{room}/variables/x"),
                token.as_deref(),
                b"1",
            )
            .await
        }
    };
    assert_eq!(put(Some(rw.clone()), "1").await.0, 204);
    let (status, body) = put(Some(rw.clone()), "2").await;
    assert_eq!(
        (status, error_of(&body)),
        (403, "room_not_granted".to_owned())
    );
    let (status, body) = put(Some(ro.clone()), "1").await;
    assert_eq!((status, error_of(&body)), (403, "read_only".to_owned()));
    assert_eq!(put(None, "1").await.0, 401);
    assert_eq!(
        put(Some("not-the-admin-token-at-all".into()), "1").await.0,
        401
    );
    let forged = signed(serde_json::json!({ "rw": ["*"] })).replace('.', ".x");
    assert_eq!(put(Some(forged), "1").await.0, 401);
    // Reads: a read-only grant reads, reads need a token once keys are configured.
    assert_eq!(
        http(srv.addr, "GET", "/api/rooms/1/variables", Some(&ro), b"")
            .await
            .0,
        200
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/rooms/1/variables", None, b"")
            .await
            .0,
        401
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/rooms/2/variables", Some(&ro), b"")
            .await
            .0,
        403
    );
    // Documents: the same grants.
    let update = text_update("x");
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/doc/a/update",
            Some(&rw),
            &update
        )
        .await
        .0,
        204
    );
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/doc/a/update",
            Some(&ro),
            &update
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http(
            srv.addr,
            "POST",
            "/api/docs/other/update",
            Some(&rw),
            &update
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/docs/doc/a", Some(&ro), b"")
            .await
            .0,
        403
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/rooms/1", Some(&ro), b"")
            .await
            .0,
        403
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/doc/a/update", Some(&ro), b"")
            .await
            .0,
        200
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/docs/doc/a/state-vector", None, b"")
            .await
            .0,
        401
    );
    assert_eq!(
        http(srv.addr, "DELETE", "/api/docs/doc/a", Some(ADMIN), b"")
            .await
            .0,
        204
    );
    srv.stop().await;
}

// ------------------------------------------------------------------ OpenAPI

#[tokio::test]
async fn openapi_json_lists_every_route_served() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let (status, body) = http(srv.addr, "GET", "/api/openapi.json", None, b"").await;
    assert_eq!(status, 200);
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed.sort();
    let mut expected = vec![
        "GET /api/rooms/{id}/variables",
        "PUT /api/rooms/{id}/variables/{name}",
        "DELETE /api/rooms/{id}/variables/{name}",
        "DELETE /api/rooms/{id}",
        "GET /api/docs/{room}",
        "DELETE /api/docs/{room}",
        "GET /api/docs/{room}/update",
        "POST /api/docs/{room}/update",
        "GET /api/docs/{room}/state-vector",
        "GET /api/openapi.json",
    ];
    expected.sort();
    assert_eq!(listed, expected);
    // Each listed route is served (none answers 404 for its path or 405 for its method).
    for route in &expected {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "9")
            .replace("{name}", "v")
            .replace("{room}", "r");
        let (status, _) = http(srv.addr, method, &path, None, b"").await;
        assert!(status != 405, "{route}: 405");
        if method == "GET" && path != "/api/openapi.json" {
            assert_eq!(status, 404, "{route}: an unknown room");
        } else if method != "GET" {
            // Served, and refused: no credential is configured, so writes are 401.
            assert_eq!(status, 401, "{route}: a write without a token");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn reads_and_writes_of_a_blocked_room_are_refused_with_403_as_the_wire_refuses_its_joins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_auth(dir.path(), false);
    cfg.cloud.blocked_rooms = vec!["closed".into()];
    let srv = TestServer::start(cfg).await;
    for (method, path) in [
        ("PUT", "/api/rooms/closed/variables/a"),
        ("DELETE", "/api/rooms/closed/variables/a"),
        ("DELETE", "/api/rooms/closed"),
        ("GET", "/api/rooms/closed/variables"),
    ] {
        let (status, body) = http(srv.addr, method, path, Some(ADMIN), b"1").await;
        assert_eq!(status, 403, "{method} {path}: {}", text_of(&body));
    }
    let (status, _) = admin(srv.addr, "PUT", "/api/rooms/open/variables/a", b"1").await;
    assert_eq!(status, 204);
    srv.stop().await;
}

/// Delete document room `room` in Redis the way a node does, except that the message goes
/// to a channel nobody hears: what a node whose subscription was down misses.
async fn delete_unheard(redis_url: &str, room: &str) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // The room's updates reach Redis from the node's writer, after the room applied them.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = redis::cmd("EXISTS")
            .arg(format!("nimbus:doc:{{{room}}}:epoch"))
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} never in Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys: Vec<String> = ["seq", "epoch", "log", "snap", "snapseq", "deleted"]
        .iter()
        .map(|k| format!("nimbus:doc:{{{room}}}:{k}"))
        .collect();
    let deleted: i64 = redis::cmd("EVAL")
        .arg(nimbus_redis::doc::DOC_DELETE_SCRIPT)
        .arg(6)
        .arg(&keys)
        .arg("elsewhere")
        .arg(room)
        .arg("nobody-listens")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        deleted >= 2,
        "the room was in Redis ({deleted} keys): {all:?}"
    );
}

#[tokio::test]
async fn a_node_that_missed_a_document_deletion_closes_its_clients_with_4410_not_1011() {
    let Some((dir, redis)) = redis_in_tempdir().await else {
        return;
    };
    let mut cfg = with_auth(dir.path(), false);
    cfg.redis = Some(redis.url());
    let srv = TestServer::start(cfg).await;
    // At its next write: Redis refuses it and says the room was deleted.
    let mut writer = Peer::join(srv.addr, "gone").await;
    writer.edit_text("one").await;
    delete_unheard(&redis.url(), "gone").await;
    writer.edit_text("two").await;
    assert_eq!(writer.closed().await, 4410);
    // At its next resync (the subscription comes back): the load finds the tombstone.
    let mut reader = Peer::join(srv.addr, "gone2").await;
    reader.edit_text("one").await;
    delete_unheard(&redis.url(), "gone2").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(reader.closed().await, 4410);
    srv.stop().await;
}
