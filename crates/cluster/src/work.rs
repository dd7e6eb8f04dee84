//! Durable work shared by the nodes of a firm: each callback a node
//! holds is mirrored as one record on a JetStream stream (one subject per
//! callback, the latest record only), naming the node that owns it. A
//! node that dies leaves its records behind; a live node of the same
//! firm takes each over by a compare-and-set on that subject (JetStream's
//! expected last sequence), so exactly one node wins each record, and
//! every later write of the old owner fails the same check: its callback
//! has moved, and it never dials it.
//!
//! Why the owner is in the record and not in the subject: moving a
//! callback is then one conditional write, with nothing between two
//! writes for a crash to fall into. Why the owner's every write is
//! conditional: a node that was only cut off (not dead) must learn it was
//! taken over before it dials, and the dial itself is fenced by such a
//! write (`Dialing`).
//!
//! Sans-IO like the rest of the crate: the driver reads and writes the
//! stream, this module says what a record is and what to do with one.

use serde::{Deserialize, Serialize};

use crate::summary::{WireError, valid_name};

/// The stream's name.
pub const STREAM: &str = "CENTRALINO_WORK";

/// The subjects the stream holds.
pub const SUBJECTS: &str = "centralino.v1.work.>";

/// The subjects of callbacks.
pub const CALLBACK_SUBJECTS: &str = "centralino.v1.work.cb.>";

/// The subjects of campaign contacts.
pub const CONTACT_SUBJECTS: &str = "centralino.v1.work.ct.>";

/// Most attempts a contact's record may carry (a campaign allows far
/// fewer; a larger count is a corrupt or hostile record).
pub const MAX_ATTEMPTS: u32 = 10_000;

/// Largest record accepted (bytes).
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// The subject of callback `id`, if `id` can be one token of a subject.
pub fn callback_subject(id: &str) -> Option<String> {
    valid_id(id).then(|| format!("centralino.v1.work.cb.{id}"))
}

/// The subject of campaign contact `work_id`.
pub fn contact_subject(work_id: &str) -> Option<String> {
    valid_id(work_id).then(|| format!("centralino.v1.work.ct.{work_id}"))
}

/// A callback id that is one subject token: 1 to 64 of `[A-Za-z0-9_-]`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Where a mirrored callback stands, as far as another node cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkState {
    /// Waiting for its time and an operator (or claimed, not dialled).
    Pending,
    /// The citizen is being (or was) dialled by its owner.
    Dialing,
    /// Finished (done, failed, cancelled, or moved): nothing to take.
    Closed,
}

/// One callback, as its owner mirrors it. Unknown fields are allowed: a
/// newer node's record stays readable by an older one (records are
/// sealed: only the nodes write them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackWork {
    /// The id (the same on every node it moves to).
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The number to call; absent once closed (no number is kept on the
    /// stream longer than it is needed).
    pub number: Option<String>,
    /// Not before (Unix seconds).
    pub not_before: Option<i64>,
    /// Extra requirements.
    pub requirements: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Attempts so far.
    pub attempts: u32,
    /// When it was asked for (Unix seconds): it keeps its place.
    pub created_at: i64,
    /// Where it came from (api, ivr).
    pub source: String,
    /// By when it was promised (Unix seconds); absent from older nodes'
    /// records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_by: Option<i64>,
}

/// One campaign contact, as its owner mirrors it: what another node needs
/// to go on calling it in its own campaign of the same firm and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactWork {
    /// Its work id (the same on every node it moves to).
    pub id: String,
    /// Its campaign's name.
    pub campaign: String,
    /// The number to call; absent once closed.
    pub number: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Higher first.
    pub priority: i32,
    /// Language.
    pub language: Option<String>,
    /// Free data for the operator's desk (a JSON object).
    pub data: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Attempts that reached the network (what the retry policy counts).
    pub dialled: u32,
    /// Next attempt not before (Unix seconds).
    pub next_at: i64,
    /// How the last attempt ended.
    pub last_outcome: Option<String>,
    /// On a do-not-call list on its node.
    #[serde(default)]
    pub dnc: bool,
    /// The citizen's count of attempts today (the day, the count), on
    /// its node, every campaign's.
    pub day: Option<(i64, u32)>,
    /// Its campaign is not running on its node (draft, paused): the firm
    /// does not want it called now; no other node takes it over.
    #[serde(default)]
    pub held: bool,
}

