//! The audit log: who read or changed personal data (health data: the
//! Garante's access log). Append-only by triggers, and each entry chained
//! to the one before by HMAC-SHA256 under a key kept outside the database
//! ([`AuditKey`]): whoever can write the file but not read the key can
//! neither rewrite an entry (the chain breaks there) nor add one.
//!
//! What a chain alone cannot show is a cut tail: the shorter chain is
//! still valid. So each committed batch's head is logged by the node
//! (`audit head seq=N mac=HEX`), and `centralino audit --expect-head N:HEX`
//! fails when the log no longer holds that head.
//!
//! Entries written before keyed audit (schema 7) carry a plain SHA-256
//! chain and stay verifiable: migration 8 records where keyed entries begin
//! (`audit_keyed.from_seq`) and seals that boundary with the key (a MAC of
//! its number and of the last unkeyed hash, which chains every entry before
//! it). Without the key, nobody can rewrite those older entries after the
//! upgrade, nor move the boundary to pass keyed entries off as unkeyed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::hmac;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{MAX_LIST, Store, StoreError, owner_only};

/// The schema version from which the chain is keyed.
pub(crate) const KEYED_SCHEMA: u32 = 8;

/// Where the node keeps the key it created, in its data directory.
pub const AUDIT_KEY_FILE: &str = "audit.key";

/// Shortest key accepted, in bytes.
pub const MIN_AUDIT_KEY: usize = 32;

/// The chain's start.
const GENESIS: &str = "centralino-audit-v1";

/// One access to personal data, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: i64,
    /// Who: the API token's name (never the token).
    pub actor: String,
    /// What: the API route (e.g. `callbacks_get`).
    pub action: String,
    /// Which record: a callback, call or operator id (never a number).
    pub target: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// An entry whose target starts with this names a phone number (what
/// follows): [`Store::audit`] writes its keyed tag instead
/// ([`AuditKey::number_tag`]).
pub const NUMBER_TARGET: &str = "\u{0}number:";

/// The secret the chain is keyed with: the bytes of a key file.
pub struct AuditKey(hmac::Key);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// A key from at least [`MIN_AUDIT_KEY`] secret bytes.
    pub fn from_secret(secret: &[u8]) -> Option<Self> {
        (secret.len() >= MIN_AUDIT_KEY).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The key in `path`: its bytes, trailing white space ignored (as for
    /// `api.session_key_file`: an editor's newline does not change it).
    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::AuditKey(path.into(), e))?;
        let secret = bytes.trim_ascii_end();
        Self::from_secret(secret)
            .ok_or_else(|| StoreError::AuditKeyShort(path.into(), secret.len()))
    }

    /// The node's own key, `DIR/audit.key`, created at the first start
    /// (0600): 32 random bytes written as 64 hex digits, so the file is text
    /// that survives being copied elsewhere and read by
    /// [`AuditKey::from_file`]. `true` when it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), StoreError> {
        let path = dir.join(AUDIT_KEY_FILE);
        // Drawn first: a failing random source leaves no empty file behind.
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret)
            .map_err(|e| StoreError::AuditKeyRandom(e.to_string()))?;
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(owner_only::FILE_MODE)
            .open(&path);
        let mut file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                owner_only::tighten_or_warn(&path, owner_only::FILE_MODE);
                return Ok((Self::from_file(&path)?, false));
            }
            Err(e) => return Err(StoreError::AuditKey(path, e)),
        };
        let text = hex(&secret);
        // On disk before any entry is signed with it (the directory entry
        // too): a key lost to a power cut leaves the log unverifiable.
        let written = file
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| File::open(dir)?.sync_all());
        if let Err(e) = written {
            // Not a half-written key for the next start to trip over.
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::AuditKey(path, e));
        }
        Ok((
            Self(hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes())),
            true,
        ))
    }

    /// A phone number's tag in the log: `tel:` and the first 16 hex
    /// digits of its MAC under the key. Whoever holds the key and a number
    /// finds its entries (`centralino audit --number`); the log without
    /// the key tells no number. A pseudonym, not a secret from the key's
    /// holder: numbers are few enough to try them all.
    pub fn number_tag(&self, number: &str) -> String {
        let mac = hmac::sign(&self.0, &framed(&["centralino-audit-number", number]));
        format!("tel:{}", &hex(mac.as_ref())[..16])
    }

    /// The MAC chaining an entry to the one before it.
    fn mac(&self, prev: &str, seq: i64, e: &AuditEntry) -> String {
        hex(hmac::sign(&self.0, &chained(prev, seq, e)).as_ref())
    }

    /// The MAC of the boundary: keyed entries from `from`, after the
    /// unkeyed hash `prev`.
    fn seal(&self, from: i64, prev: &str) -> String {
        let bytes = framed(&["centralino-audit-keyed-from", &from.to_string(), prev]);
        hex(hmac::sign(&self.0, &bytes).as_ref())
    }
}

