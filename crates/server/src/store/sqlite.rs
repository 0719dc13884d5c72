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
    data  BLOB    NOT NULL
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
                tx.prepare_cached("INSERT INTO doc_updates (room, data) VALUES (?1, ?2)")?;
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
                        append.execute(params![&**room, &update[..]])?;
                    }
                    StoreOp::DocCompact { .. } => {}
                    StoreOp::DocDelete { room } => {
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
        let updates = self
            .conn
            .prepare_cached("SELECT data FROM doc_updates WHERE room = ?1 ORDER BY id")?
            .query_map([room], |row| row.get::<_, Vec<u8>>(0))?
            .collect::<Result<_, _>>()?;
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
        tx.execute(
            "DELETE FROM doc_updates WHERE id IN
               (SELECT id FROM doc_updates WHERE room = ?1 ORDER BY id LIMIT ?2)",
            params![room, covered as i64],
        )?;
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

    /// A fresh database with `updates` appended to room `r` in one commit.
    fn appended(updates: &[bytes::Bytes]) -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = SqliteBackend::open(&dir.path().join("db")).expect("open");
        let ops: Vec<StoreOp> = updates
            .iter()
            .map(|u| StoreOp::DocAppend {
                room: "r".into(),
                update: u.clone(),
            })
            .collect();
        db.commit(&ops).expect("commit");
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
}
