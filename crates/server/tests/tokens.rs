//! Signed tokens at the edge (issue "Identity"), over real loopback sockets: tokens minted
//! here with `jsonwebtoken` (the PyJWT interop is `tests/interop/doc.sh`, check
//! `nimbus-signed-tokens`). Every refusal answers its documented status or close code
//! (`docs/security.md`, "Tokens").
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{config, WAIT};
use futures_util::{SinkExt, StreamExt};
use nimbus_auth::AuthConfig;
use nimbus_proto::doc::{decode_frame, AuthMessage, Message};
use nimbus_server::auth::{AuthSetup, CloudAuth};
use nimbus_server::{Config, Reloader, Server};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

const SECRET_1: &str = "test-secret-one-0123456789abcdef-xyz";
const SECRET_2: &str = "test-secret-two-0123456789abcdef-xyz";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with `kid`, signed with `secret`.
fn mint(secret: &str, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn token(sub: &str, exp_in: i64, grants: Value) -> String {
    let exp = now() as i64 + exp_in;
    mint(
        SECRET_1,
        "k1",
        json!({"sub": sub, "exp": exp, "nimbus": grants}),
    )
}

fn setup(secrets: &[&str], cloud: CloudAuth) -> AuthSetup {
    AuthSetup {
        keys: Some(AuthConfig {
            hs256_secrets: secrets.iter().map(|s| s.parse().unwrap()).collect(),
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        }),
        cloud,
        cookie: "nimbus_token".into(),
        api_tokens: Vec::new(),
    }
}

struct Srv {
    addr: std::net::SocketAddr,
    ipc: Option<u16>,
    reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Srv {
    async fn start(auth: AuthSetup) -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            auth,
            ..config(dir.path())
        };
        // One connection per username and room: shows whose name a client got.
        config.cloud.unique_usernames = true;
        config.ipc = Some(nimbus_server::IpcConfig {
            host: "127.0.0.1".into(),
            port: 0,
            multicast_port: 0,
            secret: Some("a-shared-ipc-secret".into()),
        });
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let ipc = server.ipc_addr().map(|a| a.port());
        let reloader = server.reloader();
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = server
                .run_until(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Srv {
            addr,
            ipc,
            reloader,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// The config a reload would read: `auth` over the defaults.
    fn config(&self, auth: AuthSetup) -> Config {
        Config {
            auth,
            ..config(self._dir.path())
        }
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Open a WebSocket at `path` (with its query): the socket, or the refusal's status and body.
async fn open(addr: std::net::SocketAddr, path: &str) -> Result<common::Ws, (u16, String)> {
    open_with(addr, path, &[]).await
}

async fn open_with(
    addr: std::net::SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<common::Ws, (u16, String)> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("answer in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// The close code the server ends `ws` with (frames before it are skipped).
async fn close_code(ws: &mut common::Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Ws::Close(Some(f)))) => return f.code.into(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

fn doc_path(room: &str, token: &str) -> String {
    format!("/doc/{room}?token={token}")
}

#[tokio::test]
async fn every_refused_document_token_answers_its_status_and_reason_before_the_upgrade() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let rw = json!({"doc": {"rw": ["notes/*"]}});
    let good = token("alice", 600, rw.clone());
    assert!(open(srv.addr, &doc_path("notes/a", &good)).await.is_ok());
    let expired = token("alice", -5, rw.clone());
    let not_yet = mint(
        SECRET_1,
        "k1",
        json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300, "nimbus": rw}),
    );
    let wrong_key = mint(
        SECRET_2,
        "k1",
        json!({"sub": "a", "exp": now() + 600, "nimbus": rw}),
    );
    let (head, _) = good.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", "A".repeat(43));
    let unknown_kid = mint(
        SECRET_1,
        "k9",
        json!({"sub": "a", "exp": now() + 600, "nimbus": rw}),
    );
    let cases = [
        (
            "expired",
            doc_path("notes/a", &expired),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            doc_path("notes/a", &not_yet),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong key",
            doc_path("notes/a", &wrong_key),
            401,
            "bad_signature",
        ),
        (
            "tampered",
            doc_path("notes/a", &tampered),
            401,
            "bad_signature",
        ),
        (
            "unknown kid",
            doc_path("notes/a", &unknown_kid),
            401,
            "unknown_key",
        ),
        (
            "wrong room",
            doc_path("secret/x", &good),
            403,
            "room_not_granted",
        ),
        ("no token", "/doc/notes/a".to_owned(), 401, "token_required"),
    ];
    for (name, path, status, reason) in cases {
        let (got, body) = open(srv.addr, &path).await.err().unwrap_or_else(|| {
            panic!("{name}: accepted");
        });
        assert_eq!(got, status, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body}");
    }
}

#[tokio::test]
async fn a_read_only_token_gets_the_document_and_every_update_is_refused() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let ro = token("reader", 600, json!({"doc": {"ro": ["notes/*"]}}));
    let mut ws = open(srv.addr, &doc_path("notes/ro", &ro)).await.unwrap();
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    let update = {
        use yrs::{Text, Transact};
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "not allowed");
        txn.encode_update_v1()
    };
    ws.send(Ws::Binary(Message::Update(update.into()).encode()))
        .await
        .unwrap();
    let denied = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Ws::Binary(b) = frame {
                for m in decode_frame(&Bytes::from(b.to_vec())).unwrap_or_default() {
                    if let Message::Auth(AuthMessage::PermissionDenied(why)) = m {
                        return why;
                    }
                }
            }
        }
        panic!("socket ended without a refusal");
    })
    .await
    .expect("refused in time");
    assert!(!denied.is_empty());
}

