//! What the national network needs of campaign contacts: the same mirror
//! as callbacks ([`crate::mirror`]), one record per contact on the work
//! stream, so the contacts of a node that dies are dialled by another
//! node of its firm that runs a campaign of the same name.
//!
//! A contact's record is named by a random `work_id` (the local integer
//! id means nothing on another node); its number of dialled attempts
//! travels with it (`dialled_before` on the new node), so the retry
//! policy counts the citizen's attempts wherever they were made, and so
//! does the citizen's count for the day and a do-not-call listing of the
//! old node. A contact deleted with its campaign leaves a tombstone until
//! the stream says it is closed, or a node would take it over and dial a
//! citizen the firm removed.

use rusqlite::{OptionalExtension, params};

use crate::campaigns::{CampaignStatus, ContactStatus, DIALLED};
use crate::{Kept, Store, StoreError};

/// Schema migration: version, mirror state and work id per contact, the
/// tombstones of deleted ones; a do-not-call listing or a campaign's
/// status change makes its open contacts change too (their record says
/// so).
pub(crate) const MIGRATION: &str = "ALTER TABLE campaign_contacts ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE campaign_contacts ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE campaign_contacts ADD COLUMN mirror_seq INTEGER;
    ALTER TABLE campaign_contacts ADD COLUMN mirrored_at INTEGER;
    ALTER TABLE campaign_contacts ADD COLUMN work_id TEXT;
    ALTER TABLE campaign_contacts ADD COLUMN dialled_before INTEGER NOT NULL DEFAULT 0;
    UPDATE campaign_contacts SET mirrored = version WHERE status NOT IN ('pending', 'in_progress');
    CREATE UNIQUE INDEX campaign_contacts_work ON campaign_contacts (work_id) WHERE work_id IS NOT NULL;
    CREATE INDEX campaign_contacts_unmirrored ON campaign_contacts (id) WHERE version > mirrored;
    CREATE TRIGGER campaign_contacts_version
        AFTER UPDATE OF status, next_at, priority, attempts, name, language, data ON campaign_contacts
        BEGIN UPDATE campaign_contacts SET version = OLD.version + 1 WHERE id = NEW.id; END;
    CREATE TRIGGER dnc_contacts_version AFTER INSERT ON dnc
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE number = NEW.number AND status IN ('pending', 'in_progress'); END;
    CREATE TRIGGER campaign_status_contacts AFTER UPDATE OF status ON campaigns
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE campaign = NEW.id AND status IN ('pending', 'in_progress'); END;
    CREATE TABLE work_tombstones (
        work_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        campaign TEXT NOT NULL,
        tenant TEXT NOT NULL
    );
    CREATE TRIGGER campaign_contacts_tombstone BEFORE DELETE ON campaign_contacts
        WHEN OLD.work_id IS NOT NULL AND OLD.mirror_seq IS NOT NULL AND OLD.status != 'moved'
        BEGIN INSERT OR REPLACE INTO work_tombstones (work_id, seq, campaign, tenant)
              SELECT OLD.work_id, OLD.mirror_seq, c.name, c.tenant FROM campaigns c WHERE c.id = OLD.campaign; END;";

/// What travels with a contact from node to node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkContact {
    /// Its name on the stream.
    pub work_id: String,
    /// Its campaign's name (the same campaign on every node of the firm).
    pub campaign: String,
    /// Its campaign's firm.
    pub tenant: String,
    /// E.164.
    pub number: String,
    /// Display name.
    pub name: Option<String>,
    /// Higher first.
    pub priority: i32,
    /// Language.
    pub language: Option<String>,
    /// Free data (JSON object).
    pub data: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Attempts that reached the network (what the retry policy counts).
    pub dialled: u32,
    /// Next attempt not before (Unix seconds).
    pub next_at: i64,
    /// How the last attempt ended.
    pub last_outcome: Option<String>,
    /// Its number is on a do-not-call list of its firm or the nation's.
    pub dnc: bool,
    /// The day (Europe/Rome day number) of its last attempt, and the
    /// citizen's count of attempts that day.
    pub day: Option<(i64, u32)>,
}

