//! The writer task: every write of this node to Redis (cloud changes, presence, document
//! updates, gateway sessions), batched into pipelines in queue order.

use std::collections::HashMap;

use super::*;

/// One job of the writer task.
pub(crate) enum Job {
    /// A cloud change.
    Cloud(Write),
    /// A document update.
    Doc(doc::DocWrite),
    /// A document room's deletion.
    DocDelete(doc::DocDelete),
    /// A presence event (its body JSON).
    Presence(String),
}

/// One script call of a writer pipeline: the batch's jobs it carries (their indexes, in
/// queue order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// One room's cloud changes ([`CLOUD_SCRIPT`](super::CLOUD_SCRIPT)).
    Cloud(Vec<usize>),
    /// A document update.
    Doc(usize),
    /// A document room's deletion.
    DocDelete(usize),
    /// A presence event.
    Presence(usize),
}

/// The script calls of a batch, in pipeline order. A room's cloud changes share one call
/// (placed where the first of them was queued) until a document update or a presence
/// event is queued: that job gets its own call and every later change starts a new one,
/// so the global event order keeps every event's place relative to the document updates
/// and presence events, and every room's changes stay in queue order.
pub(crate) fn plan(batch: &[Job]) -> Vec<Call> {
    let mut calls = Vec::with_capacity(batch.len().min(64));
    let mut open: HashMap<&str, usize> = HashMap::new();
    for (i, job) in batch.iter().enumerate() {
        match job {
            Job::Cloud(w) => match open.get(&*w.room) {
                Some(&c) => {
                    if let Call::Cloud(jobs) = &mut calls[c] {
                        jobs.push(i);
                    }
                }
                None => {
                    open.insert(&w.room, calls.len());
                    calls.push(Call::Cloud(vec![i]));
                }
            },
            Job::Doc(_) => {
                open.clear();
                calls.push(Call::Doc(i));
            }
            Job::DocDelete(_) => {
                open.clear();
                calls.push(Call::DocDelete(i));
            }
            Job::Presence(_) => {
                open.clear();
                calls.push(Call::Presence(i));
            }
        }
    }
    calls
}