#[tokio::test]
async fn a_document_connection_is_closed_with_4401_when_its_token_expires() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let short = token("alice", 2, json!({"doc": {"rw": ["*"]}}));
    let mut ws = open(srv.addr, &doc_path("notes/exp", &short))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 4401);
    // Reconnecting with it: a clear refusal, no document.
    let (status, body) = open(srv.addr, &doc_path("notes/exp", &short))
        .await
        .err()
        .unwrap();
    assert_eq!((status, body.contains("token_expired")), (401, true));
}

/// A cloud client with a token in the `nimbus.token.<TOKEN>` subprotocol (what a browser
/// can send); the server selects the bare marker.
async fn cloud_join(
    srv: &Srv,
    token: &str,
    project: &str,
    user: &str,
) -> Result<common::Ws, (u16, String)> {
    let proto = format!("nimbus.token.{token}");
    let mut ws = open_with(srv.addr, "/", &["nimbus.token", &proto]).await?;
    let hs = json!({"method": "handshake", "user": user, "project_id": project}).to_string();
    ws.send(Ws::Text(format!("{hs}\n").into())).await.unwrap();
    Ok(ws)
}

#[tokio::test]
async fn with_cloud_auth_required_the_username_is_the_tokens_sub() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Required)).await;
    let (status, body) = open(srv.addr, "/").await.err().unwrap();
    assert_eq!((status, body.contains("token_required")), (401, true));
    let grant = json!({"cloud": {"rw": ["123"]}});
    let alice = token("alice", 600, grant.clone());
    let alice_again = token("alice", 600, grant);
    // Two connections claiming different handshake names but holding alice's token: the
    // second is alice too, and a room has one connection per username.
    let mut first = cloud_join(&srv, &alice, "123", "someone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = cloud_join(&srv, &alice_again, "123", "someone-else")
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut second).await,
        4002,
        "the sub, not the handshake name"
    );
    let wrong_project = token("bob", 600, json!({"cloud": {"rw": ["999"]}}));
    let mut bob = cloud_join(&srv, &wrong_project, "123", "bob")
        .await
        .unwrap();
    assert_eq!(close_code(&mut bob).await, 4403);
    first.close(None).await.ok();
}

