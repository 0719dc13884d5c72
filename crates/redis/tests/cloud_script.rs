//! The scripts against a real `redis-server`:
//! - `CLOUD_SCRIPT` takes one room's changes of a writer batch in one call: the outcome must
//!   be the one of the same changes sent one call each (the script of 9847d7f, below):
//!   the same answers (sequence numbers, refusals), state hash, positions, room stream,
//!   global stream messages and history.
//! - `DOC_SCRIPT` refuses an update from a copy that follows an epoch the room no longer has
//!   (deleted with `DOC_DELETE_SCRIPT`, or restarted), writes nothing then, and says which
//!   (the deletion's tombstone).
//!
//! Needs `redis-server` on the PATH; without it the test prints `SKIPPED` and returns,
//! unless `NIMBUS_REQUIRE_REDIS=1`.

mod common;

use std::time::Duration;

use common::redis;

/// The one-change script the grouped one replaces (same KEYS; ARGV: op, name, value or
/// new name, max variables, epoch, change JSON, log length, channel, events length,
/// history entries, history age).
const ONE_CHANGE_SCRIPT: &str = r#"
local op, name = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[3], name)
local pos = 0
local created = 0
local hv = false
if op == 's' then
  if exists == 0 then
    created = 1
    if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
    pos = redis.call('INCR', KEYS[5]) - 1
    redis.call('HSET', KEYS[4], name, pos)
  else
    pos = redis.call('HGET', KEYS[4], name)
  end
  redis.call('HSET', KEYS[3], name, ARGV[3])
elseif op == 'd' then
  if exists == 0 then return -1 end
  hv = redis.call('HGET', KEYS[3], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
elseif op == 'r' then
  if exists == 0 or redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return -1 end
  local v = redis.call('HGET', KEYS[3], name)
  hv = v
  pos = redis.call('HGET', KEYS[4], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
  redis.call('HSET', KEYS[3], ARGV[3], v)
  redis.call('HSET', KEYS[4], ARGV[3], pos)
else
  return redis.error_reply('unknown op')
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  redis.call('SET', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[6])
end
local epoch = redis.call('GET', KEYS[2]) or ARGV[5]
local change = ARGV[6]
if hv then
  change = string.sub(change, 1, -2) .. ',"hv":' .. cjson.encode(hv) .. '}'
end
local msg = epoch .. ' ' .. seq .. ' ' .. pos .. ' ' .. created .. ' ' .. change
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'm', msg)
local gid = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'm', 'c ' .. msg)
redis.call('PUBLISH', ARGV[8], gid .. ' c ' .. msg)
local keep = tonumber(ARGV[10] or '0')
if keep and keep > 0 then
  redis.call('LPUSH', KEYS[8], msg)
  redis.call('LTRIM', KEYS[8], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[8], ARGV[11])
end
return seq
"#;

const MAX_VARS: usize = 4;
const HISTORY: usize = 5;
const EPOCH: &str = "ep-1";

