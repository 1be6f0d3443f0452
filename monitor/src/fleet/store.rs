//! The fleet store: PostgreSQL tables that every agent upserts its ledger
//! into, keyed by host, and that `report --fleet` reads. Rows carry each
//! host's cumulative state (totals, first and last seen), so writing one
//! twice changes nothing: a retried or repeated sync never counts twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls, Transaction, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Password,
    tls::{self, TlsSetupError},
    url::{SslMode, StoreUrl},
};
use crate::ledger::{AccessRow, IdentityRow, SecretRow, Span};

/// Every migration, oldest first; append only.
const MIGRATIONS: &[&str] = &[V1, V2];

/// Times are `timestamptz`; counts `bigint`. Each host's rows hang off its
/// `fleet_host` row, so removing a host removes what it sent.
const V1: &str = "
CREATE TABLE fleet_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO fleet_meta VALUES ('store_id', gen_random_uuid()::text);
-- One row per host: its latest heartbeat.
CREATE TABLE fleet_host (
    id               serial PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    agent_version    text NOT NULL,
    -- The fleet key's id when the host's fingerprints are keyed with it;
    -- NULL: a key of its own, comparable with no other host's.
    fleet_key_id     text,
    observing_since  timestamptz NOT NULL,
    last_sync        timestamptz NOT NULL,
    sync_interval_ms bigint NOT NULL,
    -- How long one sync may take: with the interval, when a live agent's
    -- next heartbeat is due at the latest.
    sync_timeout_ms  bigint NOT NULL,
    events_lost      bigint NOT NULL
);
-- When each host's agent ran and observed: a run from its start to the
-- last time it said it was alive, or to its stop.
CREATE TABLE fleet_run (
    host_id     integer NOT NULL REFERENCES fleet_host (id) ON DELETE CASCADE,
    started     timestamptz NOT NULL,
    alive       timestamptz NOT NULL,
    stopped     timestamptz,
    events_lost bigint NOT NULL,
    PRIMARY KEY (host_id, started)
);
CREATE INDEX fleet_run_by_alive ON fleet_run (alive);
CREATE TABLE fleet_secret (
    host_id     integer NOT NULL REFERENCES fleet_host (id) ON DELETE CASCADE,
    id          text NOT NULL,
    path        text NOT NULL,
    type        text NOT NULL,
    fingerprint text,
    lifetime    text,
    hint        text,
    mode        integer,
    uid         bigint,
    mtime       timestamptz,
    expires     timestamptz,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    removed     timestamptz,
    -- No longer watched although its file is there: nobody vouches since.
    unwatched   timestamptz,
    PRIMARY KEY (host_id, id)
);
CREATE INDEX fleet_secret_by_fingerprint ON fleet_secret (fingerprint);
CREATE INDEX fleet_secret_by_path ON fleet_secret (path, type);
-- Each secret's values over time, per host.
CREATE TABLE fleet_fingerprint (
    host_id     integer NOT NULL REFERENCES fleet_host (id) ON DELETE CASCADE,
    secret_id   text NOT NULL,
    fingerprint text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    PRIMARY KEY (host_id, secret_id, fingerprint)
);
CREATE INDEX fleet_fingerprint_by_fingerprint ON fleet_fingerprint (fingerprint);
CREATE TABLE fleet_identity (
    host_id    integer NOT NULL REFERENCES fleet_host (id) ON DELETE CASCADE,
    id         text NOT NULL,
    kind       text NOT NULL,
    spiffe_id  text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    gone_since timestamptz,
    PRIMARY KEY (host_id, id)
);
-- Who read which secret on which host: totals since first seen.
CREATE TABLE fleet_reader (
    host_id    integer NOT NULL REFERENCES fleet_host (id) ON DELETE CASCADE,
    secret_id  text NOT NULL,
    identity   text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    opens      bigint NOT NULL,
    denied     bigint NOT NULL,
    reads      bigint NOT NULL,
    writes     bigint NOT NULL,
    human      bigint NOT NULL,
    PRIMARY KEY (host_id, secret_id, identity)
);
CREATE INDEX fleet_reader_by_last_seen ON fleet_reader (last_seen);
";