/// The writer task: batches queued jobs into pipelines, in queue order, one script call
/// per room's changes ([`plan`]).
pub(super) async fn writer(
    bp: std::sync::Weak<RedisBackplane>,
    node: String,
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut loaded = false;
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let history = bp
            .upgrade()
            .and_then(|bp| bp.history.get().copied())
            .unwrap_or_default();
        let calls = plan(&batch);
        let mut pipe = redis::pipe();
        // The scripts are loaded in the first pipeline and again after any failed one, so
        // EVALSHA is safe after a Redis restart: a Redis that forgot them (restarted behind
        // a reconnect, SCRIPT FLUSH) answers NOSCRIPT, the batch fails as if Redis were
        // unreachable (nothing of it is retried, so nothing is applied twice) and the next
        // pipeline loads them.
        if !loaded {
            for script in [
                &CLOUD_LUA,
                &doc::DOC_LUA,
                &doc::DOC_DELETE_LUA,
                &PRESENCE_LUA,
            ] {
                pipe.cmd("SCRIPT").arg("LOAD").arg(script.text()).ignore();
            }
        }
        let now = now_ms();
        for call in &calls {
            match call {
                Call::Cloud(jobs) => {
                    let writes = jobs.iter().filter_map(|&i| match &batch[i] {
                        Job::Cloud(w) => Some(w),
                        _ => None,
                    });
                    invocation(&node, writes, history, now, &mut pipe);
                }
                Call::Doc(i) => {
                    if let Job::Doc(w) = &batch[*i] {
                        doc::invocation(&node, w, &mut pipe);
                    }
                }
                Call::DocDelete(i) => {
                    if let Job::DocDelete(d) = &batch[*i] {
                        doc::delete_invocation(&node, d, &mut pipe);
                    }
                }
                Call::Presence(i) => {
                    if let Job::Presence(body) = &batch[*i] {
                        pipe.cmd("EVALSHA")
                            .arg(PRESENCE_LUA.sha())
                            .arg(1)
                            .arg(EVENTS_STREAM)
                            .arg(body)
                            .arg(EVENTS_MAX_LEN)
                            .arg(EVENTS_CHANNEL);
                    }
                }
            }
        }
        let result: Result<Vec<redis::Value>, _> = pipe.query_async(&mut conn).await;
        match result {
            Ok(replies) => {
                loaded = true;
                metrics.backplane.up.set(1);
                // Each job's own reply: a cloud call answers one sequence number per change.
                let mut answers: Vec<Option<redis::Value>> = Vec::with_capacity(batch.len());
                answers.resize_with(batch.len(), || None);
                for (call, reply) in calls.iter().zip(replies) {
                    match call {
                        Call::Cloud(jobs) => {
                            let seqs = match reply {
                                redis::Value::Array(seqs) => seqs,
                                other => {
                                    tracing::warn!(reply = ?other, changes = jobs.len(), "unexpected reply to the cloud script");
                                    Vec::new()
                                }
                            };
                            for (&i, seq) in jobs.iter().zip(seqs) {
                                answers[i] = Some(seq);
                            }
                        }
                        Call::Doc(i) | Call::DocDelete(i) | Call::Presence(i) => {
                            answers[*i] = Some(reply)
                        }
                    }
                }
                for (job, reply) in batch.drain(..).zip(answers) {
                    match job {
                        Job::Cloud(w) => cloud_written(w, reply, &metrics),
                        Job::Doc(w) => {
                            metrics.backplane.writes.inc();
                            if let Some(bp) = bp.upgrade() {
                                bp.doc_written(&w, reply);
                            }
                        }
                        Job::DocDelete(d) => {
                            metrics.backplane.writes.inc();
                            let _ = d.done.send(matches!(reply, Some(redis::Value::Int(_))));
                        }
                        Job::Presence(_) => {
                            metrics.backplane.writes.inc();
                        }
                    }
                }
            }
            Err(error) => {
                loaded = false;
                metrics.backplane.up.set(0);
                tracing::warn!(%error, changes = batch.len(), "cannot write to Redis; closing the senders with 1011");
                for job in batch.drain(..) {
                    metrics.backplane.write_failures.inc();
                    match job {
                        Job::Cloud(w) => match w.reply {
                            Reply::Sender(Some(outbox)) => {
                                outbox.close(CloseCode::Unavailable);
                            }
                            Reply::Sender(None) => {}
                            // Not refused by the room's rules: unavailable, which the
                            // asker hears as a dropped reply (`Reply::Accepted`).
                            Reply::Accepted(reply) => drop(reply),
                        },
                        Job::Doc(w) => w.failed(),
                        Job::DocDelete(d) => {
                            let _ = d.done.send(false);
                        }
                        Job::Presence(_) => {}
                    }
                }
            }
        }
    }
}

/// Answer the origin of a cloud change Redis answered `reply` to.
fn cloud_written(w: Write, reply: Option<redis::Value>, metrics: &Metrics) {
    let accepted = matches!(reply, Some(redis::Value::Int(seq)) if seq > 0);
    if accepted {
        metrics.backplane.writes.inc();
    }
    match w.reply {
        Reply::Sender(_) if !accepted => {
            metrics.cloud.dropped_set("too_many_variables");
            tracing::debug!(room = %w.room, "set refused by Redis: variable limit reached");
        }
        Reply::Sender(_) => {}
        Reply::Accepted(reply) => {
            let _ = reply.send(accepted);
        }
    }
}

