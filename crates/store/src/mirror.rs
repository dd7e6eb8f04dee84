//! What the national network needs of the callbacks table: which rows
//! changed since they were last mirrored on the cluster's work stream,
//! the stream sequence of each (the next write is conditional on it),
//! callbacks taken over from a dead node, and callbacks another node took
//! from this one (`moved`: never dialled here).
//!
//! A version counter kept by a trigger marks every change, so none of
//! the writers (API, IVR, scheduler, engine) has to remember the mirror;
//! on a node without `[cluster]` the counters are all there is.

use rusqlite::{OptionalExtension, params};

use crate::{COLUMNS, Callback, Status, Store, StoreError, callback};

/// Schema migration: version and mirrored version per callback, and the
/// stream sequence of its record.
pub(crate) const MIGRATION: &str = "ALTER TABLE callbacks ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE callbacks ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE callbacks ADD COLUMN mirror_seq INTEGER;
    CREATE TRIGGER callbacks_version AFTER UPDATE OF status, not_before, priority, requirements, attempts, dialed ON callbacks
        BEGIN UPDATE callbacks SET version = OLD.version + 1 WHERE id = NEW.id; END;
    CREATE INDEX callbacks_unmirrored ON callbacks (id) WHERE version > mirrored;";

/// Schema migration: when each callback was last written to the stream
/// (a row the stream may have forgotten is written again, or, if it
/// cannot be confirmed, never dialled); finished callbacks from before the
/// mirror are not written at all.
pub(crate) const MIRRORED_AT: &str = "ALTER TABLE callbacks ADD COLUMN mirrored_at INTEGER;
    UPDATE callbacks SET mirrored = version WHERE status NOT IN ('pending', 'in_progress');";

/// A callback as the mirror sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrored {
    /// The callback.
    pub callback: Callback,
    /// Its citizen has been dialled (in progress).
    pub dialed: bool,
    /// Its version now.
    pub version: i64,
    /// The stream sequence of its last record (`None`: never mirrored).
    pub seq: Option<u64>,
    /// When it was last written to the stream (Unix seconds).
    pub mirrored_at: Option<i64>,
    /// Its queue's firm as bound in this store (`None`: never bound).
    pub tenant: Option<String>,
}

/// What keeping a callback taken over did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Stored: it will be called here (or, interrupted, looked at).
    New,
    /// The same citizen already waits for a callback of that queue here:
    /// kept as cancelled (`duplicate`), and the one here is called. For a
    /// contact: the citizen is already in that campaign here, or the
    /// campaign is gone; its record is closed on the stream (tombstone).
    Duplicate,
    /// Already here (kept before a crash, or this node's own).
    Known,
    /// Its queue's name is bound to another firm here
    /// (`queue_owners.rs`): not kept, never dialled here.
    OtherFirm,
}

/// The firm is the queue's as bound here (`queue_owners.rs`), which a
/// queue removed from the configuration keeps.
const MIRROR_COLUMNS: &str = "dialed, version, mirror_seq, mirrored_at, (SELECT tenant FROM queue_owners WHERE queue_owners.queue = callbacks.queue)";

fn mirrored_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Mirrored> {
    // After the callback's own columns (`COLUMNS`, 13 of them).
    let seq: Option<i64> = row.get(15)?;
    Ok(Mirrored {
        callback: callback(row)?,
        dialed: row.get::<_, i64>(13)? != 0,
        version: row.get(14)?,
        seq: seq.and_then(|s| u64::try_from(s).ok()),
        mirrored_at: row.get(16)?,
        tenant: row.get(17)?,
    })
}

