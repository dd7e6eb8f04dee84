//! Operators provisioned through the API (`POST /api/v1/agents`): kept
//! here with their digest secrets as HA1 per algorithm (never a password),
//! merged with the configuration file's `[[agents]]` at start and at each
//! reload.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::{Store, StoreError};

/// The operators table (a migration).
pub(crate) const MIGRATION: &str = "CREATE TABLE operators (
        username TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        ha1_md5 TEXT,
        ha1_sha256 TEXT,
        site TEXT NOT NULL,
        skills TEXT NOT NULL,
        languages TEXT NOT NULL,
        queues TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );";

/// An operator as the API provisioned them. (`Debug` leaves the HA1s
/// out: one is as good as the password.)
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Operator {
    /// SIP user name.
    pub username: String,
    /// Their firm.
    pub tenant: String,
    /// HA1 for MD5 (`MD5(user:realm:password)`), hex.
    pub ha1_md5: Option<String>,
    /// HA1 for SHA-256, hex.
    pub ha1_sha256: Option<String>,
    /// Their site.
    pub site: String,
    /// Skills and levels.
    pub skills: BTreeMap<String, u8>,
    /// Languages.
    pub languages: Vec<String>,
    /// Queues they serve.
    pub queues: Vec<String>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("username", &self.username)
            .field("tenant", &self.tenant)
            .field("site", &self.site)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operator> {
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    Ok(Operator {
        username: r.get(0)?,
        tenant: r.get(1)?,
        ha1_md5: r.get(2)?,
        ha1_sha256: r.get(3)?,
        site: r.get(4)?,
        skills: serde_json::from_str(&json(5)?).unwrap_or_default(),
        languages: serde_json::from_str(&json(6)?).unwrap_or_default(),
        queues: serde_json::from_str(&json(7)?).unwrap_or_default(),
    })
}

const SELECT: &str =
    "SELECT username, tenant, ha1_md5, ha1_sha256, site, skills, languages, queues FROM operators";

impl Store {
    /// Every provisioned operator, in the order they were first added.
    pub fn operators(&self) -> Result<Vec<Operator>, StoreError> {
        let mut st = self.conn.prepare(&format!("{SELECT} ORDER BY rowid"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One provisioned operator.
    pub fn operator(&self, username: &str) -> Result<Option<Operator>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("{SELECT} WHERE username = ?1"), [username], row)
            .optional()?)
    }

    /// Adds or replaces operators (one transaction for all).
    pub fn put_operators(&mut self, ops: &[Operator], now_ms: i64) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO operators (username, tenant, ha1_md5, ha1_sha256, site, skills, languages, queues, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(username) DO UPDATE SET tenant = ?2, ha1_md5 = ?3, ha1_sha256 = ?4,
                   site = ?5, skills = ?6, languages = ?7, queues = ?8, updated_at = ?9",
            )?;
            for o in ops {
                st.execute(params![
                    o.username,
                    o.tenant,
                    o.ha1_md5,
                    o.ha1_sha256,
                    o.site,
                    serde_json::to_string(&o.skills).unwrap_or_default(),
                    serde_json::to_string(&o.languages).unwrap_or_default(),
                    serde_json::to_string(&o.queues).unwrap_or_default(),
                    now_ms,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes operators; returns how many there were.
    pub fn delete_operators(&mut self, usernames: &[String]) -> Result<usize, StoreError> {
        let tx = self.conn.savepoint()?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached("DELETE FROM operators WHERE username = ?1")?;
            for u in usernames {
                n += st.execute([u])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }
}

/// The provisioned operators of the database at `path`, read without
/// writing (the node's writer may hold it): none when the file or the
/// table does not exist yet.
pub fn read_operators(path: &Path) -> Result<Vec<Operator>, StoreError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'operators'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare(&format!("{SELECT} ORDER BY rowid"))?;
    let rows = st.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A TOML basic string (JSON's escapes are TOML's, and `/` is not
/// escaped by serde_json).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Operator {
    /// The operator as a configuration file's `[[agents]]` table: the
    /// node reads provisioned operators through the same checks as the
    /// file's own.
    pub fn toml(&self) -> String {
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| quoted(s)).collect();
            format!("[{}]", items.join(", "))
        };
        let mut t = format!(
            "\n[[agents]]\nusername = {}\ntenant = {}\nsite = {}\nqueues = {}\nlanguages = {}\n",
            quoted(&self.username),
            quoted(&self.tenant),
            quoted(&self.site),
            list(&self.queues),
            list(&self.languages),
        );
        if let Some(h) = &self.ha1_md5 {
            t.push_str(&format!("ha1_md5 = {}\n", quoted(h)));
        }
        if let Some(h) = &self.ha1_sha256 {
            t.push_str(&format!("ha1_sha256 = {}\n", quoted(h)));
        }
        let skills: Vec<String> = self
            .skills
            .iter()
            .map(|(k, v)| format!("{} = {v}", quoted(k)))
            .collect();
        t.push_str(&format!("skills = {{ {} }}\n", skills.join(", ")));
        t
    }
}