/// A host's first sync writes thousands of rows; measured on a 200-host
/// store, its 3,000 reader rows took 110 ms, 47 of them in the foreign-key
/// check (run once per row), and `fleet_reader_by_last_seen` costs a write
/// per row that no report reads (the ledger keeps readers 90 days and a report's window is
/// usually 30: a scan reads the table faster than the index). A host's
/// rows are written only after its `fleet_host` row is locked in the same
/// transaction, so nothing is checked per row; removing a host removes
/// what it sent, by one trigger per statement, as the cascade did.
const V2: &str = "
ALTER TABLE fleet_run DROP CONSTRAINT fleet_run_host_id_fkey;
ALTER TABLE fleet_secret DROP CONSTRAINT fleet_secret_host_id_fkey;
ALTER TABLE fleet_fingerprint DROP CONSTRAINT fleet_fingerprint_host_id_fkey;
ALTER TABLE fleet_identity DROP CONSTRAINT fleet_identity_host_id_fkey;
ALTER TABLE fleet_reader DROP CONSTRAINT fleet_reader_host_id_fkey;
DROP INDEX fleet_reader_by_last_seen;
CREATE FUNCTION fleet_host_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM fleet_run WHERE host_id IN (SELECT id FROM removed);
    DELETE FROM fleet_secret WHERE host_id IN (SELECT id FROM removed);
    DELETE FROM fleet_fingerprint WHERE host_id IN (SELECT id FROM removed);
    DELETE FROM fleet_identity WHERE host_id IN (SELECT id FROM removed);
    DELETE FROM fleet_reader WHERE host_id IN (SELECT id FROM removed);
    RETURN NULL;
END
$$;
CREATE TRIGGER fleet_host_removed AFTER DELETE ON fleet_host
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_host_removed();
";

/// Agents of one fleet start together: one of them migrates, the others
/// wait on this lock and then find nothing to do.
const MIGRATION_LOCK: i64 = 0x7365_6372_6574_6d6e; // "secretmn"

/// Rows per statement: large first syncs go in slices.
const ROWS_PER_STATEMENT: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("fleet store {url}: {}", crate::errors::error_text(err))]
    Connect {
        url: String,
        err: tokio_postgres::Error,
    },
    #[error("fleet store: {}", crate::errors::error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("fleet store {0}: no agent has synced to it yet (no secretmon tables)")]
    Empty(String),
    #[error("the fleet store's schema is v{found}, newer than this secretmon knows (v{known})")]
    TooNew { found: i32, known: i32 },
    #[error(
        "the fleet store's schema is v{found}, older than v{known}: let an agent sync once to migrate it"
    )]
    TooOld { found: i32, known: i32 },
}

/// An open connection to the fleet store.
pub struct Store {
    client: Client,
    /// Made once per store: a host's sync cursor is kept per store, so a
    /// new store gets everything.
    pub store_id: String,
}

/// What a host says of itself at each sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub host: String,
    pub agent_version: String,
    pub fleet_key_id: Option<String>,
    pub observing_since: DateTime<Utc>,
    pub at: DateTime<Utc>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Events the kernel dropped in this run.
    pub events_lost: u64,
}

/// One run of an agent: it observed from `started` to `alive` (or
/// `stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub started: DateTime<Utc>,
    pub alive: DateTime<Utc>,
    pub stopped: Option<DateTime<Utc>>,
    pub events_lost: u64,
}

/// Rows to upsert and rows to delete, for one host, in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub runs: Vec<Run>,
    pub secrets: Vec<SecretRow>,
    pub fingerprints: Vec<((String, String), Span)>,
    pub identities: Vec<IdentityRow>,
    pub readers: Vec<((String, String), AccessRow)>,
    pub deleted: Deleted,
}

