//! Outbound campaigns: their definitions and status, their contacts and
//! each attempt, the do-not-call lists and the per-citizen daily count.
//!
//! An attempt is claimed before anyone is dialled: the contact goes
//! `in_progress`, its attempt row is written and the citizen's count for
//! the day goes up, in one transaction. A process that dies mid-attempt
//! leaves that row open; the next start closes it as `interrupted` and puts
//! the contact back (never dialled twice for the same attempt, never
//! lost).

use rusqlite::{OptionalExtension, Row, params};

use crate::{MAX_LIST, Store, StoreError};

/// The schema (one migration).
pub(crate) const MIGRATION: &str = "CREATE TABLE campaigns (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        spec TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE campaign_contacts (
        id INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        number TEXT NOT NULL,
        name TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        language TEXT,
        data TEXT,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_outcome TEXT,
        disposition TEXT,
        note TEXT,
        next_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (campaign, number)
    );
    CREATE INDEX campaign_contacts_due
        ON campaign_contacts (campaign, status, priority DESC, next_at, id);
    CREATE TABLE campaign_attempts (
        contact INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        campaign TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT,
        PRIMARY KEY (contact, attempt)
    );
    CREATE INDEX campaign_attempts_open ON campaign_attempts (ended_at) WHERE ended_at IS NULL;
    CREATE TABLE dnc (
        number TEXT NOT NULL,
        tenant TEXT NOT NULL,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (number, tenant)
    );
    CREATE TABLE dial_counts (
        number TEXT NOT NULL,
        day INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (number, day)
    );";

/// Dispositions (migration after [`MIGRATION`]): the call record an
/// attempt belongs to, and the time an operator's "call later" asked for
/// while the attempt was still open.
pub(crate) const DISPOSITIONS: &str = "ALTER TABLE campaign_attempts ADD COLUMN call TEXT;
    CREATE INDEX campaign_attempts_call ON campaign_attempts (call) WHERE call IS NOT NULL;
    ALTER TABLE campaign_contacts ADD COLUMN later_at INTEGER;";

/// Calls back (migration after [`DISPOSITIONS`]): contacts found by
/// number, and which inbound call record was a contact calling the
/// campaign's number back (an operator's disposition on that call
/// applies to the contact). An attempt keeps the day (Europe/Rome) its
/// citizen's daily count was raised on. The queue log gains each attempt's end and
/// each disposition (`event` `attempt` or `disposition`, the outcome or
/// code in `reason`, with the campaign's name and the contact).
pub(crate) const CALLERS: &str =
    "CREATE INDEX campaign_contacts_number ON campaign_contacts (number);
    CREATE TABLE campaign_callers (
        call TEXT PRIMARY KEY,
        contact INTEGER NOT NULL,
        at INTEGER NOT NULL
    );
    ALTER TABLE campaign_attempts ADD COLUMN day INTEGER;
    ALTER TABLE queue_log ADD COLUMN campaign TEXT;
    ALTER TABLE queue_log ADD COLUMN contact INTEGER;
    CREATE INDEX queue_log_contact ON queue_log (contact, seq) WHERE contact IS NOT NULL;";

/// Campaign names unique within their firm (migration after the mirror's
/// and the reports' tables): 65 firms each naming theirs `richiami` or
/// `fragili` must not be refused for another firm's, nor learn from a
/// `409` that another firm has one. SQLite cannot drop a column's
/// `UNIQUE`, so the table is made again; the one trigger on it (a status
/// change is a change of its open contacts, `mirror_contacts`) with it.
/// The trigger that reads it (a deleted contact's tombstone names its
/// campaign) is dropped first and made again as `mirror_contacts::FIXES`
/// left it: SQLite refuses to drop a table a trigger still reads.
pub(crate) const NAMES_PER_TENANT: &str = "DROP TRIGGER campaign_contacts_tombstone;
    CREATE TABLE campaigns_per_tenant (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        spec TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (tenant, name)
    );
    INSERT INTO campaigns_per_tenant (id, name, tenant, spec, source, status, created_at, updated_at)
        SELECT id, name, tenant, spec, source, status, created_at, updated_at FROM campaigns;
    DROP TABLE campaigns;
    ALTER TABLE campaigns_per_tenant RENAME TO campaigns;
    CREATE TRIGGER campaign_status_contacts AFTER UPDATE OF status ON campaigns
        BEGIN UPDATE campaign_contacts SET version = version + 1
              WHERE campaign = NEW.id AND status IN ('pending', 'in_progress'); END;
    CREATE TRIGGER campaign_contacts_tombstone BEFORE DELETE ON campaign_contacts
        WHEN OLD.work_id IS NOT NULL AND OLD.mirror_seq IS NOT NULL AND OLD.status != 'moved'
             AND (OLD.status IN ('pending', 'in_progress') OR OLD.version > OLD.mirrored)
        BEGIN INSERT OR REPLACE INTO work_tombstones (work_id, seq, campaign, tenant)
              SELECT OLD.work_id, OLD.mirror_seq, c.name, c.tenant FROM campaigns c WHERE c.id = OLD.campaign; END;";

/// A campaign's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignStatus {
    /// Created, never started.
    Draft,
    /// Dialling (within its windows).
    Running,
    /// Stopped for now; contacts keep their state.
    Paused,
    /// Stopped for good.
    Finished,
}

impl CampaignStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
        }
    }

    /// Parses [`CampaignStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Draft, Self::Running, Self::Paused, Self::Finished]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// Where a contact stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactStatus {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is under way.
    InProgress,
    /// Reached (or its disposition closed it).
    Done,
    /// Out of attempts, or its number is refused.
    Failed,
    /// On a do-not-call list when its turn came.
    Dnc,
    /// Taken over by another node of the national network (which calls
    /// it now); never dialled here.
    Moved,
}

impl ContactStatus {
    /// Every status, in the order the API lists counts.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::InProgress,
        Self::Done,
        Self::Failed,
        Self::Dnc,
        Self::Moved,
    ];

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Dnc => "dnc",
            Self::Moved => "moved",
        }
    }

    /// Parses [`ContactStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A campaign as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// The definition as given (JSON; validated before it was stored).
    pub spec: String,
    /// `config` or `api`.
    pub source: String,
    /// Where it stands.
    pub status: CampaignStatus,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A contact to import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewContact {
    /// E.164, already normalised.
    pub number: String,
    /// Display name.
    pub name: Option<String>,
    /// Higher first.
    pub priority: i32,
    /// Language the operator should speak.
    pub language: Option<String>,
    /// Not called before this Unix time.
    pub not_before: Option<i64>,
    /// Free data for the operator's desk (a JSON object).
    pub data: Option<String>,
}

/// A contact as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Id.
    pub id: i64,
    /// Campaign id.
    pub campaign: String,
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
    /// Where it stands.
    pub status: ContactStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// How the last attempt ended.
    pub last_outcome: Option<String>,
    /// The operator's disposition.
    pub disposition: Option<String>,
    /// The operator's note.
    pub note: Option<String>,
    /// Next attempt not before (Unix seconds).
    pub next_at: i64,
    /// Attempts that reached the network (not skipped, withheld or
    /// interrupted): what the retry policy counts. Filled by a claim.
    pub dialled: u32,
}

/// An attempt as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds; `None` while it lasts.
    pub ended_at: Option<i64>,
    /// How it ended.
    pub outcome: Option<String>,
}

