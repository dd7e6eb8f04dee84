//! The durable store: one SQLite file in WAL mode, `synchronous = FULL`, so
//! a write that returned is on disk and survives `kill -9` and power loss.
//! A callback request is acknowledged only after its insert committed.
//!
//! Owns: the schema and its versioned migrations, callbacks (create with
//! de-duplication, read, list, edit, cancel, state changes), call records,
//! the queue log, the SMS outbox, retention (masking with `secure_delete`,
//! then a truncating checkpoint), the keyed audit chain (`audit.rs`), the
//! files' owner-only modes ([`owner_only`]). Never does: networking or
//! scheduling; one thread owns a [`Store`] (SQLite serialises writers
//! anyway) and others talk to it through a channel.
#![warn(missing_docs)]

mod audit;
mod campaigns;
mod mirror;
mod mirror_contacts;
mod operators;
pub mod owner_only;
mod queue_owners;
mod reports;
pub mod service;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, params};

pub use audit::{
    AUDIT_KEY_FILE, AuditBroken, AuditChain, AuditEntry, AuditHead, AuditKey, HeadCheck,
    MIN_AUDIT_KEY, NUMBER_TARGET,
};
pub use campaigns::{
    Attempt, AttemptEnd, CallAttempt, Campaign, CampaignStatus, Claim, Claimed, Contact,
    ContactStatus, DialCheck, Disposition, Imported, LogLine, NewContact, Progress, StatusChange,
};
pub use centralino_types::record::Record;
pub use mirror::{Kept, Mirrored};
pub use mirror_contacts::{INTERRUPTED_HOLD, MirroredContact, Tombstone, WorkContact};
pub use operators::{Operator, read_operators};
pub use queue_owners::{LOCK_FILE, OwnerConflict, RebindError, lock_data_dir};
pub use reports::{
    AGENT_LOOKBACK_MS, AgentFigures, Backlog, MAX_INTERVALS, QueueFigures, Span, Thresholds,
};

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    // 1: callbacks.
    "CREATE TABLE callbacks (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        number TEXT NOT NULL,
        not_before INTEGER,
        requirements TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX callbacks_status ON callbacks (status, created_at);
    CREATE UNIQUE INDEX callbacks_one_pending ON callbacks (queue, number)
        WHERE status IN ('pending', 'in_progress');",
    // 2: call records and the queue event log.
    "CREATE TABLE cdr (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        caller TEXT NOT NULL,
        did TEXT NOT NULL,
        queue TEXT,
        agent TEXT,
        outcome TEXT,
        wait_ms INTEGER,
        talk_ms INTEGER,
        variables TEXT,
        anonymised INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX cdr_open ON cdr (ended_at) WHERE ended_at IS NULL;
    CREATE INDEX cdr_started ON cdr (started_at);
    CREATE TABLE queue_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        call TEXT NOT NULL,
        queue TEXT NOT NULL,
        event TEXT NOT NULL,
        agent TEXT,
        position INTEGER,
        wait_ms INTEGER
    );
    CREATE INDEX queue_log_at ON queue_log (at);",
    // 3: operators' answers to the queue's script, per call.
    "CREATE TABLE call_answers (
        call TEXT NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        agent TEXT,
        at INTEGER NOT NULL,
        PRIMARY KEY (call, question)
    );",
    // 4: a callback whose citizen has been dialled is never dialled again
    // after a crash (it needs a person to look at it instead).
    "ALTER TABLE callbacks ADD COLUMN dialed INTEGER NOT NULL DEFAULT 0;",
    // 5: notifications to the SMS gateway (outbox, retries, dead letters).
    "CREATE TABLE notifications (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        callback TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX notifications_due ON notifications (status, next_at);",
    // 6: operator events (login, logout, pause with its reason, unpause)
    // share the queue log, with an empty call and queue.
    "ALTER TABLE queue_log ADD COLUMN reason TEXT;
    CREATE INDEX queue_log_agent ON queue_log (agent, seq) WHERE call = '';",
    // 7: who read or changed what (health data: the Garante's access log).
    // Append-only by triggers, and each row chained to the previous one by
    // a SHA-256 hash, so an edit made by going around the triggers shows.
    "CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        status INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // 8: the chain is keyed (HMAC-SHA256, audit.rs) from entry `from_seq`
    // on; the entries before keep their SHA-256 chain. `seal` is the key's
    // MAC of that boundary, written with it (`audit::seal_boundary`), so it
    // cannot be moved without the key. Written once.
    "CREATE TABLE audit_keyed (
        from_seq INTEGER NOT NULL,
        seal TEXT
    );
    CREATE TRIGGER audit_keyed_no_update BEFORE UPDATE ON audit_keyed
        BEGIN SELECT RAISE(ABORT, 'the audit boundary is written once'); END;
    CREATE TRIGGER audit_keyed_no_delete BEFORE DELETE ON audit_keyed
        BEGIN SELECT RAISE(ABORT, 'the audit boundary is written once'); END;",
    campaigns::MIGRATION,
    campaigns::DISPOSITIONS,
    campaigns::CALLERS,
    operators::MIGRATION,
    mirror::MIGRATION,
    mirror::MIRRORED_AT,
    mirror_contacts::MIGRATION,
    mirror_contacts::FIXES,
    reports::MIGRATION,
    // The time a callback was promised by, fixed when it was asked for.
    "ALTER TABLE callbacks ADD COLUMN promised_by INTEGER;",
    campaigns::NAMES_PER_TENANT,
    queue_owners::MIGRATION,
    reports::AGENT_FIRMS,
];

/// A notification waiting to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Outbox position.
    pub seq: i64,
    /// Event name (booked, about_to_call, failed).
    pub event: String,
    /// JSON body.
    pub payload: String,
    /// Attempts so far.
    pub attempts: u32,
}

/// A call record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cdr {
    /// Id.
    pub id: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds; `None` while the call lasts.
    pub ended_at: Option<i64>,
    /// Caller (masked once anonymised).
    pub caller: String,
    /// Outcome.
    pub outcome: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// Operator.
    pub agent: Option<String>,
}