/// The last entry of a chain, as the node logs it after each commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// Its sequence number.
    pub seq: i64,
    /// Its MAC (hex).
    pub mac: String,
}

impl fmt::Display for AuditHead {
    /// `N:HEX`, as `centralino audit --expect-head` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

impl std::str::FromStr for AuditHead {
    type Err = &'static str;

    /// `N:HEX` (the `seq` and `mac` of a logged `audit head` line).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WANT: &str = "expected N:HEX, the seq and mac of an `audit head` log line";
        let (seq, mac) = s.split_once(':').ok_or(WANT)?;
        let seq: i64 = seq.parse().map_err(|_| WANT)?;
        let hex_ok = mac.len() == 64 && mac.bytes().all(|b| b.is_ascii_hexdigit());
        if seq < 1 || !hex_ok {
            return Err(WANT);
        }
        Ok(Self {
            seq,
            mac: mac.to_ascii_lowercase(),
        })
    }
}

/// A chain that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditChain {
    /// Entries in all.
    pub entries: u64,
    /// Of which written before keyed audit (plain SHA-256, sealed at the
    /// upgrade).
    pub unkeyed: u64,
    /// The last entry (`None` for an empty log).
    pub head: Option<AuditHead>,
}

/// Where a chain breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditBroken {
    /// This entry does not follow from the one before it (edited, removed,
    /// forged, or signed with another key).
    Entry(i64),
    /// The boundary of keyed entries is missing, doubled, or not sealed by
    /// this key: the wrong key, or the log was rewritten.
    Boundary,
}

/// How a logged head stands in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// The entry is there with that MAC.
    Found,
    /// The chain ends before it, at `last` (0: empty): its tail was cut.
    Cut {
        /// The last entry left.
        last: i64,
    },
    /// An entry with that number and another MAC: cut, then written on.
    Replaced,
}

/// The fields, each preceded by its length: no two different field lists
/// give the same bytes.
fn framed(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u64).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

fn chained(prev: &str, seq: i64, e: &AuditEntry) -> Vec<u8> {
    framed(&[
        prev,
        &seq.to_string(),
        &e.at.to_string(),
        &e.actor,
        &e.action,
        &e.target,
        &e.status.to_string(),
    ])
}

/// Schema 7's unkeyed chain: SHA-256 over the same bytes.
fn plain_hash(prev: &str, seq: i64, e: &AuditEntry) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(chained(prev, seq, e)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An audit entry from a row whose first columns are `at, actor, action,
/// target, status`.
fn audit_entry(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        at: r.get(0)?,
        actor: r.get(1)?,
        action: r.get(2)?,
        target: r.get(3)?,
        status: r.get(4)?,
    })
}

/// The last entry's (seq, hash), or (0, the genesis).
fn last(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS.to_owned())))
}

/// Migration 8's second half: keyed entries start after the last one
/// there. With unkeyed entries, the boundary needs the key's seal; without
/// any, a boundary at 1 needs none (every entry must then be keyed), so a
/// new file can be made without the key.
pub(crate) fn seal_boundary(tx: &Connection, key: Option<&AuditKey>) -> Result<(), StoreError> {
    let (last, prev) = last(tx)?;
    let from = last + 1;
    if from > 1 && key.is_none() {
        return Err(StoreError::AuditKeyNeeded);
    }
    tx.execute(
        "INSERT INTO audit_keyed (from_seq, seal) VALUES (?1, ?2)",
        params![from, key.map(|k| k.seal(from, &prev))],
    )?;
    Ok(())
}