impl Store {
    /// Up to `limit` callbacks changed since last mirrored (never the
    /// ones moved away: they are not this node's to write).
    pub fn unmirrored(&self, limit: usize) -> Result<Vec<Mirrored>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS}, {MIRROR_COLUMNS} FROM callbacks WHERE version > mirrored AND status != 'moved' ORDER BY updated_at LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], mirrored_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One callback as the mirror sees it.
    pub fn mirror_state(&self, id: &str) -> Result<Option<Mirrored>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS}, {MIRROR_COLUMNS} FROM callbacks WHERE id = ?1"),
                params![id],
                mirrored_row,
            )
            .optional()?)
    }

    /// Version `version` of callback `id` is on the stream at `seq`, as
    /// of `now` (a later change stays to mirror).
    pub fn set_mirrored(
        &mut self,
        id: &str,
        version: i64,
        seq: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE callbacks SET mirrored = MAX(mirrored, ?2), mirror_seq = ?3, mirrored_at = ?4 WHERE id = ?1",
            params![id, version, seq as i64, now],
        )?;
        Ok(())
    }

    /// This node no longer writes callback `id` to the stream (another
    /// node owns it, or its record cannot be trusted).
    pub fn stop_mirroring(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE callbacks SET mirrored = version WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Callback `id` cannot be confirmed as this node's on the stream (its
    /// record is gone or unreadable): if open, it becomes `failed`, outcome
    /// `unconfirmed`, never dialled (a person decides), and is not written
    /// again. Returns whether it was open.
    pub fn set_unconfirmed(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        let open = self.conn.execute(
            "UPDATE callbacks SET status = 'failed', outcome = 'unconfirmed', updated_at = ?2 WHERE id = ?1 AND status IN ('pending', 'in_progress')",
            params![id, now],
        )? == 1;
        self.stop_mirroring(id)?;
        Ok(open)
    }

    /// Marks callback `id` dialled if it is still the claim fenced at
    /// `version` (not requeued and claimed again since).
    pub fn mark_dialed_if(&mut self, id: &str, version: i64, now: i64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE callbacks SET dialed = 1, updated_at = ?3 WHERE id = ?1 AND version = ?2 AND status = 'in_progress' AND dialed = 0",
            params![id, version, now],
        )? == 1)
    }

    /// Open callbacks last written to the stream before `before` are
    /// written again (the stream forgets records after a while).
    pub fn refresh_mirror(&mut self, before: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE callbacks SET mirrored = 0 WHERE status IN ('pending', 'in_progress') AND mirrored_at IS NOT NULL AND mirrored_at < ?1",
            params![before],
        )?)
    }

    /// The stream holds this node's own record of `id` at `seq` (a write
    /// whose acknowledgement was lost): the next write is checked
    /// against it.
    pub fn set_mirror_seq(&mut self, id: &str, seq: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE callbacks SET mirror_seq = ?2 WHERE id = ?1",
            params![id, seq as i64],
        )?;
        Ok(())
    }

    /// Another node took callback `id` over: it is never dialled here,
    /// and never written to the stream by this node again. Returns whether
    /// it was still open here.
    pub fn set_moved(&mut self, id: &str, to: &str, now: i64) -> Result<bool, StoreError> {
        let open = self.conn.execute(
            "UPDATE callbacks SET status = 'moved', outcome = ?2, updated_at = ?3 WHERE id = ?1 AND status IN ('pending', 'in_progress')",
            params![id, format!("moved_to:{to}"), now],
        )? == 1;
        self.stop_mirroring(id)?;
        Ok(open)
    }

    /// The version of each of `ids` now (a claim's token: the fence and
    /// the dial mark act on that claim only).
    pub fn versions(&self, ids: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, version FROM callbacks WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = stmt
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Every open callback here (pending or in progress), with the
    /// sequence of its record: to check against the stream after a
    /// restart.
    pub fn open_mirrored(&self) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, mirror_seq FROM callbacks WHERE status IN ('pending', 'in_progress')",
        )?;
        let rows = stmt.query_map([], |r| {
            let seq: Option<i64> = r.get(1)?;
            Ok((r.get(0)?, seq.and_then(|s| u64::try_from(s).ok())))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps a callback taken over from another node (record at `seq` on
    /// the stream, already this node's): pending, or failed with outcome
    /// `interrupted` when its old node had dialled the citizen. A
    /// callback this node once gave away comes back the same way. Its
    /// queue is bound to `tenant`, the record's firm, if it was not; a
    /// queue of another firm (or of an unknown one) here, or a record
    /// that names no firm (an older version's), keeps nothing
    /// ([`Kept::OtherFirm`]): it stays on the stream for a person.
    pub fn keep_taken(
        &mut self,
        cb: &Callback,
        tenant: &str,
        interrupted: bool,
        seq: u64,
        now: i64,
    ) -> Result<Kept, StoreError> {
        let (status, outcome) = if interrupted {
            (Status::Failed, Some("interrupted"))
        } else {
            (Status::Pending, cb.outcome.as_deref())
        };
        self.atomically(|s| {
            let here: Option<String> = s
                .conn
                .query_row(
                    "SELECT status FROM callbacks WHERE id = ?1",
                    params![cb.id],
                    |r| r.get(0),
                )
                .optional()?;
            // Before anything changes here (a known callback aside, which
            // is this node's already): a queue of another firm, or of an
            // unknown one, keeps nothing, not even the removal of a
            // `moved` row.
            if matches!(here.as_deref(), None | Some("moved")) && !s.keeps_firm(&cb.queue, tenant, now)? {
                return Ok(Kept::OtherFirm);
            }
            match here.as_deref() {
                None => {}
                Some("moved") => {
                    // Back to this node: a new row, whose record the
                    // stream already has.
                    s.conn.execute(
                        "DELETE FROM callbacks WHERE id = ?1",
                        params![cb.id],
                    )?;
                }
                Some(status) => {
                    s.set_mirror_seq(&cb.id, seq)?;
                    if !matches!(status, "pending" | "in_progress") {
                        // Finished here: the stream must say so, or the
                        // open record naming this node would be taken
                        // over (and dialled) if it died.
                        s.conn.execute(
                            "UPDATE callbacks SET mirrored = 0 WHERE id = ?1",
                            params![cb.id],
                        )?;
                    }
                    return Ok(Kept::Known);
                }
            }
            let duplicate: bool = status == Status::Pending
                && s.conn
                    .query_row(
                        "SELECT 1 FROM callbacks WHERE queue = ?1 AND number = ?2 AND status IN ('pending', 'in_progress')",
                        params![cb.queue, cb.number],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
            let (status, outcome, mirrored) = if duplicate {
                // Mirrored again (as closed) so no one else calls it.
                (Status::Cancelled, Some("duplicate"), 0)
            } else {
                (status, outcome, 1)
            };
            s.conn.execute(
                "INSERT INTO callbacks (id, queue, number, not_before, requirements, priority, status, attempts, outcome, source, created_at, updated_at, dialed, version, mirrored, mirror_seq, mirrored_at, promised_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 1, ?13, ?14, ?12, ?15)",
                params![
                    cb.id,
                    cb.queue,
                    cb.number,
                    cb.not_before,
                    cb.requirements,
                    cb.priority,
                    status.as_str(),
                    cb.attempts,
                    outcome,
                    cb.source,
                    cb.created_at,
                    now,
                    mirrored,
                    seq as i64,
                    cb.promised_by,
                ],
            )?;
            Ok(if duplicate { Kept::Duplicate } else { Kept::New })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Created, NewCallback};

    fn new(id: &str, number: &str) -> NewCallback {
        NewCallback {
            queue: "richiamate".into(),
            ..crate::tests::new(id, number)
        }
    }

    fn store(name: &str) -> Store {
        Store::open(&crate::tests::temp(&format!("mirror-{name}"))).unwrap()
    }

    #[test]
    fn every_change_is_mirrored_once_and_moved_callbacks_are_never_written() {
        let mut s = store("changes");
        let Created::New(_) = s.create_callback(&new("a", "+39347001"), 100).unwrap() else {
            panic!()
        };
        let m = s.unmirrored(10).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].version, m[0].seq, m[0].dialed), (1, None, false));
        assert_eq!(m[0].mirrored_at, None);
        s.set_mirrored("a", 1, 7, 150).unwrap();
        assert!(s.unmirrored(10).unwrap().is_empty());
        // A claim and a dial are changes to mirror.
        let claimed = s.claim_due(200, 10, &mut |_| true).unwrap();
        assert_eq!(claimed.len(), 1);
        let m = s.unmirrored(10).unwrap();
        assert_eq!(
            (m[0].seq, m[0].callback.status),
            (Some(7), Status::InProgress)
        );
        // A change after the read stays to mirror.
        let v = m[0].version;
        assert!(s.mark_dialed("a", 201).unwrap());
        s.set_mirrored("a", v, 8, 202).unwrap();
        let m = s.unmirrored(10).unwrap();
        assert!(m[0].dialed && m[0].version > v && m[0].seq == Some(8));
        assert_eq!(m[0].mirrored_at, Some(202));
        // Only the claim fenced at its version is marked dialled.
        assert!(!s.mark_dialed_if("a", v, 203).unwrap(), "dialled already");
        // Written a day ago: written again.
        s.set_mirrored("a", m[0].version, 9, 202).unwrap();
        assert!(s.unmirrored(10).unwrap().is_empty());
        assert_eq!(s.refresh_mirror(203).unwrap(), 1);
        assert_eq!(s.unmirrored(10).unwrap().len(), 1);
        // Moved away: never mirrored by this node again, never claimed.
        assert!(s.set_moved("a", "napoli-1", 300).unwrap());
        assert!(s.unmirrored(10).unwrap().is_empty());
        let cb = s.get_callback("a").unwrap().unwrap();
        assert_eq!(cb.status, Status::Moved);
        assert_eq!(cb.outcome.as_deref(), Some("moved_to:napoli-1"));
        assert!(!s.set_moved("a", "roma-1", 301).unwrap());
        assert!(s.open_mirrored().unwrap().is_empty());
        // A record that cannot be confirmed: failed, never written again.
        let Created::New(_) = s.create_callback(&new("u", "+39347009"), 400).unwrap() else {
            panic!()
        };
        assert!(s.set_unconfirmed("u", 401).unwrap());
        let u = s.get_callback("u").unwrap().unwrap();
        assert_eq!(
            (u.status, u.outcome.as_deref()),
            (Status::Failed, Some("unconfirmed"))
        );
        assert!(s.unmirrored(10).unwrap().is_empty());
    }

    #[test]
    fn a_claim_is_marked_dialled_only_at_its_own_version() {
        let mut s = store("claims");
        let Created::New(_) = s.create_callback(&new("a", "+39347001"), 100).unwrap() else {
            panic!()
        };
        s.claim_due(200, 10, &mut |_| true).unwrap();
        let v1 = s.mirror_state("a").unwrap().unwrap().version;
        // Requeued and claimed again before the first claim's fence came
        // back: that fence marks nothing.
        assert!(s.requeue("a", "agent_hangup", 201).unwrap());
        s.claim_due(202, 10, &mut |_| true).unwrap();
        assert!(!s.mark_dialed_if("a", v1, 203).unwrap());
        let v2 = s.mirror_state("a").unwrap().unwrap().version;
        assert!(s.mark_dialed_if("a", v2, 204).unwrap());
    }

    #[test]
    fn callbacks_taken_over_are_kept_once_and_duplicates_closed() {
        let mut s = store("taken");
        let cb = Callback {
            id: "b".into(),
            queue: "richiamate".into(),
            number: "+39347002".into(),
            not_before: None,
            requirements: None,
            priority: 3,
            status: Status::Pending,
            attempts: 1,
            outcome: None,
            source: "ivr".into(),
            created_at: 50,
            updated_at: 60,
            promised_by: Some(7250),
        };
        assert_eq!(s.keep_taken(&cb, "asl", false, 11, 100).unwrap(), Kept::New);
        assert_eq!(
            s.keep_taken(&cb, "asl", false, 12, 100).unwrap(),
            Kept::Known
        );
        assert_eq!(s.open_mirrored().unwrap(), vec![("b".into(), Some(12))]);
        assert!(s.unmirrored(10).unwrap().is_empty(), "the stream has it");

        let got = s.get_callback("b").unwrap().unwrap();
        assert_eq!((got.priority, got.created_at, got.attempts), (3, 50, 1));
        assert_eq!(got.promised_by, Some(7250), "the promise moves with it");
        // The same citizen already waits here: closed as a duplicate, and
        // mirrored so no third node calls it.
        let Created::New(_) = s.create_callback(&new("c", "+39347003"), 100).unwrap() else {
            panic!()
        };
        let dup = Callback {
            id: "d".into(),
            number: "+39347003".into(),
            ..cb.clone()
        };
        assert_eq!(
            s.keep_taken(&dup, "asl", false, 13, 100).unwrap(),
            Kept::Duplicate
        );
        let d = s.get_callback("d").unwrap().unwrap();
        assert_eq!(d.status, Status::Cancelled);
        assert!(
            s.unmirrored(10)
                .unwrap()
                .iter()
                .any(|m| m.callback.id == "d")
        );
        // Dialled by the dead node: kept as failed, interrupted.
        let e = Callback {
            id: "e".into(),
            number: "+39347004".into(),
            ..cb.clone()
        };
        assert_eq!(s.keep_taken(&e, "asl", true, 14, 100).unwrap(), Kept::New);
        let e = s.get_callback("e").unwrap().unwrap();
        assert_eq!(
            (e.status, e.outcome.as_deref()),
            (Status::Failed, Some("interrupted"))
        );
        // Its queue bound to its firm by the first one kept, and its
        // records name that firm.
        assert_eq!(s.queue_owner("richiamate").unwrap().as_deref(), Some("asl"));
        let m = s.mirror_state("d").unwrap().unwrap();
        assert_eq!(m.tenant.as_deref(), Some("asl"));
        // Given away, then back for another firm of the same queue name:
        // nothing kept, nothing changed (the `moved` row stays).
        assert!(s.set_moved("b", "roma-1", 200).unwrap());
        assert_eq!(
            s.keep_taken(&cb, "altra", false, 19, 300).unwrap(),
            Kept::OtherFirm
        );
        assert_eq!(s.get_callback("b").unwrap().unwrap().status, Status::Moved);
        let other = Callback {
            id: "f".into(),
            number: "+39347005".into(),
            ..cb.clone()
        };
        assert_eq!(
            s.keep_taken(&other, "altra", false, 21, 300).unwrap(),
            Kept::OtherFirm
        );
        assert_eq!(s.get_callback("f").unwrap(), None);
        // Back for its own firm: pending here again.
        assert_eq!(s.keep_taken(&cb, "asl", false, 20, 300).unwrap(), Kept::New);
        assert_eq!(
            s.get_callback("b").unwrap().unwrap().status,
            Status::Pending
        );
        // Already here, whatever firm a record names: known (its record
        // is this node's to keep up to date).
        assert_eq!(
            s.keep_taken(&cb, "altra", false, 22, 300).unwrap(),
            Kept::Known
        );
        // A record that names no firm (an older version's) is never kept.
        let anon = Callback {
            id: "g".into(),
            number: "+39347006".into(),
            ..cb.clone()
        };
        assert_eq!(
            s.keep_taken(&anon, "", false, 23, 300).unwrap(),
            Kept::OtherFirm
        );
        assert_eq!(s.get_callback("g").unwrap(), None);
    }
}
