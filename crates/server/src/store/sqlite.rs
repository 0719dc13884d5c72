//! SQLite backend: the embedded default (one file, WAL).

use std::path::Path;
use std::sync::Arc;

use nimbus_proto::cloud::CloudValue;
use rusqlite::{params, Connection};

use std::time::Duration;

use nimbus_core::history::{HistoryEntry, Retention, Verb};
use nimbus_core::store::{
    Backend, CompactionPolicy, DocLog, Store, StoreError, StoreOp, StoredVar,
};

/// A SQLite database file holding every room's variables.
#[derive(Debug)]
pub struct SqliteBackend {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cloud_vars (
    room   TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    is_num INTEGER NOT NULL,
    pos    INTEGER NOT NULL,
    PRIMARY KEY (room, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS doc_updates (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    room  TEXT    NOT NULL,
    data  BLOB    NOT NULL,
    n     INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS doc_updates_room ON doc_updates (room, id);
CREATE TABLE IF NOT EXISTS cloud_history (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    room   TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    user   TEXT,
    verb   TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    value  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS cloud_history_room ON cloud_history (room, id);
CREATE TABLE IF NOT EXISTS doc_snapshots (
    room  TEXT PRIMARY KEY,
    data  BLOB NOT NULL
) WITHOUT ROWID;
";

/// Rows a commit writes between two yields of the CPU. The store's thread shares the
/// cores with the runtime's workers: a commit of a busy group-commit window (thousands of
/// rows, a few ms of CPU) would otherwise hold a core for its whole length while a worker
/// woken by the network waits for the scheduler to take it back. A yield with nothing else
/// runnable returns at once; the transaction and what it makes durable are unchanged.
const YIELD_EVERY: usize = 64;

/// A room's document updates of one commit go into one row, a *pack*, of up to this many
/// bytes (a larger update is a row of its own).
///
/// A `doc_updates` row holds `n` updates: with `n` = 1 its `data` is the update itself (every
/// row written before packing, whose `n` the migration sets to 1), with more it is the `n`
/// updates as lib0 `varUint8Array`s back to back. An insert costs about 9,000 instructions,
/// most of it per row (two B-trees), not per byte, and a busy room appends several updates
/// per group-commit window. [`Backend`] still counts updates, not rows: a load unpacks, and a
/// compaction that covers part of a pack rewrites the pack with the rest.
const PACK_MAX_BYTES: usize = 1 << 20;

/// The updates of the rooms appended to in one commit, in order per room.
#[derive(Default)]
struct Packs<'a> {
    index: std::collections::HashMap<&'a str, usize>,
    packs: Vec<(&'a str, Vec<&'a [u8]>, usize)>,
}

impl<'a> Packs<'a> {
    /// Add one update; returns a room's pack that is full now (to be written before it).
    fn push(&mut self, room: &'a str, update: &'a [u8]) -> Option<(&'a str, Vec<&'a [u8]>)> {
        let i = *self.index.entry(room).or_insert_with(|| {
            self.packs.push((room, Vec::new(), 0));
            self.packs.len() - 1
        });
        let (_, updates, bytes) = &mut self.packs[i];
        let full = if *bytes + update.len() > PACK_MAX_BYTES && !updates.is_empty() {
            *bytes = 0;
            Some((room, std::mem::take(updates)))
        } else {
            None
        };
        updates.push(update);
        *bytes += update.len();
        full
    }

    /// Forget a room's updates so far (a delete of the room follows them).
    fn forget(&mut self, room: &str) {
        if let Some(&i) = self.index.get(room) {
            let (_, updates, bytes) = &mut self.packs[i];
            updates.clear();
            *bytes = 0;
        }
    }

    fn drain(self) -> impl Iterator<Item = (&'a str, Vec<&'a [u8]>)> {
        self.packs
            .into_iter()
            .filter(|(_, updates, _)| !updates.is_empty())
            .map(|(room, updates, _)| (room, updates))
    }
}

/// A row's `data` and `n` for `updates` (see [`PACK_MAX_BYTES`]).
fn pack<'a>(updates: &[&'a [u8]]) -> (std::borrow::Cow<'a, [u8]>, i64) {
    if let [one] = updates {
        return (std::borrow::Cow::Borrowed(one), 1);
    }
    let mut data = Vec::with_capacity(updates.iter().map(|u| u.len() + 5).sum());
    for u in updates {
        nimbus_proto::doc::lib0::write_var_bytes(&mut data, u);
    }
    (std::borrow::Cow::Owned(data), updates.len() as i64)
}

/// The updates of one row (see [`PACK_MAX_BYTES`]).
fn unpack(data: Vec<u8>, n: i64) -> rusqlite::Result<Vec<Vec<u8>>> {
    if n == 1 {
        return Ok(vec![data]);
    }
    let corrupt = |why: String| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, why.into())
    };
    let count = usize::try_from(n)
        .ok()
        .filter(|&n| n > 1 && n <= data.len())
        .ok_or_else(|| corrupt(format!("a doc_updates row claims {n} updates")))?;
    let mut reader = nimbus_proto::doc::lib0::Reader::new(&data);
    let mut updates = Vec::with_capacity(count);
    for _ in 0..count {
        let range = reader
            .read_var_bytes_range("packed update")
            .map_err(|e| corrupt(format!("a packed doc_updates row: {e}")))?;
        updates.push(data[range].to_vec());
    }
    if !reader.is_empty() {
        return Err(corrupt(
            "a packed doc_updates row has bytes past its updates".into(),
        ));
    }
    Ok(updates)
}

