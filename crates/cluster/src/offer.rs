//! Offering a waiting call to another node, sans-IO: node A (where the
//! call waits) asks node B (which has a free operator for the same
//! national queue, or lends under an agreement) over NATS request-reply;
//! B reserves an operator on its own board (its router stays the only
//! writer) and grants the offer with an id and a lease; A hands the call
//! over by SIP naming the offer, and B's grant becomes the call. Every
//! step is idempotent and bounded in time:
//! - a request repeated (a lost reply, A retrying) gets the same grant,
//!   never a second operator;
//! - a reply that comes after A gave up (or a second reply) is answered
//!   by a release, so B's operator is not held for nothing;
//! - a grant not claimed within its lease frees the operator on B; a
//!   request not answered in time returns the call to its place on A.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::summary::{WireError, valid_name};

/// How long A waits for B's answer before the call goes back to its
/// place (and a late grant is released).
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long B holds a granted operator for A's INVITE.
pub const LEASE: Duration = Duration::from_secs(5);

/// Most offers one node has out at once (each is a waiting call).
pub const MAX_OUT: usize = 100_000;

/// What A asks of B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferRequest {
    /// Unique across the network: A's node, boot and a counter.
    pub id: String,
    /// A's node name.
    pub from: String,
    /// The call's firm.
    pub tenant: String,
    /// The national queue it waits in.
    pub queue: String,
    /// What the call needs of an operator (a requirement expression), if
    /// more than the queue's.
    pub requirements: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// How long it has waited (ms): B orders by it as its router would.
    pub waited_ms: u64,
    /// When A sent it (Unix ms, A's clock), set by the driver: on a
    /// network with a key, B takes only fresh requests (a recorded one
    /// replayed later holds no operator).
    #[serde(default)]
    pub sent_ms: Option<i64>,
}

/// Largest offer request or release accepted (bytes).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Another node's request, answer or release, its size bounded first.
fn read<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

impl OfferRequest {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads another node's request, every size and name bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = read(bytes)?;
        if r.id.is_empty() || r.id.len() > 200 || !r.id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WireError::BadName("id"));
        }
        if !valid_name(&r.from) {
            return Err(WireError::BadName("node"));
        }
        if !valid_name(&r.queue) {
            return Err(WireError::BadName("queue"));
        }
        if !r.tenant.is_empty() && !valid_name(&r.tenant) {
            return Err(WireError::BadName("tenant"));
        }
        if r.requirements.as_ref().is_some_and(|q| q.len() > 1024) {
            return Err(WireError::BadName("requirements"));
        }
        Ok(r)
    }
}

/// A node lets a grant go: `{"id", "from"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The offer.
    pub id: String,
    /// The node that asked for it.
    pub from: String,
}

impl Release {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads one, bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        read(bytes)
    }
}

impl OfferReply {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads another node's answer, bounded: its target must be a SIP URI
    /// naming the offer, at most 256 bytes; the operator's name a name.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = read(bytes)?;
        if let Self::Granted {
            target, operator, ..
        } = &r
        {
            if target.len() > 256
                || !target.starts_with("sip:offer-")
                || !target.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(WireError::BadName("target"));
            }
            if !operator.is_empty() && !valid_name(operator) {
                return Err(WireError::BadName("operator"));
            }
        }
        Ok(r)
    }
}

/// Why B will not take a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No free operator with what the call needs.
    NoOperator,
    /// B has no such queue.
    UnknownQueue,
    /// Another firm's call and no agreement lends to it.
    NoAgreement,
    /// The agreement's capacity is used up.
    Capacity,
    /// B drains.
    Draining,
    /// B has no summary of A (no hand-over address to expect its INVITE
    /// from).
    UnknownNode,
}

/// B's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfferReply {
    /// An operator is held for the call until the lease ends.
    Granted {
        /// The offer.
        id: String,
        /// Where A sends the INVITE (a SIP URI on B naming the offer).
        target: String,
        /// How long B holds the operator (ms).
        lease_ms: u64,
        /// The operator's name (for A's call record and log).
        #[serde(default)]
        operator: String,
    },
    /// Not taken.
    Refused {
        /// The offer.
        id: String,
        /// Why.
        reason: Refusal,
    },
}

impl OfferReply {
    /// The offer it answers.
    pub fn id(&self) -> &str {
        match self {
            Self::Granted { id, .. } | Self::Refused { id, .. } => id,
        }
    }
}

