//! Which firm each queue name belongs to, for the life of the database.
//!
//! Callbacks, call records, script answers, the queue log and the
//! reports all name their queue, not its firm: the firm is whoever owns
//! that name. A live reload already refuses a queue's change of firm, but
//! a restart with another configuration could give `sales` to firm B, and
//! firm A's pending callbacks would then be dialled by B's operators
//! through B's trunk, and A's records shown to B's supervisors
//! (TEST-MATRIX D12). So the store binds each name to its firm the first
//! time a configuration names it, and a start or reload that gives a bound
//! name to another firm is refused: the queue takes a new name, or is
//! moved on purpose with `centralino rebind-queue`, once nothing of it is
//! waiting to be dialled.
//!
//! A database from before the binding knows a queue's firm only where a
//! campaign names it. Every other name its records use is kept with an
//! unknown firm (`tenant` NULL): the first start after the upgrade binds
//! those its configuration names (the trust the node had until then); a
//! later start naming one is refused, as it may be another firm's.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// The binding table (a migration): campaigns' queues bound to their
/// firms (the oldest campaign's, should two disagree), the other names
/// records use kept with an unknown firm, and the mark (queue `''`) that
/// lets the first start bind those.
pub(crate) const MIGRATION: &str = "CREATE TABLE queue_owners (
        queue TEXT PRIMARY KEY,
        tenant TEXT,
        bound_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO queue_owners (queue, tenant, bound_at)
        SELECT queue, tenant, 0 FROM (
            SELECT CASE WHEN json_valid(spec) THEN json_extract(spec, '$.queue') END AS queue,
                   tenant, MIN(created_at)
            FROM campaigns GROUP BY 1)
        WHERE typeof(queue) = 'text' AND queue != '';
    INSERT OR IGNORE INTO queue_owners (queue, tenant, bound_at)
        SELECT queue, NULL, 0 FROM (
            SELECT queue FROM callbacks
            UNION SELECT queue FROM cdr WHERE queue IS NOT NULL
            UNION SELECT queue FROM queue_log)
        WHERE queue != '';
    INSERT INTO queue_owners (queue, tenant, bound_at) VALUES ('', NULL, 0);";

/// A queue the configuration gives to another firm than the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerConflict {
    /// The queue's name.
    pub queue: String,
    /// The firm that owns it in this database (`None`: records from
    /// before queues were bound, of a firm the database does not know).
    pub bound: Option<String>,
    /// The firm the configuration gives it to.
    pub configured: String,
}

impl std::fmt::Display for OwnerConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.bound {
            Some(bound) => write!(
                f,
                "queue {:?} belongs to tenant {bound:?} in this database (its callbacks, call records and answers), not {:?}",
                self.queue, self.configured
            ),
            None => write!(
                f,
                "queue {:?} holds records from before queues were bound to firms, of a firm this database does not know: it goes to {:?} only on purpose (`centralino rebind-queue --with-history`)",
                self.queue, self.configured
            ),
        }
    }
}