impl SqliteBackend {
    /// Open (or create) the database file. Errors name the file; the database must be
    /// writable (a write lock is taken once), so a read-only file fails here, not at the
    /// first commit.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let opened = (|| -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            // A database from before packed rows: every row holds one update.
            let packed = conn
                .prepare("SELECT 1 FROM pragma_table_info('doc_updates') WHERE name = 'n'")?
                .exists([])?;
            if !packed {
                conn.execute_batch(
                    "ALTER TABLE doc_updates ADD COLUMN n INTEGER NOT NULL DEFAULT 1",
                )?;
            }
            conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
            Ok(conn)
        })();
        match opened {
            Ok(conn) => Ok(SqliteBackend { conn }),
            Err(source) => Err(StoreError::Open {
                path: path.into(),
                source: Box::new(source),
            }),
        }
    }
}

/// The backend's operations in SQLite's own error type; [`Backend`] maps it once.
impl SqliteBackend {
    fn sql_load(&mut self, room: &str) -> rusqlite::Result<Vec<StoredVar>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, value, is_num, pos FROM cloud_vars WHERE room = ?1 ORDER BY pos",
        )?;
        let rows = stmt.query_map([room], |row| {
            let value: String = row.get(1)?;
            let is_num: bool = row.get(2)?;
            Ok(StoredVar {
                name: Arc::from(row.get::<_, String>(0)?),
                value: if is_num {
                    CloudValue::Number(value)
                } else {
                    CloudValue::String(value)
                },
                pos: row.get(3)?,
            })
        })?;
        rows.collect()
    }

    fn sql_commit(&mut self, ops: &[StoreOp]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO cloud_vars (room, name, value, is_num, pos) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (room, name) DO UPDATE SET value = excluded.value, is_num = excluded.is_num",
            )?;
            let mut rename =
                tx.prepare_cached("UPDATE cloud_vars SET name = ?3 WHERE room = ?1 AND name = ?2")?;
            let mut delete =
                tx.prepare_cached("DELETE FROM cloud_vars WHERE room = ?1 AND name = ?2")?;
            let mut append =
                tx.prepare_cached("INSERT INTO doc_updates (room, data, n) VALUES (?1, ?2, ?3)")?;
            let mut write_pack = |room: &str, updates: &[&[u8]]| {
                let (data, n) = pack(updates);
                append.execute(params![room, &data[..], n]).map(|_| ())
            };
            let mut packs = Packs::default();
            let mut history = tx.prepare_cached(
                "INSERT INTO cloud_history (room, at_ms, user, verb, name, value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            // Rooms whose history grew in this batch: trimmed once each, after the inserts.
            let mut trim: Vec<(&Arc<str>, Retention, u64)> = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    std::thread::yield_now();
                }
                match op {
                    StoreOp::Put { room, var } => {
                        let is_num = matches!(var.value, CloudValue::Number(_));
                        put.execute(params![
                            &**room,
                            &*var.name,
                            var.value.as_str(),
                            is_num,
                            var.pos
                        ])?;
                    }
                    StoreOp::Rename {
                        room,
                        name,
                        new_name,
                    } => {
                        rename.execute(params![&**room, &**name, &**new_name])?;
                    }
                    StoreOp::Delete { room, name } => {
                        delete.execute(params![&**room, &**name])?;
                    }
                    StoreOp::DocAppend { room, update } => {
                        if let Some((room, full)) = packs.push(room, update) {
                            write_pack(room, &full)?;
                        }
                    }
                    StoreOp::DocCompact { .. } => {}
                    StoreOp::DocDelete { room } => {
                        // The room's earlier appends of this commit would be deleted next.
                        packs.forget(room);
                        tx.execute("DELETE FROM doc_updates WHERE room = ?1", [&**room])?;
                        tx.execute("DELETE FROM doc_snapshots WHERE room = ?1", [&**room])?;
                    }
                    StoreOp::HistoryAppend {
                        room,
                        entry,
                        retention,
                    } => {
                        history.execute(params![
                            &**room,
                            i64::try_from(entry.at_ms).unwrap_or(i64::MAX),
                            entry.user.as_deref(),
                            entry.verb.name(),
                            &*entry.name,
                            &*entry.value,
                        ])?;
                        match trim.iter_mut().find(|(r, _, _)| *r == room) {
                            Some(t) => {
                                t.1 = *retention;
                                t.2 = t.2.max(entry.at_ms);
                            }
                            None => trim.push((room, *retention, entry.at_ms)),
                        }
                    }
                }
            }
            for (room, updates) in packs.drain() {
                write_pack(room, &updates)?;
            }
            let mut by_count = tx.prepare_cached(
                "DELETE FROM cloud_history WHERE room = ?1 AND id <=
                   (SELECT id FROM cloud_history WHERE room = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?;
            let mut by_age =
                tx.prepare_cached("DELETE FROM cloud_history WHERE room = ?1 AND at_ms < ?2")?;
            for (room, retention, newest) in trim {
                let keep = i64::try_from(retention.max_entries).unwrap_or(i64::MAX);
                by_count.execute(params![&**room, keep])?;
                let oldest = i64::try_from(retention.oldest_kept(newest)).unwrap_or(i64::MAX);
                by_age.execute(params![&**room, oldest])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sql_load_doc(&mut self, room: &str) -> rusqlite::Result<DocLog> {
        let snapshot = self
            .conn
            .prepare_cached("SELECT data FROM doc_snapshots WHERE room = ?1")?
            .query_map([room], |row| row.get::<_, Vec<u8>>(0))?
            .next()
            .transpose()?;
        let mut updates = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data, n FROM doc_updates WHERE room = ?1 ORDER BY id")?;
        let mut rows = stmt.query([room])?;
        while let Some(row) = rows.next()? {
            updates.extend(unpack(row.get(0)?, row.get(1)?)?);
        }
        Ok(DocLog { snapshot, updates })
    }

    fn sql_load_history(
        &mut self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> rusqlite::Result<Vec<HistoryEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, user, verb, name, value FROM cloud_history
             WHERE room = ?1 AND at_ms >= ?2 ORDER BY id DESC LIMIT ?3 OFFSET ?4",
        )?;
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![room, since, n(limit), n(offset)], |row| {
            let verb: String = row.get(2)?;
            Ok(HistoryEntry {
                at_ms: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                user: row.get::<_, Option<String>>(1)?.map(Arc::from),
                verb: Verb::parse(&verb).unwrap_or(Verb::Set),
                name: Arc::from(row.get::<_, String>(3)?),
                value: Arc::from(row.get::<_, String>(4)?),
            })
        })?;
        rows.collect()
    }

    fn sql_replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO doc_snapshots (room, data) VALUES (?1, ?2)
             ON CONFLICT (room) DO UPDATE SET data = excluded.data",
            params![room, snapshot],
        )?;
        // The rows wholly covered go; a pack covered in part keeps the rest of its updates.
        let rows: Vec<(i64, i64)> = tx
            .prepare_cached("SELECT id, n FROM doc_updates WHERE room = ?1 ORDER BY id")?
            .query_map([room], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut left = i64::try_from(covered).unwrap_or(i64::MAX);
        let mut last_whole = None;
        let mut split = None;
        for (id, n) in rows {
            if left <= 0 {
                break;
            }
            if n <= left {
                left -= n;
                last_whole = Some(id);
            } else {
                split = Some((id, n, left));
                break;
            }
        }
        if let Some(id) = last_whole {
            tx.execute(
                "DELETE FROM doc_updates WHERE room = ?1 AND id <= ?2",
                params![room, id],
            )?;
        }
        if let Some((id, n, drop)) = split {
            let data: Vec<u8> =
                tx.query_row("SELECT data FROM doc_updates WHERE id = ?1", [id], |row| {
                    row.get(0)
                })?;
            let updates = unpack(data, n)?;
            let rest: Vec<&[u8]> = updates
                .iter()
                .skip(drop as usize)
                .map(Vec::as_slice)
                .collect();
            let (data, n) = pack(&rest);
            tx.execute(
                "UPDATE doc_updates SET data = ?2, n = ?3 WHERE id = ?1",
                params![id, &data[..], n],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError> {
        self.sql_load(room).map_err(sqlite_error)
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.sql_commit(ops).map_err(sqlite_error)
    }

    fn load_doc(&mut self, room: &str) -> Result<DocLog, StoreError> {
        self.sql_load_doc(room).map_err(sqlite_error)
    }

    fn replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> Result<(), StoreError> {
        self.sql_replace_doc(room, snapshot, covered)
            .map_err(sqlite_error)
    }

    fn load_history(
        &mut self,
        room: &str,
        limit: usize,
        offset: usize,
        since_ms: u64,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.sql_load_history(room, limit, offset, since_ms)
            .map_err(sqlite_error)
    }
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        source: Box::new(e),
    }
}

/// Open the SQLite store at `data_dir/nimbus.sqlite3`. Errors name the path and the cause
/// (a directory that cannot be created or written, a file that is not a database).
pub fn open_store(
    data_dir: &Path,
    flush: Duration,
    policy: CompactionPolicy,
) -> Result<Store, StoreError> {
    let dir_error = |source| StoreError::DataDir {
        path: data_dir.into(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(dir_error)?;
    // SQLite only says "unable to open database file"; find out why first.
    let probe = data_dir.join(".nimbus-write-probe");
    std::fs::write(&probe, b"").map_err(dir_error)?;
    let _ = std::fs::remove_file(&probe);
    let backend = SqliteBackend::open(&data_dir.join("nimbus.sqlite3"))?;
    Ok(Store::spawn_with(backend, flush, policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::store::testing::{text_of, text_updates};
    use nimbus_core::store::{compact, StoreOp};

    #[test]
    fn values_keep_type_and_order_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let mut db = SqliteBackend::open(&path).expect("open");
            db.commit(&[
                StoreOp::Put {
                    room: "1".into(),
                    var: StoredVar {
                        name: "☁ b".into(),
                        value: CloudValue::String("01".into()),
                        pos: 0,
                    },
                },
                StoreOp::Put {
                    room: "1".into(),
                    var: StoredVar {
                        name: "☁ a".into(),
                        value: CloudValue::Number("1.50".into()),
                        pos: 1,
                    },
                },
                StoreOp::Rename {
                    room: "1".into(),
                    name: "☁ b".into(),
                    new_name: "☁ c".into(),
                },
            ])
            .expect("commit");
        }
        let mut db = SqliteBackend::open(&path).expect("reopen");
        let vars = db.load("1").expect("load");
        assert_eq!(
            vars.iter()
                .map(|v| (&*v.name, v.value.clone()))
                .collect::<Vec<_>>(),
            vec![
                ("☁ c", CloudValue::String("01".into())),
                ("☁ a", CloudValue::Number("1.50".into()))
            ]
        );
        assert!(db.load("2").expect("load").is_empty());
    }

    #[tokio::test]
    async fn an_explicit_compaction_folds_the_whole_log_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let (expected, updates) = text_updates(30);
        {
            let store = Store::spawn(SqliteBackend::open(&path).expect("open"), Duration::ZERO);
            for u in updates {
                store.apply(StoreOp::DocAppend {
                    room: "r".into(),
                    update: u,
                });
            }
            store.apply(StoreOp::DocCompact { room: "r".into() });
            store.flush().await.expect("flush");
            store.settle().await.expect("settle");
        }
        let mut db = SqliteBackend::open(&path).expect("reopen");
        let log = db.load_doc("r").expect("load");
        assert!(log.snapshot.is_some());
        assert!(log.updates.is_empty());
        assert_eq!(text_of(&log), expected);
        assert!(db.load_doc("other").expect("load").is_empty());
    }

    #[test]
    fn history_is_kept_newest_first_trimmed_by_count_and_age_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let retention = Retention {
            max_entries: 4,
            max_age: Duration::from_millis(1000),
        };
        let entry = |i: u64, at_ms: u64| HistoryEntry {
            user: i.is_multiple_of(2).then(|| Arc::from("alice")),
            verb: if i == 0 { Verb::Create } else { Verb::Set },
            name: "☁ x".into(),
            value: Arc::from(i.to_string()),
            at_ms,
        };
        let append = |room: &str, i: u64, at_ms: u64| StoreOp::HistoryAppend {
            room: room.into(),
            entry: entry(i, at_ms),
            retention,
        };
        {
            let mut db = SqliteBackend::open(&path).expect("open");
            let ops: Vec<StoreOp> = (0..6).map(|i| append("1", i, 10_000 + i)).collect();
            db.commit(&ops).expect("commit");
            db.commit(&[append("2", 0, 10_000)]).expect("commit");
        }
        let mut db = SqliteBackend::open(&path).expect("reopen");
        let got = db.load_history("1", 10, 0, 0).expect("load");
        let values: Vec<&str> = got.iter().map(|e| &*e.value).collect();
        assert_eq!(
            values,
            ["5", "4", "3", "2"],
            "count: the newest 4, newest first"
        );
        assert_eq!(got[1].user.as_deref(), Some("alice"));
        assert_eq!(got[0].user, None);
        let page = db.load_history("1", 2, 1, 0).expect("load");
        assert_eq!(
            page.iter().map(|e| &*e.value).collect::<Vec<_>>(),
            ["4", "3"]
        );
        assert_eq!(db.load_history("1", 10, 0, 10_004).expect("load").len(), 2);
        // Age: an entry 1.5 s newer pushes out everything older than 1 s before it.
        db.commit(&[append("1", 9, 11_500)]).expect("commit");
        let got = db.load_history("1", 10, 0, 0).expect("load");
        assert_eq!(got.iter().map(|e| &*e.value).collect::<Vec<_>>(), ["9"]);
        assert_eq!(db.load_history("2", 10, 0, 0).expect("load").len(), 1);
    }

    /// The ops appending `updates` to `room`.
    fn appends(room: &str, updates: &[bytes::Bytes]) -> Vec<StoreOp> {
        updates
            .iter()
            .map(|u| StoreOp::DocAppend {
                room: room.into(),
                update: u.clone(),
            })
            .collect()
    }

    /// A fresh database with `updates` appended to room `r` in one commit.
    fn appended(updates: &[bytes::Bytes]) -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        db.commit(&appends("r", updates)).expect("commit");
        (dir, db)
    }

    #[test]
    fn a_commit_longer_than_the_yield_interval_keeps_every_row_in_order() {
        let n = 3 * YIELD_EVERY + 5;
        let (expected, updates) = text_updates(n);
        let (_dir, mut db) = appended(&updates);
        let log = db.load_doc("r").expect("load");
        assert_eq!(log.updates.len(), n);
        assert_eq!(text_of(&log), expected);
    }

    #[test]
    fn replacing_a_log_prefix_keeps_the_later_updates_in_order() {
        let (expected, updates) = text_updates(20);
        let (_dir, mut db) = appended(&updates);
        let prefix = DocLog {
            snapshot: None,
            updates: updates[..12].iter().map(|u| u.to_vec()).collect(),
        };
        db.replace_doc("r", &compact("r", &prefix), 12)
            .expect("replace");
        let log = db.load_doc("r").expect("load");
        assert_eq!(log.updates.len(), 8);
        assert_eq!(text_of(&log), expected);
    }

    fn rows(db: &SqliteBackend, room: &str) -> Vec<i64> {
        db.conn
            .prepare("SELECT n FROM doc_updates WHERE room = ?1 ORDER BY id")
            .expect("prepare")
            .query_map([room], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn the_updates_of_one_room_in_one_commit_are_one_row_and_load_back_in_order() {
        let (expected, updates) = text_updates(30);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        // Two rooms interleaved, then a second commit for one of them.
        let mut ops = Vec::new();
        for u in &updates[..20] {
            for room in ["a", "b"] {
                ops.push(StoreOp::DocAppend {
                    room: room.into(),
                    update: u.clone(),
                });
            }
        }
        db.commit(&ops).expect("commit");
        db.commit(&appends("a", &updates[20..])).expect("commit");
        assert_eq!(rows(&db, "a"), [20, 10]);
        assert_eq!(rows(&db, "b"), [20]);
        let log = db.load_doc("a").expect("load");
        assert_eq!(
            log.updates,
            updates.iter().map(|u| u.to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(text_of(&log), expected);
        assert_eq!(db.load_doc("b").expect("load").updates.len(), 20);
    }

    #[test]
    fn a_delete_in_a_commit_removes_the_appends_before_it_and_keeps_those_after() {
        let (_, updates) = text_updates(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        let mut ops = appends("r", &updates[..2]);
        ops.push(StoreOp::DocDelete { room: "r".into() });
        ops.extend(appends("r", &updates[2..]));
        db.commit(&ops).expect("commit");
        let log = db.load_doc("r").expect("load");
        assert_eq!(log.updates, [updates[2].to_vec(), updates[3].to_vec()]);
    }

    #[test]
    fn a_pack_is_closed_at_its_byte_limit() {
        let big = bytes::Bytes::from(vec![7u8; PACK_MAX_BYTES / 2 + 1]);
        let (_dir, db) = appended(&[big.clone(), big.clone(), big]);
        assert_eq!(rows(&db, "r"), [1, 1, 1]);
    }

    #[test]
    fn a_compaction_covering_part_of_a_pack_keeps_the_rest_of_it() {
        let (expected, updates) = text_updates(20);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        for chunk in updates.chunks(5) {
            db.commit(&appends("r", chunk)).expect("commit");
        }
        assert_eq!(rows(&db, "r"), [5, 5, 5, 5]);
        let prefix = DocLog {
            snapshot: None,
            updates: updates[..12].iter().map(|u| u.to_vec()).collect(),
        };
        db.replace_doc("r", &compact("r", &prefix), 12)
            .expect("replace");
        assert_eq!(rows(&db, "r"), [3, 5]);
        let log = db.load_doc("r").expect("load");
        assert_eq!(
            log.updates,
            updates[12..].iter().map(|u| u.to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(text_of(&log), expected);
    }

    #[test]
    fn a_database_from_before_packing_is_migrated_and_its_rows_load() {
        let (expected, updates) = text_updates(6);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE doc_updates (
                     id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, data BLOB NOT NULL);
                 CREATE INDEX doc_updates_room ON doc_updates (room, id);",
            )
            .expect("old schema");
            for u in &updates[..4] {
                conn.execute(
                    "INSERT INTO doc_updates (room, data) VALUES ('r', ?1)",
                    [&u[..]],
                )
                .expect("old row");
            }
        }
        let mut db = SqliteBackend::open(&path).expect("open");
        db.commit(&appends("r", &updates[4..])).expect("commit");
        assert_eq!(rows(&db, "r"), [1, 1, 1, 1, 2]);
        let log = db.load_doc("r").expect("load");
        assert_eq!(log.updates.len(), 6);
        assert_eq!(text_of(&log), expected);
    }

    #[test]
    fn a_corrupt_pack_is_an_error_not_a_panic() {
        let (_, updates) = text_updates(2);
        let (_dir, mut db) = appended(&updates);
        for (data, n) in [
            (vec![5u8, 1, 2], 2i64),
            (vec![1u8, 9, 1, 9, 0], 2),
            (vec![1u8, 9], 3),
            (vec![], -4),
        ] {
            db.conn
                .execute("UPDATE doc_updates SET data = ?1, n = ?2", params![data, n])
                .expect("corrupt");
            let err = db.load_doc("r").expect_err("loads");
            assert!(err.to_string().contains("sqlite"), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_pack_unpacks_to_its_updates(
            updates in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..20)
        ) {
            let slices: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
            let (data, n) = pack(&slices);
            proptest::prop_assert_eq!(unpack(data.to_vec(), n).expect("unpack"), updates);
        }

        #[test]
        fn unpacking_any_row_returns_or_errs_without_panicking(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            n in -3i64..40,
        ) {
            let _ = unpack(data, n);
        }
    }
}
