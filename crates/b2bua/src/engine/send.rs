//! What leaves the engine as SIP: requests, responses, stateless
//! rejections, Via and Contact of our own.

use super::*;

impl Engine {
    /// 64 random bits in hex: our tags and Call-IDs.
    pub(super) fn token(&mut self) -> String {
        let digits = hex_digits(self.rng.next_u64());
        // Hex digits are ASCII: never the default.
        std::str::from_utf8(&digits).unwrap_or_default().to_owned()
    }

    /// A call record's id: 32 hex digits, the wall clock's milliseconds
    /// (12) then 80 random bits (20). Ids that grow with time are appended
    /// at the right edge of the indexes on them (`cdr`'s key, the queue
    /// log's `(call, seq)`): a group commit then dirties a few pages, where
    /// random ids dirtied a leaf per call all over each index (the store
    /// thread's WAL writes and checkpoints, and past the page cache a read
    /// per insert). The random part keeps them unguessable. The prefix is
    /// an ordering key, not a timestamp to read back: the engine's wall
    /// clock is set in whole seconds and follows the monotonic one.
    pub(super) fn record_id(&mut self, now: Instant) -> String {
        let ms = (self.unix_ms_at(now).max(0) as u64) & 0xFFFF_FFFF_FFFF;
        let random = self.rng.next_u64();
        let more = self.rng.next_u64() as u16;
        // `{ms:012x}{random:016x}{more:04x}`, without the formatter.
        let mut id = [0u8; 32];
        id[..12].copy_from_slice(&hex_digits(ms)[4..]);
        id[12..28].copy_from_slice(&hex_digits(random));
        id[28..].copy_from_slice(&hex_digits(u64::from(more))[12..]);
        std::str::from_utf8(&id).unwrap_or_default().to_owned()
    }

    pub(super) fn send_stateless(&mut self, flow: Flow, msg: &Message) {
        self.count_out(msg);
        self.out.push_back(Output::Transmit {
            flow,
            bytes: msg.to_bytes(),
        });
    }