/// Most callbacks one list returns.
pub const MAX_LIST: usize = 1000;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused (disk full, corrupt file, locked by another process).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The service's thread could not be started.
    #[error("cannot start the store's thread: {0}")]
    Thread(std::io::Error),
    /// The file was written by a newer Centralino.
    #[error("database schema version {found} is newer than this program's {known}")]
    TooNew {
        /// In the file.
        found: u32,
        /// Known here.
        known: u32,
    },
    /// The database file cannot be created owner-only.
    #[error("database file {0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The audit key file cannot be read or created.
    #[error("audit key file {0}: {1}")]
    AuditKey(PathBuf, std::io::Error),
    /// The audit key file holds too few bytes.
    #[error("audit key file {0}: at least {MIN_AUDIT_KEY} bytes of secret needed, found {1}")]
    AuditKeyShort(PathBuf, usize),
    /// The system's random source failed.
    #[error("no random audit key: {0}")]
    AuditKeyRandom(String),
    /// The audit log predates keyed audit and has entries: only a store
    /// opened with the key can seal them into the keyed chain.
    #[error("the audit log predates keyed audit: the node seals it with its key at its next start")]
    AuditKeyNeeded,
    /// Another process holds the data directory (a node serving from it).
    #[error(
        "{0} is in use by another Centralino process (one node per data directory; stop it first)"
    )]
    InUse(PathBuf),
    /// The configuration gives queues to other firms than the database
    /// knows them by (`queue_owners.rs`).
    #[error("{}; give each such queue another name, or move it with `centralino rebind-queue` (the node stopped; first cancel its pending callbacks and stop the old firm's campaigns on it, on a node started with the old configuration)", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    QueueOwners(Vec<OwnerConflict>),
    /// The store was opened without the audit key and cannot sign entries.
    #[error("the store was opened without the audit key: it cannot write the audit log")]
    NoAuditKey,
}

/// Where a callback stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for its time and an operator.
    Pending,
    /// Being dialled.
    InProgress,
    /// The citizen was reached.
    Done,
    /// Every attempt failed.
    Failed,
    /// Cancelled by the citizen or an operator.
    Cancelled,
    /// Taken over by another node of the firm (this node was cut off or
    /// down): that node calls; this one never does.
    Moved,
}

impl Status {
    /// The API and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Moved => "moved",
        }
    }

    /// From the API and database name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "moved" => Self::Moved,
            _ => return None,
        })
    }
}

/// A callback request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    /// Opaque id.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// The number to call.
    pub number: String,
    /// Not before this Unix time.
    pub not_before: Option<i64>,
    /// Extra requirements (an expression).
    pub requirements: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Status.
    pub status: Status,
    /// Dial attempts so far.
    pub attempts: u32,
    /// Last outcome (answered, busy, no_answer, failed, cancelled).
    pub outcome: Option<String>,
    /// Where it came from (api, ivr).
    pub source: String,
    /// Unix time of the request.
    pub created_at: i64,
    /// Unix time of the last change.
    pub updated_at: i64,
    /// By when it was promised (Unix seconds), fixed when it was asked
    /// for (a retry's later `not_before` does not move it); `None` when
    /// no promise could be made (or before promises were kept).
    pub promised_by: Option<i64>,
}

/// A new request (already validated by the caller).
#[derive(Clone, Debug)]
pub struct NewCallback {
    /// Opaque id (random, chosen by the caller).
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Number to call.
    pub number: String,
    /// Not before.
    pub not_before: Option<i64>,
    /// Requirements.
    pub requirements: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Where it came from.
    pub source: String,
    /// When it was asked for, if not now: a caller who chose a callback
    /// while waiting keeps the time they entered the queue.
    pub created_at: Option<i64>,
    /// By when it is promised (the queue's `callback_promise_minutes` of
    /// its callback hours, computed by the caller).
    pub promised_by: Option<i64>,
}

/// What a create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Stored.
    New(Callback),
    /// A request for the same number and queue is already pending: that one.
    Existing(Callback),
}

/// Changes to a pending callback.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// New earliest time (`Some(None)` clears it).
    pub not_before: Option<Option<i64>>,
    /// New priority.
    pub priority: Option<i32>,
    /// New requirements (`Some(None)` clears them).
    pub requirements: Option<Option<String>>,
    /// A new promise (the citizen chose another time: `not_before`).
    pub promised_by: Option<Option<i64>>,
}

/// What an edit or cancel found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Changed.
    Done(Callback),
    /// No such callback.
    NotFound,
    /// Not pending any more: it cannot change.
    NotPending(Callback),
}

/// The store.
pub struct Store {
    conn: Connection,
    /// Signs audit entries; `None` for a store that only reads them.
    audit_key: Option<AuditKey>,
}

/// The database is created owner-only before SQLite opens it: SQLite gives
/// the `-wal` and `-shm` files it creates the database file's mode. Files
/// found looser (an older version made them 0644) are tightened.
fn owner_only_files(path: &Path) -> Result<(), StoreError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(owner_only::FILE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::File(path.to_path_buf(), e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        owner_only::tighten_or_warn(Path::new(&file), owner_only::FILE_MODE);
    }
    Ok(())
}

const COLUMNS: &str = "id, queue, number, not_before, requirements, priority, status, attempts, outcome, source, created_at, updated_at, promised_by";

/// One callback by id (inside a transaction or not).
fn find(conn: &Connection, id: &str) -> rusqlite::Result<Option<Callback>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM callbacks WHERE id = ?1"),
        params![id],
        callback,
    )
    .optional()
}

fn callback(row: &Row<'_>) -> rusqlite::Result<Callback> {
    let status: String = row.get(6)?;
    Ok(Callback {
        id: row.get(0)?,
        queue: row.get(1)?,
        number: row.get(2)?,
        not_before: row.get(3)?,
        requirements: row.get(4)?,
        priority: row.get(5)?,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        attempts: row.get(7)?,
        outcome: row.get(8)?,
        source: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
        promised_by: row.get(12)?,
    })
}

/// A call's queue (as its record says) and its answers by question id.
pub type CallAnswers = (Option<String>, Vec<(String, String)>);

impl Store {
    /// Opens (or creates) the database file and brings its schema up to
    /// date, without the audit key: it reads the audit log but cannot add
    /// to it, nor upgrade a log of unkeyed entries
    /// ([`StoreError::AuditKeyNeeded`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// Opens (or creates) the database file as the node's writer: `key`
    /// signs audit entries and seals a log of unkeyed entries at the
    /// upgrade.
    pub fn open_keyed(path: &Path, key: AuditKey) -> Result<Self, StoreError> {
        Self::open_with(path, Some(key))
    }

