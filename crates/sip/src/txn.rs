//! The transaction layer (RFC 3261 §17 with the RFC 6026 Accepted states).
//!
//! Sans-IO: feed it with [`Transactions::handle_request`],
//! [`Transactions::handle_response`] and [`Transactions::handle_timeout`];
//! send through [`Transactions::send_request`] and [`Transactions::respond`];
//! then drain [`Transactions::poll_output`] until `None` and arm a timer for
//! [`Transactions::poll_timeout`].
//!
//! ```text
//! server INVITE                         client INVITE
//!   Proceeding --2xx--> Accepted (L)      Calling (A,B) --1xx--> Proceeding
//!       |                  | ACK: stop G     |   \--2xx--> Accepted (M)
//!    300-699               v                 300-699: ACK --> Completed (D)
//!       v             Terminated             Timer B --> Terminated + Timeout
//!   Completed (G,H) --ACK--> Confirmed (I) --> Terminated
//!
//! server non-INVITE                     client non-INVITE
//!   Trying -1xx-> Proceeding -final-> Completed (J) -> Terminated
//!                                       Trying (E,F) -1xx-> Proceeding -final-> Completed (K)
//! ```
//!
//! Retransmissions run on unreliable transports only; on reliable ones timers
//! D, I, J and K are zero (RFC 3261 §17.1.2.2, §17.2.2). In the server's
//! Accepted state this layer also retransmits the 2xx until the ACK arrives
//! (the TU duty of §13.3.1.4), and reports [`TxOutput::NoAck`] when it never
//! does, so the dialog can be torn down with BYE.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::OwnKeys;
use crate::message::{Message, Method, StartLine, Transport, Value};
use crate::segmap::SegMap;

/// Where a message came from or goes to: the transport, the peer and, on
/// streams, the connection it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// UDP, TCP or TLS.
    pub transport: Transport,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Our socket's address (the listener it came in on or leaves from).
    pub local: SocketAddr,
    /// The connection id on streams (0 for datagrams).
    pub conn: u64,
}

/// RFC 3261 timer values.
#[derive(Clone, Copy, Debug)]
pub struct TimerConfig {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Maximum time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Identifies a transaction: the branch, the sent-by and the method it matches on (an ACK
/// matches its INVITE; a CANCEL is a transaction of its own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    /// Via branch (shared with the message's [`crate::Via`]).
    pub branch: Arc<str>,
    /// Via sent-by (RFC 3261 §17.2.3 matches on it too).
    pub sent_by: Arc<str>,
    /// INVITE, CANCEL, or the non-INVITE method.
    pub method: Method,
}

impl TxKey {
    /// The key of a message, as a server or client would match it.
    pub fn of(msg: &Message) -> Self {
        let method = match msg.method() {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        Self {
            branch: msg.via.branch.clone(),
            sent_by: msg.via.sent_by.clone(),
            method,
        }
    }
}

/// What the transaction layer asks its user to do or tells it.
#[derive(Debug)]
pub enum TxOutput {
    /// Send these bytes.
    Transmit {
        /// Destination.
        flow: Flow,
        /// The serialised message.
        bytes: Vec<u8>,
    },
    /// A new request for the TU (a new server transaction, or an ACK for a 2xx).
    Request {
        /// Where it came from.
        flow: Flow,
        /// The request.
        msg: Box<Message>,
    },
    /// A response for a client transaction (2xx retransmissions included).
    Response {
        /// The client transaction.
        key: TxKey,
        /// The response.
        msg: Box<Message>,
    },
    /// Timer B or F fired: the request got no final response.
    Timeout {
        /// The client transaction.
        key: TxKey,
    },
    /// A 2xx to an INVITE was never acknowledged (Timer L, 64·T1).
    NoAck {
        /// The server transaction.
        key: TxKey,
        /// Its Call-ID, for the dialog layer.
        call_id: String,
    },
}

/// Counters the driver exports as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxStats {
    /// Retransmissions sent.
    pub retransmissions: u64,
    /// Retransmitted requests absorbed by a server transaction.
    pub absorbed: u64,
    /// Responses that matched no client transaction.
    pub stray_responses: u64,
    /// Merged requests refused with 482.
    pub merged: u64,
    /// Client transactions that timed out.
    pub timeouts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

struct ServerTx {
    /// Its key, shared with its timers and tables (one allocation per
    /// transaction, not two strings per timer armed).
    key: Arc<TxKey>,
    state: SState,
    flow: Flow,
    // No copy of the request: the TU owns it (and answers from it), a
    // retransmission is absorbed on the key alone, and cloning every
    // request with its headers was an allocation per header on the
    // engine's thread.
    /// The request's Call-ID and CSeq number (its 2xx's ACK is matched on
    /// them).
    dialog: (Value, u32),
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    merge_key: Option<(Value, Value, u32)>,
}

struct ClientTx {
    /// As [`ServerTx::key`].
    key: Arc<TxKey>,
    state: CState,
    flow: Flow,
    /// The request's CSeq number: a response naming another is no answer
    /// to it, whatever its branch (RFC 3261 §8.1.3.3: the CSeq is the
    /// request's, copied).
    cseq: u32,
    /// The request, while it may be retransmitted, cancelled, answered by
    /// a non-2xx (ACK) or challenged; dropped with `bytes` once a 2xx
    /// (INVITE) or a final response (non-INVITE) leaves nothing to send.
    request: Option<Box<Message>>,
    bytes: Vec<u8>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Server,
    Client,
}

/// A timer armed for a transaction: ordered by when it fires (then side
/// and arming order; the id is unique, so keys are never compared).
struct Timer {
    at: Instant,
    side: Side,
    id: u64,
    key: Arc<TxKey>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.side, self.id).cmp(&(other.at, other.side, other.id))
    }
}

