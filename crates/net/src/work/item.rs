//! What the driver mirrors: a callback or a campaign contact of this
//! node's store (`Item`), named by the id its record carries (`Key`), the
//! record each becomes, and what a record taken over becomes here.

use std::collections::HashMap;

use centralino_cluster::work::{self as w, CallbackWork, ContactWork, WorkRecord, WorkState};
use centralino_store::{
    Callback, ContactStatus, Mirrored, MirroredContact, Status, Store, StoreError, WorkContact,
};

/// One row of this node's work, as the mirror sees it.
pub(super) enum Item {
    Callback(Mirrored),
    Contact(MirroredContact),
}

/// A row of this node's work, by the id its record carries.
#[derive(Clone)]
pub(super) enum Key {
    Callback(String),
    Contact(String),
}

impl Item {
    /// The record node `node` writes for it (`None`: not its to write).
    pub(super) fn record(
        &self,
        node: &str,
        tenants: &HashMap<String, String>,
    ) -> Option<WorkRecord> {
        match self {
            Self::Callback(m) => callback_record(node, m, tenants),
            Self::Contact(m) => contact_record(node, m),
        }
    }

    pub(super) fn key(&self) -> Key {
        match self {
            Self::Callback(m) => Key::Callback(m.callback.id.clone()),
            Self::Contact(m) => Key::Contact(m.contact.work_id.clone()),
        }
    }

    pub(super) fn version(&self) -> i64 {
        match self {
            Self::Callback(m) => m.version,
            Self::Contact(m) => m.version,
        }
    }

    pub(super) fn seq(&self) -> Option<u64> {
        match self {
            Self::Callback(m) => m.seq,
            Self::Contact(m) => m.seq,
        }
    }

    pub(super) fn mirrored_at(&self) -> Option<i64> {
        match self {
            Self::Callback(m) => m.mirrored_at,
            Self::Contact(m) => m.mirrored_at,
        }
    }

    /// Finished here with a result (answered, done).
    pub(super) fn done(&self) -> bool {
        match self {
            Self::Callback(m) => m.callback.status == Status::Done,
            Self::Contact(m) => m.status == ContactStatus::Done,
        }
    }

    /// Still to be dialled by someone.
    pub(super) fn open(&self) -> bool {
        match self {
            Self::Callback(m) => matches!(m.callback.status, Status::Pending | Status::InProgress),
            Self::Contact(m) => m.open(),
        }
    }
}

impl Key {
    pub(super) fn id(&self) -> &str {
        match self {
            Self::Callback(id) | Self::Contact(id) => id,
        }
    }

    pub(super) fn subject(&self) -> Option<String> {
        match self {
            Self::Callback(id) => w::callback_subject(id),
            Self::Contact(id) => w::contact_subject(id),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Callback(_) => "callback",
            Self::Contact(_) => "contact",
        }
    }

    pub(super) fn set_moved(&self, s: &mut Store, to: &str, now: i64) -> Result<bool, StoreError> {
        match self {
            Self::Callback(id) => s.set_moved(id, to, now),
            Self::Contact(id) => s.set_contact_moved(id, to, now),
        }
    }

    pub(super) fn set_unconfirmed(&self, s: &mut Store, now: i64) -> Result<bool, StoreError> {
        match self {
            Self::Callback(id) => s.set_unconfirmed(id, now),
            Self::Contact(id) => s.set_contact_unconfirmed(id, now),
        }
    }

    pub(super) fn set_mirror_seq(&self, s: &mut Store, seq: u64) -> Result<(), StoreError> {
        match self {
            Self::Callback(id) => s.set_mirror_seq(id, seq),
            Self::Contact(id) => s.set_contact_mirror_seq(id, seq),
        }
    }

    pub(super) fn set_mirrored(
        &self,
        s: &mut Store,
        version: i64,
        seq: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Self::Callback(id) => s.set_mirrored(id, version, seq, now),
            Self::Contact(id) => s.set_contact_mirrored(id, version, seq, now),
        }
    }

    pub(super) fn stop_mirroring(&self, s: &mut Store) -> Result<(), StoreError> {
        match self {
            Self::Callback(id) => s.stop_mirroring(id),
            Self::Contact(id) => s.stop_mirroring_contact(id),
        }
    }
}