    /// Opens the node's database for reading only (reports): its own
    /// connection, so a long query never holds up the writer's group
    /// commits (WAL lets both run at once).
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Not `temp_store = MEMORY` here: a report over a year of calls
        // sorts and materialises millions of rows, which must not all be
        // held in memory (they hold call ids and queue events, no number).
        Ok(Self {
            conn,
            audit_key: None,
        })
    }

    fn open_with(path: &Path, audit_key: Option<AuditKey>) -> Result<Self, StoreError> {
        owner_only_files(path)?;
        let conn = Connection::open(path)?;
        // busy_timeout first: switching to WAL can meet a lock.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        // secure_delete: a masked or deleted number is overwritten with
        // zeros in its page, not left in free space for anyone who reads
        // the file (per connection: this one is the node's writer).
        // temp_store: the statement journal of each request's savepoint
        // (the pages a group commit's request changes, numbers and all)
        // and any temporary table stay in memory — never in an unlinked
        // file of the temporary directory, outside the data directory's
        // owner-only permissions, and without a write(2) per page (it was
        // a tenth of the store thread's time under load).
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA temp_store = MEMORY;",
        )?;
        // Room for every statement the writer repeats (the cache is an
        // LRU of 16 by default: call records, callbacks and campaigns
        // together would evict each other).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Self { conn, audit_key };
        store.migrate()?;
        Ok(store)
    }

    /// Whether deleted content is overwritten (`PRAGMA secure_delete`).
    pub fn secure_delete(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA secure_delete", [], |r| r.get::<_, i64>(0))?
            == 1)
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        let known = MIGRATIONS.len() as u32;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(m)?;
            if i as u32 + 1 == audit::KEYED_SCHEMA {
                audit::seal_boundary(&tx, self.audit_key.as_ref())?;
            }
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Stores a request, or returns the pending one for the same number
    /// and queue. Returns once the insert is on disk.
    pub fn create_callback(&mut self, new: &NewCallback, now: i64) -> Result<Created, StoreError> {
        let tx = self.conn.savepoint()?;
        let existing = tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM callbacks WHERE queue = ?1 AND number = ?2 AND status IN ('pending', 'in_progress')"
                ),
                params![new.queue, new.number],
                callback,
            )
            .optional()?;
        if let Some(cb) = existing {
            return Ok(Created::Existing(cb));
        }
        let created = new.created_at.unwrap_or(now);
        tx.execute(
            "INSERT INTO callbacks (id, queue, number, not_before, requirements, priority, status, attempts, source, created_at, updated_at, promised_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9, ?10)",
            params![
                new.id,
                new.queue,
                new.number,
                new.not_before,
                new.requirements,
                new.priority,
                new.source,
                created,
                now,
                new.promised_by
            ],
        )?;
        tx.commit()?;
        Ok(Created::New(Callback {
            id: new.id.clone(),
            queue: new.queue.clone(),
            number: new.number.clone(),
            not_before: new.not_before,
            requirements: new.requirements.clone(),
            priority: new.priority,
            status: Status::Pending,
            attempts: 0,
            outcome: None,
            source: new.source.clone(),
            created_at: created,
            updated_at: now,
            promised_by: new.promised_by,
        }))
    }

    /// One callback.
    pub fn get_callback(&self, id: &str) -> Result<Option<Callback>, StoreError> {
        Ok(find(&self.conn, id)?)
    }

    /// Callbacks, oldest first, optionally of one status (at most
    /// `limit`, capped at [`MAX_LIST`]).
    /// `queues`, when given, keeps the list to those queues (a token of
    /// one tenant sees its own callbacks only).
    pub fn list_callbacks(
        &self,
        status: Option<Status>,
        queues: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Callback>, StoreError> {
        let limit = limit.min(MAX_LIST) as i64;
        // The queue names travel as one JSON array (SQLite's json_each),
        // so the statement stays the same whatever their number.
        let queues = queues.map(|q| {
            let quoted: Vec<String> = q
                .iter()
                .map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("[{}]", quoted.join(","))
        });
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM callbacks WHERE (?1 IS NULL OR status = ?1) AND (?3 IS NULL OR queue IN (SELECT value FROM json_each(?3))) ORDER BY created_at, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![status.map(Status::as_str), limit, queues], callback)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Edits a pending callback.
    pub fn update_callback(
        &mut self,
        id: &str,
        patch: &Patch,
        now: i64,
    ) -> Result<Edit, StoreError> {
        let tx = self.conn.savepoint()?;
        let Some(mut cb) = find(&tx, id)? else {
            return Ok(Edit::NotFound);
        };
        if cb.status != Status::Pending {
            return Ok(Edit::NotPending(cb));
        }
        if let Some(nb) = patch.not_before {
            cb.not_before = nb;
        }
        if let Some(p) = patch.priority {
            cb.priority = p;
        }
        if let Some(r) = &patch.requirements {
            cb.requirements.clone_from(r);
        }
        if let Some(p) = patch.promised_by {
            cb.promised_by = p;
        }
        cb.updated_at = now;
        tx.execute(
            "UPDATE callbacks SET not_before = ?2, priority = ?3, requirements = ?4, updated_at = ?5, promised_by = ?6 WHERE id = ?1",
            params![id, cb.not_before, cb.priority, cb.requirements, now, cb.promised_by],
        )?;
        tx.commit()?;
        Ok(Edit::Done(cb))
    }

    /// Sets a callback's status (and outcome); a pending callback only
    /// moves on, a finished one never changes again.
    pub fn set_status(
        &mut self,
        id: &str,
        status: Status,
        outcome: Option<&str>,
        now: i64,
    ) -> Result<Edit, StoreError> {
        let tx = self.conn.savepoint()?;
        let Some(mut cb) = find(&tx, id)? else {
            return Ok(Edit::NotFound);
        };
        if !matches!(cb.status, Status::Pending | Status::InProgress) {
            return Ok(Edit::NotPending(cb));
        }
        let attempts = cb.attempts + u32::from(status == Status::InProgress);
        tx.execute(
            "UPDATE callbacks SET status = ?2, outcome = COALESCE(?3, outcome), attempts = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, status.as_str(), outcome, attempts, now],
        )?;
        tx.commit()?;
        cb.status = status;
        cb.attempts = attempts;
        if let Some(o) = outcome {
            cb.outcome = Some(o.to_owned());
        }
        cb.updated_at = now;
        Ok(Edit::Done(cb))
    }

    /// Writes a batch of records in one transaction (one fsync for many
    /// events: the call path never waits for the disk), with statements
    /// compiled once per connection (compiling them for each row was a
    /// tenth of the store thread's time at 2,000 calls/s).
    pub fn write_records(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        for r in records {
            match r {
                Record::CallStarted {
                    id,
                    at_ms,
                    caller,
                    did,
                } => {
                    tx.prepare_cached("INSERT OR IGNORE INTO cdr (id, started_at, caller, did) VALUES (?1, ?2, ?3, ?4)")?.execute(params![id, at_ms, caller, did])?;
                }
                Record::Queue {
                    call,
                    at_ms,
                    queue,
                    event,
                    agent,
                    position,
                    wait_ms,
                } => {
                    tx.prepare_cached("INSERT INTO queue_log (at, call, queue, event, agent, position, wait_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![at_ms, call, queue, event.as_str(), agent, position, wait_ms])?;
                }
                Record::Agent {
                    at_ms,
                    agent,
                    tenant,
                    event,
                    reason,
                } => {
                    tx.prepare_cached("INSERT INTO queue_log (at, call, queue, event, agent, reason, tenant) VALUES (?1, '', '', ?2, ?3, ?4, ?5)")?.execute(params![at_ms, event, agent, reason, tenant])?;
                }
                Record::Complete {
                    call,
                    at_ms,
                    queue,
                    agent,
                    talk_ms,
                } => {
                    tx.prepare_cached("INSERT INTO queue_log (at, call, queue, event, agent, talk_ms) VALUES (?1, ?2, ?3, 'complete', ?4, ?5)")?.execute(params![at_ms, call, queue, agent, talk_ms])?;
                }
                Record::CallEnded {
                    id,
                    at_ms,
                    outcome,
                    queue,
                    agent,
                    wait_ms,
                    talk_ms,
                    variables,
                } => {
                    tx.prepare_cached("UPDATE cdr SET ended_at = ?2, outcome = ?3, queue = COALESCE(?4, queue), agent = COALESCE(?5, agent), wait_ms = ?6, talk_ms = ?7, variables = ?8 WHERE id = ?1")?.execute(params![id, at_ms, outcome.as_str(), queue, agent, wait_ms, talk_ms, variables])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Closes the records of calls that were in progress when a previous
    /// process died: outcome `interrupted`, ended at `now_ms`.
    pub fn close_interrupted(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE cdr SET ended_at = ?1, outcome = 'interrupted' WHERE ended_at IS NULL",
            params![now_ms],
        )?)
    }

    /// Masks the numbers of records, finished callbacks and finished SMS
    /// notifications older than `cutoff_ms` (all but the last three
    /// digits): the retention period. [`Store::checkpoint`] then takes the
    /// old versions out of the WAL.
    pub fn anonymise_before(&mut self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let tx = self.conn.savepoint()?;
        let mask = "'***' || substr(caller, -3)";
        let n = tx.execute(
            &format!("UPDATE cdr SET caller = {mask}, variables = NULL, anonymised = 1 WHERE anonymised = 0 AND started_at < ?1"),
            params![cutoff_ms],
        )?;
        // Operators' answers may hold health data: gone after retention.
        tx.execute("DELETE FROM call_answers WHERE at < ?1", params![cutoff_ms])?;
        // Which call was which citizen calling a campaign back, and how
        // often each number was dialled a day: numbers, gone too.
        tx.execute(
            "DELETE FROM campaign_callers WHERE at * 1000 < ?1",
            params![cutoff_ms],
        )?;
        tx.execute(
            "DELETE FROM dial_counts WHERE (day + 1) * 86400000 < ?1",
            params![cutoff_ms],
        )?;
        let m = tx.execute(
            "UPDATE callbacks SET number = '***' || substr(number, -3) WHERE status IN ('done', 'failed', 'cancelled', 'moved') AND updated_at * 1000 < ?1 AND number NOT LIKE '***%'",
            params![cutoff_ms],
        )?;
        // The SMS outbox holds the number in each payload. Masked like the
        // callback it reports, not deleted: what was sent (or dead-lettered)
        // and when stays countable, the number goes. Pending rows are still
        // to be sent: never touched. Only the outbox writes payloads, always
        // JSON; a row that is not is left alone rather than failing the pass.
        let o = tx.execute(
            "UPDATE notifications SET payload = json_set(payload, '$.number', '***' || substr(json_extract(payload, '$.number'), -3))
             WHERE status IN ('sent', 'dead') AND created_at * 1000 < ?1
             AND CASE WHEN json_valid(payload) THEN json_type(payload, '$.number') = 'text' AND json_extract(payload, '$.number') NOT LIKE '***%' ELSE 0 END",
            params![cutoff_ms],
        )?;
        tx.commit()?;
        Ok(n + m + o)
    }

    /// Copies the WAL into the database file and empties it
    /// (`wal_checkpoint(TRUNCATE)`): until then, the WAL keeps older
    /// versions of the pages retention just masked. `false` when a reader
    /// kept it from finishing (the next one will).
    pub fn checkpoint(&mut self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// Call records, newest first (at most `limit`).
    pub fn recent_cdrs(&self, limit: usize) -> Result<Vec<Cdr>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, started_at, ended_at, caller, outcome, queue, agent FROM cdr ORDER BY started_at DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit.min(MAX_LIST) as i64], |r| {
            Ok(Cdr {
                id: r.get(0)?,
                started_at: r.get(1)?,
                ended_at: r.get(2)?,
                caller: r.get(3)?,
                outcome: r.get(4)?,
                queue: r.get(5)?,
                agent: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queue log events of a call, in order: (event, queue, agent).
    pub fn queue_events(
        &self,
        call: &str,
    ) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT event, queue, agent FROM queue_log WHERE call = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![call], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// An operator's own events, in order: (event, reason).
    pub fn agent_events(&self, agent: &str) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT event, reason FROM queue_log WHERE call = '' AND agent = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![agent], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Claims up to `limit` pending callbacks due at `now` (Unix seconds),
    /// oldest request first, each only if `take` agrees for its queue
    /// (asked once per callback it would claim, so it can count a queue's
    /// room down): they become `in_progress` with one more attempt, and
    /// are not dialled yet.
    pub fn claim_due(
        &mut self,
        now: i64,
        limit: usize,
        take: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Callback>, StoreError> {
        let tx = self.conn.savepoint()?;
        let due: Vec<Callback> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM callbacks WHERE status = 'pending' AND (not_before IS NULL OR not_before <= ?1) ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map(params![now], callback)?;
            // Only queues whose callback hours are open now.
            let mut due = Vec::new();
            for r in rows {
                let cb = r?;
                if take(&cb.queue) {
                    due.push(cb);
                    if due.len() >= limit.min(MAX_LIST) {
                        break;
                    }
                }
            }
            due
        };
        let mut out = Vec::with_capacity(due.len());
        for mut cb in due {
            tx.execute(
                "UPDATE callbacks SET status = 'in_progress', attempts = attempts + 1, dialed = 0, updated_at = ?2 WHERE id = ?1",
                params![cb.id, now],
            )?;
            cb.status = Status::InProgress;
            cb.attempts += 1;
            cb.updated_at = now;
            out.push(cb);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Marks an in-progress callback as dialled (durable before the
    /// INVITE leaves): after a crash it is not dialled again.
    pub fn mark_dialed(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE callbacks SET dialed = 1, updated_at = ?2 WHERE id = ?1 AND status = 'in_progress'",
            params![id, now],
        )? == 1)
    }

    /// Runs `f` all or nothing: in one transaction (one fsync for all it
    /// writes: group commit), or, called inside one, in a savepoint. The
    /// methods that write several rows keep their own all-or-nothing the
    /// same way.
    pub fn atomically<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (begin, commit, rollback) = if self.conn.is_autocommit() {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        } else {
            (
                "SAVEPOINT atomically",
                "RELEASE atomically",
                "ROLLBACK TO atomically; RELEASE atomically",
            )
        };
        self.conn.execute_batch(begin)?;
        match f(self) {
            Ok(v) => {
                if let Err(e) = self.conn.execute_batch(commit) {
                    let _ = self.conn.execute_batch(rollback);
                    return Err(e.into());
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch(rollback);
                Err(e)
            }
        }
    }

    /// Puts an in-progress callback that was never dialled back to
    /// pending at once, giving back the attempt `claim_due` counted: its
    /// operator left before the citizen's phone rang. The request keeps
    /// its place (`created_at`) and its `not_before`.
    pub fn requeue(&mut self, id: &str, outcome: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE callbacks SET status = 'pending', attempts = MAX(attempts - 1, 0), outcome = ?2, dialed = 0, updated_at = ?3 WHERE id = ?1 AND status = 'in_progress'",
            params![id, outcome, now],
        )? == 1)
    }

    /// Puts an in-progress callback back to pending for another attempt
    /// at `not_before`.
    pub fn reschedule(
        &mut self,
        id: &str,
        not_before: i64,
        outcome: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE callbacks SET status = 'pending', not_before = ?2, outcome = ?3, dialed = 0, updated_at = ?4 WHERE id = ?1 AND status = 'in_progress'",
            params![id, not_before, outcome, now],
        )?;
        Ok(())
    }

    /// After a crash: in-progress callbacks never dialled go back to
    /// pending; dialled ones become `failed` with outcome `interrupted`
    /// (the citizen may have been reached: a person decides). Returns
    /// (back to pending, interrupted).
    pub fn recover_in_progress(&mut self, now: i64) -> Result<(usize, usize), StoreError> {
        let tx = self.conn.savepoint()?;
        let back = tx.execute(
            "UPDATE callbacks SET status = 'pending', updated_at = ?1 WHERE status = 'in_progress' AND dialed = 0",
            params![now],
        )?;
        let cut = tx.execute(
            "UPDATE callbacks SET status = 'failed', outcome = 'interrupted', updated_at = ?1 WHERE status = 'in_progress' AND dialed = 1",
            params![now],
        )?;
        tx.commit()?;
        Ok((back, cut))
    }

    /// Queues a notification (sent by the notifier, never on the call
    /// path).
    pub fn notify(
        &mut self,
        callback: &str,
        event: &str,
        payload: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO notifications (callback, event, payload, status, attempts, next_at, created_at) VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)",
            params![callback, event, payload, now],
        )?;
        Ok(())
    }

    /// Notifications due at `now`, oldest first.
    pub fn due_notifications(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, event, payload, attempts FROM notifications WHERE status = 'pending' AND next_at <= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit.min(MAX_LIST) as i64], |r| {
            Ok(Notification {
                seq: r.get(0)?,
                event: r.get(1)?,
                payload: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an attempt: sent, retried at `retry_at`, or (no attempt
    /// left) a dead letter kept with its last error.
    pub fn notification_attempt(
        &mut self,
        seq: i64,
        sent: bool,
        error: Option<&str>,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let status = match (sent, retry_at) {
            (true, _) => "sent",
            (false, Some(_)) => "pending",
            (false, None) => "dead",
        };
        self.conn.execute(
            "UPDATE notifications SET status = ?2, attempts = attempts + 1, last_error = ?3, next_at = COALESCE(?4, next_at) WHERE seq = ?1",
            params![seq, status, error, retry_at],
        )?;
        Ok(())
    }

    /// Notifications by status (pending, sent, dead): (event, status).
    pub fn notifications(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT event, status FROM notifications ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores an operator's answers to the script for a call (an answer
    /// given again replaces the previous one). `false` when the call
    /// record does not exist, unless `vouched`: the operator's desk has the
    /// call (its record may still be on its way to the disk, batched with
    /// the call's other events: an operator answers during the call).
    pub fn save_answers(
        &mut self,
        call: &str,
        agent: Option<&str>,
        answers: &[(String, String)],
        now_ms: i64,
        vouched: bool,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.savepoint()?;
        let known: Option<String> = tx
            .query_row("SELECT id FROM cdr WHERE id = ?1", params![call], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() && !vouched {
            return Ok(false);
        }
        for (q, a) in answers {
            tx.execute(
                "INSERT OR REPLACE INTO call_answers (call, question, answer, agent, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![call, q, a, agent, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// A call's queue and its script answers; `None` for a call without a
    /// record. The queue is the record's (the last, written at the end) or,
    /// while the call goes on, the first its queue log names.
    pub fn call_answers(&self, call: &str) -> Result<Option<CallAnswers>, StoreError> {
        let queue: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT COALESCE(cdr.queue, (SELECT q.queue FROM queue_log q
                     WHERE q.call = cdr.id AND q.queue != '' ORDER BY q.seq LIMIT 1))
                 FROM cdr WHERE cdr.id = ?1",
                params![call],
                |r| r.get(0),
            )
            .optional()?;
        match queue {
            None => Ok(None),
            Some(q) => Ok(Some((q, self.answers(call)?))),
        }
    }

    /// A call's script answers, by question id.
    pub fn answers(&self, call: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT question, answer FROM call_answers WHERE call = ?1 ORDER BY question",
        )?;
        let rows = stmt.query_map(params![call], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Callbacks per status.
    pub fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM callbacks GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (s, n) = r?;
            if let Some(s) = Status::parse(&s) {
                out.push((s, n.max(0) as u64));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("centralino-store-{name}-{}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        p
    }

    pub(crate) fn new(id: &str, number: &str) -> NewCallback {
        NewCallback {
            id: id.into(),
            queue: "vaccini".into(),
            number: number.into(),
            not_before: None,
            requirements: None,
            priority: 0,
            source: "api".into(),
            created_at: None,
            promised_by: None,
        }
    }

    #[test]
    fn callbacks_are_stored_deduplicated_edited_and_survive_reopening() {
        let path = temp("cb");
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
        let Created::New(a) = s.create_callback(&new("a", "+393331234567"), 100).unwrap() else {
            panic!()
        };
        assert_eq!(a.status, Status::Pending);
        // Same number and queue while pending: the same request.
        let again = s.create_callback(&new("b", "+393331234567"), 101).unwrap();
        assert_eq!(again, Created::Existing(a.clone()));
        // Another queue is another request.
        let mut other = new("c", "+393331234567");
        other.queue = "triage".into();
        assert!(matches!(
            s.create_callback(&other, 102).unwrap(),
            Created::New(_)
        ));
        // Edit, then cancel; a cancelled one cannot change.
        let patch = Patch {
            not_before: Some(Some(5000)),
            priority: Some(3),
            requirements: Some(Some("lang == \"it\"".into())),
            promised_by: Some(Some(12_200)),
        };
        let Edit::Done(e) = s.update_callback("a", &patch, 200).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.get_callback("a").unwrap().unwrap().promised_by,
            Some(12_200)
        );
        assert_eq!(
            (e.not_before, e.priority, e.updated_at),
            (Some(5000), 3, 200)
        );
        assert!(matches!(
            s.set_status("a", Status::Cancelled, Some("cancelled"), 300)
                .unwrap(),
            Edit::Done(_)
        ));
        assert!(matches!(
            s.update_callback("a", &patch, 301).unwrap(),
            Edit::NotPending(_)
        ));
        assert_eq!(
            s.update_callback("zz", &patch, 301).unwrap(),
            Edit::NotFound
        );
        // Once cancelled, the number may ask again.
        assert!(matches!(
            s.create_callback(&new("d", "+393331234567"), 400).unwrap(),
            Created::New(_)
        ));
        drop(s);
        let s = Store::open(&path).unwrap();
        let pending = s.list_callbacks(Some(Status::Pending), None, 100).unwrap();
        let ids: Vec<&str> = pending.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c", "d"]);
        assert_eq!(
            s.get_callback("a").unwrap().unwrap().status,
            Status::Cancelled
        );
        assert_eq!(s.list_callbacks(None, None, 100).unwrap().len(), 3);
        // One tenant's token lists its queues' callbacks only.
        let mut other = new("e", "+393331234568");
        other.queue = "psicologi".into();
        let mut s = s;
        s.create_callback(&other, 500).unwrap();
        let only = |q: &[&str]| -> Vec<String> {
            let q: Vec<String> = q.iter().map(|n| (*n).to_owned()).collect();
            s.list_callbacks(None, Some(&q), 100)
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(only(&["psicologi"]), ["e"]);
        assert_eq!(only(&["vaccini"]), ["a", "d"]);
        assert!(only(&[]).is_empty());
        assert_eq!(only(&["vaccini", "psicologi"]), ["a", "d", "e"]);
        let counts = s.counts().unwrap();
        assert!(counts.contains(&(Status::Pending, 3)) && counts.contains(&(Status::Cancelled, 1)));
    }

    #[test]
    fn a_file_from_a_newer_version_is_refused() {
        let path = temp("newer");
        let s = Store::open(&path).unwrap();
        s.conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn operator_events_share_the_queue_log_apart_from_calls() {
        let path = temp("agent");
        let mut s = Store::open(&path).unwrap();
        let ev = |agent: &str, event, reason: Option<&str>| Record::Agent {
            at_ms: 1_000,
            agent: agent.into(),
            tenant: "asl".into(),
            event,
            reason: reason.map(Into::into),
        };
        s.write_records(&[
            ev("1001", "login", None),
            ev("1001", "pause", Some("no_answer")),
            ev("1002", "login", None),
            ev("1001", "unpause", None),
        ])
        .unwrap();
        assert_eq!(
            s.agent_events("1001").unwrap(),
            [
                ("login".into(), None),
                ("pause".into(), Some("no_answer".into())),
                ("unpause".into(), None)
            ]
        );
        assert!(
            s.queue_events("").unwrap().len() == 4,
            "one log, empty call"
        );
    }

    #[test]
    fn records_are_batched_interrupted_calls_closed_and_old_numbers_masked() {
        let path = temp("cdr");
        let mut s = Store::open(&path).unwrap();
        let start = |id: &str, at| Record::CallStarted {
            id: id.into(),
            at_ms: at,
            caller: "+393331234567".into(),
            did: "800".into(),
        };
        s.write_records(&[
            start("a", 1_000),
            Record::Queue {
                call: "a".into(),
                at_ms: 1_100,
                queue: "vaccini".into(),
                event: centralino_types::outcome::QueueEvent::Enter,
                agent: None,
                position: Some(1),
                wait_ms: None,
            },
            Record::Queue {
                call: "a".into(),
                at_ms: 5_000,
                queue: "vaccini".into(),
                event: centralino_types::outcome::QueueEvent::Connect,
                agent: Some("1001".into()),
                position: None,
                wait_ms: Some(3_900),
            },
            Record::CallEnded {
                id: "a".into(),
                at_ms: 65_000,
                outcome: centralino_types::outcome::CallOutcome::CallerHangup,
                queue: Some("vaccini".into()),
                agent: Some("1001".into()),
                wait_ms: Some(3_900),
                talk_ms: Some(60_000),
                variables: Some("motivo=prenotazione".into()),
            },
            start("b", 2_000_000),
        ])
        .unwrap();
        assert_eq!(
            s.queue_events("a").unwrap(),
            [
                ("enter".into(), "vaccini".into(), None),
                ("connect".into(), "vaccini".into(), Some("1001".into()))
            ]
        );
        drop(s);
        // The process died with call b in progress.
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.close_interrupted(3_000_000).unwrap(), 1);
        let cdrs = s.recent_cdrs(10).unwrap();
        assert_eq!(cdrs[0].id, "b");
        assert_eq!(
            (cdrs[0].outcome.as_deref(), cdrs[0].ended_at),
            (Some("interrupted"), Some(3_000_000))
        );
        assert_eq!(cdrs[1].outcome.as_deref(), Some("caller_hangup"));
        // Retention: a's number is masked, b's (younger) is kept.
        assert_eq!(s.anonymise_before(1_500_000).unwrap(), 1);
        let cdrs = s.recent_cdrs(10).unwrap();
        assert_eq!(
            (cdrs[1].caller.as_str(), cdrs[0].caller.as_str()),
            ("***567", "+393331234567")
        );
        assert_eq!(s.anonymise_before(1_500_000).unwrap(), 0, "once");
    }

    #[test]
    fn the_database_and_its_wal_and_shm_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir =
            std::env::temp_dir().join(format!("centralino-store-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        owner_only::create_dir(&dir).unwrap();
        let path = dir.join("centralino.db");
        let mut s = Store::open(&path).unwrap();
        s.create_callback(&new("a", "+393331234567"), 100).unwrap();
        let db = path.display().to_string();
        let files = [db.clone(), format!("{db}-wal"), format!("{db}-shm")];
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f}");
        }
        // Left world-readable (an older version, a restored backup): the
        // next open tightens all three.
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let again = Store::open(&path).unwrap();
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f}");
        }
        drop((s, again));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn masked_numbers_leave_no_trace_in_the_database_files() {
        let dir =
            std::env::temp_dir().join(format!("centralino-store-erase-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        owner_only::create_dir(&dir).unwrap();
        let path = dir.join("centralino.db");
        let mut s = Store::open(&path).unwrap();
        assert!(s.secure_delete().unwrap());
        // The writer's savepoint journals never leave memory (2 = MEMORY).
        let temp = s
            .conn
            .query_row("PRAGMA temp_store", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(temp, 2);
        // A finished callback, a call record and a sent SMS, each with its
        // own number; a pending callback whose number stays. A masked row
        // is rewritten over its old cell, which hides most of it anyway; a
        // deleted row (the answers) stays whole in free space without
        // secure_delete, and old page versions stay in the WAL without the
        // truncating checkpoint.
        s.create_callback(&new("a", "+393471234567"), 100).unwrap();
        s.set_status("a", Status::Done, Some("answered"), 100)
            .unwrap();
        s.create_callback(&new("b", "+393470000042"), 100).unwrap();
        s.write_records(&[
            Record::CallStarted {
                id: "c".into(),
                at_ms: 1_000,
                caller: "+393479876543".into(),
                did: "800".into(),
            },
            Record::CallEnded {
                id: "c".into(),
                at_ms: 2_000,
                outcome: centralino_types::outcome::CallOutcome::CallerHangup,
                queue: None,
                agent: None,
                wait_ms: None,
                talk_ms: None,
                variables: Some("motivo=vaccino".into()),
            },
        ])
        .unwrap();
        // An operator's answer (health data): deleted, not masked.
        s.save_answers(
            "c",
            Some("1001"),
            &[("sintomi".into(), "febbre alta da tre giorni".into())],
            2_000,
            false,
        )
        .unwrap();
        s.notify("a", "booked", r#"{"number":"+393475550001"}"#, 100)
            .unwrap();
        s.notification_attempt(1, true, None, None).unwrap();
        assert_eq!(s.anonymise_before(10_000_000).unwrap(), 3);
        assert!(s.checkpoint().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
        let found = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(
            found("+393470000042"),
            "the pending callback's number is kept"
        );
        for gone in [
            "+393471234567",
            "+393479876543",
            "+393475550001",
            "motivo=vaccino",
            "febbre alta",
        ] {
            assert!(!found(gone), "{gone} is still in the file");
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_masks_finished_sms_notifications_and_never_pending_ones() {
        let path = temp("outbox");
        let mut s = Store::open(&path).unwrap();
        let payload = |n: &str| {
            format!(r#"{{"key":"cb:booked:1","event":"booked","number":"{n}","queue":"vaccini"}}"#)
        };
        // Sent, dead-lettered, still pending (old), sent but young.
        s.notify("a", "booked", &payload("+393331112223"), 100)
            .unwrap();
        s.notify("b", "failed", &payload("+393334445556"), 100)
            .unwrap();
        s.notify("c", "booked", &payload("+393337778889"), 100)
            .unwrap();
        s.notify("d", "booked", &payload("+393330001112"), 5_000)
            .unwrap();
        s.notification_attempt(1, true, None, None).unwrap();
        s.notification_attempt(2, false, Some("gateway answered 500"), None)
            .unwrap();
        s.notification_attempt(3, false, Some("no HTTP answer"), Some(200))
            .unwrap();
        s.notification_attempt(4, true, None, None).unwrap();
        let numbers = |s: &Store| -> Vec<(String, String)> {
            let mut stmt = s
                .conn
                .prepare("SELECT status, json_extract(payload, '$.number') FROM notifications ORDER BY seq")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(s.anonymise_before(1_000_000).unwrap(), 2);
        let want = |a: &str, b: &str, c: &str, d: &str| {
            vec![
                ("sent".to_owned(), a.to_owned()),
                ("dead".to_owned(), b.to_owned()),
                ("pending".to_owned(), c.to_owned()),
                ("sent".to_owned(), d.to_owned()),
            ]
        };
        assert_eq!(
            numbers(&s),
            want("***223", "***556", "+393337778889", "+393330001112")
        );
        // The rest of the payload stays as it was.
        let kept: String = s
            .conn
            .query_row("SELECT payload FROM notifications WHERE seq = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            kept,
            r#"{"key":"cb:booked:1","event":"booked","number":"***223","queue":"vaccini"}"#
        );
        assert_eq!(s.anonymise_before(1_000_000).unwrap(), 0, "once");
        // Later, the young one's turn; the pending one is still waiting.
        assert_eq!(s.anonymise_before(10_000_000).unwrap(), 1);
        assert_eq!(
            numbers(&s),
            want("***223", "***556", "+393337778889", "***112")
        );
    }

    #[test]
    fn a_claim_takes_no_more_of_each_queue_than_its_room() {
        let path = temp("claim-room");
        let mut s = Store::open(&path).unwrap();
        for (i, queue) in [
            "vaccini",
            "vaccini",
            "vaccini",
            "triage",
            "triage",
            "psicologo",
        ]
        .into_iter()
        .enumerate()
        {
            let mut n = new(&format!("c{i}"), &format!("+39333000000{i}"));
            n.queue = queue.into();
            s.create_callback(&n, 100 + i as i64).unwrap();
        }
        // Two operators free for vaccini, one for triage, none listed for
        // psicologo (closed or nobody free).
        let mut room = vec![("vaccini".to_string(), 2), ("triage".to_string(), 1)];
        let claimed = s
            .claim_due(200, 10, &mut |q| service::within_room(&mut room, q))
            .unwrap();
        let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c0", "c1", "c3"], "oldest first, within each room");
        assert_eq!(
            room,
            [("vaccini".to_string(), 0), ("triage".to_string(), 0)]
        );
        // The overall limit still bounds a claim.
        let mut room = vec![("vaccini".to_string(), 5), ("triage".to_string(), 5)];
        let claimed = s
            .claim_due(200, 1, &mut |q| service::within_room(&mut room, q))
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, "c2");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn due_callbacks_are_claimed_once_and_a_crash_never_dials_twice() {
        let path = temp("claim");
        let mut s = Store::open(&path).unwrap();
        for (id, nb) in [("a", None), ("b", Some(500)), ("c", None)] {
            let mut n = new(
                id,
                &format!("+39333000000{}", id.len() + id.as_bytes()[0] as usize),
            );
            n.not_before = nb;
            s.create_callback(&n, 100).unwrap();
        }
        let first = s.claim_due(200, 10, &mut |_| true).unwrap();
        let ids: Vec<&str> = first.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"], "b is not due yet");
        assert!(
            first
                .iter()
                .all(|c| c.status == Status::InProgress && c.attempts == 1)
        );
        assert!(
            s.claim_due(200, 10, &mut |_| true).unwrap().is_empty(),
            "claimed once"
        );
        assert!(s.mark_dialed("a", 201).unwrap());
        s.reschedule("c", 900, "busy", 202).unwrap();
        assert!(
            s.claim_due(600, 10, &mut |_| false).unwrap().is_empty(),
            "queues outside their callback hours wait"
        );
        assert_eq!(
            s.claim_due(600, 10, &mut |_| true).unwrap().len(),
            1,
            "b only: c waits until 900"
        );
        drop(s);
        // Crash: a was dialled (failed, interrupted), b was not (pending).
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.recover_in_progress(700).unwrap(), (1, 1));
        let a = s.get_callback("a").unwrap().unwrap();
        assert_eq!(
            (a.status, a.outcome.as_deref()),
            (Status::Failed, Some("interrupted"))
        );
        assert_eq!(
            s.get_callback("b").unwrap().unwrap().status,
            Status::Pending
        );
        let c = s.get_callback("c").unwrap().unwrap();
        assert_eq!(
            (c.status, c.not_before, c.outcome.as_deref()),
            (Status::Pending, Some(900), Some("busy"))
        );
    }

    #[test]
    fn a_callback_whose_operator_left_before_dialling_keeps_its_place_and_attempts() {
        let path = temp("requeue");
        let mut s = Store::open(&path).unwrap();
        s.create_callback(&new("a", "+393330000001"), 100).unwrap();
        s.create_callback(&new("b", "+393330000002"), 110).unwrap();
        assert_eq!(s.claim_due(200, 10, &mut |_| true).unwrap().len(), 2);
        // The dial marks of a burst of operators, in one transaction; the
        // operator of "a" hangs up before its INVITE leaves.
        let marked = s
            .atomically(|s| Ok([s.mark_dialed("a", 201)?, s.mark_dialed("b", 201)?]))
            .unwrap();
        assert_eq!(marked, [true, true]);
        assert!(s.requeue("a", "agent_hangup", 202).unwrap());
        assert!(!s.requeue("a", "agent_hangup", 203).unwrap(), "once");
        let a = s.get_callback("a").unwrap().unwrap();
        assert_eq!(
            (a.status, a.attempts, a.outcome.as_deref()),
            (Status::Pending, 0, Some("agent_hangup"))
        );
        // Claimed again at once, still first (oldest request), and a crash
        // now would not take it for dialled.
        let again = s.claim_due(203, 10, &mut |_| true).unwrap();
        assert_eq!(
            again
                .iter()
                .map(|c| (c.id.as_str(), c.attempts))
                .collect::<Vec<_>>(),
            [("a", 1)]
        );
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            s.recover_in_progress(300).unwrap(),
            (1, 1),
            "a back, b interrupted"
        );
        // A failing step rolls the whole transaction back.
        let r = s.atomically(|s| {
            s.requeue("a", "x", 301)?;
            Err::<(), _>(StoreError::from(rusqlite::Error::InvalidQuery))
        });
        assert!(r.is_err());
        let a = s.get_callback("a").unwrap().unwrap();
        assert_eq!(
            (a.status, a.outcome.as_deref()),
            (Status::Pending, Some("agent_hangup"))
        );
        assert!(
            s.requeue("a", "x", 302).is_ok(),
            "usable after the rollback"
        );
        // Nested: the inner part undone alone, the outer one committed.
        s.atomically(|s| {
            s.create_callback(&new("c", "+393330000003"), 400)?;
            let inner = s.atomically(|s| {
                s.create_callback(&new("d", "+393330000004"), 400)?;
                Err::<(), _>(StoreError::from(rusqlite::Error::InvalidQuery))
            });
            assert!(inner.is_err());
            Ok(())
        })
        .unwrap();
        assert!(s.get_callback("c").unwrap().is_some());
        assert!(s.get_callback("d").unwrap().is_none());
    }
}