/// All transactions of one SIP endpoint.
pub struct Transactions {
    cfg: TimerConfig,
    /// Segmented, as are the tables below (see `segmap`): they hold every
    /// transaction of the last 32 s, and doubling a `HashMap` of 230,000
    /// such entries at once took 110 ms (a standalone measure on the VM),
    /// all of it on the engine's thread.
    server: SegMap<Arc<TxKey>, ServerTx>,
    /// Live server transactions per source IP (canonical form), kept in
    /// step with `server` on insert and in [`Self::remove_server`], the one
    /// removal path; an address leaves the map when its count reaches zero,
    /// so the map is never larger than `server`. Lets the driver refuse a
    /// source that holds too many (each non-INVITE one lives ~32 s after
    /// its final response on UDP) before it creates more, in O(1).
    per_source: HashMap<IpAddr, usize>,
    /// Keyed by our own branches (random, never a peer's choice): the
    /// faster hash (see `OwnKeys`).
    client: SegMap<Arc<TxKey>, ClientTx, OwnKeys>,
    /// (Call-ID, From tag, CSeq) of server transactions without To tag, for
    /// merged-request detection (§8.2.2.2).
    merge: SegMap<(Value, Value, u32), Arc<TxKey>>,
    /// (Call-ID, CSeq) of INVITEs in Accepted whose 2xx still retransmits.
    awaiting_ack: SegMap<(Value, u32), Arc<TxKey>>,
    /// Every armed timer with its transaction's key: no table from timer
    /// to key (a hash insert and remove, and two strings cloned, per timer
    /// armed were a twentieth of the engine thread under call load).
    timers: BinaryHeap<Reverse<Timer>>,
    next_timer: u64,
    out: VecDeque<TxOutput>,
    stats: TxStats,
}