/// Review fixes (migration after [`MIGRATION`]): a contact deleted leaves
/// a tombstone only while its record may still be open; a number taken off
/// a do-not-call list, or dialled by any campaign (the citizen's count for
/// the day), is a change of its open contacts too.
pub(crate) const FIXES: &str = "DROP TRIGGER campaign_contacts_tombstone;
    CREATE TRIGGER campaign_contacts_tombstone BEFORE DELETE ON campaign_contacts
        WHEN OLD.work_id IS NOT NULL AND OLD.mirror_seq IS NOT NULL AND OLD.status != 'moved'
             AND (OLD.status IN ('pending', 'in_progress') OR OLD.version > OLD.mirrored)
        BEGIN INSERT OR REPLACE INTO work_tombstones (work_id, seq, campaign, tenant)
              SELECT OLD.work_id, OLD.mirror_seq, c.name, c.tenant FROM campaigns c WHERE c.id = OLD.campaign; END;
    CREATE TRIGGER dnc_removed_contacts_version AFTER DELETE ON dnc
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE number = OLD.number AND status IN ('pending', 'in_progress'); END;
    CREATE TRIGGER dial_counts_contacts_insert AFTER INSERT ON dial_counts
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE number = NEW.number AND status = 'pending'; END;
    CREATE TRIGGER dial_counts_contacts_update AFTER UPDATE OF count ON dial_counts
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE number = NEW.number AND status = 'pending'; END;";

/// How long a contact whose attempt was under way when its node died
/// waits before its new node calls it: that node may only have been cut
/// off, its call still going on (a crash ends the call; a partition does
/// not), and no call with its wrap-up lasts this long.
pub const INTERRUPTED_HOLD: i64 = 4 * 3600;

/// A contact as the mirror sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirroredContact {
    /// What its record carries.
    pub contact: WorkContact,
    /// Its id here.
    pub id: i64,
    /// Where it stands.
    pub status: ContactStatus,
    /// Its campaign is finished: nothing of it is open any more.
    pub finished: bool,
    /// Its campaign is not running (draft or paused): the firm does not
    /// want it called now, here or elsewhere.
    pub held: bool,
    /// Its version now.
    pub version: i64,
    /// The stream sequence of its last record (`None`: never mirrored).
    pub seq: Option<u64>,
    /// When it was last written to the stream (Unix seconds).
    pub mirrored_at: Option<i64>,
}

impl MirroredContact {
    /// Whether it may still be dialled (here or, moved, elsewhere).
    pub fn open(&self) -> bool {
        !self.finished
            && matches!(
                self.status,
                ContactStatus::Pending | ContactStatus::InProgress
            )
    }
}

/// A contact deleted here whose record on the stream may still be open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// Its name on the stream.
    pub work_id: String,
    /// The sequence of its last record.
    pub seq: u64,
    /// Its campaign's name.
    pub campaign: String,
    /// Its campaign's firm.
    pub tenant: String,
}

const SELECT: &str = "SELECT k.work_id, k.id, c.name, c.tenant, k.number, k.name, k.priority, k.language, k.data,
        k.status, k.attempts,
        k.dialled_before + (SELECT count(*) FROM campaign_attempts a WHERE a.contact = k.id AND a.outcome IN (DIALLED_LIST)),
        k.next_at, k.last_outcome,
        EXISTS (SELECT 1 FROM dnc WHERE dnc.number = k.number AND dnc.tenant IN ('', c.tenant)),
        (SELECT d.count FROM dial_counts d WHERE d.number = k.number AND d.day = ?2),
        c.status = 'finished', k.version, k.mirror_seq, k.mirrored_at, c.status != 'running'
    FROM campaign_contacts k JOIN campaigns c ON c.id = k.campaign";

fn select() -> String {
    SELECT.replace("DIALLED_LIST", DIALLED)
}

/// A row of [`SELECT`], whose `?2` is `today`.
fn mirrored_contact(r: &rusqlite::Row<'_>, today: i64) -> rusqlite::Result<MirroredContact> {
    let status: String = r.get(9)?;
    let seq: Option<i64> = r.get(18)?;
    Ok(MirroredContact {
        contact: WorkContact {
            work_id: r.get(0)?,
            campaign: r.get(2)?,
            tenant: r.get(3)?,
            number: r.get(4)?,
            name: r.get(5)?,
            priority: r.get(6)?,
            language: r.get(7)?,
            data: r.get(8)?,
            attempts: r.get(10)?,
            dialled: r.get(11)?,
            next_at: r.get(12)?,
            last_outcome: r.get(13)?,
            dnc: r.get(14)?,
            day: r.get::<_, Option<u32>>(15)?.map(|count| (today, count)),
        },
        id: r.get(1)?,
        status: ContactStatus::parse(&status).unwrap_or(ContactStatus::Failed),
        finished: r.get(16)?,
        held: r.get(20)?,
        version: r.get(17)?,
        seq: seq.and_then(|s| u64::try_from(s).ok()),
        mirrored_at: r.get(19)?,
    })
}