/// The record on the stream: a callback or a campaign contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRecord {
    /// The stream sequence this record was written over (the subject's
    /// last, checked by the stream at the write; 0 for the first): a
    /// record replayed later does not follow the one before it, and is
    /// refused by [`chained`].
    #[serde(default)]
    pub prev: u64,
    /// The node that owns it now.
    pub owner: String,
    /// The firm of its queue.
    pub tenant: String,
    /// Where it stands.
    pub state: WorkState,
    /// The callback (on a callback's subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackWork>,
    /// The contact (on a contact's subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactWork>,
}

impl WorkRecord {
    /// Its id (a callback's, or a contact's work id).
    pub fn id(&self) -> &str {
        match (&self.callback, &self.contact) {
            (Some(c), _) => &c.id,
            (None, Some(k)) => &k.id,
            (None, None) => "",
        }
    }

    /// The subject it belongs on.
    pub fn subject(&self) -> Option<String> {
        match (&self.callback, &self.contact) {
            (Some(c), _) => callback_subject(&c.id),
            (None, Some(k)) => contact_subject(&k.id),
            (None, None) => None,
        }
    }

    /// The number it would call.
    pub fn number(&self) -> Option<&str> {
        match (&self.callback, &self.contact) {
            (Some(c), _) => c.number.as_deref(),
            (None, Some(k)) => k.number.as_deref(),
            (None, None) => None,
        }
    }

    /// Closes it: no number kept once nothing is left to call.
    pub fn close(&mut self) {
        self.state = WorkState::Closed;
        if let Some(c) = &mut self.callback {
            c.number = None;
        }
        if let Some(k) = &mut self.contact {
            k.number = None;
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record from the stream, every size and name bounded
    /// (anyone holding a NATS credential can write one).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let r: Self =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !valid_name(&r.owner) {
            return Err(WireError::BadName("owner"));
        }
        if r.tenant.len() > 200 {
            return Err(WireError::BadName("tenant"));
        }
        match (&r.callback, &r.contact) {
            (Some(c), None) => {
                if !valid_id(&c.id) {
                    return Err(WireError::BadName("id"));
                }
                if c.queue.is_empty() || c.queue.len() > 200 {
                    return Err(WireError::BadName("queue"));
                }
                if c.number
                    .as_ref()
                    .is_some_and(|n| n.is_empty() || n.len() > 64)
                    || c.requirements.as_ref().is_some_and(|r| r.len() > 2048)
                    || c.source.len() > 32
                {
                    return Err(WireError::BadName("callback"));
                }
            }
            (None, Some(k)) => {
                if !valid_id(&k.id) {
                    return Err(WireError::BadName("id"));
                }
                if k.campaign.is_empty() || k.campaign.len() > 200 {
                    return Err(WireError::BadName("campaign"));
                }
                if k.number
                    .as_ref()
                    .is_some_and(|n| n.is_empty() || n.len() > 64)
                    || k.name.as_ref().is_some_and(|n| n.len() > 512)
                    || k.attempts > MAX_ATTEMPTS
                    || k.dialled > k.attempts
                    || k.language.as_ref().is_some_and(|l| l.len() > 35)
                    || k.data.as_ref().is_some_and(|d| d.len() > 4096)
                    || k.last_outcome.as_ref().is_some_and(|o| o.len() > 200)
                {
                    return Err(WireError::BadName("contact"));
                }
            }
            _ => return Err(WireError::BadName("kind")),
        }
        if r.state != WorkState::Closed && r.number().is_none() {
            return Err(WireError::BadName("number"));
        }
        Ok(r)
    }
}

/// Whether the subject's last record, at stream sequence `last_seq`,
/// follows the one before it: `before` is the sequence of the subject's
/// message before it, if the stream still has one (it keeps two per
/// subject). A replayed record names a `prev` that is not its
/// predecessor: never trusted.
///
/// A closed record needs no predecessor: its owner removes the records
/// before it (they name a citizen), and a closed record only ever stops a
/// dial; one replayed can deny, never make a node call.
pub fn chained(record: &WorkRecord, last_seq: u64, before: Option<u64>) -> bool {
    record.prev < last_seq
        && (record.state == WorkState::Closed
            || before == (record.prev != 0).then_some(record.prev))
}

/// What a node does with a record it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: someone else's live work, closed work, or a queue this
    /// node does not serve.
    Leave,
    /// Take it over from its dead owner: write `record` (owned by this
    /// node) conditionally on the sequence read; if that write wins,
    /// keep the callback as `as_`.
    TakeOver {
        /// The record to write.
        record: Box<WorkRecord>,
        /// What it becomes here.
        as_: Taken,
    },
    /// This node's own open work that its store does not have (it took
    /// it over and died before keeping it): keep it.
    Adopt(Taken),
}