/// A campaign's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Contacts by status, in [`ContactStatus::ALL`] order.
    pub contacts: [u64; 6],
    /// Attempts made.
    pub attempts: u64,
    /// Attempts answered by a citizen who talked to an operator.
    pub answered: u64,
    /// Attempts answered with no operator (the recorded message).
    pub abandoned: u64,
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// New contacts.
    pub added: u64,
    /// Numbers the campaign already had: their details updated if still
    /// pending, never a second contact.
    pub merged: u64,
}

/// A campaign call found by its call record id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallAttempt {
    /// The contact.
    pub contact: Contact,
    /// The attempt's number.
    pub attempt: u32,
    /// The attempt is over.
    pub ended: bool,
}

/// An operator's disposition, and what it makes of the contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disposition {
    /// The contact.
    pub contact: i64,
    /// The attempt it is about.
    pub attempt: u32,
    /// The code (`booked`, `call_later`, a campaign's own).
    pub code: String,
    /// The operator's note.
    pub note: Option<String>,
    /// The contact's status once the attempt is over (`None`: as the
    /// attempt leaves it).
    pub status: Option<ContactStatus>,
    /// Its next attempt not before (with `Pending`).
    pub next_at: Option<i64>,
    /// The call record it was given on, and by whom (the queue log).
    pub call: String,
    /// The operator (or API user) who gave it.
    pub by: Option<String>,
}

/// A contact's line in the queue log: (event, outcome or code, call
/// record, who).
pub type LogLine = (String, Option<String>, String, Option<String>);

/// Whether a claimed attempt may still dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialCheck {
    /// Yes.
    Go,
    /// Its campaign was paused, stopped or deleted since the claim.
    Stopped,
    /// Its number was put on a do-not-call list since the claim.
    DoNotCall,
    /// The contact was settled meanwhile (a disposition on the citizen's
    /// own call to the campaign's number).
    Settled,
}

/// A change of status refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusChange {
    /// Done; the campaign as it is now.
    Done(Campaign),
    /// No such campaign.
    NotFound,
    /// Not from its current status; the campaign as it is.
    Refused(Campaign),
}

/// How a finished attempt leaves its contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptEnd {
    /// The contact.
    pub contact: i64,
    /// Its attempt number.
    pub attempt: u32,
    /// How it ended.
    pub outcome: String,
    /// The contact's status after it.
    pub status: ContactStatus,
    /// Its next attempt not before (pending only).
    pub next_at: Option<i64>,
    /// The operator's disposition and note, when given.
    pub disposition: Option<(String, Option<String>)>,
    /// Nobody was dialled (withheld, skipped, the operator left first):
    /// the citizen's count for the day the attempt was claimed on is
    /// lowered again, so the daily cap counts only real calls.
    pub uncount: bool,
}

/// A claim's limits.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// Campaign id.
    pub campaign: &'a str,
    /// Its tenant (whose do-not-call list applies, beside the national).
    pub tenant: &'a str,
    /// Contacts wanted.
    pub limit: usize,
    /// Now (Unix seconds).
    pub now: i64,
    /// Today's number (Europe/Rome day), for the daily cap.
    pub day: i64,
    /// Most attempts per citizen per day across every campaign.
    pub max_per_day: u32,
    /// When a capped contact is tried again (the next day's start).
    pub tomorrow: i64,
}

/// What a claim found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Contacts to dial now (each `in_progress`, its attempt row open).
    pub contacts: Vec<Contact>,
    /// Contacts found on a do-not-call list (now `dnc`).
    pub dnc: u64,
    /// Contacts put off to tomorrow by the daily cap.
    pub capped: u64,
}

const CAMPAIGN: &str = "id, name, tenant, spec, source, status, created_at, updated_at";
const CONTACT: &str = "id, campaign, number, name, priority, language, data, status, attempts, last_outcome, disposition, note, next_at";