#[tokio::test]
async fn a_read_only_cloud_token_cannot_change_variables() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Required)).await;
    let writer = token("writer", 600, json!({"cloud": {"rw": ["5"]}}));
    let reader = token("reader", 600, json!({"cloud": {"ro": ["5"]}}));
    let mut w = cloud_join(&srv, &writer, "5", "w").await.unwrap();
    let mut r = cloud_join(&srv, &reader, "5", "r").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let set = |name: &str, v: i64| {
        Ws::Text(format!("{}\n", json!({"method": "set", "name": name, "value": v})).into())
    };
    r.send(set("☁ a", 1)).await.unwrap();
    w.send(set("☁ b", 2)).await.unwrap();
    // The reader sees the writer's set; the writer never sees the reader's.
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = r.next().await {
            if let Ws::Text(t) = m {
                return t.to_string();
            }
        }
        panic!("reader socket ended");
    })
    .await
    .unwrap();
    assert!(seen.contains("☁ b"), "{seen}");
    let quiet = tokio::time::timeout(Duration::from_millis(500), w.next()).await;
    assert!(
        !matches!(quiet, Ok(Some(Ok(Ws::Text(_))))),
        "a read-only set reached the room: {quiet:?}"
    );
}

/// A gateway bot: Hello, Identify, READY; then its dispatches.
struct Bot {
    ws: common::Ws,
}

impl Bot {
    async fn identify(srv: &Srv, token: &str, intents: u64) -> Result<Bot, u16> {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{}/gateway?v=10&encoding=json",
            srv.addr
        ))
        .await
        .unwrap();
        let hello = Bot::payload(&mut ws).await;
        assert_eq!(hello["op"], 10);
        let identify =
            json!({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}});
        ws.send(Ws::Text(identify.to_string().into()))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await.expect("answer") {
                Some(Ok(Ws::Text(t))) => {
                    let p: Value = serde_json::from_str(&t).unwrap();
                    if p["t"] == "READY" {
                        return Ok(Bot { ws });
                    }
                }
                Some(Ok(Ws::Close(Some(f)))) => return Err(f.code.into()),
                other => panic!("identify: {other:?}"),
            }
        }
    }

    async fn payload(ws: &mut common::Ws) -> Value {
        loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("payload")
            {
                Some(Ok(Ws::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("gateway: {other:?}"),
            }
        }
    }

    /// The rooms of the next `n` dispatches.
    async fn rooms(&mut self, n: usize) -> Vec<String> {
        let mut rooms = Vec::new();
        while rooms.len() < n {
            let p = Bot::payload(&mut self.ws).await;
            if p["op"] == 0 {
                rooms.push(p["d"]["room"].as_str().unwrap_or_default().to_owned());
            }
        }
        rooms
    }
}