/// What comes of an offer on A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Hand call `call` over to `node` by SIP at `target` before
    /// `until`.
    Granted {
        /// A's call.
        call: u64,
        /// The node that took it.
        node: String,
        /// Where the INVITE goes.
        target: String,
        /// The offer id the INVITE carries.
        id: String,
        /// The lease's end (A's clock).
        until: Instant,
        /// The operator held there.
        operator: String,
    },
    /// `node` will not take `call`: it stays in its place.
    Refused {
        /// A's call.
        call: u64,
        /// The node asked.
        node: String,
        /// Why.
        reason: Refusal,
    },
    /// `node` did not answer in time: `call` stays in its place.
    TimedOut {
        /// A's call.
        call: u64,
        /// The node asked.
        node: String,
    },
    /// `node` granted an offer A no longer wants (too late, or the call
    /// left): tell it to let the operator go.
    Release {
        /// The node holding an operator.
        node: String,
        /// The offer.
        id: String,
    },
}

#[derive(Clone, Debug)]
struct Out {
    call: u64,
    node: String,
    deadline: Instant,
}

/// A's offers out, one per call at most.
#[derive(Debug)]
pub struct Outgoing {
    node: String,
    boot: u64,
    next: u64,
    out: HashMap<String, Out>,
    by_call: HashMap<u64, String>,
    /// Offers answered or given up lately, so a second or late grant is
    /// recognised (and released) rather than taken for a new one.
    done: HashMap<String, (String, Instant)>,
}

impl Outgoing {
    /// Offers of node `node` in its boot `boot`.
    pub fn new(node: &str, boot: u64) -> Self {
        Self {
            node: node.to_owned(),
            boot,
            next: 0,
            out: HashMap::new(),
            by_call: HashMap::new(),
            done: HashMap::new(),
        }
    }

    /// A request offering `call` to `to`; `None` while the call has one
    /// out already (or too many are out).
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        now: Instant,
        call: u64,
        to: &str,
        tenant: &str,
        queue: &str,
        requirements: Option<String>,
        priority: i32,
        waited: Duration,
    ) -> Option<OfferRequest> {
        if self.by_call.contains_key(&call) || self.out.len() >= MAX_OUT {
            return None;
        }
        self.next += 1;
        let id = format!("{}-{:x}-{}", self.node, self.boot, self.next);
        self.out.insert(
            id.clone(),
            Out {
                call,
                node: to.to_owned(),
                deadline: now + REPLY_TIMEOUT,
            },
        );
        self.by_call.insert(call, id.clone());
        Some(OfferRequest {
            id,
            from: self.node.clone(),
            tenant: tenant.to_owned(),
            queue: queue.to_owned(),
            requirements,
            priority,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            sent_ms: None,
        })
    }

    /// `from` answered.
    pub fn reply(&mut self, now: Instant, from: &str, reply: OfferReply) -> Option<Outcome> {
        let id = reply.id().to_owned();
        let Some(out) = self.out.get(&id).filter(|o| o.node == from) else {
            // Not (or no longer) ours to take: a grant is let go.
            return match reply {
                OfferReply::Granted { .. } if self.done.contains_key(&id) => {
                    Some(Outcome::Release {
                        node: from.to_owned(),
                        id,
                    })
                }
                _ => None,
            };
        };
        let call = out.call;
        self.finish(now, &id);
        Some(match reply {
            OfferReply::Granted {
                target,
                lease_ms,
                operator,
                ..
            } => Outcome::Granted {
                call,
                node: from.to_owned(),
                target,
                id,
                until: now + Duration::from_millis(lease_ms).min(LEASE),
                operator,
            },
            OfferReply::Refused { reason, .. } => Outcome::Refused {
                call,
                node: from.to_owned(),
                reason,
            },
        })
    }

    /// `call` left (its caller hung up, an operator here took it): its
    /// offer, if one is out, is withdrawn; a grant that still comes is
    /// released.
    pub fn withdraw(&mut self, now: Instant, call: u64) {
        if let Some(id) = self.by_call.get(&call).cloned() {
            self.finish(now, &id);
        }
    }

    fn finish(&mut self, now: Instant, id: &str) {
        if let Some(out) = self.out.remove(id) {
            self.by_call.remove(&out.call);
            self.done.insert(id.to_owned(), (out.node, now));
        }
    }

    /// Offers whose reply did not come in time (their calls stay in
    /// their places); answers remembered long enough are forgotten.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Outcome> {
        let late: Vec<String> = self
            .out
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut v = Vec::with_capacity(late.len());
        for id in late {
            if let Some(o) = self.out.get(&id) {
                v.push(Outcome::TimedOut {
                    call: o.call,
                    node: o.node.clone(),
                });
            }
            self.finish(now, &id);
        }
        // A grant later than a lease would have lapsed on its node anyway.
        self.done
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < LEASE * 2);
        v
    }

    /// When [`Outgoing::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.values().map(|o| o.deadline).min()
    }

    /// Offers out now.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// None out.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// What B does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Asked before: the same answer again (no second operator).
    Repeat(OfferReply),
    /// New: reserve an operator (the router decides), then
    /// [`Grants::granted`] or [`Grants::refused`].
    Reserve,
}