/// (op, name, value or new name)
type Op = (&'static str, String, String);

fn keys(room: &str) -> Vec<String> {
    ["seq", "epoch", "vars", "pos", "npos", "log"]
        .iter()
        .map(|k| format!("nimbus:cloud:{{{room}}}:{k}"))
        .chain([
            format!("events:{room}"),
            format!("nimbus:cloud:{{{room}}}:hist"),
        ])
        .collect()
}

fn json(i: usize) -> String {
    format!(r#"{{"i":{i}}}"#)
}

fn one_by_one(c: &mut redis::Connection, room: &str, ops: &[Op]) -> Vec<i64> {
    let mut out = Vec::new();
    for (i, (op, name, arg)) in ops.iter().enumerate() {
        let seq: i64 = redis::cmd("EVAL")
            .arg(ONE_CHANGE_SCRIPT)
            .arg(8)
            .arg(keys(room))
            .arg(op)
            .arg(name)
            .arg(arg)
            .arg(MAX_VARS)
            .arg(EPOCH)
            .arg(json(i))
            .arg(1000)
            .arg("chan")
            .arg(1000)
            .arg(HISTORY)
            .arg(60_000)
            .query(c)
            .expect("one change");
        out.push(seq);
    }
    out
}

/// A `CLOUD_SCRIPT` call on `room` with the fixed arguments; the changes follow.
fn cloud_call(room: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(nimbus_redis::CLOUD_SCRIPT)
        .arg(8)
        .arg(keys(room))
        .arg(EPOCH)
        .arg(1000)
        .arg("chan")
        .arg(1000)
        .arg(HISTORY)
        .arg(60_000);
    cmd
}

fn grouped(c: &mut redis::Connection, room: &str, ops: &[Op], sizes: &[usize]) -> Vec<i64> {
    let mut out = Vec::new();
    let (mut at, mut k) = (0, 0);
    while at < ops.len() {
        let n = sizes[k % sizes.len()].min(ops.len() - at);
        k += 1;
        let mut cmd = cloud_call(room);
        for (i, (op, name, arg)) in ops.iter().enumerate().skip(at).take(n) {
            cmd.arg(op).arg(name).arg(arg).arg(MAX_VARS).arg(json(i));
        }
        let seqs: Vec<i64> = cmd.query(c).expect("grouped changes");
        assert_eq!(seqs.len(), n, "one answer per change");
        out.extend(seqs);
        at += n;
    }
    out
}

type Snapshot = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Option<String>,
);

fn snapshot(c: &mut redis::Connection, room: &str) -> Snapshot {
    let k = keys(room);
    let mut vars: Vec<(String, String)> = redis::cmd("HGETALL").arg(&k[2]).query(c).expect("vars");
    vars.sort();
    let mut pos: Vec<(String, String)> = redis::cmd("HGETALL").arg(&k[3]).query(c).expect("pos");
    pos.sort();
    let entries = |c: &mut redis::Connection, key: &str| -> Vec<String> {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(c)
            .expect("stream");
        r.ids
            .iter()
            .map(|e| {
                let m: String = e.get("m").expect("m");
                // The global stream's ids are Redis's clock: compare the messages only.
                if key.starts_with("events") {
                    m
                } else {
                    format!("{} {m}", e.id)
                }
            })
            .collect()
    };
    let log = entries(c, &k[5]);
    let events = entries(c, &k[6]);
    let hist: Vec<String> = redis::cmd("LRANGE")
        .arg(&k[7])
        .arg(0)
        .arg(-1)
        .query(c)
        .expect("hist");
    let seq: Option<String> = redis::cmd("GET").arg(&k[0]).query(c).expect("seq");
    (vars, pos, log, events, hist, seq)
}

/// A deterministic mix of sets, renames and deletes over a few names (so that the variable
/// limit, unknown names and taken names all come up).
fn changes(n: usize, mut x: u64) -> Vec<Op> {
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            let name = names[(r % 6) as usize].to_owned();
            match (r >> 8) % 10 {
                0 | 1 => ("d", name, String::new()),
                2 | 3 => ("r", name, names[((r >> 16) % 6) as usize].to_owned()),
                k => (
                    "s",
                    name,
                    format!("{}{i}", if k % 2 == 0 { 'n' } else { 's' }),
                ),
            }
        })
        .collect()
}

#[test]
fn a_rooms_changes_in_one_call_end_as_they_would_one_call_each() {
    let Some((_server, mut c, _)) = redis() else {
        return;
    };
    for (case, sizes) in [&[1usize][..], &[3], &[7, 1, 2], &[64], &[200]]
        .iter()
        .enumerate()
    {
        let ops = changes(200, 0x9e37_79b9_7f4a_7c15 + case as u64);
        let (alone, together) = (format!("alone-{case}"), format!("together-{case}"));
        let a = one_by_one(&mut c, &alone, &ops);
        let b = grouped(&mut c, &together, &ops, sizes);
        assert_eq!(a, b, "answers, groups of {sizes:?}");
        assert!(a.iter().any(|&s| s < 0) && a.iter().any(|&s| s > 0));
        let (sa, sb) = (snapshot(&mut c, &alone), snapshot(&mut c, &together));
        let room_free = |s: Snapshot| {
            let f = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|m| m.replace("alone-", "room-").replace("together-", "room-"))
                    .collect()
            };
            (s.0, s.1, f(s.2), f(s.3), f(s.4), s.5)
        };
        assert_eq!(room_free(sa), room_free(sb), "state, groups of {sizes:?}");
    }
}

#[test]
fn an_unknown_op_in_a_group_is_refused_before_any_change() {
    let Some((_server, mut c, _)) = redis() else {
        return;
    };
    let room = "bad-op";
    let mut cmd = cloud_call(room);
    cmd.arg("s")
        .arg("a")
        .arg("n1")
        .arg(MAX_VARS)
        .arg(json(0))
        .arg("x")
        .arg("a")
        .arg("")
        .arg(MAX_VARS)
        .arg(json(1));
    let r: redis::RedisResult<Vec<i64>> = cmd.query(&mut c);
    assert!(r.is_err());
    let s = snapshot(&mut c, room);
    assert!(s.0.is_empty() && s.2.is_empty() && s.5.is_none(), "{s:?}");
}

