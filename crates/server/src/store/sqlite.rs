//! SQLite backend: the embedded default (one file, WAL).

use std::path::Path;
use std::sync::Arc;

use nimbus_proto::cloud::CloudValue;
use rusqlite::{params, Connection};

use super::{Backend, DocLog, StoreError, StoreOp, StoredVar};

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
CREATE TABLE IF NOT EXISTS doc_snapshots (
    room  TEXT PRIMARY KEY,
    data  BLOB NOT NULL
) WITHOUT ROWID;
";

impl SqliteBackend {
    /// Open (or create) the database file. Errors name the file; the database must be
    /// writable (a write lock is taken once), so a read-only file fails here, not at the
    /// first commit.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let opened = (|| {
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
                source,
            }),
        }
    }
}

impl Backend for SqliteBackend {
    fn load(&mut self, room: &str) -> Result<Vec<StoredVar>, StoreError> {
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
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
            for op in ops {
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
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load_doc(&mut self, room: &str) -> Result<DocLog, StoreError> {
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

    fn replace_doc(
        &mut self,
        room: &str,
        snapshot: &[u8],
        covered: usize,
    ) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