#[tokio::test]
async fn a_gateway_bot_whose_token_covers_two_rooms_receives_those_rooms_only() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let bot_token = token(
        "bot",
        600,
        json!({"gateway": {"ro": ["a", "b"], "intents": 1}}),
    );
    let mut bot = Bot::identify(&srv, &format!("Bot {bot_token}"), 1)
        .await
        .unwrap();
    let reader = token("ops", 600, json!({"api": {"ro": ["*"]}}));
    let auth = format!("Authorization: Bearer {reader}");
    // Sets in a, c, b, c, a, by cloud clients (cloud auth is off here).
    for (i, room) in ["a", "c", "b", "c", "a"].iter().enumerate() {
        let mut c = common::Client::join(&format!("ws://{}/", srv.addr), room, "p").await;
        c.set("☁ x", &i.to_string()).await;
        // Applied before the next room's set: the order of events is the order here.
        let (status, body) =
            common::http_get(srv.addr, &format!("/api/rooms/{room}/variables"), &[&auth]).await;
        assert_eq!(status, 200, "{body}");
        drop(c);
    }
    let rooms = bot.rooms(3).await;
    assert_eq!(rooms, ["a", "b", "a"]);
    // Intents beyond the token's ceiling: 4014.
    assert_eq!(
        Bot::identify(&srv, &bot_token, 1 | 4).await.err(),
        Some(4014)
    );
    // A valid token without a gateway grant takes no session (it would spend the identify
    // budget every bot shares) and is not told the gateway's URL.
    assert_eq!(
        Bot::identify(&srv, &format!("Bot {reader}"), 1).await.err(),
        Some(4004)
    );
    let bot_auth = |t: &str| format!("Authorization: Bot {t}");
    let (status, _) = common::http_get(srv.addr, "/gateway/bot", &[&bot_auth(&reader)]).await;
    assert_eq!(status, 401);
    let (status, body) = common::http_get(srv.addr, "/gateway/bot", &[&bot_auth(&bot_token)]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn keys_rotated_by_a_reload_take_effect_without_dropping_connections() {
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let grant = json!({"doc": {"rw": ["*"]}});
    let old = token("alice", 600, grant.clone());
    let new = mint(
        SECRET_2,
        "k2",
        json!({"sub": "bob", "exp": now() + 600, "nimbus": grant}),
    );
    let mut connected = open(srv.addr, &doc_path("r", &old)).await.unwrap();
    assert_eq!(
        open(srv.addr, &doc_path("r", &new)).await.err().unwrap().0,
        401
    );
    // A reload whose keys do not load changes nothing.
    let mut broken = setup(&[&format!("k2:{SECRET_2}")], CloudAuth::Off);
    if let Some(keys) = broken.keys.as_mut() {
        keys.jwks_file = Some("/nonexistent/jwks.json".into());
    }
    assert!(srv.reloader.apply(&srv.config(broken)).is_err());
    assert!(open(srv.addr, &doc_path("r", &old)).await.is_ok());
    // Rotate: k2 in, k1 out.
    let rotated = setup(&[&format!("k2:{SECRET_2}")], CloudAuth::Off);
    srv.reloader.apply(&srv.config(rotated)).unwrap();
    assert!(open(srv.addr, &doc_path("r", &new)).await.is_ok());
    let (status, body) = open(srv.addr, &doc_path("r", &old)).await.err().unwrap();
    assert_eq!((status, body.contains("unknown_key")), (401, true));
    // The connection admitted before the rotation is still served: a sync request is
    // answered.
    let sv = {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Transact};
        yrs::Doc::new().transact().state_vector().encode_v1()
    };
    connected
        .send(Ws::Binary(Message::SyncStep1(sv.into()).encode()))
        .await
        .unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = connected.next().await {
            if let Ws::Binary(b) = m {
                let msgs = decode_frame(&Bytes::from(b.to_vec())).unwrap_or_default();
                if msgs.iter().any(|m| matches!(m, Message::SyncStep2(_))) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(answered, "the connection was dropped by the reload");
}

#[tokio::test]
async fn an_ipc_client_may_present_a_signed_token_with_an_api_grant_for_every_room() {
    use nimbus_ipc::{ClientSession, IpcError};
    let srv = Srv::start(setup(&[&format!("k1:{SECRET_1}")], CloudAuth::Off)).await;
    let port = srv.ipc.unwrap();
    let call = |secret: String| async move {
        let mut s = ClientSession::connect("127.0.0.1", Some(port), 0, Some(secret))
            .await
            .unwrap();
        let r = s.request("stats", json!({})).await;
        s.close().await;
        r
    };
    assert!(
        call("a-shared-ipc-secret".into()).await.is_ok(),
        "the shared secret"
    );
    let admin = token("ops", 600, json!({"api": {"rw": ["*"]}}));
    assert!(call(admin).await.is_ok(), "a signed admin token");
    for (name, refused) in [
        (
            "read-only",
            token("ops", 600, json!({"api": {"ro": ["*"]}})),
        ),
        ("one room", token("ops", 600, json!({"api": {"rw": ["a"]}}))),
        ("expired", token("ops", -5, json!({"api": {"rw": ["*"]}}))),
        ("no grant", token("ops", 600, json!({"doc": {"rw": ["*"]}}))),
    ] {
        assert!(
            matches!(call(refused).await, Err(IpcError::Forbidden)),
            "{name} accepted"
        );
    }
}