impl Store {
    /// Appends entries to the audit log, each chained to the last; the
    /// new head (`None` for no entries). Needs the key
    /// ([`Store::open_keyed`]).
    pub fn audit(&mut self, entries: &[AuditEntry]) -> Result<Option<AuditHead>, StoreError> {
        let Some(key) = &self.audit_key else {
            return Err(StoreError::NoAuditKey);
        };
        if entries.is_empty() {
            return Ok(None);
        }
        let tx = self.conn.savepoint()?;
        let (mut seq, mut prev) = last(&tx)?;
        for e in entries {
            seq += 1;
            // A number is written as its keyed tag, never as itself.
            let tagged;
            let e = match e.target.strip_prefix(NUMBER_TARGET) {
                Some(number) => {
                    tagged = AuditEntry {
                        target: key.number_tag(number),
                        ..e.clone()
                    };
                    &tagged
                }
                None => e,
            };
            let mac = key.mac(&prev, seq, e);
            tx.execute(
                "INSERT INTO audit (seq, at, actor, action, target, status, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![seq, e.at, e.actor, e.action, e.target, e.status, mac],
            )?;
            prev = mac;
        }
        tx.commit()?;
        Ok(Some(AuditHead { seq, mac: prev }))
    }

    /// Checks the whole chain under `key`: what it holds, or where it
    /// breaks. A valid chain may still have lost its tail:
    /// [`Store::check_head`] against a head the node logged.
    pub fn verify_audit(
        &self,
        key: &AuditKey,
    ) -> Result<Result<AuditChain, AuditBroken>, StoreError> {
        let bounds: Vec<(i64, Option<String>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT from_seq, seal FROM audit_keyed")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let [(from, seal)] = bounds.as_slice() else {
            return Ok(Err(AuditBroken::Boundary));
        };
        let from = *from;
        // Unsealed only where nothing is unkeyed (a file made without the
        // key): a boundary moved up must carry a seal nobody can forge.
        if from < 1 || (seal.is_none() && from != 1) {
            return Ok(Err(AuditBroken::Boundary));
        }
        let sealed = |prev: &str| seal.as_ref().is_none_or(|s| *s == key.seal(from, prev));
        let mut stmt = self.conn.prepare(
            "SELECT at, actor, action, target, status, seq, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let (mut prev, mut expect, mut unkeyed) = (GENESIS.to_owned(), 1i64, 0u64);
        while let Some(r) = rows.next()? {
            let e = audit_entry(r)?;
            let seq: i64 = r.get(5)?;
            let hash: String = r.get(6)?;
            if seq != expect {
                return Ok(Err(AuditBroken::Entry(seq)));
            }
            if seq == from && !sealed(&prev) {
                return Ok(Err(AuditBroken::Boundary));
            }
            let want = if seq < from {
                unkeyed += 1;
                plain_hash(&prev, seq, &e)
            } else {
                key.mac(&prev, seq, &e)
            };
            if want != hash {
                return Ok(Err(AuditBroken::Entry(seq)));
            }
            prev = hash;
            expect += 1;
        }
        // No keyed entry yet: the seal still names the last unkeyed one.
        if expect <= from && !sealed(&prev) {
            return Ok(Err(AuditBroken::Boundary));
        }
        let entries = (expect - 1) as u64;
        Ok(Ok(AuditChain {
            entries,
            unkeyed,
            head: (entries > 0).then(|| AuditHead {
                seq: expect - 1,
                mac: prev,
            }),
        }))
    }

    /// Whether the log still holds `head` (meaningful once
    /// [`Store::verify_audit`] found the chain valid: then every MAC in it
    /// is genuine).
    pub fn check_head(&self, head: &AuditHead) -> Result<HeadCheck, StoreError> {
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT hash FROM audit WHERE seq = ?1",
                params![head.seq],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match found {
            Some(mac) if mac == head.mac => HeadCheck::Found,
            Some(_) => HeadCheck::Replaced,
            None => HeadCheck::Cut {
                last: last(&self.conn)?.0,
            },
        })
    }