fn campaign(row: &Row<'_>) -> rusqlite::Result<Campaign> {
    let status: String = row.get(5)?;
    Ok(Campaign {
        id: row.get(0)?,
        name: row.get(1)?,
        tenant: row.get(2)?,
        spec: row.get(3)?,
        source: row.get(4)?,
        status: CampaignStatus::parse(&status).unwrap_or(CampaignStatus::Paused),
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

fn contact(row: &Row<'_>) -> rusqlite::Result<Contact> {
    let status: String = row.get(7)?;
    Ok(Contact {
        id: row.get(0)?,
        campaign: row.get(1)?,
        number: row.get(2)?,
        name: row.get(3)?,
        priority: row.get(4)?,
        language: row.get(5)?,
        data: row.get(6)?,
        status: ContactStatus::parse(&status).unwrap_or(ContactStatus::Pending),
        attempts: row.get(8)?,
        last_outcome: row.get(9)?,
        disposition: row.get(10)?,
        note: row.get(11)?,
        next_at: row.get(12)?,
        dialled: 0,
    })
}

/// The outcomes of attempts that reached the network (the retry policy
/// counts those; an attempt skipped, withheld, interrupted or left by its
/// operator before dialling is none of the citizen's).
pub(crate) const DIALLED: &str =
    "'answered', 'busy', 'no_answer', 'failed', 'abandoned', 'dial_plan'";

impl Store {
    /// Stores a new campaign (`draft`). `Ok(false)`: its tenant has one
    /// of that name.
    pub fn create_campaign(&mut self, c: &Campaign) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO campaigns (id, name, tenant, spec, source, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (tenant, name) DO NOTHING",
            params![
                c.id,
                c.name,
                c.tenant,
                c.spec,
                c.source,
                c.status.as_str(),
                c.created_at
            ],
        )?;
        Ok(n == 1)
    }

    /// Replaces the definition of a campaign from the configuration (its
    /// status and contacts stay), or adds it; by tenant and name.
    /// `Ok(false)`: the tenant has a campaign of that name that the
    /// configuration did not make: left alone.
    pub fn upsert_config_campaign(&mut self, c: &Campaign) -> Result<bool, StoreError> {
        self.conn.execute(
            "INSERT INTO campaigns (id, name, tenant, spec, source, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'config', 'draft', ?5, ?5)
             ON CONFLICT (tenant, name) DO UPDATE SET spec = ?4, updated_at = ?5
             WHERE campaigns.source = 'config'",
            params![c.id, c.name, c.tenant, c.spec, c.created_at],
        )?;
        // Never one made through the API: a configuration must not take
        // over a campaign it did not create. Another tenant's of the same
        // name is another campaign.
        let source: Option<String> = self
            .conn
            .query_row(
                "SELECT source FROM campaigns WHERE tenant = ?1 AND name = ?2",
                params![c.tenant, c.name],
                |r| r.get(0),
            )
            .optional()?;
        Ok(source.is_some_and(|source| source == "config"))
    }

    /// One campaign.
    pub fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {CAMPAIGN} FROM campaigns WHERE id = ?1"),
                params![id],
                campaign,
            )
            .optional()?)
    }

    /// Every campaign (of `tenant` when given), oldest first.
    pub fn campaigns(&self, tenant: Option<&str>) -> Result<Vec<Campaign>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CAMPAIGN} FROM campaigns WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at, name LIMIT {MAX_LIST}"
        ))?;
        let rows = st.query_map(params![tenant], campaign)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The running campaigns, all of them (the scheduler's list).
    pub fn running_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CAMPAIGN} FROM campaigns WHERE status = 'running' ORDER BY created_at, name"
        ))?;
        let rows = st.query_map([], campaign)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many campaigns `tenant` has (for its quota).
    pub fn campaign_count(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM campaigns WHERE tenant = ?1",
            params![tenant],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Whether attempt `attempt` of `contact` may dial now: its campaign
    /// still running, its number on no do-not-call list of `tenant` or
    /// the nation's.
    pub fn may_dial(&self, contact: i64, tenant: &str) -> Result<DialCheck, StoreError> {
        let row: Option<(String, String, String)> = self
            .conn
            .query_row(
                "SELECT c.status, k.number, k.status FROM campaign_contacts k JOIN campaigns c ON c.id = k.campaign
                 WHERE k.id = ?1",
                params![contact],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((status, number, contact_status)) = row else {
            return Ok(DialCheck::Stopped);
        };
        if status != CampaignStatus::Running.as_str() {
            return Ok(DialCheck::Stopped);
        }
        // Settled meanwhile (the citizen called back and booked).
        if contact_status != ContactStatus::InProgress.as_str() {
            return Ok(DialCheck::Settled);
        }
        if self.is_dnc(&number, tenant)? {
            return Ok(DialCheck::DoNotCall);
        }
        Ok(DialCheck::Go)
    }

    /// Moves a campaign to `to` if it is in one of `from`.
    pub fn set_campaign_status(
        &mut self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        now: i64,
    ) -> Result<StatusChange, StoreError> {
        let Some(c) = self.campaign(id)? else {
            return Ok(StatusChange::NotFound);
        };
        if !from.contains(&c.status) {
            return Ok(StatusChange::Refused(c));
        }
        self.conn.execute(
            "UPDATE campaigns SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, to.as_str(), now],
        )?;
        Ok(StatusChange::Done(Campaign {
            status: to,
            updated_at: now,
            ..c
        }))
    }

    /// Deletes a campaign that is not running, with its contacts and
    /// attempts.
    pub fn delete_campaign(&mut self, id: &str) -> Result<StatusChange, StoreError> {
        let Some(c) = self.campaign(id)? else {
            return Ok(StatusChange::NotFound);
        };
        if c.status == CampaignStatus::Running {
            return Ok(StatusChange::Refused(c));
        }
        self.atomically(|s| {
            s.conn.execute(
                "DELETE FROM campaign_attempts WHERE campaign = ?1",
                params![id],
            )?;
            s.conn.execute(
                "DELETE FROM campaign_contacts WHERE campaign = ?1",
                params![id],
            )?;
            s.conn
                .execute("DELETE FROM campaigns WHERE id = ?1", params![id])?;
            Ok(())
        })?;
        Ok(StatusChange::Done(c))
    }

    /// Adds contacts to a campaign, all or none (one transaction). A number
    /// it already has is merged: details updated while still pending.
    pub fn import_contacts(
        &mut self,
        campaign: &str,
        contacts: &[NewContact],
        now: i64,
    ) -> Result<Imported, StoreError> {
        self.atomically(|s| {
            let mut done = Imported::default();
            let mut insert = s.conn.prepare_cached(
                "INSERT INTO campaign_contacts (campaign, number, name, priority, language, data, status, next_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)
                 ON CONFLICT (campaign, number) DO UPDATE SET
                    name = coalesce(excluded.name, name),
                    priority = excluded.priority,
                    language = coalesce(excluded.language, language),
                    data = coalesce(excluded.data, data),
                    next_at = max(next_at, excluded.next_at),
                    updated_at = excluded.updated_at
                 WHERE status = 'pending'",
            )?;
            let mut exists = s.conn.prepare_cached(
                "SELECT 1 FROM campaign_contacts WHERE campaign = ?1 AND number = ?2",
            )?;
            for c in contacts {
                let had = exists.exists(params![campaign, c.number])?;
                insert.execute(params![
                        campaign,
                        c.number,
                        c.name,
                        c.priority,
                        c.language,
                        c.data,
                        c.not_before.unwrap_or(now).max(0),
                        now
                    ])?;
                if had {
                    done.merged += 1;
                } else {
                    done.added += 1;
                }
            }
            Ok(done)
        })
    }

    /// A campaign's contacts (with `status` when given), by id from
    /// `after`, at most `limit` (capped at 1,000).
    pub fn contacts(
        &self,
        campaign: &str,
        status: Option<ContactStatus>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CONTACT} FROM campaign_contacts
             WHERE campaign = ?1 AND (?2 IS NULL OR status = ?2) AND id > ?3 ORDER BY id LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![
                campaign,
                status.map(ContactStatus::as_str),
                after,
                limit.min(MAX_LIST) as i64
            ],
            contact,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One contact.
    pub fn contact(&self, id: i64) -> Result<Option<Contact>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {CONTACT} FROM campaign_contacts WHERE id = ?1"),
                params![id],
                contact,
            )
            .optional()?)
    }

    /// A contact's attempts, first first.
    pub fn attempts(&self, contact: i64) -> Result<Vec<Attempt>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT attempt, started_at, ended_at, outcome FROM campaign_attempts
             WHERE contact = ?1 ORDER BY attempt LIMIT 100",
        )?;
        let rows = st.query_map(params![contact], |r| {
            Ok(Attempt {
                attempt: r.get(0)?,
                started_at: r.get(1)?,
                ended_at: r.get(2)?,
                outcome: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A campaign's progress.
    pub fn progress(&self, campaign: &str) -> Result<Progress, StoreError> {
        let mut p = Progress::default();
        let mut st = self.conn.prepare_cached(
            "SELECT status, count(*) FROM campaign_contacts WHERE campaign = ?1 GROUP BY status",
        )?;
        let mut rows = st.query(params![campaign])?;
        while let Some(r) = rows.next()? {
            let status: String = r.get(0)?;
            let n: i64 = r.get(1)?;
            if let Some(i) = ContactStatus::ALL.iter().position(|s| s.as_str() == status) {
                p.contacts[i] = n as u64;
            }
        }
        let (attempts, answered, abandoned): (i64, i64, i64) = self.conn.query_row(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'answered'),
                    count(*) FILTER (WHERE outcome = 'abandoned')
             FROM campaign_attempts WHERE campaign = ?1",
            params![campaign],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        p.attempts = attempts as u64;
        p.answered = answered as u64;
        p.abandoned = abandoned as u64;
        Ok(p)
    }

    /// Claims the campaign's due contacts for dialling, best first: each
    /// is `in_progress`, its attempt row open and the citizen's count for
    /// the day raised before this returns, in one transaction. A contact
    /// on the tenant's or the national do-not-call list becomes `dnc`; one
    /// whose citizen reached the daily cap waits for `tomorrow`.
    pub fn claim_contacts(&mut self, c: Claim<'_>) -> Result<Claimed, StoreError> {
        self.atomically(|s| {
            let mut out = Claimed::default();
            let running = s
                .conn
                .query_row(
                    "SELECT status = 'running' FROM campaigns WHERE id = ?1",
                    params![c.campaign],
                    |r| r.get::<_, bool>(0),
                )
                .optional()?
                .unwrap_or(false);
            if !running {
                return Ok(out);
            }
            // Looked at in batches a little larger than wanted: some may
            // be refused by the lists or the cap.
            let due: Vec<Contact> = {
                let mut st = s.conn.prepare_cached(&format!(
                    "SELECT {CONTACT} FROM campaign_contacts
                     WHERE campaign = ?1 AND status = 'pending' AND next_at <= ?2
                     ORDER BY priority DESC, next_at, id LIMIT ?3"
                ))?;
                let rows = st.query_map(
                    params![c.campaign, c.now, (c.limit.min(MAX_LIST) * 2) as i64],
                    contact,
                )?;
                rows.collect::<Result<_, _>>()?
            };
            for mut k in due {
                if out.contacts.len() >= c.limit {
                    break;
                }
                let listed = s.conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM dnc WHERE number = ?1 AND tenant IN ('', ?2))",
                    params![k.number, c.tenant],
                    |r| r.get::<_, bool>(0),
                )?;
                if listed {
                    s.conn.execute(
                        "UPDATE campaign_contacts SET status = 'dnc', updated_at = ?2 WHERE id = ?1",
                        params![k.id, c.now],
                    )?;
                    out.dnc += 1;
                    continue;
                }
                let today: i64 = s
                    .conn
                    .query_row(
                        "SELECT count FROM dial_counts WHERE number = ?1 AND day = ?2",
                        params![k.number, c.day],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                if today >= i64::from(c.max_per_day) {
                    s.conn.execute(
                        "UPDATE campaign_contacts SET next_at = ?2, updated_at = ?3 WHERE id = ?1",
                        params![k.id, c.tomorrow, c.now],
                    )?;
                    out.capped += 1;
                    continue;
                }
                k.dialled = s.conn.query_row(
                    &format!(
                        "SELECT dialled_before + (SELECT count(*) FROM campaign_attempts WHERE contact = ?1 AND outcome IN ({DIALLED}))
                         FROM campaign_contacts WHERE id = ?1"
                    ),
                    params![k.id],
                    |r| r.get(0),
                )?;
                k.attempts += 1;
                k.status = ContactStatus::InProgress;
                s.conn.execute(
                    "UPDATE campaign_contacts SET status = 'in_progress', attempts = ?2, updated_at = ?3 WHERE id = ?1",
                    params![k.id, k.attempts, c.now],
                )?;
                s.conn.execute(
                    "INSERT INTO campaign_attempts (contact, attempt, campaign, started_at, day) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![k.id, k.attempts, c.campaign, c.now, c.day],
                )?;
                s.conn.execute(
                    "INSERT INTO dial_counts (number, day, count) VALUES (?1, ?2, 1)
                     ON CONFLICT (number, day) DO UPDATE SET count = count + 1",
                    params![k.number, c.day],
                )?;
                out.contacts.push(k);
            }
            Ok(out)
        })
    }

    /// Closes an attempt and moves its contact on. `Ok(false)`: that
    /// attempt was already closed (a repeat is harmless).
    pub fn end_attempt(&mut self, e: &AttemptEnd, now: i64) -> Result<bool, StoreError> {
        self.atomically(|s| {
            let n = s.conn.execute(
                "UPDATE campaign_attempts SET ended_at = ?3, outcome = ?4
                 WHERE contact = ?1 AND attempt = ?2 AND ended_at IS NULL",
                params![e.contact, e.attempt, now, e.outcome],
            )?;
            if n == 0 {
                return Ok(false);
            }
            // The queue log has every attempt: its call (if one was
            // placed), the campaign and its queue, how it ended.
            s.conn.execute(
                "INSERT INTO queue_log (at, call, queue, event, campaign, contact, reason)
                 SELECT ?3 * 1000, coalesce(a.call, ''), coalesce(json_extract(c.spec, '$.queue'), ''),
                        'attempt', c.name, ?1, ?4
                 FROM campaign_attempts a JOIN campaigns c ON c.id = a.campaign
                 WHERE a.contact = ?1 AND a.attempt = ?2",
                params![e.contact, e.attempt, now, e.outcome],
            )?;
            if e.uncount {
                s.conn.execute(
                    "UPDATE dial_counts SET count = max(count - 1, 0)
                     WHERE day = (SELECT day FROM campaign_attempts WHERE contact = ?1 AND attempt = ?2)
                       AND number = (SELECT number FROM campaign_contacts WHERE id = ?1)",
                    params![e.contact, e.attempt],
                )?;
            }
            let (disposition, note) = match &e.disposition {
                Some((d, n)) => (Some(d.as_str()), n.as_deref()),
                None => (None, None),
            };
            // An operator's disposition given during the call wins over
            // how the call ended: "call later" keeps the contact pending.
            s.conn.execute(
                "UPDATE campaign_contacts SET
                    status = CASE WHEN status = 'moved' THEN status
                                  WHEN later_at IS NOT NULL THEN 'pending'
                                  WHEN status IN ('done', 'failed') THEN status ELSE ?2 END,
                    last_outcome = ?3,
                    next_at = coalesce(later_at, ?4, next_at),
                    later_at = NULL,
                    disposition = coalesce(?5, disposition), note = coalesce(?6, note),
                    updated_at = ?7
                 WHERE id = ?1",
                params![
                    e.contact,
                    e.status.as_str(),
                    e.outcome,
                    e.next_at,
                    disposition,
                    note,
                    now
                ],
            )?;
            Ok(true)
        })
    }

    /// Notes which call record an attempt is (for the operator's
    /// disposition).
    pub fn attempt_call(
        &mut self,
        contact: i64,
        attempt: u32,
        call: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE campaign_attempts SET call = ?3 WHERE contact = ?1 AND attempt = ?2",
            params![contact, attempt, call],
        )?;
        Ok(())
    }

    /// The contact behind a call from `number` (E.164) to a number the
    /// running `campaigns` (ids, one tenant's, all presenting the number
    /// called) present: the one with that number touched last, and its
    /// campaign's name. Only running campaigns: a finished one's contact
    /// is none of this call's business.
    pub fn caller_contact(
        &self,
        campaigns: &[String],
        number: &str,
    ) -> Result<Option<(String, Contact)>, StoreError> {
        let columns: Vec<String> = CONTACT.split(", ").map(|c| format!("k.{c}")).collect();
        // A list of strings always encodes.
        let ids = serde_json::to_string(campaigns).unwrap_or_else(|_| "[]".into());
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {}, c.name FROM campaign_contacts k JOIN campaigns c ON c.id = k.campaign
             WHERE k.number = ?1 AND c.status = 'running'
               AND k.campaign IN (SELECT value FROM json_each(?2))
             ORDER BY k.updated_at DESC, k.id DESC LIMIT 1",
            columns.join(", ")
        ))?;
        Ok(st
            .query_row(params![number, ids], |r| {
                Ok((r.get::<_, String>(13)?, contact(r)?))
            })
            .optional()?)
    }

    /// A contact's history in the queue log, oldest first: (event,
    /// outcome or code, call record, who).
    pub fn contact_log(&self, contact: i64) -> Result<Vec<LogLine>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT event, reason, call, agent FROM queue_log WHERE contact = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![contact], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that inbound call record `call` is `contact` calling back.
    pub fn link_caller(&mut self, call: &str, contact: i64, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO campaign_callers (call, contact, at) VALUES (?1, ?2, ?3)",
            params![call, contact, now],
        )?;
        Ok(())
    }

    /// The campaign attempt of call record `call`, if it is one; or, for a
    /// contact who called the campaign's number back, their latest
    /// attempt (over unless it runs now).
    pub fn attempt_by_call(&self, call: &str) -> Result<Option<CallAttempt>, StoreError> {
        let found: Option<(i64, u32, bool)> = self
            .conn
            .query_row(
                "SELECT contact, attempt, ended_at IS NOT NULL FROM campaign_attempts WHERE call = ?1",
                params![call],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let found = match found {
            Some(f) => Some(f),
            None => self
                .conn
                .query_row(
                    "SELECT k.id, k.attempts, NOT EXISTS (SELECT 1 FROM campaign_attempts a
                        WHERE a.contact = k.id AND a.attempt = k.attempts AND a.ended_at IS NULL)
                     FROM campaign_callers l JOIN campaign_contacts k ON k.id = l.contact
                     WHERE l.call = ?1",
                    params![call],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?,
        };
        let Some((id, attempt, ended)) = found else {
            return Ok(None);
        };
        Ok(self.contact(id)?.map(|contact| CallAttempt {
            contact,
            attempt,
            ended,
        }))
    }

    /// Records an operator's disposition. When the attempt is over its
    /// status applies now; while it lasts, a `Pending` status (call later)
    /// is kept for the attempt's end, which honours it. `Ok(false)`: not
    /// the contact's latest attempt (nothing changed).
    pub fn dispose(&mut self, d: &Disposition, now: i64) -> Result<bool, StoreError> {
        self.atomically(|s| {
            // Only the contact's latest attempt: a late word on an older
            // one must not reopen a contact whose next attempt runs.
            let latest: Option<u32> = s
                .conn
                .query_row(
                    "SELECT attempts FROM campaign_contacts WHERE id = ?1",
                    params![d.contact],
                    |r| r.get(0),
                )
                .optional()?;
            if latest != Some(d.attempt) {
                return Ok(false);
            }
            let open: bool = s
                .conn
                .query_row(
                    "SELECT ended_at IS NULL FROM campaign_attempts WHERE contact = ?1 AND attempt = ?2",
                    params![d.contact, d.attempt],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            s.conn.execute(
                "UPDATE campaign_contacts SET disposition = ?2, note = coalesce(?3, note), updated_at = ?4 WHERE id = ?1",
                params![d.contact, d.code, d.note, now],
            )?;
            s.conn.execute(
                "INSERT INTO queue_log (at, call, queue, event, agent, campaign, contact, reason)
                 SELECT ?1 * 1000, ?2, coalesce(json_extract(c.spec, '$.queue'), ''), 'disposition',
                        ?3, c.name, k.id, ?4
                 FROM campaign_contacts k JOIN campaigns c ON c.id = k.campaign WHERE k.id = ?5",
                params![now, d.call, d.by, d.code, d.contact],
            )?;
            match (open, d.status) {
                // Final while an attempt runs (a citizen who called back
                // booked while the campaign's own attempt is out): it
                // holds, the attempt's end keeps it and a dial not yet
                // made is withheld.
                (true, Some(status @ (ContactStatus::Done | ContactStatus::Failed))) => {
                    s.conn.execute(
                        "UPDATE campaign_contacts SET status = ?2 WHERE id = ?1 AND status != 'moved'",
                        params![d.contact, status.as_str()],
                    )?;
                }
                (true, Some(ContactStatus::Pending)) => {
                    s.conn.execute(
                        "UPDATE campaign_contacts SET later_at = ?2 WHERE id = ?1 AND status != 'moved'",
                        params![d.contact, d.next_at.unwrap_or(now)],
                    )?;
                }
                (false, Some(status)) => {
                    s.conn.execute(
                        "UPDATE campaign_contacts SET status = ?2, next_at = coalesce(?3, next_at) WHERE id = ?1 AND status != 'moved'",
                        params![d.contact, status.as_str(), d.next_at],
                    )?;
                }
                _ => {}
            }
            Ok(true)
        })
    }

    /// At start: attempts a dead process left open are closed as
    /// `interrupted` and their contacts put back to pending, due now.
    /// Returns how many.
    pub fn recover_campaign_attempts(&mut self, now: i64) -> Result<u64, StoreError> {
        self.atomically(|s| {
            s.conn.execute(
                "INSERT INTO queue_log (at, call, queue, event, campaign, contact, reason)
                 SELECT ?1 * 1000, coalesce(a.call, ''), coalesce(json_extract(c.spec, '$.queue'), ''),
                        'attempt', c.name, a.contact, 'interrupted'
                 FROM campaign_attempts a JOIN campaigns c ON c.id = a.campaign
                 WHERE a.ended_at IS NULL",
                params![now],
            )?;
            let n = s.conn.execute(
                "UPDATE campaign_attempts SET ended_at = ?1, outcome = 'interrupted' WHERE ended_at IS NULL",
                params![now],
            )?;
            s.conn.execute(
                "UPDATE campaign_contacts SET status = 'pending', last_outcome = 'interrupted',
                    next_at = ?1, updated_at = ?1 WHERE status = 'in_progress'",
                params![now],
            )?;
            Ok(n as u64)
        })
    }

    /// Adds a number to a do-not-call list (`tenant` empty: the national
    /// one). `Ok(false)`: it was there.
    pub fn add_dnc(&mut self, number: &str, tenant: &str, now: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO dnc (number, tenant, added_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![number, tenant, now],
        )?;
        Ok(n == 1)
    }

    /// Adds many numbers to one list, all or none. Returns how many were new.
    pub fn import_dnc(
        &mut self,
        numbers: &[String],
        tenant: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.atomically(|s| {
            let mut added = 0;
            for n in numbers {
                added += u64::from(s.add_dnc(n, tenant, now)?);
            }
            Ok(added)
        })
    }

    /// Takes a number off a list. `Ok(false)`: it was not there.
    pub fn remove_dnc(&mut self, number: &str, tenant: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM dnc WHERE number = ?1 AND tenant = ?2",
            params![number, tenant],
        )?;
        Ok(n == 1)
    }

    /// Whether `number` is on the national list or `tenant`'s.
    pub fn is_dnc(&self, number: &str, tenant: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM dnc WHERE number = ?1 AND tenant IN ('', ?2))",
            params![number, tenant],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> Store {
        let p = std::env::temp_dir().join(format!(
            "centralino-campaigns-{name}-{}.db",
            std::process::id()
        ));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        Store::open(&p).unwrap()
    }

    fn campaign(name: &str) -> Campaign {
        Campaign {
            id: format!("id-{name}"),
            name: name.into(),
            tenant: "asl".into(),
            spec: "{}".into(),
            source: "api".into(),
            status: CampaignStatus::Running,
            created_at: 1000,
            updated_at: 1000,
        }
    }

    fn contact(number: &str, priority: i32) -> NewContact {
        NewContact {
            number: number.into(),
            name: Some("Maria".into()),
            priority,
            language: None,
            not_before: None,
            data: None,
        }
    }

    fn claim(campaign: &str, limit: usize, now: i64) -> Claim<'_> {
        Claim {
            campaign,
            tenant: "asl",
            limit,
            now,
            day: 20_000,
            max_per_day: 3,
            tomorrow: 90_000,
        }
    }

    #[test]
    fn a_campaign_lives_draft_running_paused_finished_and_names_are_unique_per_tenant() {
        let mut s = store("life");
        let draft = Campaign {
            status: Draft,
            ..campaign("richiami")
        };
        assert!(s.create_campaign(&draft).unwrap());
        assert!(
            !s.create_campaign(&Campaign {
                id: "other".into(),
                ..campaign("richiami")
            })
            .unwrap()
        );
        // Another firm's name is its own.
        assert!(
            s.create_campaign(&Campaign {
                id: "other".into(),
                tenant: "altra".into(),
                status: Draft,
                ..campaign("richiami")
            })
            .unwrap()
        );
        assert_eq!(s.campaign("other").unwrap().unwrap().tenant, "altra");
        assert!(matches!(
            s.delete_campaign("other").unwrap(),
            StatusChange::Done(_)
        ));
        use CampaignStatus::*;
        let start =
            |s: &mut Store| s.set_campaign_status("id-richiami", &[Draft, Paused], Running, 2000);
        assert!(matches!(start(&mut s).unwrap(), StatusChange::Done(c) if c.status == Running));
        assert!(matches!(start(&mut s).unwrap(), StatusChange::Refused(_)));
        assert!(matches!(
            s.delete_campaign("id-richiami").unwrap(),
            StatusChange::Refused(_)
        ));
        s.set_campaign_status("id-richiami", &[Running], Paused, 2001)
            .unwrap();
        assert!(matches!(
            s.delete_campaign("id-richiami").unwrap(),
            StatusChange::Done(_)
        ));
        assert_eq!(s.campaign("id-richiami").unwrap(), None);
        assert!(matches!(
            s.set_campaign_status("nope", &[Draft], Running, 1).unwrap(),
            StatusChange::NotFound
        ));
    }

    /// A file from before names were per tenant: its campaigns, their
    /// contacts and the status trigger survive the table made again, and
    /// its names become per tenant.
    #[test]
    fn the_names_per_tenant_migration_keeps_campaigns_contacts_and_the_trigger() {
        let p = std::env::temp_dir().join(format!(
            "centralino-campaigns-migrate-{}.db",
            std::process::id()
        ));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        let mut s = Store::open(&p).unwrap();
        // Back to the shape before this migration (and those after it).
        let before = crate::MIGRATIONS
            .iter()
            .position(|m| *m == NAMES_PER_TENANT)
            .unwrap();
        s.conn
            .execute_batch(&format!(
                "DROP TRIGGER campaign_contacts_tombstone;
                 DROP TABLE campaigns;
                 DROP TABLE queue_owners;
                 ALTER TABLE queue_log DROP COLUMN tenant;
                 {};
                 CREATE TRIGGER campaign_status_contacts AFTER UPDATE OF status ON campaigns
                     BEGIN UPDATE campaign_contacts SET version = version + 1
                           WHERE campaign = NEW.id AND status IN ('pending', 'in_progress'); END;
                 CREATE TRIGGER campaign_contacts_tombstone BEFORE DELETE ON campaign_contacts
                     WHEN OLD.work_id IS NOT NULL AND OLD.mirror_seq IS NOT NULL
                     BEGIN INSERT OR REPLACE INTO work_tombstones (work_id, seq, campaign, tenant)
                           SELECT OLD.work_id, OLD.mirror_seq, c.name, c.tenant
                           FROM campaigns c WHERE c.id = OLD.campaign; END;
                 PRAGMA user_version = {};",
                // The table as the first campaigns migration made it.
                MIGRATION.split(';').next().unwrap_or_default(),
                before
            ))
            .unwrap();
        // As the code before this migration wrote it.
        let insert =
            "INSERT INTO campaigns (id, name, tenant, spec, source, status, created_at, updated_at)
             VALUES (?1, 'richiami', ?2, '{}', 'api', 'running', 1000, 1000)";
        s.conn
            .execute(insert, params!["id-richiami", "asl"])
            .unwrap();
        assert!(
            s.conn.execute(insert, params!["other", "altra"]).is_err(),
            "the old table refuses another firm's name"
        );
        s.import_contacts("id-richiami", &[contact("+393330000001", 0)], 1)
            .unwrap();
        drop(s);
        let mut s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::MIGRATIONS.len() as u32);
        let kept = s.campaign("id-richiami").unwrap().unwrap();
        assert_eq!(kept, campaign("richiami"));
        assert_eq!(
            s.progress("id-richiami")
                .unwrap()
                .contacts
                .iter()
                .sum::<u64>(),
            1
        );
        let version = |s: &Store| -> i64 {
            s.conn
                .query_row("SELECT version FROM campaign_contacts", [], |r| r.get(0))
                .unwrap()
        };
        let before = version(&s);
        s.set_campaign_status(
            "id-richiami",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            2,
        )
        .unwrap();
        assert_eq!(version(&s), before + 1, "the status trigger is back");
        // Every table, index and trigger as a new file has them (one
        // lost with the table made again would show here).
        let schema = |s: &Store| -> Vec<(String, String, Option<String>)> {
            let mut st = s
                .conn
                .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let fresh = store("migrate-fresh");
        assert_eq!(schema(&s), schema(&fresh));
        assert!(
            schema(&s)
                .iter()
                .any(|(t, n, _)| t == "trigger" && n == "campaign_contacts_tombstone")
        );
        assert!(
            s.create_campaign(&Campaign {
                id: "other".into(),
                tenant: "altra".into(),
                ..campaign("richiami")
            })
            .unwrap()
        );
        drop(s);
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
    }

    #[test]
    fn contacts_merge_by_number_and_each_attempt_is_claimed_once() {
        let mut s = store("claim");
        s.create_campaign(&campaign("c")).unwrap();
        let imported = s
            .import_contacts(
                "id-c",
                &[
                    contact("+393330000001", 0),
                    contact("+393330000002", 5),
                    contact("+393330000001", 1),
                ],
                1000,
            )
            .unwrap();
        assert_eq!(
            imported,
            Imported {
                added: 2,
                merged: 1
            }
        );
        // Best first; claimed contacts are not claimed again.
        let first = s.claim_contacts(claim("id-c", 1, 1000)).unwrap();
        assert_eq!(first.contacts.len(), 1);
        assert_eq!(first.contacts[0].number, "+393330000002");
        assert_eq!(first.contacts[0].attempts, 1);
        let second = s.claim_contacts(claim("id-c", 5, 1000)).unwrap();
        assert_eq!(second.contacts.len(), 1);
        assert_eq!(second.contacts[0].number, "+393330000001");
        assert!(
            s.claim_contacts(claim("id-c", 5, 1000))
                .unwrap()
                .contacts
                .is_empty()
        );
        // Busy: back to pending for later; a repeat of the end is a no-op.
        let k = &first.contacts[0];
        let end = AttemptEnd {
            contact: k.id,
            attempt: 1,
            outcome: "busy".into(),
            status: ContactStatus::Pending,
            next_at: Some(2800),
            disposition: None,
            uncount: false,
        };
        assert!(s.end_attempt(&end, 1000).unwrap());
        assert!(!s.end_attempt(&end, 1001).unwrap());
        assert!(
            s.claim_contacts(claim("id-c", 5, 2000))
                .unwrap()
                .contacts
                .is_empty()
        );
        let again = s.claim_contacts(claim("id-c", 5, 2800)).unwrap();
        assert_eq!(again.contacts[0].attempts, 2);
        let p = s.progress("id-c").unwrap();
        assert_eq!((p.attempts, p.contacts[1]), (3, 2));
        assert_eq!(s.attempts(k.id).unwrap().len(), 2);
    }

    #[test]
    fn a_citizen_calling_a_campaigns_number_is_found_and_their_call_takes_a_disposition() {
        let mut s = store("callers");
        let mut a = campaign("a");
        a.spec = r#"{"caller_id": "+39800999000"}"#.into();
        s.create_campaign(&a).unwrap();
        s.create_campaign(&campaign("b")).unwrap();
        s.import_contacts("id-a", &[contact("+393330000001", 0)], 1)
            .unwrap();
        s.import_contacts("id-b", &[contact("+393330000001", 0)], 1)
            .unwrap();
        // Only the campaign presenting that number knows the caller.
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (name, k) = s
            .caller_contact(&ids(&["id-a"]), "+393330000001")
            .unwrap()
            .unwrap();
        assert_eq!((name.as_str(), k.campaign.as_str()), ("a", "id-a"));
        assert!(
            s.caller_contact(&ids(&["id-c"]), "+393330000001")
                .unwrap()
                .is_none()
        );
        assert!(
            s.caller_contact(&ids(&["id-a"]), "+393330000002")
                .unwrap()
                .is_none()
        );
        // A campaign that no longer runs knows no caller.
        s.set_campaign_status(
            "id-b",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            2,
        )
        .unwrap();
        assert!(
            s.caller_contact(&ids(&["id-b"]), "+393330000001")
                .unwrap()
                .is_none()
        );
        // Their inbound call takes the operator's disposition: booked.
        assert!(s.attempt_by_call("in-1").unwrap().is_none());
        s.link_caller("in-1", k.id, 5).unwrap();
        let found = s.attempt_by_call("in-1").unwrap().unwrap();
        assert_eq!(
            (found.contact.id, found.attempt, found.ended),
            (k.id, 0, true)
        );
        let d = Disposition {
            contact: k.id,
            attempt: found.attempt,
            code: "booked".into(),
            note: None,
            status: Some(ContactStatus::Done),
            next_at: None,
            call: "rec".into(),
            by: None,
        };
        assert!(s.dispose(&d, 6).unwrap());
        assert_eq!(
            s.contact(k.id).unwrap().unwrap().status,
            ContactStatus::Done
        );
        assert_eq!(
            s.contact_log(k.id).unwrap(),
            [(
                "disposition".to_owned(),
                Some("booked".to_owned()),
                "rec".to_owned(),
                None
            )]
        );
        // Booked on the citizen's own call while the campaign's attempt is
        // out: the booking holds, the dial is withheld, the end keeps it.
        s.import_contacts("id-a", &[contact("+393330000003", 0)], 7)
            .unwrap();
        let out = s.claim_contacts(claim("id-a", 1, 8)).unwrap().contacts;
        let (c3, attempt) = (out[0].id, out[0].attempts);
        assert_eq!(out[0].dialled, 0);
        s.link_caller("in-2", c3, 9).unwrap();
        let found = s.attempt_by_call("in-2").unwrap().unwrap();
        assert_eq!((found.attempt, found.ended), (attempt, false));
        let booked = Disposition {
            contact: c3,
            attempt,
            code: "booked".into(),
            note: None,
            status: Some(ContactStatus::Done),
            next_at: None,
            call: "in-2".into(),
            by: Some("1001".into()),
        };
        assert!(s.dispose(&booked, 10).unwrap());
        assert_eq!(s.may_dial(c3, "asl").unwrap(), DialCheck::Settled);
        let withheld = AttemptEnd {
            contact: c3,
            attempt,
            outcome: "withheld".into(),
            status: ContactStatus::Pending,
            next_at: Some(11),
            disposition: None,
            uncount: true,
        };
        assert!(s.end_attempt(&withheld, 11).unwrap());
        assert_eq!(s.contact(c3).unwrap().unwrap().status, ContactStatus::Done);
        // Retention takes the link with the numbers.
        s.anonymise_before(10_000).unwrap();
        assert!(s.attempt_by_call("in-1").unwrap().is_none());
    }

    #[test]
    fn do_not_call_and_the_daily_cap_hold_across_campaigns() {
        let mut s = store("dnc");
        s.create_campaign(&campaign("a")).unwrap();
        s.create_campaign(&campaign("b")).unwrap();
        assert!(s.add_dnc("+393330000009", "", 1).unwrap());
        assert!(!s.add_dnc("+393330000009", "", 1).unwrap());
        assert!(s.is_dnc("+393330000009", "asl").unwrap());
        s.import_contacts(
            "id-a",
            &[contact("+393330000009", 0), contact("+393330000007", 0)],
            1,
        )
        .unwrap();
        let c = s.claim_contacts(claim("id-a", 5, 10)).unwrap();
        assert_eq!((c.contacts.len(), c.dnc), (1, 1));
        // The same citizen in three more campaigns the same day: the cap
        // (3 a day in all) puts the fourth attempt off to tomorrow.
        for name in ["b", "c", "d"] {
            s.create_campaign(&campaign(name)).unwrap();
            s.import_contacts(&format!("id-{name}"), &[contact("+393330000007", 0)], 1)
                .unwrap();
        }
        let got: Vec<usize> = ["b", "c", "d"]
            .iter()
            .map(|n| {
                let id = format!("id-{n}");
                s.claim_contacts(claim(&id, 5, 10)).unwrap().contacts.len()
            })
            .collect();
        assert_eq!(got, [1, 1, 0]);
        let d = s
            .contacts("id-d", Some(ContactStatus::Pending), 0, 10)
            .unwrap();
        assert_eq!(d[0].next_at, 90_000);
        // Campaign c's attempt ends with nobody dialled (an operator
        // skipped it): it no longer counts, and d's contact may go today.
        let c_contact = s.contacts("id-c", None, 0, 10).unwrap()[0].id;
        let skipped = AttemptEnd {
            contact: c_contact,
            attempt: 1,
            outcome: "skipped".into(),
            status: ContactStatus::Pending,
            next_at: Some(50),
            disposition: None,
            uncount: true,
        };
        assert!(s.end_attempt(&skipped, 12).unwrap());
        // A repeat of the end lowers nothing twice.
        assert!(!s.end_attempt(&skipped, 12).unwrap());
        let mut today = claim("id-d", 5, 10);
        today.now = 90_000;
        assert_eq!(s.claim_contacts(today).unwrap().contacts.len(), 1);
        let mut again = claim("id-c", 5, 10);
        again.now = 50;
        // ...and c's is back within the cap only if d did not take it.
        assert_eq!(s.claim_contacts(again).unwrap().capped, 1);
        assert!(s.remove_dnc("+393330000009", "").unwrap());
        assert!(!s.is_dnc("+393330000009", "asl").unwrap());
    }

    #[test]
    fn a_call_later_given_during_the_call_keeps_the_contact_for_its_time() {
        let mut s = store("dispose");
        s.create_campaign(&campaign("c")).unwrap();
        s.import_contacts(
            "id-c",
            &[contact("+393330000001", 0), contact("+393330000002", 0)],
            1,
        )
        .unwrap();
        let claimed = s.claim_contacts(claim("id-c", 2, 10)).unwrap().contacts;
        let (a, b) = (claimed[0].id, claimed[1].id);
        s.attempt_call(a, 1, "rec-a").unwrap();
        s.attempt_call(b, 1, "rec-b").unwrap();
        let found = s.attempt_by_call("rec-a").unwrap().unwrap();
        assert_eq!(
            (found.contact.id, found.attempt, found.ended),
            (a, 1, false)
        );
        assert_eq!(s.attempt_by_call("nope").unwrap(), None);
        // During the call: call later at 5000; the answered end keeps it.
        let later = Disposition {
            contact: a,
            attempt: 1,
            code: "call_later".into(),
            note: Some("richiamare dopo le 17".into()),
            status: Some(ContactStatus::Pending),
            next_at: Some(5000),
            call: "rec".into(),
            by: None,
        };
        s.dispose(&later, 20).unwrap();
        let answered = |contact| AttemptEnd {
            contact,
            attempt: 1,
            outcome: "answered".into(),
            status: ContactStatus::Done,
            next_at: None,
            disposition: None,
            uncount: false,
        };
        s.end_attempt(&answered(a), 30).unwrap();
        // The queue log has both: the disposition, then the attempt's end
        // on its call, with the campaign.
        assert_eq!(
            s.contact_log(a).unwrap(),
            [
                (
                    "disposition".to_owned(),
                    Some("call_later".to_owned()),
                    "rec".to_owned(),
                    None
                ),
                (
                    "attempt".to_owned(),
                    Some("answered".to_owned()),
                    "rec-a".to_owned(),
                    None
                )
            ]
        );
        let k = s.contact(a).unwrap().unwrap();
        assert_eq!(
            (k.status, k.next_at, k.disposition.as_deref()),
            (ContactStatus::Pending, 5000, Some("call_later"))
        );
        // After the call: booked, done.
        s.end_attempt(&answered(b), 30).unwrap();
        s.dispose(
            &Disposition {
                contact: b,
                attempt: 1,
                code: "booked".into(),
                note: None,
                status: Some(ContactStatus::Done),
                next_at: None,
                call: "rec".into(),
                by: None,
            },
            40,
        )
        .unwrap();
        let k = s.contact(b).unwrap().unwrap();
        assert_eq!(
            (k.status, k.disposition.as_deref()),
            (ContactStatus::Done, Some("booked"))
        );
        assert!(s.attempt_by_call("rec-b").unwrap().unwrap().ended);
    }

    #[test]
    fn a_configuration_never_takes_over_a_campaign_it_did_not_make_and_stopped_ones_yield_nothing()
    {
        let mut s = store("guard");
        let api = Campaign {
            tenant: "altra".into(),
            status: CampaignStatus::Draft,
            ..campaign("richiami")
        };
        s.create_campaign(&api).unwrap();
        let from_file = Campaign {
            id: "other".into(),
            tenant: "altra".into(),
            source: "config".into(),
            spec: "{\"evil\": true}".into(),
            ..campaign("richiami")
        };
        assert!(!s.upsert_config_campaign(&from_file).unwrap());
        let kept = s.campaign("id-richiami").unwrap().unwrap();
        assert_eq!((kept.tenant.as_str(), kept.spec.as_str()), ("altra", "{}"));
        assert_eq!(s.campaign("other").unwrap(), None);
        // Another firm's configuration naming its own `richiami` makes
        // its own campaign and leaves this one alone.
        let asl_file = Campaign {
            id: "asl-richiami".into(),
            source: "config".into(),
            spec: "{\"asl\": true}".into(),
            ..campaign("richiami")
        };
        assert!(s.upsert_config_campaign(&asl_file).unwrap());
        let asl = s.campaign("asl-richiami").unwrap().unwrap();
        assert_eq!(
            (asl.tenant.as_str(), asl.source.as_str()),
            ("asl", "config")
        );
        // Again (a reload): the definition is replaced, by (tenant, name).
        let asl_again = Campaign {
            id: "ignored".into(),
            spec: "{\"asl\": 2}".into(),
            ..asl_file
        };
        assert!(s.upsert_config_campaign(&asl_again).unwrap());
        assert_eq!(
            s.campaign("asl-richiami").unwrap().unwrap().spec,
            "{\"asl\": 2}"
        );
        assert_eq!(s.campaign("ignored").unwrap(), None);
        let kept = s.campaign("id-richiami").unwrap().unwrap();
        assert_eq!((kept.tenant.as_str(), kept.spec.as_str()), ("altra", "{}"));
        // A draft (or paused, finished) campaign gives no contact to a claim.
        s.import_contacts("id-richiami", &[contact("+393330000001", 0)], 1)
            .unwrap();
        assert!(
            s.claim_contacts(claim("id-richiami", 5, 10))
                .unwrap()
                .contacts
                .is_empty()
        );
        s.set_campaign_status(
            "id-richiami",
            &[CampaignStatus::Draft],
            CampaignStatus::Running,
            11,
        )
        .unwrap();
        let k = s
            .claim_contacts(claim("id-richiami", 5, 12))
            .unwrap()
            .contacts;
        assert_eq!(k.len(), 1);
        assert_eq!(s.may_dial(k[0].id, "altra").unwrap(), DialCheck::Go);
        s.add_dnc("+393330000001", "altra", 13).unwrap();
        assert_eq!(s.may_dial(k[0].id, "altra").unwrap(), DialCheck::DoNotCall);
        s.set_campaign_status(
            "id-richiami",
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            14,
        )
        .unwrap();
        assert_eq!(s.may_dial(k[0].id, "altra").unwrap(), DialCheck::Stopped);
        assert_eq!(s.running_campaigns().unwrap().len(), 0);
        assert_eq!(s.campaign_count("altra").unwrap(), 1);
    }

    #[test]
    fn a_late_disposition_on_an_older_attempt_changes_nothing() {
        let mut s = store("late");
        s.create_campaign(&campaign("c")).unwrap();
        s.import_contacts("id-c", &[contact("+393330000001", 0)], 1)
            .unwrap();
        let k = s.claim_contacts(claim("id-c", 1, 10)).unwrap().contacts[0].clone();
        let end = AttemptEnd {
            contact: k.id,
            attempt: 1,
            outcome: "busy".into(),
            status: ContactStatus::Pending,
            next_at: Some(20),
            disposition: None,
            uncount: false,
        };
        s.end_attempt(&end, 11).unwrap();
        let second = s.claim_contacts(claim("id-c", 1, 20)).unwrap().contacts;
        assert_eq!(second[0].attempts, 2);
        let late = Disposition {
            contact: k.id,
            attempt: 1,
            code: "call_later".into(),
            note: None,
            status: Some(ContactStatus::Pending),
            next_at: Some(99),
            call: "rec".into(),
            by: None,
        };
        assert!(!s.dispose(&late, 21).unwrap());
        assert_eq!(
            s.contact(k.id).unwrap().unwrap().status,
            ContactStatus::InProgress
        );
    }

    #[test]
    fn an_attempt_open_at_a_crash_is_closed_as_interrupted_and_retried() {
        let mut s = store("crash");
        s.create_campaign(&campaign("c")).unwrap();
        s.import_contacts("id-c", &[contact("+393330000001", 0)], 1)
            .unwrap();
        let k = s.claim_contacts(claim("id-c", 1, 10)).unwrap().contacts[0].clone();
        assert_eq!(s.recover_campaign_attempts(20).unwrap(), 1);
        let a = s.attempts(k.id).unwrap();
        assert_eq!(a[0].outcome.as_deref(), Some("interrupted"));
        assert_eq!(
            s.contact_log(k.id).unwrap()[0].1.as_deref(),
            Some("interrupted")
        );
        let again = s.claim_contacts(claim("id-c", 1, 20)).unwrap();
        assert_eq!(
            again.contacts[0].attempts, 2,
            "a new attempt, never the same one twice"
        );
        assert_eq!(
            again.contacts[0].dialled, 0,
            "the interrupted one is none the retry policy counts"
        );
    }
}