#[derive(Clone, Debug)]
struct Grant {
    agent: u32,
    from: String,
    until: Instant,
    reply: OfferReply,
}

/// B's grants: operators held for other nodes' calls, by offer id.
#[derive(Debug, Default)]
pub struct Grants {
    held: HashMap<String, Grant>,
    /// Refusals remembered for a repeated request (bounded by time).
    refused: HashMap<String, (OfferReply, Instant)>,
}

impl Grants {
    /// A request arrived.
    pub fn request(&mut self, req: &OfferRequest) -> Decision {
        if let Some(g) = self.held.get(&req.id) {
            return Decision::Repeat(g.reply.clone());
        }
        if let Some((r, _)) = self.refused.get(&req.id) {
            return Decision::Repeat(r.clone());
        }
        Decision::Reserve
    }

    /// The router reserved `agent` for `req`: the grant, held until the
    /// lease ends. `target` is where the INVITE is to go.
    pub fn granted(
        &mut self,
        now: Instant,
        req: &OfferRequest,
        agent: u32,
        target: String,
        operator: String,
    ) -> OfferReply {
        let reply = OfferReply::Granted {
            id: req.id.clone(),
            target,
            lease_ms: u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX),
            operator,
        };
        self.held.insert(
            req.id.clone(),
            Grant {
                agent,
                from: req.from.clone(),
                until: now + LEASE,
                reply: reply.clone(),
            },
        );
        reply
    }

    /// Not taken, for `reason`.
    pub fn refused(&mut self, now: Instant, req: &OfferRequest, reason: Refusal) -> OfferReply {
        let reply = OfferReply::Refused {
            id: req.id.clone(),
            reason,
        };
        self.refused.insert(req.id.clone(), (reply.clone(), now));
        reply
    }

    /// A's INVITE for offer `id` from node `from` arrived: the operator
    /// held, once (a second INVITE for the same offer gets none).
    pub fn claim(&mut self, now: Instant, id: &str, from: &str) -> Option<u32> {
        let g = self.held.get(id)?;
        if g.from != from || g.until < now {
            return None;
        }
        let agent = self.held.remove(id).map(|g| g.agent);
        self.spent(id, now);
        agent
    }

    /// A grant claimed, released or lapsed: the same request again (a
    /// redelivery) is refused, never granted a second operator.
    fn spent(&mut self, id: &str, now: Instant) {
        let reply = OfferReply::Refused {
            id: id.to_owned(),
            reason: Refusal::NoOperator,
        };
        self.refused.insert(id.to_owned(), (reply, now));
    }

    /// A let offer `id` go: its operator, to be released.
    pub fn release(&mut self, now: Instant, id: &str, from: &str) -> Option<u32> {
        if self.held.get(id).is_some_and(|g| g.from == from) {
            let agent = self.held.remove(id).map(|g| g.agent);
            self.spent(id, now);
            return agent;
        }
        None
    }

    /// Leases ended unclaimed: (offer, operator) to release.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(String, u32)> {
        let lapsed: Vec<String> = self
            .held
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        self.refused
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < LEASE);
        let lapsed: Vec<(String, u32)> = lapsed
            .into_iter()
            .filter_map(|id| self.held.remove(&id).map(|g| (id, g.agent)))
            .collect();
        for (id, _) in &lapsed {
            self.spent(id, now);
        }
        lapsed
    }

    /// When a lease next ends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.values().map(|g| g.until).min()
    }

    /// Operators held for other nodes now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}