    /// Whether the key this store was opened with is the one its log was
    /// written with (the boundary's seal and the last entry): a node
    /// started with another key file would add entries that never verify.
    pub fn audit_key_fits(&self) -> Result<bool, StoreError> {
        let Some(key) = &self.audit_key else {
            return Ok(false);
        };
        let hash_at = |seq: i64| -> rusqlite::Result<Option<String>> {
            if seq == 0 {
                return Ok(Some(GENESIS.to_owned()));
            }
            self.conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", params![seq], |r| {
                    r.get(0)
                })
                .optional()
        };
        let bound: Option<(i64, Option<String>)> = self
            .conn
            .query_row("SELECT from_seq, seal FROM audit_keyed", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((from, seal)) = bound else {
            return Ok(false);
        };
        if let Some(seal) = seal
            && hash_at(from - 1)?.is_none_or(|prev| key.seal(from, &prev) != seal)
        {
            return Ok(false);
        }
        let newest: Option<(AuditEntry, i64, String)> = self
            .conn
            .query_row(
                "SELECT at, actor, action, target, status, seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((audit_entry(r)?, r.get(5)?, r.get(6)?)),
            )
            .optional()?;
        match newest {
            Some((e, seq, mac)) if seq >= from => {
                Ok(hash_at(seq - 1)?.is_some_and(|prev| key.mac(&prev, seq, &e) == mac))
            }
            _ => Ok(true),
        }
    }

    /// The audit log's last `limit` entries, newest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at, actor, action, target, status FROM audit ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit.min(MAX_LIST) as i64], audit_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("centralino-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        owner_only::create_dir(&dir).unwrap();
        dir.join("centralino.db")
    }

    fn key(byte: u8) -> AuditKey {
        AuditKey::from_secret(&[byte; MIN_AUDIT_KEY]).unwrap()
    }

    fn e(actor: &str, action: &str, target: &str) -> AuditEntry {
        AuditEntry {
            at: 1_000,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            status: 200,
        }
    }

    fn intact(s: &Store, k: &AuditKey) -> AuditChain {
        s.verify_audit(k).unwrap().unwrap()
    }

    /// What someone with the file but not the key can do: drop the
    /// triggers and write rows with the unkeyed chain's hashes, from `from`
    /// to the end.
    fn rewrite_unkeyed(s: &Store, from: i64, change: &str) {
        s.conn
            .execute_batch(&format!(
                "DROP TRIGGER IF EXISTS audit_no_update; UPDATE audit SET actor = '{change}' WHERE seq = {from};"
            ))
            .unwrap();
        let mut prev = if from == 1 {
            GENESIS.to_owned()
        } else {
            s.conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [from - 1], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let rows: Vec<(i64, AuditEntry)> = {
            let mut stmt = s
                .conn
                .prepare("SELECT at, actor, action, target, status, seq FROM audit WHERE seq >= ?1 ORDER BY seq")
                .unwrap();
            stmt.query_map([from], |r| Ok((r.get(5)?, audit_entry(r)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        for (seq, entry) in rows {
            let hash = plain_hash(&prev, seq, &entry);
            s.conn
                .execute(
                    "UPDATE audit SET hash = ?1 WHERE seq = ?2",
                    params![hash, seq],
                )
                .unwrap();
            prev = hash;
        }
    }

    #[test]
    fn the_audit_log_is_append_only_and_a_forged_row_breaks_the_chain() {
        let path = temp("forged");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        s.audit(&[
            e("web", "callbacks_create", "cb1"),
            e("desk-1003", "agent_call", "1003"),
        ])
        .unwrap();
        let head = s.audit(&[e("ops", "callbacks_list", "")]).unwrap().unwrap();
        let chain = intact(&s, &key(1));
        assert_eq!((chain.entries, chain.unkeyed), (3, 0));
        assert_eq!(chain.head, Some(head));
        assert_eq!(s.audit_tail(1).unwrap(), [e("ops", "callbacks_list", "")]);
        // The triggers refuse edits and deletions, of the boundary too.
        assert!(
            s.conn
                .execute("UPDATE audit SET actor = 'x' WHERE seq = 2", [])
                .is_err()
        );
        assert!(
            s.conn
                .execute("DELETE FROM audit WHERE seq = 3", [])
                .is_err()
        );
        assert!(
            s.conn
                .execute("UPDATE audit_keyed SET from_seq = 9", [])
                .is_err()
        );
        // Someone with the file drops the trigger and rewrites a row: the
        // chain says where.
        s.conn
            .execute_batch(
                "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'nobody' WHERE seq = 2;",
            )
            .unwrap();
        assert_eq!(s.verify_audit(&key(1)).unwrap(), Err(AuditBroken::Entry(2)));
        drop(s);
        // A deleted row shows too.
        let path = temp("gap");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        s.audit(&[e("a", "x", "1"), e("a", "x", "2"), e("a", "x", "3")])
            .unwrap();
        s.conn
            .execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 2;")
            .unwrap();
        assert_eq!(s.verify_audit(&key(1)).unwrap(), Err(AuditBroken::Entry(3)));
    }

    /// A number given as a target is written as its tag under the key
    /// (the same for the same number, another under another key), never
    /// itself, and the chain verifies over what was written.
    #[test]
    fn a_number_is_logged_as_its_keyed_tag() {
        let path = temp("number");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        let number = "+393331110005";
        s.audit(&[
            e("asl", "dnc_delete", &format!("{NUMBER_TARGET}{number}")),
            e("asl", "dnc_delete", &format!("{NUMBER_TARGET}{number}")),
        ])
        .unwrap();
        let tag = key(1).number_tag(number);
        assert!(tag.starts_with("tel:") && tag.len() == 20, "{tag}");
        assert_ne!(tag, key(2).number_tag(number));
        assert_ne!(tag, key(1).number_tag("+393331110006"));
        let tail = s.audit_tail(2).unwrap();
        assert!(tail.iter().all(|t| t.target == tag), "{tail:?}");
        let dump: String = s
            .conn
            .query_row("SELECT group_concat(target) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert!(!dump.contains("3331110005"), "{dump}");
        assert_eq!(intact(&s, &key(1)).entries, 2);
    }

    #[test]
    fn a_rewritten_entry_with_a_recomputed_plain_hash_is_caught() {
        let path = temp("rewritten");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        for i in 0..4 {
            s.audit(&[e("desk-1001", "agent_call", &i.to_string())])
                .unwrap();
        }
        // The unkeyed chain would take this rewrite (every hash from the
        // edited row on recomputed); the keyed one does not.
        rewrite_unkeyed(&s, 2, "someone-else");
        assert_eq!(s.verify_audit(&key(1)).unwrap(), Err(AuditBroken::Entry(2)));
        // Nor does it take the boundary moved past the end to make every
        // entry "unkeyed": the seal does not follow.
        s.conn
            .execute_batch("DROP TRIGGER audit_keyed_no_update; UPDATE audit_keyed SET from_seq = 5, seal = NULL;")
            .unwrap();
        rewrite_unkeyed(&s, 1, "desk-1001");
        assert_eq!(s.verify_audit(&key(1)).unwrap(), Err(AuditBroken::Boundary));
        s.conn
            .execute_batch("DROP TRIGGER audit_keyed_no_delete; DELETE FROM audit_keyed;")
            .unwrap();
        assert_eq!(s.verify_audit(&key(1)).unwrap(), Err(AuditBroken::Boundary));
    }

    #[test]
    fn a_cut_tail_is_caught_with_the_logged_head() {
        let path = temp("cut");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        s.audit(&[e("web", "callbacks_create", "cb1")]).unwrap();
        let logged = s
            .audit(&[
                e("web", "callbacks_get", "cb1"),
                e("web", "callbacks_get", "cb2"),
            ])
            .unwrap()
            .unwrap();
        assert_eq!(logged.seq, 3);
        assert_eq!(s.check_head(&logged).unwrap(), HeadCheck::Found);
        // The last two entries removed: what is left is a valid chain, so
        // only the head from the log shows the cut.
        s.conn
            .execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq >= 2;")
            .unwrap();
        assert_eq!(intact(&s, &key(1)).entries, 1);
        assert_eq!(s.check_head(&logged).unwrap(), HeadCheck::Cut { last: 1 });
        // The node writes on after the cut: entry 3 is back, another one.
        s.audit(&[e("a", "x", "1"), e("a", "x", "2")]).unwrap();
        assert_eq!(intact(&s, &key(1)).entries, 3);
        assert_eq!(s.check_head(&logged).unwrap(), HeadCheck::Replaced);
        // The head as given on the command line (hex in either case).
        let text = logged.to_string();
        assert_eq!(text.parse::<AuditHead>(), Ok(logged.clone()));
        assert_eq!(text.to_uppercase().parse::<AuditHead>(), Ok(logged));
        for bad in [
            "",
            "3",
            "x:ab",
            "0:ab",
            "3:abc",
            &format!("3:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<AuditHead>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_wrong_key_reports_the_log_broken() {
        let path = temp("wrong");
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        s.audit(&[e("web", "callbacks_create", "cb1")]).unwrap();
        assert!(s.audit_key_fits().unwrap());
        assert_eq!(s.verify_audit(&key(2)).unwrap(), Err(AuditBroken::Boundary));
        drop(s);
        // A node started with another key file hears it at once.
        let s = Store::open_keyed(&path, key(2)).unwrap();
        assert!(!s.audit_key_fits().unwrap());
        drop(s);
        // A file made without the key (no seal): the entries say it.
        let path = temp("wrong-unsealed");
        drop(Store::open(&path).unwrap());
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        s.audit(&[e("web", "callbacks_create", "cb1")]).unwrap();
        assert_eq!(intact(&s, &key(1)).entries, 1);
        assert_eq!(s.verify_audit(&key(2)).unwrap(), Err(AuditBroken::Entry(1)));
        // A reader without the key cannot write entries.
        let mut reader = Store::open(&path).unwrap();
        assert!(matches!(
            reader.audit(&[e("x", "y", "z")]),
            Err(StoreError::NoAuditKey)
        ));
    }

    #[test]
    fn the_chain_stays_intact_across_a_restart_with_the_node_s_key_file() {
        let path = temp("restart");
        let dir = path.parent().unwrap();
        let (k, created) = AuditKey::load_or_create(dir).unwrap();
        assert!(created);
        let mut s = Store::open_keyed(&path, k).unwrap();
        s.audit(&[e("web", "callbacks_create", "cb1")]).unwrap();
        drop(s);
        let (k, created) = AuditKey::load_or_create(dir).unwrap();
        assert!(!created, "the same key file");
        let mut s = Store::open_keyed(&path, k).unwrap();
        assert!(s.audit_key_fits().unwrap());
        let head = s.audit(&[e("web", "callbacks_get", "cb1")]).unwrap();
        let k = AuditKey::from_file(&dir.join(AUDIT_KEY_FILE)).unwrap();
        let chain = intact(&s, &k);
        assert_eq!((chain.entries, chain.head), (2, head));
    }

    #[test]
    fn the_key_file_is_created_owner_only_and_a_short_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("keyfile").parent().unwrap().to_path_buf();
        let file = dir.join(AUDIT_KEY_FILE);
        let (first, _) = AuditKey::load_or_create(&dir).unwrap();
        let mode = || std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.trim_end().len(), 64, "32 random bytes, in hex");
        // Found world-readable: tightened, same key.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (again, created) = AuditKey::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(mode(), 0o600);
        let entry = e("a", "b", "c");
        assert_eq!(first.mac(GENESIS, 1, &entry), again.mac(GENESIS, 1, &entry));
        std::fs::write(&file, "short\n").unwrap();
        assert!(matches!(
            AuditKey::from_file(&file),
            Err(StoreError::AuditKeyShort(_, 5))
        ));
        assert!(matches!(
            AuditKey::from_file(&dir.join("missing")),
            Err(StoreError::AuditKey(..))
        ));
    }

    #[test]
    fn a_log_from_before_keyed_audit_is_sealed_at_the_upgrade_and_stays_verifiable() {
        let path = temp("upgrade");
        // A schema-7 file with three entries chained by plain SHA-256, as
        // the previous version wrote them.
        {
            let conn = Connection::open(&path).unwrap();
            for m in &crate::MIGRATIONS[..KEYED_SCHEMA as usize - 1] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch("PRAGMA user_version = 7").unwrap();
            let mut prev = GENESIS.to_owned();
            for seq in 1..=3 {
                let entry = e("web", "callbacks_get", &format!("cb{seq}"));
                let hash = plain_hash(&prev, seq, &entry);
                conn.execute(
                    "INSERT INTO audit (seq, at, actor, action, target, status, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![seq, entry.at, entry.actor, entry.action, entry.target, entry.status, hash],
                )
                .unwrap();
                prev = hash;
            }
        }
        // Only a store with the key may seal them.
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::AuditKeyNeeded)
        ));
        let mut s = Store::open_keyed(&path, key(1)).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::MIGRATIONS.len() as u32);
        let sealed = intact(&s, &key(1));
        assert_eq!((sealed.entries, sealed.unkeyed), (3, 3));
        s.audit(&[e("web", "callbacks_list", "")]).unwrap();
        let chain = intact(&s, &key(1));
        assert_eq!((chain.entries, chain.unkeyed), (4, 3));
        assert!(s.audit_key_fits().unwrap());
        drop(s);
        // A reader without the key opens the upgraded file.
        let reader = Store::open(&path).unwrap();
        assert_eq!(intact(&reader, &key(1)).entries, 4);
        // An old entry rewritten with its plain chain recomputed (which the
        // old scheme could not tell): the seal no longer follows.
        rewrite_unkeyed(&reader, 2, "nobody");
        assert_eq!(
            reader.verify_audit(&key(1)).unwrap(),
            Err(AuditBroken::Boundary)
        );
    }
}