fn callback_record(
    node: &str,
    m: &Mirrored,
    tenants: &HashMap<String, String>,
) -> Option<WorkRecord> {
    let c = &m.callback;
    let state = match c.status {
        Status::Pending => WorkState::Pending,
        Status::InProgress if !m.dialed => WorkState::Pending,
        Status::InProgress => WorkState::Dialing,
        Status::Done | Status::Failed | Status::Cancelled => WorkState::Closed,
        Status::Moved => return None,
    };
    Some(WorkRecord {
        prev: 0,
        owner: node.to_owned(),
        // The firm the store bound the queue to: a queue removed from the
        // configuration since keeps it.
        tenant: m
            .tenant
            .clone()
            .or_else(|| tenants.get(&c.queue).cloned())
            .unwrap_or_default(),
        state,
        callback: Some(CallbackWork {
            id: c.id.clone(),
            queue: c.queue.clone(),
            number: (state != WorkState::Closed).then(|| c.number.clone()),
            not_before: c.not_before,
            requirements: c.requirements.clone(),
            priority: c.priority,
            attempts: c.attempts,
            created_at: c.created_at,
            source: c.source.clone(),
            promised_by: c.promised_by,
        }),
        contact: None,
    })
}

/// A contact in progress is written as being dialled: whether its
/// attempt reached the citizen is not known here, and a contact taken
/// over that way is retried anyway (its attempt counted).
fn contact_record(node: &str, m: &MirroredContact) -> Option<WorkRecord> {
    let state = match m.status {
        ContactStatus::Moved => return None,
        _ if !m.open() => WorkState::Closed,
        ContactStatus::Pending => WorkState::Pending,
        _ => WorkState::Dialing,
    };
    let open = state != WorkState::Closed;
    Some(WorkRecord {
        prev: 0,
        owner: node.to_owned(),
        tenant: m.contact.tenant.clone(),
        state,
        callback: None,
        contact: Some(ContactWork {
            id: m.contact.work_id.clone(),
            campaign: m.contact.campaign.clone(),
            number: open.then(|| m.contact.number.clone()),
            // Nothing of the citizen is kept on the stream once closed.
            name: m.contact.name.clone().filter(|_| open),
            priority: m.contact.priority,
            language: m.contact.language.clone(),
            data: m.contact.data.clone().filter(|_| open),
            attempts: m.contact.attempts,
            dialled: m.contact.dialled,
            next_at: m.contact.next_at,
            last_outcome: m.contact.last_outcome.clone(),
            dnc: m.contact.dnc,
            day: m.contact.day.filter(|_| open),
            held: m.held,
        }),
    })
}

/// A callback as the store keeps it, from its record.
pub(super) fn callback(c: &CallbackWork, now: i64) -> Callback {
    Callback {
        id: c.id.clone(),
        queue: c.queue.clone(),
        number: c.number.clone().unwrap_or_default(),
        not_before: c.not_before,
        requirements: c.requirements.clone(),
        priority: c.priority,
        status: Status::Pending,
        attempts: c.attempts,
        outcome: None,
        source: c.source.clone(),
        created_at: c.created_at,
        updated_at: now,
        promised_by: c.promised_by,
    }
}

/// A contact as its new node keeps it, from its record.
pub(super) fn taken_contact(k: &ContactWork, tenant: &str) -> WorkContact {
    WorkContact {
        work_id: k.id.clone(),
        campaign: k.campaign.clone(),
        tenant: tenant.to_owned(),
        number: k.number.clone().unwrap_or_default(),
        name: k.name.clone(),
        priority: k.priority,
        language: k.language.clone(),
        data: k.data.clone(),
        attempts: k.attempts,
        dialled: k.dialled,
        next_at: k.next_at,
        last_outcome: k.last_outcome.clone(),
        dnc: k.dnc,
        day: k.day,
    }
}