impl Transactions {
    /// A layer with these timer values.
    pub fn new(cfg: TimerConfig) -> Self {
        Self {
            cfg,
            server: SegMap::default(),
            per_source: HashMap::new(),
            client: SegMap::default(),
            merge: SegMap::default(),
            awaiting_ack: SegMap::default(),
            timers: BinaryHeap::new(),
            next_timer: 0,
            out: VecDeque::new(),
            stats: TxStats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Live server and client transactions.
    pub fn len(&self) -> (usize, usize) {
        (self.server.len(), self.client.len())
    }

    /// Live server transactions created by requests from `ip` (any port
    /// or transport; an IPv4-mapped IPv6 address counts as the IPv4 one).
    /// The driver checks it before passing a new request from `ip` to
    /// [`Self::handle_request`], which would create one more.
    pub fn server_transactions_from(&self, ip: IpAddr) -> usize {
        self.per_source
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.client.is_empty()
    }

    /// The next output, until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<TxOutput> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    fn arm(&mut self, at: Instant, side: Side, key: Arc<TxKey>) {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timers.push(Reverse(Timer { at, side, id, key }));
    }

    /// A request from the network, already through the guard.
    pub fn handle_request(&mut self, now: Instant, flow: Flow, msg: Box<Message>) {
        let key = TxKey::of(&msg);
        if *msg.method() == Method::Ack {
            self.handle_ack(now, flow, key, msg);
            return;
        }
        if let Some(tx) = self.server.get_mut(&key) {
            self.stats.absorbed += 1;
            if let Some(bytes) = &tx.last_response
                && (!matches!(tx.state, SState::Accepted) || !flow.transport.is_reliable())
            {
                self.out.push_back(TxOutput::Transmit {
                    flow: tx.flow,
                    bytes: bytes.clone(),
                });
            }
            return;
        }
        let merge_key = match (&msg.to_tag, &msg.from_tag) {
            // Detached: kept while the transaction lives (32 s for a
            // non-INVITE on UDP), never holding the request's buffer.
            (None, Some(ft)) => Some((msg.call_id.detached(), ft.detached(), msg.cseq)),
            _ => None,
        };
        let key = Arc::new(key);
        if let Some(mk) = &merge_key {
            if let Some(other) = self.merge.get(mk)
                && other.method == key.method
                && **other != *key
            {
                self.stats.merged += 1;
                let r = msg.response(482, "Loop Detected", Some("merged"));
                self.out.push_back(TxOutput::Transmit {
                    flow,
                    bytes: r.to_bytes(),
                });
                return;
            }
            self.merge.insert(mk.clone(), key.clone());
        }
        let state = if key.method == Method::Invite {
            SState::Proceeding
        } else {
            SState::Trying
        };
        let replaced = self.server.insert(
            key.clone(),
            ServerTx {
                key,
                state,
                flow,
                dialog: (msg.call_id.detached(), msg.cseq),
                last_response: None,
                retransmit_at: None,
                interval: self.cfg.t1,
                timeout_at: None,
                merge_key,
            },
        );
        // Never `Some` (a live key was absorbed above); counted anyway so
        // the per-source count stays exact whatever happens here.
        if let Some(old) = replaced {
            self.uncount_source(old.flow);
        }
        *self
            .per_source
            .entry(flow.remote.ip().to_canonical())
            .or_insert(0) += 1;
        self.out.push_back(TxOutput::Request { flow, msg });
    }

    fn handle_ack(&mut self, now: Instant, flow: Flow, key: TxKey, msg: Box<Message>) {
        // The ACK of a non-2xx is hop by hop: from where the INVITE came
        // (a stranger's ACK with its branch must not stop our response).
        if let Some(tx) = self
            .server
            .get_mut(&key)
            .filter(|tx| tx.flow.remote.ip() == flow.remote.ip())
        {
            if tx.state == SState::Completed {
                tx.state = SState::Confirmed;
                tx.retransmit_at = None;
                let wait = if tx.flow.transport.is_reliable() {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                tx.timeout_at = Some(now + wait);
                let shared = tx.key.clone();
                self.arm(now + wait, Side::Server, shared);
                return;
            }
            if tx.state == SState::Confirmed {
                self.stats.absorbed += 1;
                return;
            }
        }
        // An ACK for a 2xx: a request of its own, in the dialog. Only the
        // TU knows whether it is the dialog's (its tags, its peer, which
        // may be another address of the same carrier), so the 2xx goes on
        // until it says so ([`Self::acknowledged`]).
        self.out.push_back(TxOutput::Request { flow, msg });
    }

    /// The TU took an ACK as its dialog's: the 2xx to the INVITE with this
    /// Call-ID and CSeq number is not retransmitted any more, and no
    /// [`TxOutput::NoAck`] comes for it (RFC 3261 §13.3.1.4).
    pub fn acknowledged(&mut self, call_id: &Value, cseq: u32) {
        if let Some(k) = self.awaiting_ack.remove(&(call_id.clone(), cseq))
            && let Some(tx) = self.server.get_mut(&*k)
        {
            tx.retransmit_at = None;
        }
    }

    /// Sends a response within the server transaction `key` (the request's
    /// [`TxKey::of`]). Responses to unknown transactions are dropped.
    pub fn respond(&mut self, now: Instant, key: &TxKey, resp: &Message) {
        let code = resp.code();
        let Some(tx) = self.server.get_mut(key) else {
            return;
        };
        if matches!(
            tx.state,
            SState::Completed | SState::Confirmed | SState::Accepted
        ) {
            return;
        }
        let bytes = resp.to_bytes();
        self.out.push_back(TxOutput::Transmit {
            flow: tx.flow,
            bytes: bytes.clone(),
        });
        tx.last_response = Some(bytes);
        let reliable = tx.flow.transport.is_reliable();
        let t1 = self.cfg.t1;
        if code < 200 {
            if tx.state == SState::Trying {
                tx.state = SState::Proceeding;
            }
            return;
        }
        let shared = tx.key.clone();
        if key.method == Method::Invite {
            let timeout = now + 64 * t1;
            tx.timeout_at = Some(timeout);
            tx.interval = t1;
            if (200..300).contains(&code) {
                tx.state = SState::Accepted;
                self.awaiting_ack.insert(tx.dialog.clone(), shared.clone());
            } else {
                tx.state = SState::Completed;
            }
            if !reliable {
                tx.retransmit_at = Some(now + t1);
                self.arm(now + t1, Side::Server, shared.clone());
            }
            self.arm(timeout, Side::Server, shared);
        } else {
            tx.state = SState::Completed;
            let wait = if reliable { Duration::ZERO } else { 64 * t1 };
            tx.timeout_at = Some(now + wait);
            self.arm(now + wait, Side::Server, shared);
        }
    }

    /// Whether the server transaction `key` exists (answered or not).
    pub fn has_server(&self, key: &TxKey) -> bool {
        self.server.contains_key(key)
    }

    /// Whether the server transaction has sent a final response.
    pub fn server_is_final(&self, key: &TxKey) -> bool {
        self.server
            .get(key)
            .is_none_or(|t| !matches!(t.state, SState::Trying | SState::Proceeding))
    }

    /// Starts a client transaction. The request's top Via carries a fresh branch.
    pub fn send_request(&mut self, now: Instant, flow: Flow, req: Message) -> TxKey {
        let key = TxKey::of(&req);
        let bytes = req.to_bytes();
        self.out.push_back(TxOutput::Transmit {
            flow,
            bytes: bytes.clone(),
        });
        let t1 = self.cfg.t1;
        let reliable = flow.transport.is_reliable();
        let timeout = now + 64 * t1;
        let retransmit_at = (!reliable).then_some(now + t1);
        let state = if key.method == Method::Invite {
            CState::Calling
        } else {
            CState::Proceeding
        };
        // Non-INVITE starts in Trying; the state only matters for E's cap,
        // tracked by `interval`, so Calling/Proceeding suffice here.
        let state = if key.method == Method::Invite {
            state
        } else {
            CState::Calling
        };
        let shared = Arc::new(key.clone());
        self.client.insert(
            shared.clone(),
            ClientTx {
                key: shared.clone(),
                state,
                flow,
                cseq: req.cseq,
                request: Some(Box::new(req)),
                bytes,
                retransmit_at,
                interval: t1,
                timeout_at: Some(timeout),
            },
        );
        if let Some(at) = retransmit_at {
            self.arm(at, Side::Client, shared.clone());
        }
        self.arm(timeout, Side::Client, shared);
        key
    }

    /// The flow a client transaction's request went out on (where its
    /// answers may come from).
    pub fn client_flow(&self, key: &TxKey) -> Option<Flow> {
        self.client.get(key).map(|t| t.flow)
    }

    /// The request of a client transaction (to build its CANCEL).
    pub fn client_request(&self, key: &TxKey) -> Option<&Message> {
        self.client.get(key).and_then(|t| t.request.as_deref())
    }

    /// A response from the network.
    pub fn handle_response(&mut self, now: Instant, msg: Box<Message>) {
        let key = TxKey::of(&msg);
        let code = msg.code();
        let Some(tx) = self.client.get_mut(&key).filter(|tx| tx.cseq == msg.cseq) else {
            self.stats.stray_responses += 1;
            return;
        };
        let reliable = tx.flow.transport.is_reliable();
        if key.method == Method::Invite {
            match (tx.state, code) {
                (CState::Calling | CState::Proceeding, 100..=199) => {
                    tx.state = CState::Proceeding;
                    tx.retransmit_at = None;
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                (CState::Calling | CState::Proceeding, 200..=299) => {
                    tx.state = CState::Accepted;
                    tx.retransmit_at = None;
                    // Only 2xx retransmissions are left to absorb: the ACK
                    // is the dialog's.
                    tx.request = None;
                    tx.bytes = Vec::new();
                    let at = now + 64 * self.cfg.t1;
                    tx.timeout_at = Some(at);
                    let shared = tx.key.clone();
                    self.arm(at, Side::Client, shared);
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                (CState::Accepted, 200..=299) => {
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                (CState::Calling | CState::Proceeding, _) => {
                    // Present in these states: dropped only on leaving them.
                    let ack = tx
                        .request
                        .as_deref()
                        .map(|r| ack_for(r, &msg))
                        .unwrap_or_default();
                    self.out.push_back(TxOutput::Transmit {
                        flow: tx.flow,
                        bytes: ack.clone(),
                    });
                    tx.bytes = ack;
                    tx.state = CState::Completed;
                    tx.retransmit_at = None;
                    let wait = if reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    tx.timeout_at = Some(now + wait);
                    let shared = tx.key.clone();
                    self.arm(now + wait, Side::Client, shared);
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                (CState::Completed, 300..=699) => {
                    self.stats.retransmissions += 1;
                    self.out.push_back(TxOutput::Transmit {
                        flow: tx.flow,
                        bytes: tx.bytes.clone(),
                    });
                }
                _ => {}
            }
        } else {
            match (tx.state, code) {
                (CState::Calling | CState::Proceeding, 100..=199) => {
                    tx.state = CState::Proceeding;
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                (CState::Calling | CState::Proceeding, _) => {
                    tx.state = CState::Completed;
                    tx.retransmit_at = None;
                    tx.bytes = Vec::new();
                    let wait = if reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                    tx.timeout_at = Some(now + wait);
                    let shared = tx.key.clone();
                    self.arm(now + wait, Side::Client, shared);
                    self.out.push_back(TxOutput::Response { key, msg });
                }
                _ => {}
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Some(Reverse(Timer { at, side, key, .. })) = self.timers.pop() else {
                break;
            };
            match side {
                Side::Server => self.server_timer(now, at, key),
                Side::Client => self.client_timer(now, at, key),
            }
        }
    }

    fn server_timer(&mut self, now: Instant, at: Instant, key: Arc<TxKey>) {
        let t2 = self.cfg.t2;
        let Some(tx) = self.server.get_mut(&*key) else {
            return;
        };
        if tx.retransmit_at == Some(at) {
            if let Some(bytes) = &tx.last_response {
                self.stats.retransmissions += 1;
                self.out.push_back(TxOutput::Transmit {
                    flow: tx.flow,
                    bytes: bytes.clone(),
                });
            }
            tx.interval = (tx.interval * 2).min(t2);
            let next = now + tx.interval;
            tx.retransmit_at = Some(next);
            self.arm(next, Side::Server, key);
        } else if tx.timeout_at == Some(at) {
            let tx = self.remove_server(&key);
            if let Some(tx) = tx
                && tx.state == SState::Accepted
                && tx.retransmit_at.is_some()
            {
                drop(tx.key);
                self.out.push_back(TxOutput::NoAck {
                    key: Arc::unwrap_or_clone(key),
                    call_id: tx.dialog.0.to_string(),
                });
            }
        }
    }

    /// Takes a server transaction out of every table. The only way one
    /// leaves `server`, so `per_source` is decremented here alone.
    fn remove_server(&mut self, key: &TxKey) -> Option<ServerTx> {
        let tx = self.server.remove(key)?;
        self.uncount_source(tx.flow);
        if let Some(mk) = &tx.merge_key
            && self.merge.get(mk).is_some_and(|k| **k == *key)
        {
            self.merge.remove(mk);
        }
        if self
            .awaiting_ack
            .get(&tx.dialog)
            .is_some_and(|k| **k == *key)
        {
            self.awaiting_ack.remove(&tx.dialog);
        }
        Some(tx)
    }

    /// One server transaction from `flow`'s address fewer; the address is
    /// forgotten at zero, so the map stays as small as the live set.
    fn uncount_source(&mut self, flow: Flow) {
        let ip = flow.remote.ip().to_canonical();
        match self.per_source.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.per_source.remove(&ip);
            }
            // Every transaction was counted when inserted: unreachable.
            // Saturating at "absent" rather than panicking in release.
            None => debug_assert!(false, "server transaction was never counted"),
        }
    }

    fn client_timer(&mut self, now: Instant, at: Instant, key: Arc<TxKey>) {
        let (t2, invite) = (self.cfg.t2, key.method == Method::Invite);
        let Some(tx) = self.client.get_mut(&*key) else {
            return;
        };
        if tx.retransmit_at == Some(at) {
            self.stats.retransmissions += 1;
            self.out.push_back(TxOutput::Transmit {
                flow: tx.flow,
                bytes: tx.bytes.clone(),
            });
            // Timer A doubles without bound; Timer E is capped at T2, and
            // stays at T2 once a provisional response arrived.
            tx.interval = if invite {
                tx.interval * 2
            } else if tx.state == CState::Proceeding {
                t2
            } else {
                (tx.interval * 2).min(t2)
            };
            let next = now + tx.interval;
            tx.retransmit_at = Some(next);
            self.arm(next, Side::Client, key);
        } else if tx.timeout_at == Some(at) {
            let timed_out = matches!(tx.state, CState::Calling | CState::Proceeding);
            self.client.remove(&*key);
            if timed_out {
                self.stats.timeouts += 1;
                self.out.push_back(TxOutput::Timeout {
                    key: Arc::unwrap_or_clone(key),
                });
            }
        }
    }
}

/// The ACK for a non-2xx final response (§17.1.1.3): same branch, Request-URI,
/// Call-ID, From and CSeq number as the INVITE, To from the response.
fn ack_for(invite: &Message, resp: &Message) -> Vec<u8> {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let mut ack = Message {
        start: StartLine::Request {
            method: Method::Ack,
            uri,
        },
        headers: Vec::with_capacity(6),
        body: Vec::new(),
        call_id: invite.call_id.clone(),
        cseq: invite.cseq,
        cseq_method: Method::Ack,
        from_tag: invite.from_tag.clone(),
        to_tag: resp.to_tag.clone(),
        via: invite.via.clone(),
        max_forwards: Some(70),
    };
    for h in &invite.headers {
        match &*h.name {
            "Via" | "From" | "Call-ID" | "Route" | "Max-Forwards" => ack.headers.push(h.clone()),
            _ => {}
        }
    }
    if let Some(to) = resp.headers.iter().find(|h| h.name == "To") {
        ack.headers.push(to.clone());
    }
    ack.push("CSeq", &format!("{} ACK", invite.cseq));
    ack.to_bytes()
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;
    use crate::guard::{Framed, Limits, parse_datagram};

    fn parse(s: &str) -> Box<Message> {
        match parse_datagram(s.as_bytes(), &Limits::default()).unwrap() {
            Framed::Message(m) => m,
            Framed::Keepalive => panic!("keepalive"),
        }
    }

    fn flow(transport: Transport) -> Flow {
        Flow {
            transport,
            remote: "127.0.0.1:5070".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: 0,
        }
    }

    fn invite(branch: &str) -> Box<Message> {
        parse(&format!(
            "INVITE sip:100@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch={branch}\r\n\
From: <sip:a@h>;tag=f1\r\nTo: <sip:100@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
        ))
    }

    fn transmits(tx: &mut Transactions) -> usize {
        let mut n = 0;
        while let Some(o) = tx.poll_output() {
            if matches!(o, TxOutput::Transmit { .. }) {
                n += 1;
            }
        }
        n
    }

    /// Drives the layer through virtual time, recording when it transmitted.
    fn run_until(tx: &mut Transactions, start: Instant, end: Instant) -> (Vec<Duration>, bool) {
        let mut sent = Vec::new();
        let mut timed_out = false;
        while let Some(t) = tx.poll_timeout() {
            if t > end {
                break;
            }
            tx.handle_timeout(t);
            while let Some(o) = tx.poll_output() {
                match o {
                    TxOutput::Transmit { .. } => sent.push(t - start),
                    TxOutput::Timeout { .. } => timed_out = true,
                    _ => {}
                }
            }
        }
        (sent, timed_out)
    }

    #[test]
    fn timer_a_doubles_until_timer_b_at_64_t1() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let req = *invite("z9hG4bKa");
        tx.send_request(t0, flow(Transport::Udp), req);
        assert_eq!(transmits(&mut tx), 1);
        let (sent, timed_out) = run_until(&mut tx, t0, t0 + Duration::from_secs(40));
        let secs: Vec<f64> = sent.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
        assert!(timed_out);
        assert!(tx.is_empty());
    }

    #[test]
    fn timer_e_caps_at_t2_and_f_fires_at_32s() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let mut req = *invite("z9hG4bKe");
        req.start = StartLine::Request {
            method: Method::Options,
            uri: "sip:h".into(),
        };
        req.cseq_method = Method::Options;
        tx.send_request(t0, flow(Transport::Udp), req);
        let _ = transmits(&mut tx);
        let (sent, timed_out) = run_until(&mut tx, t0, t0 + Duration::from_secs(40));
        let gaps: Vec<f64> = sent
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        assert_eq!(sent[0], Duration::from_millis(500));
        assert!(gaps.iter().all(|g| *g <= 4.0));
        assert!(gaps.ends_with(&[4.0, 4.0]));
        assert!(timed_out);
    }

    #[test]
    fn no_retransmissions_on_tcp() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        tx.send_request(t0, flow(Transport::Tcp), *invite("z9hG4bKt"));
        let _ = transmits(&mut tx);
        let (sent, timed_out) = run_until(&mut tx, t0, t0 + Duration::from_secs(40));
        assert!(sent.is_empty());
        assert!(timed_out);
    }

    #[test]
    fn server_absorbs_retransmission_and_resends_last_response() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bKs");
        tx.handle_request(t0, flow(Transport::Udp), inv.clone());
        assert!(matches!(tx.poll_output(), Some(TxOutput::Request { .. })));
        let key = TxKey::of(&inv);
        tx.respond(t0, &key, &inv.response(180, "Ringing", Some("tt")));
        assert_eq!(transmits(&mut tx), 1);
        tx.handle_request(t0, flow(Transport::Udp), inv.clone());
        assert_eq!(transmits(&mut tx), 1);
        assert_eq!(tx.stats().absorbed, 1);
    }

    #[test]
    fn non_2xx_final_retransmits_with_g_until_ack() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bKg");
        tx.handle_request(t0, flow(Transport::Udp), inv.clone());
        let _ = tx.poll_output();
        let key = TxKey::of(&inv);
        tx.respond(t0, &key, &inv.response(486, "Busy Here", Some("tt")));
        let _ = transmits(&mut tx);
        let (sent, _) = run_until(&mut tx, t0, t0 + Duration::from_millis(3600));
        let secs: Vec<f64> = sent.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.5, 1.5, 3.5]);
        let ack = parse(
            "ACK sip:100@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch=z9hG4bKg\r\n\
From: <sip:a@h>;tag=f1\r\nTo: <sip:100@h>;tag=tt\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\n\r\n",
        );
        // The same ACK from another address is not the peer's: handed to
        // the TU as any ACK would be, the 486 goes on.
        let stranger = Flow {
            remote: "192.0.2.66:5070".parse().unwrap(),
            ..flow(Transport::Udp)
        };
        let at = t0 + Duration::from_millis(3600);
        tx.handle_request(at, stranger, ack.clone());
        assert!(matches!(tx.poll_output(), Some(TxOutput::Request { .. })));
        let (sent, _) = run_until(&mut tx, t0, t0 + Duration::from_millis(7600));
        let secs: Vec<f64> = sent.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![7.5], "G goes on");
        tx.handle_request(t0 + Duration::from_millis(7600), flow(Transport::Udp), ack);
        assert!(tx.poll_output().is_none(), "ACK for non-2xx is absorbed");
        let (sent, _) = run_until(&mut tx, t0, t0 + Duration::from_secs(60));
        assert!(sent.is_empty());
        assert!(tx.is_empty());
    }

    #[test]
    fn unacknowledged_2xx_reports_no_ack_after_64_t1() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bKh");
        tx.handle_request(t0, flow(Transport::Udp), inv.clone());
        let _ = tx.poll_output();
        tx.respond(t0, &TxKey::of(&inv), &inv.response(200, "OK", Some("tt")));
        // Answered: the transaction lives on.
        assert!(tx.has_server(&TxKey::of(&inv)));
        assert!(tx.server_is_final(&TxKey::of(&inv)));
        let mut no_ack = None;
        while let Some(t) = tx.poll_timeout() {
            tx.handle_timeout(t);
            while let Some(o) = tx.poll_output() {
                if let TxOutput::NoAck { call_id, .. } = o {
                    no_ack = Some((t - t0, call_id));
                }
            }
        }
        assert_eq!(
            no_ack,
            Some((Duration::from_secs(32), inv.call_id.to_string()))
        );
    }

    #[test]
    fn what_a_server_transaction_keeps_holds_no_request_buffer() {
        let mut tx = Transactions::new(TimerConfig::default());
        let inv = invite("z9hG4bKkeep");
        let (call_id, from_tag) = (inv.call_id.clone(), inv.from_tag.clone().unwrap());
        assert!(call_id.shares_buffer(&from_tag), "parsed: one buffer");
        tx.handle_request(Instant::now(), flow(Transport::Udp), inv);
        let server = tx.server.values().next().unwrap();
        assert_eq!(server.dialog.0, call_id);
        assert!(!server.dialog.0.shares_buffer(&call_id));
        let (c, f, _) = server.merge_key.as_ref().unwrap();
        assert_eq!((c, f), (&call_id, &from_tag));
        assert!(!c.shares_buffer(&call_id) && !f.shares_buffer(&call_id));
    }

    #[test]
    fn merged_request_gets_482() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        tx.handle_request(t0, flow(Transport::Udp), invite("z9hG4bK1"));
        let _ = tx.poll_output();
        tx.handle_request(t0, flow(Transport::Udp), invite("z9hG4bK2"));
        match tx.poll_output() {
            Some(TxOutput::Transmit { bytes, .. }) => assert!(bytes.starts_with(b"SIP/2.0 482")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_acks_non_2xx_and_delivers_once() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let inv = invite("z9hG4bKc");
        let key = tx.send_request(t0, flow(Transport::Udp), *inv.clone());
        let _ = transmits(&mut tx);
        let resp = inv.response(486, "Busy Here", Some("bb"));
        // The branch of our INVITE with another CSeq number: no answer to
        // it (dropped as stray).
        let mut forged = resp.clone();
        forged.cseq = u32::MAX;
        tx.handle_response(t0, Box::new(forged));
        assert!(tx.poll_output().is_none(), "a response with another CSeq");
        tx.handle_response(t0, Box::new(resp.clone()));
        let mut acks = 0;
        let mut delivered = 0;
        while let Some(o) = tx.poll_output() {
            match o {
                TxOutput::Transmit { bytes, .. } => {
                    assert!(bytes.starts_with(b"ACK sip:100@h SIP/2.0"));
                    acks += 1;
                }
                TxOutput::Response { key: k, .. } => {
                    assert_eq!(k, key);
                    delivered += 1;
                }
                _ => {}
            }
        }
        assert_eq!((acks, delivered), (1, 1));
        tx.handle_response(t0, Box::new(resp));
        assert_eq!(
            transmits(&mut tx),
            1,
            "retransmitted final is re-ACKed, not delivered"
        );
    }

    proptest::proptest! {
        /// Any interleaving of retransmitted requests and timer firings
        /// within a transaction's lifetime (under 32 s here: later copies
        /// are new requests) delivers each request to the TU exactly once,
        /// and every transaction is gone once its timers have run.
        #[test]
        fn each_request_reaches_the_tu_once(
            sends in proptest::collection::vec((0u8..6, 0u32..500), 1..60)
        ) {
            let mut tx = Transactions::new(TimerConfig::default());
            let t0 = Instant::now();
            let mut delivered = HashMap::new();
            let mut now = t0;
            for (which, dt) in sends {
                now += Duration::from_millis(u64::from(dt));
                tx.handle_timeout(now);
                let req = if which % 2 == 0 {
                    invite(&format!("z9hG4bKp{which}"))
                } else {
                    let mut m = invite(&format!("z9hG4bKp{which}"));
                    m.start = StartLine::Request { method: Method::Options, uri: "sip:h".into() };
                    m.cseq_method = Method::Options;
                    m.call_id = format!("o{which}").into();
                    m
                };
                let key = TxKey::of(&req);
                tx.handle_request(now, flow(Transport::Udp), req.clone());
                while let Some(o) = tx.poll_output() {
                    if let TxOutput::Request { msg, .. } = o {
                        *delivered.entry(TxKey::of(&msg)).or_insert(0) += 1;
                        let resp = msg.response(if which % 2 == 0 { 486 } else { 200 }, "X", Some("t"));
                        tx.respond(now, &key, &resp);
                    }
                }
            }
            proptest::prop_assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
            let end = now + Duration::from_secs(64);
            while let Some(t) = tx.poll_timeout() {
                if t > end { break; }
                tx.handle_timeout(t);
                while tx.poll_output().is_some() {}
            }
            proptest::prop_assert!(tx.is_empty());
        }
    }

    fn flow_from(ip: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            remote: SocketAddr::new(ip.parse().unwrap(), 5070),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: 0,
        }
    }

    fn options(branch: &str) -> Box<Message> {
        let mut m = invite(branch);
        m.start = StartLine::Request {
            method: Method::Options,
            uri: "sip:h".into(),
        };
        m.cseq_method = Method::Options;
        m.call_id = format!("o-{branch}").into();
        m
    }

    /// The per-source counts agree with the live server transactions, and
    /// no address is kept at zero.
    fn assert_counts_exact(tx: &Transactions) {
        let mut live: HashMap<IpAddr, usize> = HashMap::new();
        for t in tx.server.values() {
            *live.entry(t.flow.remote.ip().to_canonical()).or_insert(0) += 1;
        }
        assert_eq!(tx.per_source, live);
    }

    #[test]
    fn server_transactions_are_counted_per_source_until_their_timers_end() {
        let mut tx = Transactions::new(TimerConfig::default());
        let t0 = Instant::now();
        let (a, b) = ("192.0.2.21", "198.51.100.66");
        for i in 0..3 {
            let req = options(&format!("z9hG4bKa{i}"));
            tx.handle_request(t0, flow_from(a), req.clone());
            tx.respond(t0, &TxKey::of(&req), &req.response(200, "OK", Some("t")));
            // A retransmission is absorbed: no new state, no new count.
            tx.handle_request(t0, flow_from(a), req);
        }
        let inv = invite("z9hG4bKb");
        tx.handle_request(t0, flow_from(b), inv.clone());
        while tx.poll_output().is_some() {}
        assert_eq!(tx.server_transactions_from(a.parse().unwrap()), 3);
        assert_eq!(
            tx.server_transactions_from("::ffff:192.0.2.21".parse().unwrap()),
            3
        );
        assert_eq!(tx.server_transactions_from(b.parse().unwrap()), 1);
        assert_counts_exact(&tx);
        // Timer J (64·T1 on UDP) ends the OPTIONS; the INVITE ends after
        // its 486, ACK and Timer I.
        tx.respond(
            t0,
            &TxKey::of(&inv),
            &inv.response(486, "Busy Here", Some("t")),
        );
        let ack = parse(
            "ACK sip:100@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch=z9hG4bKb\r\n\
From: <sip:a@h>;tag=f1\r\nTo: <sip:100@h>;tag=t\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\n\r\n",
        );
        tx.handle_request(t0, flow_from(b), ack);
        let _ = run_until(&mut tx, t0, t0 + Duration::from_secs(31));
        assert_eq!(tx.server_transactions_from(a.parse().unwrap()), 3);
        assert_eq!(tx.server_transactions_from(b.parse().unwrap()), 0);
        let _ = run_until(&mut tx, t0, t0 + Duration::from_secs(33));
        assert_eq!(tx.server_transactions_from(a.parse().unwrap()), 0);
        assert!(tx.per_source.is_empty() && tx.is_empty());
    }

    proptest::proptest! {
        /// Whatever requests (new, retransmitted, merged), responses, ACKs
        /// and timer firings come in, from whichever addresses, the
        /// per-source counts equal the live server transactions after every
        /// step (no leak, no underflow), and are all gone once every
        /// transaction has been answered and its timers have run.
        #[test]
        fn per_source_counts_follow_the_live_server_transactions(
            steps in proptest::collection::vec((0u8..5, 0usize..3, 0u8..8, 0u32..40_000), 1..80)
        ) {
            const IPS: [&str; 3] = ["192.0.2.21", "198.51.100.66", "::ffff:192.0.2.21"];
            let mut tx = Transactions::new(TimerConfig::default());
            let t0 = Instant::now();
            let mut now = t0;
            // The requests as the TU keeps them, to answer.
            let mut sent: HashMap<TxKey, Box<Message>> = HashMap::new();
            for (op, ip, branch, arg) in steps {
                let flow = flow_from(IPS[ip]);
                match op {
                    0 | 1 => {
                        // Same Call-ID, From tag and CSeq: other INVITE
                        // branches merge (482).
                        let req = if op == 0 {
                            options(&format!("z9hG4bKo{branch}"))
                        } else {
                            invite(&format!("z9hG4bKi{branch}"))
                        };
                        sent.insert(TxKey::of(&req), req.clone());
                        tx.handle_request(now, flow, req);
                    }
                    2 => {
                        let mut keys: Vec<TxKey> = tx.server.keys().map(|k| TxKey::clone(k)).collect();
                        keys.sort_by_key(|k| (k.branch.clone(), k.method.as_str().to_owned()));
                        if !keys.is_empty() {
                            let key = &keys[arg as usize % keys.len()];
                            // An answered one takes no other answer.
                            if let Some(req) = sent.get(key) {
                                let code = [100, 180, 200, 486][(arg / 7) as usize % 4];
                                tx.respond(now, key, &req.response(code, "X", Some("t")));
                            }
                        }
                    }
                    3 => {
                        let mut ack = invite(&format!("z9hG4bKi{branch}"));
                        ack.start = StartLine::Request { method: Method::Ack, uri: "sip:100@h".into() };
                        ack.cseq_method = Method::Ack;
                        ack.to_tag = Some("t".into());
                        tx.handle_request(now, flow, ack);
                    }
                    _ => {
                        now += Duration::from_millis(u64::from(arg));
                        tx.handle_timeout(now);
                    }
                }
                while tx.poll_output().is_some() {}
                assert_counts_exact(&tx);
            }
            // Answer what is still open, then let every timer run.
            let open: Vec<TxKey> = tx.server.keys().map(|k| TxKey::clone(k)).collect();
            for key in open {
                // Answered ones take no other answer.
                let Some(req) = sent.get(&key) else {
                    continue;
                };
                tx.respond(now, &key, &req.response(486, "X", Some("t")));
            }
            while let Some(t) = tx.poll_timeout() {
                tx.handle_timeout(t);
                while tx.poll_output().is_some() {}
                assert_counts_exact(&tx);
            }
            proptest::prop_assert!(tx.per_source.is_empty());
            for ip in IPS {
                proptest::prop_assert_eq!(tx.server_transactions_from(ip.parse().unwrap()), 0);
            }
        }
    }
}