impl Store {
    /// Up to `limit` contacts changed since last mirrored (never the ones
    /// moved away), each given its work id the first time; `today` (the
    /// Europe/Rome day number) for the citizen's count of attempts.
    pub fn unmirrored_contacts(
        &mut self,
        limit: usize,
        today: i64,
    ) -> Result<Vec<MirroredContact>, StoreError> {
        self.conn.execute(
            "UPDATE campaign_contacts SET work_id = lower(hex(randomblob(16)))
             WHERE id IN (SELECT id FROM campaign_contacts
                          WHERE version > mirrored AND work_id IS NULL AND status != 'moved' LIMIT ?1)",
            params![limit as i64],
        )?;
        let rows: Vec<_> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "{} WHERE k.version > k.mirrored AND k.status != 'moved' AND k.work_id IS NOT NULL
                 ORDER BY k.updated_at LIMIT ?1",
                select()
            ))?;
            let rows =
                stmt.query_map(params![limit as i64, today], |r| mirrored_contact(r, today))?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(rows)
    }

    /// One contact, by work id, as the mirror sees it.
    pub fn contact_mirror_state(
        &self,
        work_id: &str,
        today: i64,
    ) -> Result<Option<MirroredContact>, StoreError> {
        self.contact_where("k.work_id = ?1", work_id, today)
    }

    fn contact_where(
        &self,
        filter: &str,
        value: impl rusqlite::ToSql,
        today: i64,
    ) -> Result<Option<MirroredContact>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE {filter}", select()),
                params![value, today],
                |r| mirrored_contact(r, today),
            )
            .optional()?)
    }

    /// Contact `id` (local id) as the mirror sees it, given a work id if
    /// it had none yet (claimed before its first record was written).
    pub fn contact_for_fence(
        &mut self,
        id: i64,
        today: i64,
    ) -> Result<Option<MirroredContact>, StoreError> {
        self.conn.execute(
            "UPDATE campaign_contacts SET work_id = lower(hex(randomblob(16))) WHERE id = ?1 AND work_id IS NULL",
            params![id],
        )?;
        self.contact_where("k.id = ?1", id, today)
    }

    /// Version `version` of contact `work_id` is on the stream at `seq`.
    pub fn set_contact_mirrored(
        &mut self,
        work_id: &str,
        version: i64,
        seq: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE campaign_contacts SET mirrored = MAX(mirrored, ?2), mirror_seq = ?3, mirrored_at = ?4 WHERE work_id = ?1",
            params![work_id, version, seq as i64, now],
        )?;
        Ok(())
    }

    /// The stream holds this node's own record of contact `work_id` at
    /// `seq`: the next write is checked against it.
    pub fn set_contact_mirror_seq(&mut self, work_id: &str, seq: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE campaign_contacts SET mirror_seq = ?2 WHERE work_id = ?1",
            params![work_id, seq as i64],
        )?;
        Ok(())
    }

    /// This node no longer writes contact `work_id` to the stream.
    pub fn stop_mirroring_contact(&mut self, work_id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE campaign_contacts SET mirrored = version WHERE work_id = ?1",
            params![work_id],
        )?;
        Ok(())
    }

    /// Closes contact `work_id` with `status` and `outcome` if it is still
    /// open here, with its open attempt (not counted against the citizen's
    /// day); this node stops writing it. Returns whether it was open.
    fn close_contact(
        &mut self,
        work_id: &str,
        status: &str,
        outcome: &str,
        attempt_outcome: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.atomically(|s| {
            let id: Option<i64> = s
                .conn
                .query_row(
                    "SELECT id FROM campaign_contacts WHERE work_id = ?1 AND status IN ('pending', 'in_progress')",
                    params![work_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                s.stop_mirroring_contact(work_id)?;
                return Ok(false);
            };
            s.conn.execute(
                "UPDATE dial_counts SET count = max(count - 1, 0)
                 WHERE number = (SELECT number FROM campaign_contacts WHERE id = ?1)
                   AND day IN (SELECT day FROM campaign_attempts WHERE contact = ?1 AND ended_at IS NULL)",
                params![id],
            )?;
            s.conn.execute(
                "UPDATE campaign_attempts SET ended_at = ?2, outcome = ?3 WHERE contact = ?1 AND ended_at IS NULL",
                params![id, now, attempt_outcome],
            )?;
            s.conn.execute(
                "UPDATE campaign_contacts SET status = ?2, last_outcome = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, status, outcome, now],
            )?;
            s.stop_mirroring_contact(work_id)?;
            Ok(true)
        })
    }

    /// Another node took contact `work_id` over: never dialled here again.
    pub fn set_contact_moved(
        &mut self,
        work_id: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.close_contact(work_id, "moved", &format!("moved_to:{to}"), "moved", now)
    }

    /// Contact `work_id` cannot be confirmed as this node's on the stream:
    /// never dialled on a stranger's word (`failed`, `unconfirmed`).
    pub fn set_contact_unconfirmed(&mut self, work_id: &str, now: i64) -> Result<bool, StoreError> {
        self.close_contact(work_id, "failed", "unconfirmed", "unconfirmed", now)
    }

    /// Open contacts last written to the stream before `before` are
    /// written again (the stream forgets records after a while).
    pub fn refresh_contacts_mirror(&mut self, before: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE campaign_contacts SET mirrored = 0
             WHERE status IN ('pending', 'in_progress') AND mirrored_at IS NOT NULL AND mirrored_at < ?1",
            params![before],
        )?)
    }

    /// Every open contact here that has a record on the stream.
    pub fn open_mirrored_contacts(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT work_id FROM campaign_contacts
             WHERE status IN ('pending', 'in_progress') AND work_id IS NOT NULL AND mirror_seq IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The firms and names of the campaigns here that may take contacts
    /// over (not finished).
    pub fn campaigns_taking_contacts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, name FROM campaigns WHERE status != 'finished'")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps a contact taken over from another node (record at `seq`,
    /// already this node's) in this node's campaign of the same firm and
    /// name: pending, due now with outcome `interrupted` when its old node
    /// was dialling it (as after a crash on one node). The same citizen
    /// already in that campaign here: kept once (the one here), the taken
    /// record closed through a tombstone.
    pub fn keep_taken_contact(
        &mut self,
        k: &WorkContact,
        interrupted: bool,
        seq: u64,
        now: i64,
    ) -> Result<Kept, StoreError> {
        self.atomically(|s| {
            let here: Option<(i64, String)> = s
                .conn
                .query_row(
                    "SELECT id, status FROM campaign_contacts WHERE work_id = ?1",
                    params![k.work_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match here {
                None => {}
                Some((id, status)) if status == "moved" => {
                    // Back to this node: a new row, whose record the
                    // stream already has. The old row's attempts go with
                    // it (their count travels in the record; the queue log
                    // keeps each), or a new row given the same id would
                    // count them twice.
                    s.conn.execute(
                        "DELETE FROM campaign_attempts WHERE contact = ?1",
                        params![id],
                    )?;
                    s.conn.execute(
                        "DELETE FROM campaign_contacts WHERE id = ?1",
                        params![id],
                    )?;
                }
                Some((_, status)) => {
                    s.set_contact_mirror_seq(&k.work_id, seq)?;
                    if !matches!(status.as_str(), "pending" | "in_progress") {
                        // Finished here: the stream must say so.
                        s.conn.execute(
                            "UPDATE campaign_contacts SET mirrored = 0 WHERE work_id = ?1",
                            params![k.work_id],
                        )?;
                    }
                    return Ok(Kept::Known);
                }
            }
            let campaign: Option<(String, String)> = s
                .conn
                .query_row(
                    "SELECT id, status FROM campaigns WHERE name = ?1 AND tenant = ?2",
                    params![k.campaign, k.tenant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((campaign, _)) = campaign.filter(|(_, st)| {
                CampaignStatus::parse(st).is_some_and(|st| st != CampaignStatus::Finished)
            }) else {
                s.bury(&k.work_id, seq, &k.campaign, &k.tenant)?;
                return Ok(Kept::Duplicate);
            };
            if k.dnc {
                s.conn.execute(
                    "INSERT INTO dnc (number, tenant, added_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![k.number, k.tenant, now],
                )?;
            }
            if let Some((day, count)) = k.day {
                s.conn.execute(
                    "INSERT INTO dial_counts (number, day, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (number, day) DO UPDATE SET count = max(count, excluded.count)",
                    params![k.number, day, count],
                )?;
            }
            let duplicate = s
                .conn
                .query_row(
                    "SELECT 1 FROM campaign_contacts WHERE campaign = ?1 AND number = ?2",
                    params![campaign, k.number],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if duplicate {
                s.bury(&k.work_id, seq, &k.campaign, &k.tenant)?;
                return Ok(Kept::Duplicate);
            }
            // An attempt under way when its node died may have reached the
            // citizen, and may still be going on (a node cut off, not dead):
            // counted, and held for `INTERRUPTED_HOLD`.
            let (outcome, next_at, dialled) = if interrupted {
                (
                    Some("interrupted"),
                    now + INTERRUPTED_HOLD,
                    k.dialled.saturating_add(1),
                )
            } else {
                (k.last_outcome.as_deref(), k.next_at, k.dialled)
            };
            s.conn.execute(
                "INSERT INTO campaign_contacts (campaign, number, name, priority, language, data, status, attempts,
                    last_outcome, next_at, updated_at, version, mirrored, mirror_seq, mirrored_at, work_id, dialled_before)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?10, 1, 1, ?11, ?10, ?12, ?13)",
                params![
                    campaign,
                    k.number,
                    k.name,
                    k.priority,
                    k.language,
                    k.data,
                    k.attempts,
                    outcome,
                    next_at,
                    now,
                    seq as i64,
                    k.work_id,
                    dialled
                ],
            )?;
            Ok(Kept::New)
        })
    }

    /// Notes that the record of `work_id` at `seq` is to be closed on the
    /// stream.
    pub fn bury(
        &mut self,
        work_id: &str,
        seq: u64,
        campaign: &str,
        tenant: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO work_tombstones (work_id, seq, campaign, tenant) VALUES (?1, ?2, ?3, ?4)",
            params![work_id, seq as i64, campaign, tenant],
        )?;
        Ok(())
    }

    /// Up to `limit` records to close on the stream.
    pub fn tombstones(&self, limit: usize) -> Result<Vec<Tombstone>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT work_id, seq, campaign, tenant FROM work_tombstones ORDER BY work_id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            let seq: i64 = r.get(1)?;
            Ok(Tombstone {
                work_id: r.get(0)?,
                seq: u64::try_from(seq).unwrap_or(0),
                campaign: r.get(2)?,
                tenant: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The record of `work_id` is closed on the stream (or is another
    /// node's now).
    pub fn drop_tombstone(&mut self, work_id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM work_tombstones WHERE work_id = ?1",
            params![work_id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttemptEnd, Campaign, Claim, NewContact};

    fn store(name: &str) -> Store {
        Store::open(&crate::tests::temp(&format!("mirror-contacts-{name}"))).unwrap()
    }

    fn campaign(s: &mut Store, id: &str) {
        assert!(
            s.create_campaign(&Campaign {
                id: id.into(),
                name: "richiamo-fragili".into(),
                tenant: "asl".into(),
                spec: "{}".into(),
                source: "config".into(),
                status: CampaignStatus::Running,
                created_at: 10,
                updated_at: 10,
            })
            .unwrap()
        );
    }

    fn import(s: &mut Store, campaign: &str, numbers: &[&str]) {
        let list: Vec<NewContact> = numbers
            .iter()
            .map(|n| NewContact {
                number: (*n).into(),
                name: Some("Maria".into()),
                priority: 1,
                language: Some("it".into()),
                not_before: None,
                data: Some("{\"asl\":\"roma1\"}".into()),
            })
            .collect();
        s.import_contacts(campaign, &list, 20).unwrap();
    }

    fn claim(campaign: &str, now: i64) -> Claim<'_> {
        Claim {
            campaign,
            tenant: "asl",
            limit: 10,
            now,
            day: 20_000,
            max_per_day: 3,
            tomorrow: 90_000,
        }
    }

    impl Store {
        fn dispose_for_test(&mut self, id: i64, status: &str) {
            self.conn
                .execute(
                    "UPDATE campaign_contacts SET status = ?2 WHERE id = ?1",
                    params![id, status],
                )
                .unwrap();
        }
    }

    fn taken(m: &MirroredContact) -> WorkContact {
        m.contact.clone()
    }

    #[test]
    fn every_change_of_a_contact_is_mirrored_with_what_its_next_node_needs() {
        let mut s = store("changes");
        campaign(&mut s, "c-b");
        import(&mut s, "c-b", &["+393470000001", "+393470000002"]);
        let first = s.unmirrored_contacts(10, 20_000).unwrap();
        assert_eq!(first.len(), 2);
        assert!(
            first
                .iter()
                .all(|m| m.contact.work_id.len() == 32 && m.open())
        );
        assert_eq!(
            (
                first[0].contact.campaign.as_str(),
                first[0].contact.tenant.as_str()
            ),
            ("richiamo-fragili", "asl")
        );
        for m in &first {
            s.set_contact_mirrored(&m.contact.work_id, m.version, 5, 30)
                .unwrap();
        }
        assert!(s.unmirrored_contacts(10, 20_000).unwrap().is_empty());
        // An attempt that reached the network, counted for the next node.
        let k = s.claim_contacts(claim("c-b", 40)).unwrap().contacts;
        assert_eq!(k.len(), 2);
        let claimed = s.unmirrored_contacts(10, 20_000).unwrap();
        assert_eq!(claimed.len(), 2, "a claim is a change");
        assert!(
            claimed
                .iter()
                .all(|m| m.status == ContactStatus::InProgress)
        );
        assert_eq!(claimed[0].contact.day, Some((20_000, 1)));
        for m in &claimed {
            s.set_contact_mirrored(&m.contact.work_id, m.version, 6, 40)
                .unwrap();
        }
        s.end_attempt(
            &AttemptEnd {
                contact: k[0].id,
                attempt: 1,
                outcome: "no_answer".into(),
                status: ContactStatus::Pending,
                next_at: Some(100),
                disposition: None,
                uncount: false,
            },
            50,
        )
        .unwrap();
        let after = s.unmirrored_contacts(10, 20_000).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(
            (after[0].contact.dialled, after[0].contact.attempts),
            (1, 1)
        );
        s.set_contact_mirrored(&after[0].contact.work_id, after[0].version, 7, 50)
            .unwrap();
        // A do-not-call listing changes the open contact of that number.
        s.add_dnc(&after[0].contact.number, "asl", 60).unwrap();
        let listed = s.unmirrored_contacts(10, 20_000).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].contact.dnc);
        s.set_contact_mirrored(&listed[0].contact.work_id, listed[0].version, 8, 60)
            .unwrap();
        // A campaign finished closes every open contact of it.
        s.set_campaign_status(
            "c-b",
            &[CampaignStatus::Running],
            CampaignStatus::Finished,
            70,
        )
        .unwrap();
        let closed = s.unmirrored_contacts(10, 20_000).unwrap();
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|m| !m.open()));
    }

    #[test]
    fn a_moved_contact_is_never_claimed_or_written_and_its_attempt_uncounted() {
        let mut s = store("moved");
        campaign(&mut s, "c-b");
        import(&mut s, "c-b", &["+393470000001"]);
        let m = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        s.set_contact_mirrored(&m.contact.work_id, m.version, 5, 30)
            .unwrap();
        let k = s
            .claim_contacts(claim("c-b", 40))
            .unwrap()
            .contacts
            .remove(0);
        assert!(
            s.set_contact_moved(&m.contact.work_id, "napoli-1", 45)
                .unwrap()
        );
        assert!(
            !s.set_contact_moved(&m.contact.work_id, "napoli-1", 46)
                .unwrap()
        );
        assert!(s.unmirrored_contacts(10, 20_000).unwrap().is_empty());
        let here = s.contact(k.id).unwrap().unwrap();
        assert_eq!(here.status, ContactStatus::Moved);
        assert_eq!(here.last_outcome.as_deref(), Some("moved_to:napoli-1"));
        assert_eq!(
            s.attempts(k.id).unwrap()[0].outcome.as_deref(),
            Some("moved")
        );
        assert_eq!(s.may_dial(k.id, "asl").unwrap(), crate::DialCheck::Settled);
        // The attempt's end arriving later changes nothing.
        assert!(
            !s.end_attempt(
                &AttemptEnd {
                    contact: k.id,
                    attempt: 1,
                    outcome: "withheld".into(),
                    status: ContactStatus::Pending,
                    next_at: Some(50),
                    disposition: None,
                    uncount: true,
                },
                50,
            )
            .unwrap()
        );
        assert_eq!(
            s.contact(k.id).unwrap().unwrap().status,
            ContactStatus::Moved
        );
        assert!(
            s.claim_contacts(claim("c-b", 60))
                .unwrap()
                .contacts
                .is_empty()
        );
        let p = s.progress("c-b").unwrap();
        assert_eq!(p.contacts[5], 1, "counted as moved");
    }

    #[test]
    fn a_contact_taken_over_keeps_its_attempts_day_and_listing_once() {
        let mut b = store("from");
        campaign(&mut b, "c-b");
        import(&mut b, "c-b", &["+393470000001", "+393470000002"]);
        let k = b.claim_contacts(claim("c-b", 40)).unwrap().contacts;
        b.end_attempt(
            &AttemptEnd {
                contact: k[0].id,
                attempt: 1,
                outcome: "busy".into(),
                status: ContactStatus::Pending,
                next_at: Some(100),
                disposition: None,
                uncount: false,
            },
            50,
        )
        .unwrap();
        b.add_dnc("+393470000002", "asl", 55).unwrap();
        let on_b = b.unmirrored_contacts(10, 20_000).unwrap();
        let (ended, dialling) = if on_b[0].status == ContactStatus::Pending {
            (&on_b[0], &on_b[1])
        } else {
            (&on_b[1], &on_b[0])
        };

        let mut c = store("to");
        campaign(&mut c, "c-c");
        assert_eq!(
            c.keep_taken_contact(&taken(ended), false, 9, 60).unwrap(),
            Kept::New
        );
        assert_eq!(
            c.keep_taken_contact(&taken(ended), false, 9, 61).unwrap(),
            Kept::Known,
            "kept once"
        );
        assert_eq!(
            c.keep_taken_contact(&taken(dialling), true, 10, 62)
                .unwrap(),
            Kept::New
        );
        assert!(
            c.unmirrored_contacts(10, 20_000).unwrap().is_empty(),
            "its record is already written"
        );
        // The one being dialled: interrupted, held (its node may only have
        // been cut off, its call going on), the attempt counted; the other
        // keeps its time.
        let again = c
            .contact_mirror_state(&dialling.contact.work_id, 20_000)
            .unwrap()
            .unwrap();
        assert_eq!(again.contact.last_outcome.as_deref(), Some("interrupted"));
        assert_eq!(
            (again.contact.next_at, again.status, again.contact.dialled),
            (62 + INTERRUPTED_HOLD, ContactStatus::Pending, 1)
        );
        assert!(again.contact.dnc, "its listing came with it");
        let moved = c
            .contact_mirror_state(&ended.contact.work_id, 20_000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                moved.contact.attempts,
                moved.contact.dialled,
                moved.contact.next_at
            ),
            (1, 1, 100)
        );
        // The retry policy counts the attempt made on the other node; the
        // citizen's day too (a cap of 1 holds them until tomorrow).
        let mut cl = claim("c-c", 20_000);
        cl.max_per_day = 1;
        let got = c.claim_contacts(cl).unwrap();
        assert!(got.contacts.is_empty());
        assert_eq!((got.dnc, got.capped), (1, 1));
        let mut cl = claim("c-c", 100_000);
        cl.day = 20_001;
        let got = c.claim_contacts(cl).unwrap().contacts;
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].attempts, got[0].dialled), (2, 1));
    }

    #[test]
    fn a_contact_already_here_or_without_its_campaign_is_closed_by_a_tombstone() {
        let mut b = store("dup-from");
        campaign(&mut b, "c-b");
        import(&mut b, "c-b", &["+393470000001"]);
        let m = b.unmirrored_contacts(10, 20_000).unwrap().remove(0);

        let mut c = store("dup-to");
        campaign(&mut c, "c-c");
        import(&mut c, "c-c", &["+393470000001"]);
        assert_eq!(
            c.keep_taken_contact(&taken(&m), false, 4, 60).unwrap(),
            Kept::Duplicate
        );
        let mut other = taken(&m);
        other.work_id = "ffffffffffffffffffffffffffffffff".into();
        other.number = "+393470000009".into();
        other.campaign = "altra".into();
        assert_eq!(
            c.keep_taken_contact(&other, false, 5, 60).unwrap(),
            Kept::Duplicate
        );
        let t = c.tombstones(10).unwrap();
        assert_eq!(t.len(), 2);
        for t in &t {
            c.drop_tombstone(&t.work_id).unwrap();
        }
        assert!(c.tombstones(10).unwrap().is_empty());
        // A mirrored contact deleted with its campaign leaves one too.
        let here = c.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        c.set_contact_mirrored(&here.contact.work_id, here.version, 7, 70)
            .unwrap();
        c.set_campaign_status(
            "c-c",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            71,
        )
        .unwrap();
        c.delete_campaign("c-c").unwrap();
        let t = c.tombstones(10).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].work_id.as_str(), t[0].seq),
            (here.contact.work_id.as_str(), 7)
        );
        assert_eq!(t[0].campaign, "richiamo-fragili");
    }

    #[test]
    fn a_listing_removed_or_a_dial_by_another_campaign_is_a_change_and_closed_ones_leave_no_tombstone()
     {
        let mut s = store("triggers");
        campaign(&mut s, "c-x");
        import(&mut s, "c-x", &["+393470000001"]);
        let m = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        s.set_contact_mirrored(&m.contact.work_id, m.version, 5, 30)
            .unwrap();
        s.add_dnc("+393470000001", "asl", 31).unwrap();
        let m = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        assert!(m.contact.dnc);
        s.set_contact_mirrored(&m.contact.work_id, m.version, 6, 32)
            .unwrap();
        s.remove_dnc("+393470000001", "asl").unwrap();
        let m = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        assert!(!m.contact.dnc, "the listing taken off travels too");
        s.set_contact_mirrored(&m.contact.work_id, m.version, 7, 33)
            .unwrap();
        // Another campaign dials the same citizen: their count for the day
        // is this contact's news too (the daily cap on a new node).
        assert!(
            s.create_campaign(&Campaign {
                id: "c-y".into(),
                name: "altra".into(),
                tenant: "asl".into(),
                spec: "{}".into(),
                source: "api".into(),
                status: CampaignStatus::Running,
                created_at: 10,
                updated_at: 10,
            })
            .unwrap()
        );
        import(&mut s, "c-y", &["+393470000001"]);
        for m in s.unmirrored_contacts(10, 20_000).unwrap() {
            s.set_contact_mirrored(&m.contact.work_id, m.version, 8, 34)
                .unwrap();
        }
        assert_eq!(
            s.claim_contacts(claim("c-y", 40)).unwrap().contacts.len(),
            1
        );
        let changed = s.unmirrored_contacts(10, 20_000).unwrap();
        let x = changed
            .iter()
            .find(|m| m.contact.campaign == "richiamo-fragili")
            .unwrap();
        assert_eq!(x.contact.day, Some((20_000, 1)));
        assert!(!x.held, "running");
        for m in &changed {
            s.set_contact_mirrored(&m.contact.work_id, m.version, 9, 35)
                .unwrap();
        }
        // Paused: held, here and on any node.
        s.set_campaign_status(
            "c-x",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            36,
        )
        .unwrap();
        let held = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        assert!(held.held && held.open());
        s.set_contact_mirrored(&held.contact.work_id, held.version, 10, 37)
            .unwrap();
        // A closed contact already on the stream as closed: no tombstone
        // when it is deleted; an open one leaves one.
        s.dispose_for_test(x.id, "done");
        let closed = s.unmirrored_contacts(10, 20_000).unwrap().remove(0);
        assert!(!closed.open());
        s.set_contact_mirrored(&closed.contact.work_id, closed.version, 11, 38)
            .unwrap();
        s.delete_campaign("c-x").unwrap();
        assert!(s.tombstones(10).unwrap().is_empty());
        s.set_campaign_status(
            "c-y",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            39,
        )
        .unwrap();
        s.delete_campaign("c-y").unwrap();
        assert_eq!(
            s.tombstones(10).unwrap().len(),
            1,
            "its contact was in progress"
        );
    }
}
