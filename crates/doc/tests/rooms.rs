//! Room behaviour over the memory wire and real loopback WebSockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::future::BoxFuture;
use nimbus_doc::yrs::{Array, Doc, Map, Text, Transact};
use nimbus_doc::{HookError, Refusal, Room, RoomHooks, ServeOptions, ServerOptions, Status};
use nimbus_proto::doc::{decode_frame, AwarenessEntry, AwarenessUpdate, Message};
use serde_json::json;

#[tokio::test]
async fn two_clients_converge_on_concurrent_text_map_array_edits() {
    for kind in KINDS {
        let s = server(kind).await;
        let a = s.client("r").await;
        let b = s.client("r").await;
        let (ta, tb) = (
            a.doc().get_or_insert_text("t"),
            b.doc().get_or_insert_text("t"),
        );
        let (ma, mb) = (
            a.doc().get_or_insert_map("m"),
            b.doc().get_or_insert_map("m"),
        );
        let (aa, ab) = (
            a.doc().get_or_insert_array("a"),
            b.doc().get_or_insert_array("a"),
        );
        for i in 0..20 {
            {
                let mut txn = a.doc().transact_mut();
                ta.insert(&mut txn, 0, "A");
                ma.insert(&mut txn, format!("a{i}"), i);
                aa.push_back(&mut txn, "a");
            }
            {
                let mut txn = b.doc().transact_mut();
                tb.push(&mut txn, "B");
                mb.insert(&mut txn, format!("b{i}"), i);
                ab.push_front(&mut txn, "b");
            }
        }
        eventually("both clients converge", || {
            let (ja, jb) = (json_of(a.doc()), json_of(b.doc()));
            ja == jb && ja["t"].as_str().map(str::len) == Some(40)
        })
        .await;
        let j = json_of(a.doc());
        assert_eq!(j["m"].as_object().unwrap().len(), 40, "{kind:?}");
        assert_eq!(j["a"].as_array().unwrap().len(), 40);
        let room = s.guard.manager().get("/r").expect("room /r is live");
        eventually("the server converges", || json_of(room.doc()) == j).await;
        a.close().await;
        b.close().await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn a_late_joiner_gets_the_full_state() {
    for kind in KINDS {
        let s = server(kind).await;
        let a = s.client("late").await;
        let t = a.doc().get_or_insert_text("t");
        t.insert(&mut a.doc().transact_mut(), 0, "written before");
        let room = s.guard.manager().get("/late").unwrap();
        eventually("the room has the text", || {
            json_of(room.doc())["t"] == "written before"
        })
        .await;
        // `connect` returns once synced: the state is there at once.
        let b = s.client("late").await;
        assert_eq!(json_of(b.doc())["t"], "written before", "{kind:?}");
        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn the_first_frames_are_step1_then_awareness() {
    for kind in KINDS {
        let s = server(kind).await;
        // An empty room: step1 with the empty state vector, nothing else until asked.
        let mut raw = Raw::open(&s.addr, "bytes").await;
        assert_eq!(raw.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        // Our step1 of an empty doc is answered with the empty step2.
        raw.send(&[0, 0, 1, 0]).await;
        assert_eq!(raw.recv().await, Got::Frame(vec![0, 1, 2, 0, 0]));
        // Query awareness: answered (no states).
        raw.send(&[3]).await;
        assert_eq!(raw.recv().await, Got::Frame(vec![1, 1, 0]));
        // A state, relayed back to the sender too.
        let state = AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: 7,
                clock: 1,
                state: Some(r#"{"u":"x"}"#.into()),
            }],
        };
        let frame = Message::Awareness(state.encode()).encode();
        raw.send(&frame).await;
        assert_eq!(raw.recv().await, Got::Frame(frame.to_vec()));
        // A newcomer gets step1, then the awareness states.
        let mut second = Raw::open(&s.addr, "bytes").await;
        assert_eq!(second.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        assert_eq!(second.recv().await, Got::Frame(frame.to_vec()));
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn read_only_clients_are_refused_with_auth_and_the_doc_is_unchanged() {
    for kind in KINDS {
        let options = ServerOptions {
            serve: ServeOptions {
                read_only: true,
                ..ServeOptions::default()
            },
            ..ServerOptions::default()
        };
        let s = serve_with(Addr::new(kind), |id: &str| Room::new(id), options).await;
        // Byte level: an update is answered with [2, 0, varString(reason)].
        let mut raw = Raw::open(&s.addr, "ro").await;
        assert_eq!(raw.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "nope");
        let update = {
            use nimbus_doc::yrs::{ReadTxn, StateVector};
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        };
        raw.send(&Message::Update(update.into()).encode()).await;
        let Got::Frame(f) = raw.recv().await else {
            panic!("no answer")
        };
        assert_eq!(&f[..2], [2, 0]);
        let msgs = decode_frame(&Bytes::from(f)).unwrap();
        assert!(
            matches!(&msgs[0], Message::Auth(nimbus_proto::doc::AuthMessage::PermissionDenied(r)) if r.contains("read-only"))
        );
        // Its step1 is still answered.
        raw.send(&[0, 0, 1, 0]).await;
        assert_eq!(raw.recv().await, Got::Frame(vec![0, 1, 2, 0, 0]));
        // A client's edit is refused; the client hears it as a PermissionDenied event.
        let c = s.client("ro").await;
        let mut events = c.events();
        let ct = c.doc().get_or_insert_text("t");
        ct.insert(&mut c.doc().transact_mut(), 0, "local only");
        let denied = within(async {
            loop {
                if let Status::PermissionDenied { reason } = events.recv().await.unwrap() {
                    return reason;
                }
            }
        })
        .await;
        assert!(denied.contains("read-only"));
        let room = s.guard.manager().get("/ro").unwrap();
        assert_eq!(json_of(room.doc()), json!({}), "{kind:?}");
        c.close().await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn malformed_frames_close_that_client_with_a_reason_and_others_keep_working() {
    for kind in KINDS {
        let s = server(kind).await;
        let a = s.client("m").await;
        let b = s.client("m").await;
        let ta = a.doc().get_or_insert_text("t");
        ta.insert(&mut a.doc().transact_mut(), 0, "kept");
        eventually("b has the text", || json_of(b.doc())["t"] == "kept").await;

        // An unknown sync subtype: 1007 with the decoder's message.
        let mut raw = Raw::open(&s.addr, "m").await;
        raw.send(&[0, 7, 0]).await;
        match raw.until_close().await {
            Got::Close(code, reason) => {
                assert_eq!(code, 1007, "{kind:?}");
                assert!(
                    reason.contains("unknown sync message subtype 7"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A well-formed frame carrying an update that does not decode: 1007, room unchanged.
        let mut raw = Raw::open(&s.addr, "m").await;
        raw.send(&Message::Update(Bytes::from_static(&[5, 200, 1, 2])).encode())
            .await;
        match raw.until_close().await {
            Got::Close(code, reason) => {
                assert_eq!(code, 1007);
                assert!(reason.contains("invalid update"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A text frame: 1003.
        let mut raw = Raw::open(&s.addr, "m").await;
        raw.send_text("hello").await;
        match raw.until_close().await {
            Got::Close(code, _) => assert_eq!(code, 1003),
            other => panic!("{other:?}"),
        }
        // The others still sync.
        let tb = b.doc().get_or_insert_text("t");
        tb.push(&mut b.doc().transact_mut(), "!");
        eventually("a has b's edit", || json_of(a.doc())["t"] == "kept!").await;
        let room = s.guard.manager().get("/m").unwrap();
        eventually("the room too", || json_of(room.doc())["t"] == "kept!").await;
        a.close().await;
        b.close().await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn too_big_frames_close_with_1009() {
    for kind in KINDS {
        let options = ServerOptions {
            serve: ServeOptions {
                max_message_bytes: 1000,
                ..ServeOptions::default()
            },
            ..ServerOptions::default()
        };
        let s = serve_with(Addr::new(kind), |id: &str| Room::new(id), options).await;
        let mut raw = Raw::open(&s.addr, "big").await;
        raw.send(&Message::Update(Bytes::from(vec![0u8; 5000])).encode())
            .await;
        match raw.until_close().await {
            Got::Close(code, _) => assert_eq!(code, 1009, "{kind:?}"),
            // tungstenite may reset the connection after its own limit.
            Got::End => assert_eq!(kind, Kind::WebSocket),
            other => panic!("{other:?}"),
        }
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn awareness_is_relayed_removed_on_leave_and_expires() {
    for kind in KINDS {
        let options = ServerOptions {
            serve: ServeOptions {
                awareness_timeout: Duration::from_millis(1000),
                ..ServeOptions::default()
            },
            ..ServerOptions::default()
        };
        let s = serve_with(Addr::new(kind), |id: &str| Room::new(id), options).await;
        let a = s.client("aw").await;
        let b = s.client("aw").await;
        a.set_local_state(json!({"user": "alice"}));
        let aid = a.client_id();
        eventually("b sees alice", || {
            b.states().get(&aid) == Some(&json!({"user": "alice"}))
        })
        .await;
        let room = s.guard.manager().get("/aw").unwrap();
        assert_eq!(
            room.awareness_json().get(&aid),
            Some(&json!({"user": "alice"}))
        );
        // Leaving removes the state for everyone.
        a.close().await;
        eventually("b sees alice leave", || !b.states().contains_key(&aid)).await;
        eventually("the room forgets alice", || room.awareness().is_empty()).await;

        // A state never renewed expires on the server, which broadcasts the removal.
        let mut raw = Raw::open(&s.addr, "aw").await;
        let ghost = AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: 4242,
                clock: 1,
                state: Some("{\"g\":1}".into()),
            }],
        };
        raw.send(&Message::Awareness(ghost.encode()).encode()).await;
        eventually("b sees the ghost", || b.states().contains_key(&4242)).await;
        eventually("the server times the ghost out", || {
            !b.states().contains_key(&4242)
        })
        .await;
        assert!(room.awareness().is_empty());
        b.close().await;
        s.guard.shutdown().await;
    }
}

/// Rooms whose load seeds content, whose filter refuses long updates, and whose state is
/// persisted in a shared store through `updated` (and flushed in `emptied`).
#[derive(Default)]
struct Store {
    updates: Mutex<Vec<Bytes>>,
    emptied: Mutex<Vec<String>>,
    loads: Mutex<usize>,
}

struct Persisting(Arc<Store>);

impl RoomHooks for Persisting {
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            *self.0.loads.lock().unwrap() += 1;
            if room.id() == "/fail" {
                return Err(HookError::new("storage offline"));
            }
            let stored: Vec<Bytes> = self.0.updates.lock().unwrap().clone();
            if stored.is_empty() {
                let t = room.doc().get_or_insert_text("t");
                t.insert(&mut room.doc().transact_mut(), 0, "seed");
            }
            for u in stored {
                use nimbus_doc::yrs::updates::decoder::Decode;
                let u = nimbus_doc::yrs::Update::decode_v1(&u)
                    .map_err(|e| HookError::new(e.to_string()))?;
                room.doc()
                    .transact_mut()
                    .apply_update(u)
                    .map_err(|e| HookError::new(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn check_update(&self, _room: &Room, update: &[u8]) -> Result<(), Refusal> {
        if update.len() > 200 {
            Err(Refusal::new("update too large for this room"))
        } else {
            Ok(())
        }
    }

    fn updated(&self, _room: &Room, update: &Bytes) {
        self.0.updates.lock().unwrap().push(update.clone());
    }

    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.0.emptied.lock().unwrap().push(room.id().to_owned()) })
    }
}

fn persisting(store: &Arc<Store>) -> impl Fn(&str) -> Room + Send + Sync + 'static {
    let store = store.clone();
    move |id: &str| Room::with_hooks(id, Arc::new(Persisting(store.clone())))
}

#[tokio::test]
async fn custom_factory_rooms_seed_filter_persist_and_unload() {
    for kind in KINDS {
        let store = Arc::new(Store::default());
        let s = serve_with(
            Addr::new(kind),
            persisting(&store),
            ServerOptions::default(),
        )
        .await;
        let a = s.client("p").await;
        // Seeded by the load hook before the first answer.
        assert_eq!(json_of(a.doc())["t"], "seed", "{kind:?}");
        let t = a.doc().get_or_insert_text("t");
        t.push(&mut a.doc().transact_mut(), " ok");
        // Refused by the filter: the client hears why, the room does not change.
        let mut events = a.events();
        t.push(&mut a.doc().transact_mut(), &"x".repeat(500));
        let reason = within(async {
            loop {
                if let Status::PermissionDenied { reason } = events.recv().await.unwrap() {
                    return reason;
                }
            }
        })
        .await;
        assert_eq!(reason, "update too large for this room");
        let room = s.guard.manager().get("/p").unwrap();
        eventually("the room has the accepted edit", || {
            json_of(room.doc())["t"] == "seed ok"
        })
        .await;
        // The last client leaves: flushed, emptied, unloaded.
        a.close().await;
        eventually("the room is unloaded", || {
            s.guard.manager().room_ids().is_empty()
        })
        .await;
        assert_eq!(*store.emptied.lock().unwrap(), ["/p"]);
        assert!(room.is_closed());
        // A new client gets the persisted state from a fresh room.
        let b = s.client("p").await;
        assert_eq!(json_of(b.doc())["t"], "seed ok");
        assert_eq!(*store.loads.lock().unwrap(), 2);
        b.close().await;
        s.guard.shutdown().await;
    }
}

/// Room `room`'s load fails with `why`: two concurrent callers both get it, the room is not
/// kept, and a client is closed with 1011 and the reason.
async fn load_fails(s: &TestServer, room: &str, why: &str) {
    let mgr = s.guard.manager();
    let id = format!("/{room}");
    let (r1, r2) = tokio::join!(mgr.get_room(&id), mgr.get_room(&id));
    assert_eq!(
        r1.unwrap_err(),
        nimbus_doc::GetRoomError::Load(HookError::new(why))
    );
    assert!(r2.is_err());
    assert!(mgr.room_ids().is_empty());
    let mut raw = Raw::open(&s.addr, room).await;
    match raw.until_close().await {
        Got::Close(code, reason) => {
            assert_eq!(code, 1011);
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failed_load_is_returned_and_the_room_is_not_kept() {
    let store = Arc::new(Store::default());
    let s = serve_with(
        Addr::new(Kind::Memory),
        persisting(&store),
        ServerOptions::default(),
    )
    .await;
    let mgr = s.guard.manager().clone();
    load_fails(&s, "fail", "storage offline").await;
    // Concurrent callers of a good room share one load.
    let before = *store.loads.lock().unwrap();
    let (a, b) = tokio::join!(mgr.get_room("/ok"), mgr.get_room("/ok"));
    assert!(a.unwrap().ptr_eq(&b.unwrap()));
    assert_eq!(*store.loads.lock().unwrap(), before + 1);
}

#[tokio::test]
async fn reconnect_after_a_server_restart_resyncs_both_directions() {
    for kind in KINDS {
        let store = Arc::new(Store::default());
        let s = serve_with(
            Addr::new(kind),
            persisting(&store),
            ServerOptions::default(),
        )
        .await;
        let addr = s.addr.clone();
        let a = s.client("re").await;
        let t = a.doc().get_or_insert_text("t");
        t.push(&mut a.doc().transact_mut(), " one");
        let room = s.guard.manager().get("/re").unwrap();
        eventually("persisted", || json_of(room.doc())["t"] == "seed one").await;
        s.guard.shutdown().await;
        eventually("a notices the drop", || {
            !matches!(a.status(), Status::Synced)
        })
        .await;
        // Offline edit on the client.
        t.push(&mut a.doc().transact_mut(), " two");
        // The server comes back (same address) and another client edits first.
        let s = serve_with(addr, persisting(&store), ServerOptions::default()).await;
        let b = s.client("re").await;
        let tb = b.doc().get_or_insert_text("t");
        assert_eq!(json_of(b.doc())["t"], "seed one", "{kind:?}");
        tb.insert(&mut b.doc().transact_mut(), 0, ">");
        // a reconnects on its own and both sides get the other's changes.
        within(a.synced()).await;
        eventually("a has b's edit", || {
            json_of(a.doc())["t"] == ">seed one two"
        })
        .await;
        eventually("b has a's offline edit", || {
            json_of(b.doc())["t"] == ">seed one two"
        })
        .await;
        a.close().await;
        b.close().await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_too_slow() {
    let options = ServerOptions {
        serve: ServeOptions {
            queue_frames: 4,
            ..ServeOptions::default()
        },
        ..ServerOptions::default()
    };
    let s = serve_with(Addr::new(Kind::Memory), |id: &str| Room::new(id), options).await;
    let a = s.client("slow").await;
    let mut raw = Raw::open(&s.addr, "slow").await;
    let room = s.guard.manager().get("/slow").unwrap();
    eventually("both joined", || room.client_count() == 2).await;
    let t = a.doc().get_or_insert_text("t");
    // The memory channel holds 256 frames; then the queue of 4 fills.
    for _ in 0..400 {
        t.push(&mut a.doc().transact_mut(), "x");
        tokio::task::yield_now().await;
    }
    eventually("the slow client is cut", || room.client_count() == 1).await;
    match raw.until_close().await {
        Got::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert_eq!(reason, "too slow");
        }
        other => panic!("{other:?}"),
    }
    // The room still works for the others.
    let b = s.client("slow").await;
    assert_eq!(json_of(b.doc())["t"].as_str().map(str::len), Some(400));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn rooms_serve_channels_directly_and_forward_server_side_edits() {
    // Room + run + serve without a manager, like the seed's `Room`.
    let room = Room::new("/direct");
    let runner = room.clone();
    tokio::spawn(async move { runner.run().await });
    let (client_end, server_end) = nimbus_doc::wire::memory::pair();
    let serving = room.clone();
    let task =
        tokio::spawn(async move { serving.serve(server_end, ServeOptions::default()).await });
    let mut raw = Raw::Memory(client_end);
    assert_eq!(raw.recv().await, Got::Frame(vec![0, 0, 1, 0]));
    // An edit made by server code reaches the client as an update.
    let t = room.doc().get_or_insert_text("t");
    t.insert(&mut room.doc().transact_mut(), 0, "server");
    let Got::Frame(f) = raw.recv().await else {
        panic!()
    };
    let [Message::Update(u)] = &decode_frame(&Bytes::from(f)).unwrap()[..] else {
        panic!()
    };
    let doc = Doc::new();
    {
        use nimbus_doc::yrs::updates::decoder::Decode;
        doc.transact_mut()
            .apply_update(nimbus_doc::yrs::Update::decode_v1(u).unwrap())
            .unwrap();
    }
    assert_eq!(json_of(&doc)["t"], "server");
    // Spawned tasks end when the room closes.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    room.spawn(async move {
        let _keep = tx;
        std::future::pending::<()>().await;
    });
    room.close();
    assert!(within(rx).await.is_err());
    assert_eq!(
        raw.until_close().await,
        Got::Close(1001, "room closed".into())
    );
    assert!(within(task).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_client_that_sends_but_never_reads_is_closed_by_the_send_timeout() {
    let options = ServerOptions {
        serve: ServeOptions {
            send_timeout: Duration::from_millis(200),
            ..ServeOptions::default()
        },
        ..ServerOptions::default()
    };
    let s = serve_with(Addr::new(Kind::Memory), |id: &str| Room::new(id), options).await;
    let mut raw = Raw::open(&s.addr, "deaf").await;
    let room = s.guard.manager().get_room("/deaf").await.unwrap();
    eventually("the client joined", || room.client_count() == 1).await;
    // Query awareness over and over without reading a single answer: once the answers
    // fill the connection, the room's send waits, times out, and the client is cut.
    let sender = tokio::spawn(async move {
        for _ in 0..1000 {
            if let Raw::Memory(c) = &mut raw {
                use nimbus_doc::Channel;
                // Stop once the server stops reading (a blocked send).
                let sent = tokio::time::timeout(
                    Duration::from_millis(100),
                    c.send(Bytes::from_static(&[3])),
                );
                if !matches!(sent.await, Ok(Ok(()))) {
                    break;
                }
            }
        }
        raw
    });
    let mut raw = within(sender).await.unwrap();
    // Still not reading.
    eventually("the deaf client is cut", || room.client_count() == 0).await;
    assert_eq!(raw.until_close().await, Got::Close(1008, "too slow".into()));
}

/// Poll `f` every 10 ms for at most 5 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_room_closed_with_a_code_closes_its_clients_with_it_and_leaves_the_manager() {
    let store = Arc::new(Store::default());
    let s = serve_with(
        Addr::new(Kind::Memory),
        persisting(&store),
        ServerOptions::default(),
    )
    .await;
    let mgr = s.guard.manager().clone();
    let mut raw = Raw::open(&s.addr, "gone").await;
    eventually("the client is in the room", || {
        mgr.get("/gone").is_some_and(|r| r.client_count() == 1)
    })
    .await;
    mgr.get("/gone")
        .unwrap()
        .close_with(1011, "backplane unavailable");
    match raw.until_close().await {
        Got::Close(code, reason) => {
            assert_eq!((code, reason.as_str()), (1011, "backplane unavailable"))
        }
        other => panic!("{other:?}"),
    }
    eventually("the closed room left the manager", || {
        mgr.room_ids().is_empty()
    })
    .await;
    // The next client gets a fresh room.
    let _again = Raw::open(&s.addr, "gone").await;
    eventually("a fresh room serves the next client", || {
        mgr.get("/gone")
            .is_some_and(|r| !r.is_closed() && r.client_count() == 1)
    })
    .await;
}

/// Which hook each update reached, in order.
#[derive(Default)]
struct Reached(Mutex<Vec<(&'static str, Bytes)>>);

struct Recording(Arc<Reached>);

impl RoomHooks for Recording {
    fn updated(&self, _room: &Room, update: &Bytes) {
        self.0 .0.lock().unwrap().push(("updated", update.clone()));
    }

    fn replicated(&self, _room: &Room, update: &Bytes) {
        self.0
             .0
            .lock()
            .unwrap()
            .push(("replicated", update.clone()));
    }
}

/// A v1 update that writes `text` into the text `t` of a fresh document.
fn text_update(text: &str) -> Vec<u8> {
    use nimbus_doc::yrs::{ReadTxn, StateVector};
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.push(&mut doc.transact_mut(), text);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

#[tokio::test]
async fn the_stored_state_reaches_no_hook_whatever_reaches_the_room_before_or_after_it() {
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::GetString;
    let reached = Arc::new(Reached::default());
    let room = Room::with_hooks("/loaded", Arc::new(Recording(reached.clone())));
    // Another node's update overtakes the load's apply (the race a "skip the first
    // update" rule got wrong: it skipped this one and kept the stored state again).
    let other = text_update("other");
    room.apply_replicated(&other).unwrap();
    let stored = nimbus_doc::yrs::Update::decode_v1(&text_update("stored")).unwrap();
    room.transact_loaded().apply_update(stored).unwrap();
    // Server code edits after the load: kept like a client's edit.
    let t = room.doc().get_or_insert_text("t");
    t.push(&mut room.doc().transact_mut(), "!");
    room.flush().await;
    let reached = reached.0.lock().unwrap();
    let hooks: Vec<_> = reached.iter().map(|(hook, _)| *hook).collect();
    assert_eq!(hooks, ["replicated", "updated"]);
    assert_eq!(reached[0].1, other);
    let text = t.get_string(&room.doc().transact());
    assert!(text.contains("other") && text.contains("stored") && text.ends_with('!'));
}

#[tokio::test]
async fn a_loaded_state_reaches_the_validator_through_warming_and_updates_on_it_apply() {
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::{ReadTxn, StateVector};
    for warm in [true, false] {
        let room = Room::new("/warm");
        // The stored state, and a client's edit that depends on it.
        let client = Doc::new();
        let t = client.get_or_insert_text("t");
        t.push(&mut client.transact_mut(), "stored");
        let stored = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let before = client.transact().state_vector();
        t.insert(&mut client.transact_mut(), 3, "-edit-");
        let edit = client.transact().encode_state_as_update_v1(&before);
        room.transact_loaded()
            .apply_update(nimbus_doc::yrs::Update::decode_v1(&stored).unwrap())
            .unwrap();
        if warm {
            assert!(room.warm_validator(), "built from the document");
            assert!(!room.warm_validator(), "already up to date");
            // A server-side edit is caught up, not rebuilt.
            let rt = room.doc().get_or_insert_text("t");
            rt.push(&mut room.doc().transact_mut(), "!");
            assert!(!room.warm_validator());
        }
        // Validated against a replica that has the loaded state (without it the edit's
        // dependencies would be missing and it would be refused).
        room.apply_update(&edit).unwrap();
        let text = json_of(room.doc())["t"].as_str().unwrap().to_owned();
        assert!(text.starts_with("sto-edit-red"), "{warm}: {text}");
    }
}

#[tokio::test]
async fn a_clients_update_is_forwarded_as_sent_and_its_sync_step2_with_only_what_was_new() {
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::{GetString, ReadTxn, StateVector};
    for kind in KINDS {
        let s = server(kind).await;
        let mut a = Raw::open(&s.addr, "fwd").await;
        let mut b = Raw::open(&s.addr, "fwd").await;
        assert_eq!(a.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        assert_eq!(b.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        let editor = Doc::new();
        let t = editor.get_or_insert_text("t");
        let whole = |editor: &Doc| {
            editor
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
        };

        // An Update message reaches the other client byte for byte.
        t.push(&mut editor.transact_mut(), "hello");
        let hello_u = whole(&editor);
        let hello = Message::Update(hello_u.clone().into()).encode();
        a.send(&hello).await;
        assert_eq!(b.recv().await, Got::Frame(hello.to_vec()), "{kind:?}");

        // The same update again changes nothing and is not forwarded: the next frame the
        // other client gets is the next change's. That one is an Update holding the
        // whole text, "hello" included, which the room had: forwarded as sent, not cut
        // down to the new part.
        a.send(&hello).await;
        t.push(&mut editor.transact_mut(), " world");
        let hello_world_u = whole(&editor);
        let hello_world = Message::Update(hello_world_u.clone().into()).encode();
        a.send(&hello_world).await;
        assert_eq!(b.recv().await, Got::Frame(hello_world.to_vec()), "{kind:?}");

        // A SyncStep2 holding everything the client has (what a reconnecting client sends)
        // reaches the others as an Update of only the part the room did not have.
        let before = editor.transact().state_vector();
        t.push(&mut editor.transact_mut(), "!");
        let only_new = editor.transact().encode_state_as_update_v1(&before);
        let everything = whole(&editor);
        a.send(&Message::SyncStep2(everything.clone().into()).encode())
            .await;
        let Got::Frame(got) = b.recv().await else {
            panic!("{kind:?}: no frame")
        };
        let msgs = decode_frame(&Bytes::from(got)).unwrap();
        let [Message::Update(forwarded)] = msgs.as_slice() else {
            panic!("{kind:?}: {msgs:?}")
        };
        assert_eq!(
            forwarded.len(),
            only_new.len(),
            "{kind:?}: not only the new part"
        );
        let receiver = Doc::new();
        let rt = receiver.get_or_insert_text("t");
        for u in [&hello_u[..], &hello_world_u, forwarded] {
            receiver
                .transact_mut()
                .apply_update(nimbus_doc::yrs::Update::decode_v1(u).unwrap())
                .unwrap();
        }
        assert_eq!(rt.get_string(&receiver.transact()), "hello world!");
        s.guard.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_the_hooks_in_commit_order_whether_delivered_by_their_session_or_queued() {
    use nimbus_doc::yrs::updates::decoder::Decode;
    use nimbus_doc::yrs::{ReadTxn, Update};
    /// Records like `Recording`, slowly, so that server code's updates wait in the queue.
    struct Slow(Recording);
    impl RoomHooks for Slow {
        fn updated(&self, room: &Room, update: &Bytes) {
            std::thread::sleep(Duration::from_micros(100));
            self.0.updated(room, update);
        }
    }
    let reached = Arc::new(Reached::default());
    let r2 = reached.clone();
    let s = serve_with(
        Addr::new(Kind::WebSocket),
        move |id: &str| Room::with_hooks(id, Arc::new(Slow(Recording(r2.clone())))),
        ServerOptions::default(),
    )
    .await;
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(Raw::open(&s.addr, "order").await);
    }
    let room = within(s.guard.manager().get_room("/order")).await.unwrap();
    // Server code appends to the text on its own thread (its updates are queued by the
    // document's observer) while raw clients append after reading the room's document
    // directly, so their updates may build on server code's that are still queued. A
    // session delivers its client's update itself only when nothing is queued; one
    // delivered before an update it builds on would leave the replay below pending.
    let editor = {
        let room = room.clone();
        std::thread::spawn(move || {
            let t = room.doc().get_or_insert_text("t");
            for i in 0..600 {
                t.push(&mut room.doc().transact_mut(), &format!("s{i} "));
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let mut tasks = Vec::new();
    for (w, mut raw) in writers.into_iter().enumerate() {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let doc = Doc::new();
            let t = doc.get_or_insert_text("t");
            for i in 0..200 {
                let sv = doc.transact().state_vector();
                let diff = room.doc().transact().encode_diff_v1(&sv);
                doc.transact_mut()
                    .apply_update(Update::decode_v1(&diff).unwrap())
                    .unwrap();
                let before = doc.transact().state_vector();
                t.push(&mut doc.transact_mut(), &format!("w{w}.{i} "));
                let u = doc.transact().encode_diff_v1(&before);
                raw.send(&Message::Update(u.into()).encode()).await;
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            raw
        }));
    }
    let mut raws = Vec::new();
    for t in tasks {
        raws.push(within(t).await.unwrap());
    }
    editor.join().unwrap();
    eventually("the room has every edit", || {
        json_of(room.doc())["t"]
            .as_str()
            .is_some_and(|t| t.split_whitespace().count() == 1200)
    })
    .await;
    room.flush().await;
    let replay = Doc::new();
    for (n, (hook, u)) in reached.0.lock().unwrap().iter().enumerate() {
        assert_eq!(*hook, "updated");
        let mut txn = replay.transact_mut();
        txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
        assert!(
            !txn.has_missing_updates(),
            "update {n} reached the hooks before one it builds on"
        );
    }
    assert_eq!(json_of(&replay), json_of(room.doc()));
    drop(raws);
}

/// Hooks that panic on updates holding a marker (`updated` on "boom", `check_update` on
/// "veto") and in rooms whose name says so (`load`, `emptied`), and record every update
/// `updated` got and every `emptied` that returned.
struct Panicking(Arc<Reached>);

fn holds(update: &[u8], marker: &str) -> bool {
    update.windows(marker.len()).any(|w| w == marker.as_bytes())
}

impl RoomHooks for Panicking {
    fn load<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            assert!(room.id() != "/load-panic", "load hook bug");
            Ok(())
        })
    }

    fn emptied<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            assert!(room.id() != "/emptied-panic", "emptied hook bug");
            let id = Bytes::copy_from_slice(room.id().as_bytes());
            self.0 .0.lock().unwrap().push(("emptied", id));
        })
    }

    fn check_update(&self, _room: &Room, update: &[u8]) -> Result<(), Refusal> {
        assert!(!holds(update, "veto"), "check_update hook bug");
        Ok(())
    }

    fn updated(&self, _room: &Room, update: &Bytes) {
        assert!(!holds(update, "boom"), "updated hook bug");
        self.0 .0.lock().unwrap().push(("updated", update.clone()));
    }
}

fn panicking(reached: &Arc<Reached>) -> impl Fn(&str) -> Room + Send + Sync + 'static {
    let reached = reached.clone();
    move |id: &str| Room::with_hooks(id, Arc::new(Panicking(reached.clone())))
}

#[tokio::test]
async fn a_panicking_update_check_refuses_the_update_and_closes_only_its_client_with_1011() {
    for kind in KINDS {
        let reached = Arc::new(Reached::default());
        let s = serve_with(
            Addr::new(kind),
            panicking(&reached),
            ServerOptions::default(),
        )
        .await;
        let mgr = s.guard.manager().clone();
        let mut a = Raw::open(&s.addr, "veto").await;
        let mut b = Raw::open(&s.addr, "veto").await;
        assert_eq!(a.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        assert_eq!(b.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        a.send(&Message::Update(text_update("veto").into()).encode())
            .await;
        assert_eq!(
            a.until_close().await,
            Got::Close(1011, "update check failed".into()),
            "{kind:?}"
        );
        // The room is open and unchanged: the next update is the first thing b gets, and the
        // first the hook records.
        let room = mgr.get("/veto").unwrap();
        assert!(!room.is_closed(), "{kind:?}");
        assert_eq!(room.hook_panics(), 1, "{kind:?}");
        let ok = Message::Update(text_update("fine").into()).encode();
        let mut c = Raw::open(&s.addr, "veto").await;
        assert_eq!(c.recv().await, Got::Frame(vec![0, 0, 1, 0]), "{kind:?}");
        c.send(&ok).await;
        assert_eq!(b.recv().await, Got::Frame(ok.to_vec()), "{kind:?}");
        eventually("the hook got the update", || {
            reached.0.lock().unwrap().len() == 1
        })
        .await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn a_panicking_updated_hook_closes_the_room_with_1011_and_the_next_client_gets_a_fresh_room()
{
    for kind in KINDS {
        let reached = Arc::new(Reached::default());
        let s = serve_with(
            Addr::new(kind),
            panicking(&reached),
            ServerOptions::default(),
        )
        .await;
        let mgr = s.guard.manager().clone();
        let mut a = Raw::open(&s.addr, "boom").await;
        let mut b = Raw::open(&s.addr, "boom").await;
        assert_eq!(a.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        assert_eq!(b.recv().await, Got::Frame(vec![0, 0, 1, 0]));
        let first = Message::Update(text_update("first").into()).encode();
        a.send(&first).await;
        assert_eq!(b.recv().await, Got::Frame(first.to_vec()), "{kind:?}");
        let room = mgr.get("/boom").unwrap();
        // The hook misses the update it panics on, so the room closes and every client (the
        // sender too) gets 1011 (whether the update reached b before is a race with the
        // close, which drops what b's queue held).
        a.send(&Message::Update(text_update("boom").into()).encode())
            .await;
        for raw in [&mut a, &mut b] {
            assert_eq!(
                raw.until_close().await,
                Got::Close(1011, "room hook failed".into()),
                "{kind:?}"
            );
        }
        assert!(room.is_closed(), "{kind:?}");
        assert_eq!(room.hook_panics(), 1, "{kind:?}");
        assert_eq!(reached.0.lock().unwrap().len(), 1, "{kind:?}");
        eventually("the closed room left the manager", || {
            mgr.room_ids().is_empty()
        })
        .await;
        // The server goes on: a fresh room serves the next client and takes its updates.
        let mut c = Raw::open(&s.addr, "boom").await;
        assert_eq!(c.recv().await, Got::Frame(vec![0, 0, 1, 0]), "{kind:?}");
        c.send(&Message::Update(text_update("again").into()).encode())
            .await;
        eventually("the fresh room's hook got the update", || {
            reached.0.lock().unwrap().len() == 2
        })
        .await;
        s.guard.shutdown().await;
    }
}

#[tokio::test]
async fn a_panicking_load_fails_the_load_and_a_panicking_emptied_still_unloads_every_room() {
    let reached = Arc::new(Reached::default());
    let s = serve_with(
        Addr::new(Kind::Memory),
        panicking(&reached),
        ServerOptions::default(),
    )
    .await;
    let mgr = s.guard.manager().clone();
    load_fails(&s, "load-panic", "the room's load hook panicked").await;

    // emptied: the room still leaves the manager when its last client goes.
    let mut a = Raw::open(&s.addr, "emptied-panic").await;
    assert_eq!(a.recv().await, Got::Frame(vec![0, 0, 1, 0]));
    let room = mgr.get("/emptied-panic").unwrap();
    drop(a);
    eventually("the room is unloaded", || mgr.room_ids().is_empty()).await;
    assert!(room.is_closed());
    assert_eq!(room.hook_panics(), 1);

    // At shutdown, a panicking emptied does not keep the other rooms from being unloaded.
    let _b = Raw::open(&s.addr, "emptied-panic").await;
    let _c = Raw::open(&s.addr, "other").await;
    eventually("both rooms are loaded", || mgr.room_ids().len() == 2).await;
    s.guard.shutdown().await;
    let emptied: Vec<Bytes> = reached
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(hook, _)| *hook == "emptied")
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(emptied, vec![Bytes::from_static(b"/other")]);
}