/// Append the one script call for `writes`, one room's changes in queue order, to `pipe`
/// (see [`CLOUD_SCRIPT`](super::CLOUD_SCRIPT) for the arguments).
fn invocation<'a>(
    node: &str,
    mut writes: impl Iterator<Item = &'a Write>,
    history: nimbus_core::history::Retention,
    now: u64,
    pipe: &mut redis::Pipeline,
) {
    let Some(first) = writes.next() else { return };
    let keys = Keys::new(&first.room);
    let cmd = pipe
        .cmd("EVALSHA")
        .arg(CLOUD_LUA.sha())
        .arg(8)
        .arg(&keys.seq)
        .arg(&keys.epoch)
        .arg(&keys.vars)
        .arg(&keys.pos)
        .arg(&keys.npos)
        .arg(&keys.log)
        .arg(keys.events)
        .arg(&keys.hist)
        .arg(format!("{node}-{now:x}"))
        .arg(LOG_MAX_LEN)
        .arg(EVENTS_CHANNEL)
        .arg(EVENTS_MAX_LEN)
        .arg(history.max_entries)
        .arg(
            u64::try_from(history.max_age.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    // One scratch buffer for the call: each change's value argument and JSON are written
    // into it and copied into the command, with no allocation per change.
    let mut scratch: Vec<u8> = Vec::with_capacity(256);
    for w in std::iter::once(first).chain(writes) {
        let mut change = ChangeRef {
            r: &w.room,
            o: "",
            n: "",
            v: None,
            num: false,
            nn: None,
            nd: node,
            c: w.from,
            u: w.user.as_deref(),
            ts: now,
        };
        scratch.clear();
        match &w.op {
            CloudChange::Set { name, value } => {
                let (text, num) = match value {
                    CloudValue::Number(n) => (n.as_str(), true),
                    CloudValue::String(s) => (s.as_str(), false),
                };
                change.o = "s";
                change.n = &**name;
                change.v = Some(text);
                change.num = num;
                encode_value_into(value, &mut scratch);
            }
            CloudChange::Rename { name, new_name } => {
                change.o = "r";
                change.n = name.as_str();
                change.nn = Some(new_name.as_str());
                scratch.extend_from_slice(new_name.as_bytes());
            }
            CloudChange::Delete { name } => {
                change.o = "d";
                change.n = name.as_str();
            }
        }
        let arg_len = scratch.len();
        // Serialising plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut scratch, &change);
        let (arg, json) = scratch.split_at(arg_len);
        cmd.arg(change.o)
            .arg(change.n)
            .arg(arg)
            .arg(w.max_vars)
            .arg(json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(room: &str, n: u64) -> Job {
        Job::Cloud(Write {
            room: Arc::from(room),
            op: CloudChange::Set {
                name: Arc::from("☁ x"),
                value: CloudValue::Number(n.to_string()),
            },
            from: n,
            user: None,
            max_vars: 10,
            reply: Reply::Sender(None),
        })
    }

    fn presence() -> Job {
        Job::Presence(r#"{"r":"a","k":"ROOM_JOIN","c":1}"#.into())
    }

    #[test]
    fn a_rooms_changes_share_one_call_in_queue_order() {
        let batch = [
            set("a", 0),
            set("b", 1),
            set("a", 2),
            set("c", 3),
            set("b", 4),
        ];
        assert_eq!(
            plan(&batch),
            [
                Call::Cloud(vec![0, 2]),
                Call::Cloud(vec![1, 4]),
                Call::Cloud(vec![3]),
            ]
        );
    }

    #[test]
    fn a_presence_event_closes_every_rooms_call_so_events_keep_their_place() {
        let batch = [
            set("a", 0),
            presence(),
            set("a", 2),
            set("b", 3),
            set("a", 4),
        ];
        assert_eq!(
            plan(&batch),
            [
                Call::Cloud(vec![0]),
                Call::Presence(1),
                Call::Cloud(vec![2, 4]),
                Call::Cloud(vec![3]),
            ]
        );
    }

    #[test]
    fn grouped_changes_serialise_as_the_change_the_subscribers_parse() {
        let mut pipe = redis::pipe();
        let batch = [set("r", 7)];
        let writes = batch.iter().filter_map(|j| match j {
            Job::Cloud(w) => Some(w),
            _ => None,
        });
        invocation("node", writes, Default::default(), 5, &mut pipe);
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        let json = r#"{"r":"r","o":"s","n":"☁ x","v":"7","num":true,"nd":"node","c":7,"ts":5}"#;
        assert!(packed.contains(json), "{packed}");
        let msg = format!("ep 1 0 1 {json}");
        let parsed = parse_message("node", msg.as_bytes()).expect("parse");
        assert_eq!(parsed.local_conn, Some(7));
        assert_eq!(parsed.ts, 5);
    }

    /// The arguments of one change as the writer sent them before it wrote them into a
    /// scratch buffer: op, name, encoded value (set) / new name (rename) / "" (delete),
    /// max variables, change JSON.
    fn reference_args(node: &str, w: &Write, now: u64) -> Vec<Vec<u8>> {
        let (o, n, arg, v, num, nn) = match &w.op {
            CloudChange::Set { name, value } => {
                let (text, num) = match value {
                    CloudValue::Number(n) => (n.clone(), true),
                    CloudValue::String(s) => (s.clone(), false),
                };
                (
                    "s",
                    name.to_string(),
                    encode_value(value),
                    Some(text),
                    num,
                    None,
                )
            }
            CloudChange::Rename { name, new_name } => (
                "r",
                name.to_string(),
                new_name.to_string(),
                None,
                false,
                Some(new_name.to_string()),
            ),
            CloudChange::Delete { name } => {
                ("d", name.to_string(), String::new(), None, false, None)
            }
        };
        let json = serde_json::to_string(&Change {
            r: w.room.to_string().into(),
            o: o.into(),
            n: n.clone().into(),
            v: v.map(Cow::Owned),
            num,
            nn: nn.map(Cow::Owned),
            nd: node.into(),
            c: w.from,
            u: w.user.as_deref().map(Cow::Borrowed),
            ts: now,
            hv: None,
        })
        .expect("json");
        vec![
            o.as_bytes().to_vec(),
            n.into_bytes(),
            arg.into_bytes(),
            w.max_vars.to_string().into_bytes(),
            json.into_bytes(),
        ]
    }

    proptest::proptest! {
        #[test]
        fn changes_written_through_the_scratch_buffer_are_the_arguments_built_one_by_one(
            ops in proptest::collection::vec(
                (0u8..4, "\\PC{0,12}", "\\PC{0,12}", proptest::option::of("\\PC{0,8}"), 0u64..1000),
                1..12,
            ),
        ) {
            let writes: Vec<Write> = ops
                .iter()
                .map(|(kind, a, b, user, from)| Write {
                    room: Arc::from("r\"m"),
                    op: match kind {
                        0 => CloudChange::Set { name: Arc::from(a.as_str()), value: CloudValue::Number(b.clone()) },
                        1 => CloudChange::Set { name: Arc::from(a.as_str()), value: CloudValue::String(b.clone()) },
                        2 => CloudChange::Rename { name: a.clone(), new_name: b.clone() },
                        _ => CloudChange::Delete { name: a.clone() },
                    },
                    from: *from,
                    user: user.as_deref().map(Arc::from),
                    max_vars: 10,
                    reply: Reply::Sender(None),
                })
                .collect();
            let mut pipe = redis::pipe();
            invocation("nd", writes.iter(), Default::default(), 9, &mut pipe);
            // Everything before the changes is the same; compare the changes' arguments.
            let got: Vec<Vec<u8>> = pipe.cmd_iter().next().expect("one call").args_iter().filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b.to_vec()),
                _ => None,
            }).collect();
            let expected: Vec<Vec<u8>> = writes.iter().flat_map(|w| reference_args("nd", w, 9)).collect();
            proptest::prop_assert_eq!(&got[got.len() - expected.len()..], &expected[..]);
        }
    }
}
