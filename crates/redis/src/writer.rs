//! The writer task: every write of this node to Redis (cloud changes, presence, document
//! updates, gateway sessions), batched into pipelines in queue order.

use super::*;

/// One job of the writer task.
pub(crate) enum Job {
    /// A cloud change.
    Cloud(Write),
    /// A document update.
    Doc(doc::DocWrite),
    /// A presence event (its body JSON).
    Presence(String),
}

/// The writer task: batches queued jobs into pipelines, in queue order.
pub(super) async fn writer(
    bp: std::sync::Weak<RedisBackplane>,
    node: String,
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
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
        let mut pipe = redis::pipe();
        // Loading the scripts in the same pipeline makes EVALSHA safe after a Redis restart.
        for script in [&CLOUD_LUA, &doc::DOC_LUA, &PRESENCE_LUA] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.text()).ignore();
        }
        for job in &batch {
            match job {
                Job::Cloud(w) => invocation(&node, w, history, &mut pipe),
                Job::Doc(w) => doc::invocation(&node, w, &mut pipe),
                Job::Presence(body) => {
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
        let result: Result<Vec<redis::Value>, _> = pipe.query_async(&mut conn).await;
        match result {
            Ok(replies) => {
                metrics.backplane.up.set(1);
                let replies = replies.into_iter().map(Some).chain(std::iter::repeat(None));
                for (job, reply) in batch.drain(..).zip(replies) {
                    match job {
                        Job::Cloud(w) => cloud_written(w, reply, &metrics),
                        Job::Doc(w) => {
                            metrics.backplane.writes.inc();
                            if let Some(bp) = bp.upgrade() {
                                bp.doc_written(&w, reply);
                            }
                        }
                        Job::Presence(_) => {
                            metrics.backplane.writes.inc();
                        }
                    }
                }
            }
            Err(error) => {
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

/// Append the script call for one change to `pipe`.
fn invocation(
    node: &str,
    w: &Write,
    history: nimbus_core::history::Retention,
    pipe: &mut redis::Pipeline,
) {
    let keys = Keys::new(&w.room);
    let mut change = Change {
        r: w.room.to_string(),
        o: String::new(),
        n: String::new(),
        v: None,
        num: false,
        nn: None,
        nd: node.to_owned(),
        c: w.from,
        u: w.user.as_deref().map(str::to_owned),
        ts: now_ms(),
        hv: None,
    };
    let arg = match &w.op {
        CloudChange::Set { name, value } => {
            let (text, num) = match value {
                CloudValue::Number(n) => (n.clone(), true),
                CloudValue::String(s) => (s.clone(), false),
            };
            change.o = "s".into();
            change.n = name.to_string();
            change.v = Some(text);
            change.num = num;
            encode_value(value)
        }
        CloudChange::Rename { name, new_name } => {
            change.o = "r".into();
            change.n = name.clone();
            change.nn = Some(new_name.clone());
            new_name.clone()
        }
        CloudChange::Delete { name } => {
            change.o = "d".into();
            change.n = name.clone();
            String::new()
        }
    };
    let op = change.o.clone();
    let name = change.n.clone();
    let change = serde_json::to_string(&change).unwrap_or_default();
    let epoch = format!("{node}-{:x}", now_ms());
    pipe.cmd("EVALSHA")
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
        .arg(op)
        .arg(name)
        .arg(arg)
        .arg(w.max_vars)
        .arg(epoch)
        .arg(change)
        .arg(LOG_MAX_LEN)
        .arg(EVENTS_CHANNEL)
        .arg(EVENTS_MAX_LEN)
        .arg(history.max_entries)
        .arg(
            u64::try_from(history.max_age.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
}