    pub(super) fn reject(
        &mut self,
        flow: Flow,
        req: &Message,
        code: u16,
        reason: &'static str,
        extra: &[(&'static str, &str)],
    ) {
        self.metrics.sip_rejected.with_label_values(&[reason]).inc();
        let tag = self.token();
        let mut r = req.response(code, reason_phrase(code), Some(&tag));
        for (n, v) in extra {
            r.push(n, v);
        }
        self.send_stateless(flow, &r);
    }

    pub(super) fn respond(&mut self, now: Instant, key: &TxKey, resp: &Message) {
        self.count_out(resp);
        self.txn.respond(now, key, resp);
    }

    pub(super) fn send_request(
        &mut self,
        now: Instant,
        flow: Flow,
        req: Message,
        what: ClientRef,
    ) -> TxKey {
        self.count_out(&req);
        let key = self.txn.send_request(now, flow, req);
        self.client.insert(key.clone(), what);
        key
    }

    pub(super) fn via(&mut self, flow: Flow) -> Via {
        // Our own addresses are few (the listeners'): each one's text is
        // made once and shared by every Via that names it.
        if self.sent_by.len() >= SENT_BY_CACHE && !self.sent_by.contains_key(&flow.local) {
            self.sent_by.clear();
        }
        let sent_by = self
            .sent_by
            .entry(flow.local)
            .or_insert_with(|| flow.local.to_string().into())
            .clone();
        Via {
            transport: transport_text(flow.transport),
            sent_by,
            branch: branch(self.rng.next_u64()),
        }
    }

    /// Our Contact towards a caller: `sips:` when their INVITE asked for a
    /// `sips:` Request-URI (over TLS, precheck made sure), as RFC 5630 §4.3
    /// wants, so the dialog stays secure end to end; the flow's otherwise.
    pub(super) fn caller_contact(call: &Call) -> Value {
        call.a_contact
            .get_or_init(|| {
                let sips = call.a_leg.flow.transport == Transport::Tls
                    && call
                        .inbound()
                        .and_then(|i| i.invite.request_uri())
                        .and_then(uri::scheme)
                        .is_some_and(|s| s == Scheme::Sips);
                if sips {
                    format!("<sips:centralino@{}>", call.a_leg.flow.local).into()
                } else {
                    dialog::contact(call.a_leg.flow).into()
                }
            })
            .clone()
    }
}

/// A transport's Via token, one shared buffer each (every request the
/// node sends names one).
fn transport_text(t: Transport) -> Arc<str> {
    static TEXTS: std::sync::LazyLock<[Arc<str>; 4]> = std::sync::LazyLock::new(|| {
        [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Browser,
        ]
        .map(|t| t.as_str().into())
    });
    let i = match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Browser => 3,
    };
    TEXTS[i].clone()
}

/// A Via branch: the magic cookie and 64 random bits in hex, made with one
/// allocation (every request the node sends takes one).
pub(super) fn branch(random: u64) -> Arc<str> {
    let digits = hex_digits(random);
    // Hex digits are ASCII: never the default.
    let hex = std::str::from_utf8(&digits).unwrap_or_default();
    centralino_sip::joined(&["z9hG4bK", hex])
}

/// `{v:016x}` without the formatter (our branches, tags, Call-IDs and
/// record ids: several per call).
pub(super) fn hex_digits(v: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    digits
}

/// Most local addresses whose Via text is kept (a node listens on a few).
const SENT_BY_CACHE: usize = 64;

/// Most ACKs kept (the oldest go first): each is a few hundred bytes.
const ACKS_MOST: usize = 65_536;
/// Most other answers (forks) ACKed and hung up per INVITE kept.
const FORKS_MOST: usize = 8;

/// One kept ACK: the 2xx it answers (by its To tag), and the other
/// answers to the same INVITE (a forking proxy's) we hung up on.
struct KeptAck {
    flow: Flow,
    /// Our From (to build a fork's dialog).
    local: String,
    /// The To tag and ACK of each answer acknowledged, the answer we
    /// kept first.
    answers: Vec<(Option<String>, Vec<u8>)>,
}

/// The ACKs of 2xx answers to INVITEs whose client transaction the engine
/// forgets at the answer (session refreshes, transfers' and callbacks'
/// legs): a retransmitted 2xx, our ACK lost, gets the same ACK again
/// instead of a far end that hangs up after 32 s. Kept for 64·T1, as long
/// as the far end retransmits its 2xx (RFC 3261 §13.3.1.4), and bounded in
/// count.
pub(super) struct AckCache {
    by_key: HashMap<TxKey, KeptAck>,
    order: VecDeque<(Instant, TxKey)>,
    lasts: Duration,
}

/// What a 2xx no transaction of ours awaits gets.
pub(super) enum Reack {
    /// Nothing kept for it.
    Unknown,
    /// Its ACK again.
    Again(Flow, Vec<u8>),
    /// Another answer to an INVITE we ACKed (a fork): ACK it and hang up
    /// on it, as §13.2.2.4 wants of a UAC that keeps one dialog.
    Fork(Leg),
}

impl AckCache {
    pub(super) fn new(t1: Duration) -> Self {
        Self {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            // The far end retransmits for 64 × its own T1 (500 ms by
            // default), whatever ours is configured to.
            lasts: (64 * t1).max(Duration::from_secs(32)),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.lasts && self.order.len() <= ACKS_MOST {
                break;
            }
            self.by_key.remove(key);
            self.order.pop_front();
        }
    }

    fn keep(&mut self, now: Instant, key: TxKey, leg: &Leg, resp: &Message, bytes: Vec<u8>) {
        self.expire(now);
        let answer = (resp.to_tag.as_deref().map(str::to_owned), bytes);
        match self.by_key.get_mut(&key) {
            Some(kept) => {
                if let Some(a) = kept.answers.iter_mut().find(|a| a.0 == answer.0) {
                    *a = answer;
                } else if kept.answers.len() < FORKS_MOST {
                    kept.answers.push(answer);
                }
            }
            None => {
                let kept = KeptAck {
                    flow: leg.flow,
                    local: leg.local.clone(),
                    answers: vec![answer],
                };
                self.by_key.insert(key.clone(), kept);
                self.order.push_back((now, key));
            }
        }
        self.expire(now);
    }