/// Rows the local ledger no longer has (retention pruned them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub secrets: Vec<String>,
    pub fingerprints: Vec<(String, String)>,
    pub identities: Vec<String>,
    pub readers: Vec<(String, String)>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        let d = &self.deleted;
        self.runs.len()
            + self.secrets.len()
            + self.fingerprints.len()
            + self.identities.len()
            + self.readers.len()
            + d.secrets.len()
            + d.fingerprints.len()
            + d.identities.len()
            + d.readers.len()
    }
}

impl Store {
    /// Connect to `url` within `timeout`, with TLS as its `sslmode` says.
    pub async fn connect(
        url: &StoreUrl,
        password: Option<&Password>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut config = url.config();
        config
            .application_name("secretmon")
            .connect_timeout(timeout);
        if let Some(p) = password {
            config.password(p.expose().as_bytes());
        }
        let connect_err = |err| StoreError::Connect {
            url: url.to_string(),
            err,
        };
        let client = if url.ssl_mode == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
            tokio::spawn(drive(connection));
            client
        } else {
            let tls = MakeRustlsConnect::new(tls::client_config(url.ssl_mode, &url.root_certs)?);
            let (client, connection) = config.connect(tls).await.map_err(connect_err)?;
            tokio::spawn(drive(connection));
            client
        };
        let store_id = match client
            .query_opt(
                "SELECT value FROM fleet_meta WHERE key = 'store_id' \
                 AND to_regclass('fleet_meta') IS NOT NULL",
                &[],
            )
            .await
        {
            Ok(row) => row.map(|r| r.get(0)).unwrap_or_default(),
            // No tables yet: `migrate` makes them.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                String::new()
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self { client, store_id })
    }

    /// Bring the schema up to date; several agents may race here.
    pub async fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i32;
        // Up to date, as it nearly always is: no lock, no transaction.
        if !self.store_id.is_empty() && self.version().await? == known {
            return Ok(());
        }
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS fleet_migration (
                version integer PRIMARY KEY,
                applied timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM fleet_migration", &[])
            .await?
            .get(0);
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO fleet_migration (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        self.store_id = self
            .client
            .query_one("SELECT value FROM fleet_meta WHERE key = 'store_id'", &[])
            .await?
            .get(0);
        Ok(())
    }

    /// For `report`: the schema must be there and this version's.
    pub async fn check_schema(&self, url: &StoreUrl) -> Result<(), StoreError> {
        if self.store_id.is_empty() {
            return Err(StoreError::Empty(url.to_string()));
        }
        let known = MIGRATIONS.len() as i32;
        let found = self.version().await?;
        match found.cmp(&known) {
            std::cmp::Ordering::Greater => Err(StoreError::TooNew { found, known }),
            std::cmp::Ordering::Less => Err(StoreError::TooOld { found, known }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// The newest migration applied; the tables exist.
    async fn version(&self) -> Result<i32, StoreError> {
        Ok(self
            .client
            .query_one("SELECT coalesce(max(version), 0) FROM fleet_migration", &[])
            .await?
            .get(0))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Upsert `beat` and `batch` in one transaction.
    pub async fn push(&mut self, beat: &Heartbeat, batch: &Batch) -> Result<(), StoreError> {
        let tx = self.client.transaction().await?;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let host_id: i32 = tx
            .query_one(
                "INSERT INTO fleet_host (name, agent_version, fleet_key_id, observing_since, \
                 last_sync, sync_interval_ms, sync_timeout_ms, events_lost) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (name) DO UPDATE SET agent_version = EXCLUDED.agent_version, \
                 fleet_key_id = EXCLUDED.fleet_key_id, \
                 observing_since = least(fleet_host.observing_since, EXCLUDED.observing_since), \
                 last_sync = greatest(fleet_host.last_sync, EXCLUDED.last_sync), \
                 sync_interval_ms = EXCLUDED.sync_interval_ms, \
                 sync_timeout_ms = EXCLUDED.sync_timeout_ms, events_lost = EXCLUDED.events_lost \
                 RETURNING id",
                &[
                    &beat.host,
                    &beat.agent_version,
                    &beat.fleet_key_id,
                    &beat.observing_since,
                    &beat.at,
                    &ms(beat.interval),
                    &ms(beat.timeout),
                    &count(beat.events_lost),
                ],
            )
            .await?
            .get(0);
        push_runs(&tx, host_id, &batch.runs).await?;
        for chunk in batch.secrets.chunks(ROWS_PER_STATEMENT) {
            push_secrets(&tx, host_id, chunk).await?;
        }
        for chunk in batch.fingerprints.chunks(ROWS_PER_STATEMENT) {
            push_fingerprints(&tx, host_id, chunk).await?;
        }
        for chunk in batch.identities.chunks(ROWS_PER_STATEMENT) {
            push_identities(&tx, host_id, chunk).await?;
        }
        for chunk in batch.readers.chunks(ROWS_PER_STATEMENT) {
            push_readers(&tx, host_id, chunk).await?;
        }
        delete(&tx, host_id, &batch.deleted).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // A broken connection fails the next query, which says why.
    if let Err(e) = connection.await {
        tracing::debug!("fleet store connection closed: {e}");
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How one table takes a host's rows: its columns after `host_id`, with
/// their types, the first `key` of them the row's key; a row the store has
/// takes the others, or what `set` says for some of them.
struct Upsert {
    table: &'static str,
    columns: &'static [(&'static str, &'static str)],
    key: usize,
    set: &'static [(&'static str, &'static str)],
}

const RUNS: Upsert = Upsert {
    table: "fleet_run",
    columns: &[
        ("started", "timestamptz"),
        ("alive", "timestamptz"),
        ("stopped", "timestamptz"),
        ("events_lost", "bigint"),
    ],
    key: 1,
    set: &[("alive", "greatest(t.alive, i.alive)")],
};

const SECRETS: Upsert = Upsert {
    table: "fleet_secret",
    columns: &[
        ("id", "text"),
        ("path", "text"),
        ("type", "text"),
        ("fingerprint", "text"),
        ("lifetime", "text"),
        ("hint", "text"),
        ("mode", "integer"),
        ("uid", "bigint"),
        ("mtime", "timestamptz"),
        ("expires", "timestamptz"),
        ("first_seen", "timestamptz"),
        ("last_seen", "timestamptz"),
        ("removed", "timestamptz"),
        ("unwatched", "timestamptz"),
    ],
    key: 1,
    set: &[],
};

const FINGERPRINTS: Upsert = Upsert {
    table: "fleet_fingerprint",
    columns: &[
        ("secret_id", "text"),
        ("fingerprint", "text"),
        ("first_seen", "timestamptz"),
        ("last_seen", "timestamptz"),
    ],
    key: 2,
    set: &[],
};

const IDENTITIES: Upsert = Upsert {
    table: "fleet_identity",
    columns: &[
        ("id", "text"),
        ("kind", "text"),
        ("spiffe_id", "text"),
        ("first_seen", "timestamptz"),
        ("last_seen", "timestamptz"),
        ("gone_since", "timestamptz"),
    ],
    key: 1,
    set: &[],
};

const READERS: Upsert = Upsert {
    table: "fleet_reader",
    columns: &[
        ("secret_id", "text"),
        ("identity", "text"),
        ("first_seen", "timestamptz"),
        ("last_seen", "timestamptz"),
        ("opens", "bigint"),
        ("denied", "bigint"),
        ("reads", "bigint"),
        ("writes", "bigint"),
        ("human", "bigint"),
    ],
    key: 2,
    set: &[],
};

impl Upsert {
    /// `unnest($2::text[], ...) AS i(a, ...)`: the rows, from one array
    /// per column.
    fn input(&self) -> String {
        let arrays: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(n, (_, ty))| format!("${}::{ty}[]", n + 2))
            .collect();
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        format!("unnest({}) AS i({})", arrays.join(", "), names.join(", "))
    }

    /// `t.host_id = $1 AND t.k = i.k ...`: a stored row and an input row
    /// are one.
    fn same_row(&self) -> String {
        let mut on = vec!["t.host_id = $1".to_string()];
        on.extend(
            self.columns[..self.key]
                .iter()
                .map(|(c, _)| format!("t.{c} = i.{c}")),
        );
        on.join(" AND ")
    }

    /// Update the rows the store has, then insert the others. Not `INSERT
    /// ... ON CONFLICT`: its speculative insertion took twice as long as a
    /// plain one (a host's first sync inserts thousands of rows). No other
    /// transaction writes this host's rows meanwhile: each locks its
    /// `fleet_host` row first.
    fn statements(&self) -> [String; 2] {
        let set: Vec<String> = self.columns[self.key..]
            .iter()
            .map(|(c, _)| {
                let value = self
                    .set
                    .iter()
                    .find(|(name, _)| name == c)
                    .map_or_else(|| format!("i.{c}"), |(_, v)| v.to_string());
                format!("{c} = {value}")
            })
            .collect();
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        [
            format!(
                "UPDATE {} t SET {} FROM {} WHERE {}",
                self.table,
                set.join(", "),
                self.input(),
                self.same_row()
            ),
            format!(
                "INSERT INTO {0} (host_id, {1}) SELECT $1, {1} FROM {2} \
                 WHERE NOT EXISTS (SELECT 1 FROM {0} t WHERE {3})",
                self.table,
                names.join(", "),
                self.input(),
                self.same_row()
            ),
        ]
    }

    /// Write `columns` (one array each, in [`Upsert::columns`]' order) as
    /// `host`'s rows.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        host: i32,
        columns: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&host];
        params.extend_from_slice(columns);
        for sql in self.statements() {
            tx.execute(sql.as_str(), &params).await?;
        }
        Ok(())
    }
}

async fn push_runs(tx: &Transaction<'_>, host: i32, runs: &[Run]) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let started: Vec<_> = runs.iter().map(|r| r.started).collect();
    let alive: Vec<_> = runs.iter().map(|r| r.alive).collect();
    let stopped: Vec<_> = runs.iter().map(|r| r.stopped).collect();
    let lost: Vec<_> = runs.iter().map(|r| count(r.events_lost)).collect();
    RUNS.write(tx, host, &[&started, &alive, &stopped, &lost])
        .await
}

async fn push_secrets(
    tx: &Transaction<'_>,
    host: i32,
    rows: &[SecretRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&SecretRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let id = col(|r| Some(r.facts.id.clone()));
    let path = col(|r| Some(r.facts.path.clone()));
    let kind = col(|r| Some(r.facts.secret_type.clone()));
    let fingerprint = col(|r| r.facts.fingerprint.clone());
    let lifetime = col(|r| r.facts.lifetime.clone());
    let hint = col(|r| r.facts.hint.clone());
    let mode: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.facts.mode.map(|m| m as i32))
        .collect();
    let uid: Vec<Option<i64>> = rows.iter().map(|r| r.facts.uid.map(i64::from)).collect();
    let time = |f: fn(&SecretRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
    let mtime = time(|r| r.facts.mtime);
    let expires = time(|r| r.facts.expires);
    let first = time(|r| Some(r.first_seen));
    let last = time(|r| Some(r.last_seen));
    let removed = time(|r| r.removed);
    let unwatched = time(|r| r.unwatched);
    SECRETS
        .write(
            tx,
            host,
            &[
                &id,
                &path,
                &kind,
                &fingerprint,
                &lifetime,
                &hint,
                &mode,
                &uid,
                &mtime,
                &expires,
                &first,
                &last,
                &removed,
                &unwatched,
            ],
        )
        .await
}

async fn push_fingerprints(
    tx: &Transaction<'_>,
    host: i32,
    rows: &[((String, String), Span)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let secret: Vec<&str> = rows.iter().map(|((s, _), _)| s.as_str()).collect();
    let fingerprint: Vec<&str> = rows.iter().map(|((_, f), _)| f.as_str()).collect();
    let first: Vec<_> = rows.iter().map(|(_, s)| s.first_seen).collect();
    let last: Vec<_> = rows.iter().map(|(_, s)| s.last_seen).collect();
    FINGERPRINTS
        .write(tx, host, &[&secret, &fingerprint, &first, &last])
        .await
}

async fn push_identities(
    tx: &Transaction<'_>,
    host: i32,
    rows: &[IdentityRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let id: Vec<&str> = rows.iter().map(|i| i.id.as_str()).collect();
    let kind: Vec<&str> = rows.iter().map(|i| i.kind.as_str()).collect();
    let spiffe: Vec<&str> = rows.iter().map(|i| i.spiffe_id.as_str()).collect();
    let first: Vec<_> = rows.iter().map(|i| i.first_seen).collect();
    let last: Vec<_> = rows.iter().map(|i| i.last_seen).collect();
    let gone: Vec<_> = rows.iter().map(|i| i.gone_since).collect();
    IDENTITIES
        .write(tx, host, &[&id, &kind, &spiffe, &first, &last, &gone])
        .await
}

async fn push_readers(
    tx: &Transaction<'_>,
    host: i32,
    rows: &[((String, String), AccessRow)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let secret: Vec<&str> = rows.iter().map(|((s, _), _)| s.as_str()).collect();
    let identity: Vec<&str> = rows.iter().map(|((_, i), _)| i.as_str()).collect();
    let first: Vec<_> = rows.iter().map(|(_, a)| a.first_seen).collect();
    let last: Vec<_> = rows.iter().map(|(_, a)| a.last_seen).collect();
    let opens: Vec<i64> = rows.iter().map(|(_, a)| count(a.count)).collect();
    let denied: Vec<i64> = rows.iter().map(|(_, a)| count(a.denied)).collect();
    let reads: Vec<i64> = rows.iter().map(|(_, a)| count(a.reads)).collect();
    let writes: Vec<i64> = rows.iter().map(|(_, a)| count(a.writes)).collect();
    let human: Vec<i64> = rows.iter().map(|(_, a)| count(a.human)).collect();
    READERS
        .write(
            tx,
            host,
            &[
                &secret, &identity, &first, &last, &opens, &denied, &reads, &writes, &human,
            ],
        )
        .await
}

async fn delete(tx: &Transaction<'_>, host: i32, d: &Deleted) -> Result<(), StoreError> {
    if !d.readers.is_empty() {
        let (s, i): (Vec<&str>, Vec<&str>) = d
            .readers
            .iter()
            .map(|(s, i)| (s.as_str(), i.as_str()))
            .unzip();
        tx.execute(
            "DELETE FROM fleet_reader r USING unnest($2::text[], $3::text[]) AS d(s, i) \
             WHERE r.host_id = $1 AND r.secret_id = d.s AND r.identity = d.i",
            &[&host, &s, &i],
        )
        .await?;
    }
    if !d.fingerprints.is_empty() {
        let (s, f): (Vec<&str>, Vec<&str>) = d
            .fingerprints
            .iter()
            .map(|(s, f)| (s.as_str(), f.as_str()))
            .unzip();
        tx.execute(
            "DELETE FROM fleet_fingerprint x USING unnest($2::text[], $3::text[]) AS d(s, f) \
             WHERE x.host_id = $1 AND x.secret_id = d.s AND x.fingerprint = d.f",
            &[&host, &s, &f],
        )
        .await?;
    }
    if !d.secrets.is_empty() {
        tx.execute(
            "DELETE FROM fleet_secret WHERE host_id = $1 AND id = ANY($2)",
            &[&host, &d.secrets],
        )
        .await?;
    }
    if !d.identities.is_empty() {
        tx.execute(
            "DELETE FROM fleet_identity WHERE host_id = $1 AND id = ANY($2)",
            &[&host, &d.identities],
        )
        .await?;
    }
    Ok(())
}