/// What a callback taken over becomes on its new node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Waiting: it will be called.
    Pending,
    /// Its old owner had dialled the citizen when it died: they may have
    /// talked, so a callback is not dialled again (a person looks at it,
    /// as after a crash on one node); a campaign contact is retried (its
    /// attempt counted), as after a crash on one node.
    Interrupted,
}

/// Decides about one record: `me` is this node, `up` says whether a node
/// is alive (`false` for a node silent for three heartbeats or never
/// heard from since this node's picture settled), `serves` whether this
/// node has what the record needs (the queue of a callback, the campaign
/// of a contact, for that firm).
pub fn verdict(
    record: &WorkRecord,
    me: &str,
    up: impl Fn(&str) -> bool,
    serves: impl Fn(&WorkRecord) -> bool,
) -> Verdict {
    let taken = match record.state {
        WorkState::Closed => return Verdict::Leave,
        WorkState::Pending => Taken::Pending,
        WorkState::Dialing => Taken::Interrupted,
    };
    if record.owner == me {
        return Verdict::Adopt(taken);
    }
    let held = record.contact.as_ref().is_some_and(|k| k.held);
    if held || up(&record.owner) || !serves(record) {
        return Verdict::Leave;
    }
    let mut mine = record.clone();
    mine.owner = me.to_owned();
    if taken == Taken::Interrupted {
        if mine.callback.is_some() {
            // Closed on the stream: the new owner keeps it as failed, and
            // no third node takes it again.
            mine.close();
        } else {
            // A contact's attempt cut short is retried, as after a crash
            // on one node: the attempt counted, the contact waiting.
            mine.state = WorkState::Pending;
        }
    }
    Verdict::TakeOver {
        record: Box::new(mine),
        as_: taken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: &str, state: WorkState) -> WorkRecord {
        WorkRecord {
            prev: 0,
            owner: owner.into(),
            tenant: "asl".into(),
            state,
            contact: None,
            callback: Some(CallbackWork {
                id: "0123456789abcdef0123456789abcdef".into(),
                queue: "richiamate".into(),
                number: Some("+393470000001".into()),
                not_before: None,
                requirements: None,
                priority: 0,
                attempts: 1,
                created_at: 1_700_000_000,
                source: "api".into(),
                promised_by: None,
            }),
        }
    }

    fn serves(r: &WorkRecord) -> bool {
        r.tenant == "asl" && r.callback.as_ref().is_some_and(|c| c.queue == "richiamate")
    }

    #[test]
    fn a_dead_nodes_pending_callback_is_taken_by_a_node_of_its_firm() {
        let r = record("milano-1", WorkState::Pending);
        let v = verdict(&r, "napoli-1", |_| false, serves);
        let Verdict::TakeOver { record, as_ } = v else {
            panic!("{v:?}")
        };
        assert_eq!(record.owner, "napoli-1");
        assert_eq!(record.state, WorkState::Pending);
        assert_eq!(record.callback, r.callback);
        assert_eq!(as_, Taken::Pending);
        // Alive, or another firm's queue: left alone.
        assert_eq!(verdict(&r, "napoli-1", |_| true, serves), Verdict::Leave);
        assert_eq!(
            verdict(&r, "napoli-1", |_| false, |_| false),
            Verdict::Leave
        );
    }

    #[test]
    fn a_callback_being_dialled_when_its_node_died_is_never_dialled_again() {
        let r = record("milano-1", WorkState::Dialing);
        let Verdict::TakeOver { record, as_ } = verdict(&r, "napoli-1", |_| false, serves) else {
            panic!()
        };
        assert_eq!(as_, Taken::Interrupted);
        assert_eq!(record.state, WorkState::Closed);
        assert_eq!(record.number(), None, "no number kept once closed");
        assert_eq!(
            verdict(&record, "roma-1", |_| false, serves),
            Verdict::Leave
        );
    }

    #[test]
    fn own_open_work_the_store_lacks_is_adopted_and_closed_work_left() {
        assert_eq!(
            verdict(
                &record("napoli-1", WorkState::Pending),
                "napoli-1",
                |_| true,
                serves
            ),
            Verdict::Adopt(Taken::Pending)
        );
        assert_eq!(
            verdict(
                &record("milano-1", WorkState::Closed),
                "napoli-1",
                |_| false,
                serves
            ),
            Verdict::Leave
        );
    }

    fn contact() -> ContactWork {
        ContactWork {
            id: "fedcba9876543210fedcba9876543210".into(),
            campaign: "richiamo-fragili".into(),
            number: Some("+393470000002".into()),
            name: Some("Maria".into()),
            priority: 1,
            language: Some("it".into()),
            data: None,
            attempts: 2,
            dialled: 1,
            next_at: 1_700_000_100,
            last_outcome: Some("busy".into()),
            dnc: false,
            day: Some((19_700, 1)),
            held: false,
        }
    }

    #[test]
    fn a_contact_being_dialled_when_its_node_died_is_retried_by_its_taker() {
        let r = WorkRecord {
            prev: 3,
            owner: "milano-1".into(),
            tenant: "asl".into(),
            state: WorkState::Dialing,
            callback: None,
            contact: Some(contact()),
        };
        assert_eq!(WorkRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(
            r.subject().as_deref(),
            Some("centralino.v1.work.ct.fedcba9876543210fedcba9876543210")
        );
        let runs = |w: &WorkRecord| {
            w.tenant == "asl"
                && w.contact
                    .as_ref()
                    .is_some_and(|k| k.campaign == "richiamo-fragili")
        };
        let Verdict::TakeOver { record, as_ } = verdict(&r, "napoli-1", |_| false, runs) else {
            panic!()
        };
        assert_eq!(as_, Taken::Interrupted);
        assert_eq!(record.state, WorkState::Pending, "open for its new owner");
        assert_eq!(record.contact, r.contact);
        // A node without that campaign leaves it; a callback's test does
        // not serve a contact.
        assert_eq!(verdict(&r, "napoli-1", |_| false, serves), Verdict::Leave);
        let mut closed = r.clone();
        closed.close();
        assert_eq!(closed.number(), None);
        assert_eq!(
            verdict(&closed, "napoli-1", |_| false, runs),
            Verdict::Leave
        );
        // Paused on its node: nobody else calls it.
        let mut held = r.clone();
        held.contact.as_mut().unwrap().held = true;
        assert_eq!(verdict(&held, "napoli-1", |_| false, runs), Verdict::Leave);
        // Counters no campaign makes: the record is refused.
        let mut bad = r.clone();
        bad.contact.as_mut().unwrap().dialled = 3;
        assert!(WorkRecord::decode(&bad.encode()).is_err());
        bad.contact.as_mut().unwrap().attempts = u32::MAX;
        assert!(WorkRecord::decode(&bad.encode()).is_err());
    }

    #[test]
    fn a_replayed_record_does_not_follow_its_predecessor() {
        let mut r = record("milano-1", WorkState::Pending);
        // The first record of a subject: nothing before it.
        assert!(chained(&r, 5, None));
        assert!(!chained(&r, 9, Some(5)), "replayed over a later record");
        // Written over seq 5, which the stream still has before it.
        r.prev = 5;
        assert!(chained(&r, 9, Some(5)));
        assert!(!chained(&r, 12, Some(9)), "replayed after another write");
        assert!(!chained(&r, 9, None), "its predecessor is gone");
        assert!(!chained(&r, 4, Some(5)));
        // A closed record whose open predecessors were removed.
        r.close();
        assert!(chained(&r, 9, None));
        assert!(!chained(&r, 4, None));
    }

    #[test]
    fn records_from_the_stream_are_read_bounded() {
        let r = record("milano-1", WorkState::Pending);
        assert_eq!(WorkRecord::decode(&r.encode()).unwrap(), r);
        let mut bad = r.clone();
        bad.owner = "milano 1".into();
        assert!(WorkRecord::decode(&bad.encode()).is_err());
        let mut bad = r.clone();
        bad.callback.as_mut().unwrap().id = "a.b".into();
        assert!(WorkRecord::decode(&bad.encode()).is_err());
        let mut bad = r.clone();
        bad.callback.as_mut().unwrap().number = None;
        assert!(WorkRecord::decode(&bad.encode()).is_err());
        assert!(WorkRecord::decode(&vec![b' '; MAX_RECORD_BYTES + 1]).is_err());
        // A newer node's field is no reason to lose the record.
        let mut v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        v["later"] = serde_json::json!(1);
        assert_eq!(
            WorkRecord::decode(&serde_json::to_vec(&v).unwrap()).unwrap(),
            r
        );
        assert!(WorkRecord::decode(b"{\"owner\":1}").is_err());
        // Neither a callback nor a contact, or both: refused.
        let mut bad = r.clone();
        bad.callback = None;
        assert!(WorkRecord::decode(&bad.encode()).is_err());
        let mut both = r.clone();
        both.contact = Some(contact());
        assert!(WorkRecord::decode(&both.encode()).is_err());
        assert_eq!(callback_subject("a.b"), None);
        assert_eq!(
            callback_subject("abc").as_deref(),
            Some("centralino.v1.work.cb.abc")
        );
    }
}