#[tokio::test]
async fn a_redis_that_forgot_the_scripts_fails_one_batch_and_the_next_loads_them() {
    use std::sync::Arc;

    use nimbus_core::replication::{Change, Reply};
    use nimbus_proto::cloud::CloudValue;
    use nimbus_redis::metrics::{BackplaneMetrics, Metrics};
    use nimbus_redis::{RedisBackplane, Write};

    let Some((_server, mut c, url)) = redis() else {
        return;
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics {
        backplane: Arc::new(BackplaneMetrics::default()),
        cloud: Arc::new(nimbus_core::cloud::CloudMetrics::register(&mut registry)),
        doc: Arc::default(),
    });
    let bp = RedisBackplane::connect(&url, metrics)
        .await
        .expect("connect");
    let set = |n: u64| {
        let bp = bp.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            bp.write(Write {
                room: Arc::from("forgot"),
                op: Change::Set {
                    name: Arc::from("☁ x"),
                    value: CloudValue::Number(n.to_string()),
                },
                from: n,
                user: None,
                max_vars: 10,
                reply: Reply::Accepted(tx),
            })
            .await
            .expect("queued");
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("answered")
        }
    };
    assert_eq!(set(1).await, Ok(true));
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut c)
        .expect("flush");
    // Not written (NOSCRIPT): the asker hears "unavailable" (its reply is dropped).
    assert!(set(2).await.is_err());
    assert_eq!(set(3).await, Ok(true));
    let seq: u64 = redis::cmd("GET")
        .arg("nimbus:cloud:{forgot}:seq")
        .query(&mut c)
        .expect("seq");
    assert_eq!(seq, 2, "the refused batch left nothing behind");
    bp.shutdown();
}

/// `DOC_SCRIPT`'s keys: the room's five, the global events stream, the room's tombstone.
fn doc_keys(room: &str) -> Vec<String> {
    ["seq", "epoch", "log", "snap", "snapseq"]
        .iter()
        .map(|k| format!("nimbus:doc:{{{room}}}:{k}"))
        .chain([
            "events".to_owned(),
            format!("nimbus:doc:{{{room}}}:deleted"),
        ])
        .collect()
}

/// `DOC_DELETE_SCRIPT` on `room` (tombstone kept 60 s); the number of keys deleted.
fn doc_delete(c: &mut redis::Connection, room: &str) -> i64 {
    let keys = doc_keys(room);
    redis::cmd("EVAL")
        .arg(nimbus_redis::doc::DOC_DELETE_SCRIPT)
        .arg(6)
        .arg(&keys[..5])
        .arg(&keys[6])
        .arg("node")
        .arg(room)
        .arg("chan")
        .arg(60_000)
        .query(c)
        .expect("delete script")
}

/// A `DOC_SCRIPT` call writing `update` to `room` from a copy following `follows` (a room it
/// starts gets the epoch `candidate`).
fn doc_call(
    c: &mut redis::Connection,
    room: &str,
    candidate: &str,
    follows: &str,
    update: &[u8],
) -> (i64, i64) {
    redis::cmd("EVAL")
        .arg(nimbus_redis::doc::DOC_SCRIPT)
        .arg(7)
        .arg(doc_keys(room))
        .arg(candidate)
        .arg("node")
        .arg(0)
        .arg(room)
        .arg(update)
        .arg(1000)
        .arg("chan")
        .arg(follows)
        .query(c)
        .expect("doc script")
}

#[test]
fn a_document_update_from_a_copy_of_a_deleted_room_is_refused_and_writes_nothing() {
    let Some((_server, mut c, _url)) = redis() else {
        return;
    };
    // A new room: the first writer follows no epoch yet.
    assert_eq!(doc_call(&mut c, "d", "e1", "", b"u1"), (1, 1));
    let epoch: String = redis::cmd("GET")
        .arg("nimbus:doc:{d}:epoch")
        .query(&mut c)
        .expect("epoch");
    assert_eq!(epoch, "e1");
    assert_eq!(doc_call(&mut c, "d", "e1", &epoch, b"u2"), (2, 2));
    // Deleted through some node.
    assert_eq!(doc_delete(&mut c, "d"), 3, "seq, epoch, log");
    // A node whose copy still follows the deleted epoch: refused, nothing written (before,
    // its fragment started a new room), and told the room was deleted (`{0, 1}`), not lost.
    assert_eq!(doc_call(&mut c, "d", "e2", &epoch, b"u3"), (0, 1));
    let tombstone_ttl: i64 = redis::cmd("PTTL")
        .arg("nimbus:doc:{d}:deleted")
        .query(&mut c)
        .expect("pttl");
    assert!(
        (1..=60_000).contains(&tombstone_ttl),
        "the tombstone expires: {tombstone_ttl}"
    );
    let left: i64 = redis::cmd("EXISTS")
        .arg(&doc_keys("d")[..5])
        .query(&mut c)
        .expect("exists");
    assert_eq!(left, 0, "the room stays deleted");
    // A copy under another epoch than the room's is refused too; a fresh copy starts anew.
    assert_eq!(doc_call(&mut c, "d", "e3", "", b"v1"), (1, 1));
    assert_eq!(
        doc_call(&mut c, "d", "e4", &epoch, b"v2"),
        (0, 1),
        "still the deleted one"
    );
    assert_eq!(
        doc_call(&mut c, "d", "e4", "e9", b"v2"),
        (0, 0),
        "an epoch never deleted: lost"
    );
    assert_eq!(doc_call(&mut c, "d", "e4", "e3", b"v2"), (2, 2));
    // A room deleted without ever being written leaves no tombstone.
    assert_eq!(doc_delete(&mut c, "never"), 0);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("nimbus:doc:{never}:deleted")
        .query(&mut c)
        .expect("exists");
    assert_eq!(exists, 0);
}