/// Why a queue could not be moved to another firm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebindError {
    /// The database never saw that queue.
    #[error(
        "no queue {0:?} in this database (a queue is bound to its firm when a start first names it)"
    )]
    Unknown(String),
    /// Callbacks of the queue still wait to be dialled, as the old firm's.
    #[error(
        "queue {queue:?} has {open} callbacks pending or in progress for tenant {tenant}: cancel them first (DELETE /api/v1/callbacks/ID), or give the new firm's queue another name"
    )]
    Open {
        /// The queue.
        queue: String,
        /// Its firm now (quoted, or `unknown`).
        tenant: String,
        /// Callbacks still open.
        open: u64,
    },
    /// Campaigns of the old firm still work the queue.
    #[error(
        "queue {queue:?} is worked by {campaigns} unfinished campaigns of tenant {tenant}: stop them first (POST /api/v1/campaigns/ID/stop), or give the new firm's queue another name"
    )]
    Campaigns {
        /// The queue.
        queue: String,
        /// Its firm now (quoted).
        tenant: String,
        /// Campaigns not finished.
        campaigns: u64,
    },
    /// The old firm's records of the queue would become the new firm's.
    #[error(
        "queue {queue:?} holds {records} records of tenant {tenant} (callbacks, calls, queue events), which the new firm would read: give the new firm's queue another name, or pass --with-history if the history goes with the queue"
    )]
    History {
        /// The queue.
        queue: String,
        /// Its firm now (quoted, or `unknown`).
        tenant: String,
        /// Callbacks, call records and queue events of it.
        records: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a queue stands here: `None` never seen, `Some(None)` records of
/// an unknown firm, `Some(Some(firm))` bound.
fn owner(conn: &rusqlite::Connection, queue: &str) -> rusqlite::Result<Option<Option<String>>> {
    conn.prepare_cached("SELECT tenant FROM queue_owners WHERE queue = ?1")?
        .query_row(params![queue], |r| r.get(0))
        .optional()
}

/// A firm for a message: quoted, or `unknown`.
fn firm(f: Option<&str>) -> String {
    f.map_or_else(|| "unknown".to_owned(), |f| format!("{f:?}"))
}

impl Store {
    /// Binds every queue of `queues` (name, firm) not bound yet, and
    /// returns the names it bound; or, when one is bound to another firm
    /// (or, after the first start, holds records of an unknown firm),
    /// binds nothing and names them all ([`StoreError::QueueOwners`]).
    pub fn bind_queues(
        &mut self,
        queues: &[(String, String)],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        // The check and the binding in one transaction: nothing between
        // them binds a name.
        let tx = self.conn.savepoint()?;
        // The first start after the migration: names of an unknown firm
        // are the configuration's to bind.
        let first = owner(&tx, "")?.is_some();
        let mut found = Vec::new();
        let (mut new, mut adopted) = (Vec::new(), Vec::new());
        for (queue, tenant) in queues {
            match owner(&tx, queue)? {
                None => new.push((queue, tenant)),
                Some(Some(b)) if b == *tenant => {}
                Some(None) if first => adopted.push((queue, tenant)),
                Some(bound) => found.push(OwnerConflict {
                    queue: queue.clone(),
                    bound,
                    configured: tenant.clone(),
                }),
            }
        }
        if !found.is_empty() {
            return Err(StoreError::QueueOwners(found));
        }
        for (queue, tenant) in &adopted {
            tx.execute(
                "UPDATE queue_owners SET tenant = ?2, bound_at = ?3 WHERE queue = ?1",
                params![queue, tenant, now],
            )?;
        }
        for (queue, tenant) in &new {
            tx.execute(
                "INSERT INTO queue_owners (queue, tenant, bound_at) VALUES (?1, ?2, ?3)",
                params![queue, tenant, now],
            )?;
        }
        if first {
            tx.execute("DELETE FROM queue_owners WHERE queue = ''", [])?;
        }
        tx.commit()?;
        Ok(new.into_iter().map(|(q, _)| q.clone()).collect())
    }

    /// Forgets the bindings of `names` made at `bound_at` (a reload that
    /// bound them was then refused), unless a callback has come to one
    /// meanwhile (one kept from the national network's stream).
    pub fn unbind_queues(&mut self, names: &[String], bound_at: i64) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM queue_owners WHERE queue = ?1 AND bound_at = ?2 AND tenant IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM callbacks WHERE queue = ?1)",
            )?;
            for q in names {
                stmt.execute(params![q, bound_at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The firm queue `queue` is bound to here (`None`: not bound, or
    /// records of an unknown firm).
    pub fn queue_owner(&self, queue: &str) -> Result<Option<String>, StoreError> {
        Ok(owner(&self.conn, queue)?.flatten())
    }

    /// Whether a callback of firm `tenant` may be kept in `queue` here
    /// (the national network's records), binding an unbound queue to it.
    /// A record that names no firm (from an older version) or a queue of
    /// another or an unknown firm may not.
    pub(crate) fn keeps_firm(
        &self,
        queue: &str,
        tenant: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        if tenant.is_empty() {
            return Ok(false);
        }
        match owner(&self.conn, queue)? {
            Some(bound) => Ok(bound.as_deref() == Some(tenant)),
            None => {
                self.conn.execute(
                    "INSERT INTO queue_owners (queue, tenant, bound_at) VALUES (?1, ?2, ?3)",
                    params![queue, tenant, now],
                )?;
                Ok(true)
            }
        }
    }

    /// Moves queue `queue` to firm `tenant` on purpose (the node is
    /// stopped: `centralino rebind-queue`), refused while any of its
    /// callbacks waits to be dialled, or a campaign works it, as the old
    /// firm's. What was recorded before stays under the queue's name, so
    /// the new firm's supervisors would read it: refused while there is
    /// any, unless `with_history` says the history goes with the queue
    /// (two firms merged; or records of an unknown firm, from before
    /// queues were bound, given to one). The move is in the audit log, as
    /// `actor`'s, in the same transaction (so the store needs its audit
    /// key). Returns the firm it had (`None`: unknown).
    pub fn rebind_queue(
        &mut self,
        queue: &str,
        tenant: &str,
        with_history: bool,
        actor: &str,
        now: i64,
    ) -> Result<Option<String>, RebindError> {
        self.atomically(|s| {
            let Some(bound) = owner(&s.conn, queue).map_err(StoreError::from)? else {
                return Ok(Err(RebindError::Unknown(queue.to_owned())));
            };
            if bound.as_deref() == Some(tenant) {
                return Ok(Ok(bound));
            }
            let open: i64 = s.conn.query_row(
                "SELECT COUNT(*) FROM callbacks WHERE queue = ?1 AND status IN ('pending', 'in_progress')",
                params![queue],
                |r| r.get(0),
            )?;
            if open > 0 {
                return Ok(Err(RebindError::Open {
                    queue: queue.to_owned(),
                    tenant: firm(bound.as_deref()),
                    open: open.unsigned_abs(),
                }));
            }
            if let Some(old) = &bound {
                let campaigns: i64 = s.conn.query_row(
                    "SELECT COUNT(*) FROM campaigns WHERE tenant = ?2 AND status != 'finished' AND (CASE WHEN json_valid(spec) THEN json_extract(spec, '$.queue') END) = ?1",
                    params![queue, old],
                    |r| r.get(0),
                )?;
                if campaigns > 0 {
                    return Ok(Err(RebindError::Campaigns {
                        queue: queue.to_owned(),
                        tenant: firm(Some(old)),
                        campaigns: campaigns.unsigned_abs(),
                    }));
                }
            }
            if !with_history {
                let records: i64 = s.conn.query_row(
                    "SELECT (SELECT COUNT(*) FROM callbacks WHERE queue = ?1)
                          + (SELECT COUNT(*) FROM cdr WHERE queue = ?1)
                          + (SELECT COUNT(*) FROM queue_log WHERE queue = ?1)",
                    params![queue],
                    |r| r.get(0),
                )?;
                if records > 0 || bound.is_none() {
                    return Ok(Err(RebindError::History {
                        queue: queue.to_owned(),
                        tenant: firm(bound.as_deref()),
                        records: records.unsigned_abs(),
                    }));
                }
            }
            let old = bound.as_deref().unwrap_or("?");
            let target = if with_history {
                format!("queue:{queue}:{old}->{tenant}:with_history")
            } else {
                format!("queue:{queue}:{old}->{tenant}")
            };
            s.conn.execute(
                "UPDATE queue_owners SET tenant = ?2, bound_at = ?3 WHERE queue = ?1",
                params![queue, tenant, now],
            )?;
            s.audit(&[crate::AuditEntry {
                at: now * 1000,
                actor: actor.to_owned(),
                action: "rebind_queue".into(),
                target,
                status: 200,
            }])?;
            Ok(Ok(bound))
        })?
    }
}

/// The file a serving node holds locked in its data directory.
pub const LOCK_FILE: &str = "centralino.lock";

/// Locks data directory `dir` for one process: a node holds it while it
/// serves, and `centralino rebind-queue` takes it, so a queue never
/// changes firm under a running node (which would go on taking the old
/// firm's callbacks into it). The lock lasts as long as the file
/// returned, and ends with the process however it ends.
pub fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::owner_only::FILE_MODE)
        .open(&path)
        .map_err(|e| StoreError::File(path.clone(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::File(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditKey, Campaign, CampaignStatus, MIN_AUDIT_KEY, Status};

    fn store(name: &str) -> Store {
        let key = AuditKey::from_secret(&[7; MIN_AUDIT_KEY]).unwrap();
        Store::open_keyed(&crate::tests::temp(&format!("owners-{name}")), key).unwrap()
    }

    fn q(queue: &str, tenant: &str) -> (String, String) {
        (queue.into(), tenant.into())
    }

    fn conflicts_of(r: Result<Vec<String>, StoreError>) -> Vec<OwnerConflict> {
        match r {
            Err(StoreError::QueueOwners(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_queue_keeps_the_firm_that_first_had_it() {
        let mut s = store("keep");
        assert_eq!(
            s.bind_queues(&[q("vaccini", "asl1")], 10).unwrap(),
            vec!["vaccini".to_owned()]
        );
        // The same binding again, and a new queue beside it: only the new
        // one is new.
        let again = [q("vaccini", "asl1"), q("triage", "asl2")];
        assert_eq!(
            s.bind_queues(&again, 20).unwrap(),
            vec!["triage".to_owned()]
        );
        assert_eq!(s.queue_owner("triage").unwrap().as_deref(), Some("asl2"));
        // Another firm for `vaccini`: refused, and nothing of that call
        // bound (not even the new queue beside it).
        let moved = [q("vaccini", "asl2"), q("psicologo", "asl2")];
        let found = conflicts_of(s.bind_queues(&moved, 30));
        assert_eq!(
            found,
            vec![OwnerConflict {
                queue: "vaccini".into(),
                bound: Some("asl1".into()),
                configured: "asl2".into(),
            }]
        );
        assert_eq!(s.queue_owner("psicologo").unwrap(), None);
        assert_eq!(s.queue_owner("vaccini").unwrap().as_deref(), Some("asl1"));
        // The message names the queue and both firms.
        let text = StoreError::QueueOwners(found).to_string();
        assert!(
            text.contains("\"vaccini\"") && text.contains("\"asl1\"") && text.contains("\"asl2\""),
            "{text}"
        );
        // A refused reload's bindings are undone, those of that reload
        // only, and not once a callback came to the queue.
        assert_eq!(
            s.bind_queues(&[q("psicologo", "asl2"), q("sportello", "asl2")], 40)
                .unwrap()
                .len(),
            2
        );
        s.create_callback(
            &crate::NewCallback {
                queue: "sportello".into(),
                ..crate::tests::new("cb", "+393331234567")
            },
            41,
        )
        .unwrap();
        let names = [
            "triage".to_owned(),
            "psicologo".to_owned(),
            "sportello".to_owned(),
        ];
        s.unbind_queues(&names, 40).unwrap();
        assert_eq!(s.queue_owner("triage").unwrap().as_deref(), Some("asl2"));
        assert_eq!(s.queue_owner("psicologo").unwrap(), None);
        assert_eq!(s.queue_owner("sportello").unwrap().as_deref(), Some("asl2"));
    }

    #[test]
    fn a_queue_moves_only_on_purpose_with_nothing_of_the_old_firm_waiting() {
        let mut s = store("rebind");
        s.bind_queues(&[q("vaccini", "asl1")], 10).unwrap();
        assert!(matches!(
            s.rebind_queue("nessuna", "asl2", false, "cli:test", 20),
            Err(RebindError::Unknown(_))
        ));
        // A callback of asl1 waits in the queue: refused.
        let crate::Created::New(cb) = s
            .create_callback(&crate::tests::new("cb1", "+393331234567"), 15)
            .unwrap()
        else {
            panic!()
        };
        match s.rebind_queue("vaccini", "asl2", true, "cli:test", 20) {
            Err(RebindError::Open {
                open: 1, tenant, ..
            }) => assert_eq!(tenant, "\"asl1\""),
            other => panic!("{other:?}"),
        }
        // In progress counts as waiting too.
        assert_eq!(s.claim_due(16, 10, &mut |_| true).unwrap().len(), 1);
        assert!(matches!(
            s.rebind_queue("vaccini", "asl2", true, "cli:test", 20),
            Err(RebindError::Open { .. })
        ));
        s.set_status(&cb.id, Status::Done, Some("answered"), 21)
            .unwrap();
        // A campaign of asl1 works the queue: refused until stopped.
        let campaign = Campaign {
            id: "c1".into(),
            name: "richiami".into(),
            tenant: "asl1".into(),
            spec: r#"{"name":"richiami","queue":"vaccini"}"#.into(),
            source: "api".into(),
            status: CampaignStatus::Running,
            created_at: 1,
            updated_at: 1,
        };
        assert!(s.create_campaign(&campaign).unwrap());
        // One of another queue, or with a spec that is not JSON, is not
        // this queue's.
        for (id, spec) in [("c2", r#"{"queue":"triage"}"#), ("c3", "not json")] {
            let c = Campaign {
                id: id.into(),
                name: id.into(),
                spec: spec.into(),
                ..campaign.clone()
            };
            assert!(s.create_campaign(&c).unwrap());
        }
        match s.rebind_queue("vaccini", "asl2", true, "cli:test", 22) {
            Err(RebindError::Campaigns { campaigns: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        s.set_campaign_status(
            "c1",
            &[CampaignStatus::Running],
            CampaignStatus::Finished,
            23,
        )
        .unwrap();
        // asl1's finished callback would become asl2's to read.
        match s.rebind_queue("vaccini", "asl2", false, "cli:test", 24) {
            Err(RebindError::History { records: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.rebind_queue("vaccini", "asl2", true, "cli:test", 24)
                .unwrap()
                .as_deref(),
            Some("asl1")
        );
        assert_eq!(s.queue_owner("vaccini").unwrap().as_deref(), Some("asl2"));
        // The start with the new firm's configuration passes; the old
        // one is refused now.
        assert!(
            s.bind_queues(&[q("vaccini", "asl2")], 25)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            conflicts_of(s.bind_queues(&[q("vaccini", "asl1")], 25)).len(),
            1
        );
        // Who moved it, and that its history went with it, is in the
        // access log.
        let last = &s.audit_tail(1).unwrap()[0];
        assert_eq!(
            (
                last.actor.as_str(),
                last.action.as_str(),
                last.target.as_str()
            ),
            (
                "cli:test",
                "rebind_queue",
                "queue:vaccini:asl1->asl2:with_history"
            )
        );
        // Already there: nothing to do, nothing logged.
        assert_eq!(
            s.rebind_queue("vaccini", "asl2", false, "cli:test", 26)
                .unwrap()
                .as_deref(),
            Some("asl2")
        );
        assert_eq!(s.audit_tail(10).unwrap().len(), 1);
        // A queue with no record moves without --with-history.
        s.bind_queues(&[q("psicologo", "asl1")], 27).unwrap();
        assert_eq!(
            s.rebind_queue("psicologo", "asl2", false, "cli:test", 28)
                .unwrap()
                .as_deref(),
            Some("asl1")
        );
    }

    /// A database from before the binding: its campaigns' queues are
    /// bound to their firms; the other names its records use are of an
    /// unknown firm, which the first start binds as its configuration
    /// says and a later start may not.
    #[test]
    fn an_older_database_binds_what_it_can_and_its_first_start_the_rest() {
        let mut s = store("upgrade");
        let before = crate::MIGRATIONS
            .iter()
            .position(|m| *m == MIGRATION)
            .unwrap();
        s.conn
            .execute_batch(&format!(
                "DROP TABLE queue_owners; ALTER TABLE queue_log DROP COLUMN tenant;
                 DELETE FROM campaigns; PRAGMA user_version = {before};"
            ))
            .unwrap();
        // Campaigns out of order of creation: the oldest names the firm.
        for (id, tenant, spec, at) in [
            ("b", "asl2", r#"{"queue":"vaccini"}"#, 3),
            ("a", "asl1", r#"{"queue":"vaccini"}"#, 2),
            ("c", "asl2", "not json", 1),
            ("d", "asl2", r#"{"queue":5}"#, 1),
        ] {
            s.conn
                .execute(
                    "INSERT INTO campaigns (id, name, tenant, spec, source, status, created_at, updated_at)
                     VALUES (?1, ?1, ?2, ?3, 'api', 'running', ?4, ?4)",
                    params![id, tenant, spec, at],
                )
                .unwrap();
        }
        // Records of queues no campaign names.
        s.create_callback(&crate::tests::new("cb", "+393331234567"), 5)
            .unwrap();
        s.conn
            .execute_batch(
                "INSERT INTO queue_log (at, call, queue, event) VALUES (1, 'c1', 'triage', 'enter');
                 INSERT INTO queue_log (at, call, queue, event) VALUES (1, '', '', 'login');
                 INSERT INTO cdr (id, started_at, caller, did, queue) VALUES ('c2', 1, '+39333', '100', 'sportello');",
            )
            .unwrap();
        let path = s.conn.path().unwrap().to_owned();
        drop(s);
        let key = AuditKey::from_secret(&[7; MIN_AUDIT_KEY]).unwrap();
        let mut s = Store::open_keyed(std::path::Path::new(&path), key).unwrap();
        assert_eq!(s.queue_owner("vaccini").unwrap().as_deref(), Some("asl1"));
        for name in ["vaccini", "triage", "sportello"] {
            assert!(owner(&s.conn, name).unwrap().is_some(), "{name}");
        }
        assert_eq!(owner(&s.conn, "triage").unwrap(), Some(None));
        // The first start binds the names of an unknown firm it gives.
        let first = [q("vaccini", "asl1"), q("triage", "asl3")];
        assert!(s.bind_queues(&first, 10).unwrap().is_empty());
        assert_eq!(s.queue_owner("triage").unwrap().as_deref(), Some("asl3"));
        // A later one may not (its records may be another firm's)...
        let found = conflicts_of(s.bind_queues(&[q("sportello", "asl3")], 11));
        assert_eq!(found[0].bound, None);
        assert!(
            found[0].to_string().contains("--with-history"),
            "{}",
            found[0]
        );
        // ...unless they are given to a firm on purpose.
        match s.rebind_queue("sportello", "asl3", false, "cli:test", 12) {
            Err(RebindError::History { tenant, .. }) => assert_eq!(tenant, "unknown"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.rebind_queue("sportello", "asl3", true, "cli:test", 12)
                .unwrap(),
            None
        );
        assert!(
            s.bind_queues(&[q("sportello", "asl3")], 13)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s.audit_tail(1).unwrap()[0].target,
            "queue:sportello:?->asl3:with_history"
        );
    }

    #[test]
    fn one_process_holds_a_data_directory() {
        let path = crate::tests::temp("owners-lock");
        let dir = path
            .parent()
            .unwrap()
            .join(format!("owners-lock-{}", std::process::id()));
        crate::owner_only::create_dir(&dir).unwrap();
        let held = lock_data_dir(&dir).unwrap();
        // Another open file description (as another process has) is refused.
        match lock_data_dir(&dir) {
            Err(StoreError::InUse(d)) => assert_eq!(d, dir),
            other => panic!("{other:?}"),
        }
        drop(held);
        let _again = lock_data_dir(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
