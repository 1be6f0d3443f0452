//! The ledger's tables, as numbered migrations. `PRAGMA user_version` holds
//! how many have been applied; each runs once, in its own transaction, so
//! a crash mid-migration leaves the previous version intact.

use rusqlite::Connection;

use super::LedgerError;

/// Every migration, oldest first. Append only: a released migration is
/// never edited, a change is a new one.
pub const MIGRATIONS: &[&str] = &[V1, V2];

/// Times are nanoseconds since the Unix epoch (UTC), so comparisons and
/// pruning are integer ones.
const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- What the inventory knows of each secret; NULL where it has not said.
CREATE TABLE secret (
    id          TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    type        TEXT NOT NULL,
    fingerprint TEXT,
    lifetime    TEXT,
    hint        TEXT,
    uid         INTEGER,
    gid         INTEGER,
    mode        INTEGER,
    mtime       INTEGER,
    expires     INTEGER,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    removed     INTEGER
);
-- Each secret's fingerprints over time: a new one is a rotation.
CREATE TABLE secret_fingerprint (
    secret_id   TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (secret_id, fingerprint)
);
CREATE INDEX secret_fingerprint_by_fingerprint ON secret_fingerprint (fingerprint);
CREATE TABLE identity (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    spiffe_id    TEXT NOT NULL,
    unit         TEXT,
    user_manager INTEGER NOT NULL,
    cgroup_id    INTEGER NOT NULL,
    exe          TEXT,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    gone_since   INTEGER
);
-- Who read which secret file.
CREATE TABLE access (
    secret_id   TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    denied      INTEGER NOT NULL,
    human       INTEGER NOT NULL,
    last_pid    INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL,
    last_exe    TEXT,
    PRIMARY KEY (secret_id, identity_id)
);
-- Secrets outside files: a variable in an environment, a token on a
-- command line, another process's environment read.
CREATE TABLE exposure (
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    detail      TEXT,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    last_pid    INTEGER NOT NULL,
    last_exe    TEXT,
    PRIMARY KEY (kind, subject, identity_id)
);
-- Findings already emitted, so that a restart does not emit them again.
CREATE TABLE fired (
    key      TEXT PRIMARY KEY,
    type     TEXT NOT NULL,
    subject  TEXT NOT NULL,
    fired_at INTEGER NOT NULL
);
";

/// Opens told apart by what they could do: `reads` could read (`O_RDONLY`,
/// `O_RDWR`), `writes` could write (`O_WRONLY`, `O_RDWR`); `count` stays
/// every open, refused ones included, and `human` becomes the reads from a
/// human session. v1 took every successful open for a read and counted
/// refused opens as human: existing rows keep that reading, bounded by it.
/// `unwatched`: when a run of the agent stopped watching a secret whose
/// file was still there (another `--watch` or `--config`), which is not a
/// removal.
const V2: &str = "
ALTER TABLE access ADD COLUMN reads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE access ADD COLUMN writes INTEGER NOT NULL DEFAULT 0;
UPDATE access SET reads = count - denied, human = min(human, count - denied);
ALTER TABLE secret ADD COLUMN unwatched INTEGER;
";

/// Bring `conn` up to the last of `migrations`.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), LedgerError> {
    let current = version(conn)?;
    let known = migrations.len() as u32;
    if current > known {
        return Err(LedgerError::TooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // PRAGMA takes no bound parameters; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

pub fn version(conn: &Connection) -> Result<u32, LedgerError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_keeps_data_across_a_later_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(version(&conn).unwrap(), MIGRATIONS.len() as u32);
        conn.execute("INSERT INTO meta VALUES ('k', 'v')", [])
            .unwrap();
        // Again: nothing to do.
        migrate(&mut conn, MIGRATIONS).unwrap();
        // A later release adds a column; existing rows survive.
        let v2 = "ALTER TABLE meta ADD COLUMN note TEXT";
        let mut next = MIGRATIONS.to_vec();
        next.push(v2);
        migrate(&mut conn, &next).unwrap();
        assert_eq!(version(&conn).unwrap(), next.len() as u32);
        let v: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "v");
    }

    /// A v1 ledger's reads survive v2: refused opens stay refused and are
    /// no longer human.
    #[test]
    fn v2_splits_reads_from_refused_opens() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &MIGRATIONS[..1]).unwrap();
        conn.execute_batch(
            "INSERT INTO access VALUES ('s', 'user:eve:/bin/cat', 1, 2, 3, 3, 3, 9, 1000, NULL);
             INSERT INTO access VALUES ('s', 'user:ana:/bin/cat', 1, 2, 5, 1, 5, 9, 1000, NULL);
             INSERT INTO secret (id, path, type, first_seen, last_seen) VALUES ('s', '/s', 'generic', 1, 2);",
        )
        .unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        let row = |who: &str| -> (i64, i64, i64) {
            conn.query_row(
                "SELECT reads, writes, human FROM access WHERE identity_id = ?1",
                [who],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        assert_eq!(row("user:eve:/bin/cat"), (0, 0, 0), "every open refused");
        assert_eq!(row("user:ana:/bin/cat"), (4, 0, 4));
        let unwatched: Option<i64> = conn
            .query_row("SELECT unwatched FROM secret", [], |r| r.get(0))
            .unwrap();
        assert_eq!(unwatched, None);
    }

    #[test]
    fn a_newer_ledger_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        let err = migrate(&mut conn, MIGRATIONS).unwrap_err().to_string();
        assert!(err.contains("99"), "{err}");
    }

    #[test]
    fn a_failed_migration_leaves_the_version_unchanged() {
        let mut conn = Connection::open_in_memory().unwrap();
        let bad = [
            "CREATE TABLE a (x)",
            "CREATE TABLE b (x); SELECT nonsense FROM",
        ];
        assert!(migrate(&mut conn, &bad).is_err());
        assert_eq!(version(&conn).unwrap(), 1);
    }
}