    fn get(&mut self, now: Instant, resp: &Message) -> Reack {
        self.expire(now);
        let Some(kept) = self.by_key.get(&TxKey::of(resp)) else {
            return Reack::Unknown;
        };
        if let Some((_, ack)) = kept
            .answers
            .iter()
            .find(|a| a.0.as_deref() == resp.to_tag.as_deref())
        {
            return Reack::Again(kept.flow, ack.clone());
        }
        if kept.answers.len() >= FORKS_MOST {
            // A proxy forking without end: the first ones were hung up
            // on; the rest time out at the far end.
            return Reack::Unknown;
        }
        Reack::Fork(Leg::from_response(&kept.local, kept.flow, resp))
    }

    /// ACKs kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

impl Engine {
    /// ACK a 2xx to our INVITE and keep the ACK for its retransmissions
    /// (see [`AckCache`]).
    pub(super) fn send_ack_kept(&mut self, now: Instant, leg: &Leg, resp: &Message) {
        let via = self.via(leg.flow);
        let ack = leg.ack(via, resp);
        self.count_out(&ack);
        let bytes = ack.to_bytes();
        self.acks
            .keep(now, TxKey::of(resp), leg, resp, bytes.clone());
        self.out.push_back(Output::Transmit {
            flow: leg.flow,
            bytes,
        });
    }

    /// A 2xx to an INVITE no transaction of ours awaits: if we ACKed it
    /// (kept), the ACK again; another answer to the same INVITE (a fork)
    /// is ACKed and hung up on.
    pub(super) fn reack(&mut self, now: Instant, resp: &Message) -> bool {
        match self.acks.get(now, resp) {
            Reack::Unknown => false,
            Reack::Again(flow, bytes) => {
                self.metrics.sip_retransmissions.inc();
                self.out.push_back(Output::Transmit { flow, bytes });
                true
            }
            Reack::Fork(leg) => {
                self.hang_up_fork(now, leg, resp);
                true
            }
        }
    }

    /// Another dialog a 2xx to one of our INVITEs created (a forking
    /// proxy's second answer, or a refresh answered with another tag):
    /// ACKed (kept, for its retransmissions) and hung up, unless it is a
    /// dialog a call lives on, which only gets its ACK.
    pub(super) fn hang_up_fork(&mut self, now: Instant, mut leg: Leg, resp: &Message) {
        self.send_ack_kept(now, &leg, resp);
        if self.live_dialog(&leg) {
            return;
        }
        info!("another answer to an INVITE already answered: ACK and BYE");
        self.send_bye(now, &mut leg);
    }

    /// Whether a call lives on `leg`'s dialog (its Call-ID and the peer's
    /// tag): the caller's leg, the answered operator's, a transfer's.
    fn live_dialog(&self, leg: &Leg) -> bool {
        let Some(call) = (self.by_a.get(leg.call_id.as_str()))
            .or_else(|| self.by_b.get(leg.call_id.as_str()))
            .and_then(|c| self.calls.get(c))
        else {
            return false;
        };
        let tag = dialogs::tag_of(&leg.remote);
        let same = |l: &Leg| l.call_id == leg.call_id && dialogs::tag_of(&l.remote) == tag;
        same(&call.a_leg)
            || call
                .b
                .as_ref()
                .and_then(|b| b.dialog.as_ref())
                .is_some_and(same)
            || call
                .transfer
                .as_ref()
                .and_then(|t| t.dialog.as_ref())
                .is_some_and(same)
    }
}

#[cfg(test)]
mod tests {
    use super::hex_digits;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn hex_digits_are_what_the_formatter_writes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let edges = [
            0,
            1,
            0xf,
            0x10,
            u64::from(u16::MAX),
            0xFFFF_FFFF_FFFF,
            u64::MAX,
        ];
        for v in edges.into_iter().chain((0..10_000).map(|_| rng.next_u64())) {
            assert_eq!(
                std::str::from_utf8(&hex_digits(v)),
                Ok(&*format!("{v:016x}"))
            );
        }
    }
}
