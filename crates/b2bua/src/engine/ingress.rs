//! Ingress policy: what a request must be before the engine acts on it
//! (size and source bounds, scanners, trunk identity and TLS verdicts,
//! admission under load and while draining).

use super::*;

impl Engine {
    pub(super) fn handle_message(&mut self, now: Instant, flow: Flow, mut msg: Box<Message>) {
        if (flow.transport == Transport::Browser) != is_browser_address(flow.remote.ip()) {
            // The discard-only block names browsers' flows, which never
            // come from the network: a datagram from there is forged.
            self.metrics
                .sip_rejected
                .with_label_values(&["forged_source"])
                .inc();
            return;
        }
        if msg.is_request() {
            // Every response we build for it then tells the client where
            // it was seen from (NAT: received/rport).
            msg.stamp_via(flow.remote);
        }
        match &msg.start {
            StartLine::Response { .. } => {
                self.sip_counts
                    .count(&self.metrics, &msg.start, telemetry::Way::In);
                // A branch is unguessable, but a response is also taken
                // only from where its request went (or another SBC of
                // the same trunk): an answer from elsewhere could move a
                // call's media or its dialog's target.
                if let Some(sent) = self.txn.client_flow(&TxKey::of(&msg))
                    && !self.same_peer(sent, flow)
                {
                    warn!(peer = %flow.remote.ip(), "a response from another address than its request's: dropped");
                    self.metrics
                        .sip_rejected
                        .with_label_values(&["foreign_response"])
                        .inc();
                    return;
                }
                self.txn.handle_response(now, msg);
            }
            StartLine::Request { method, .. } => {
                self.sip_counts
                    .count(&self.metrics, &msg.start, telemetry::Way::In);
                if *method != Method::Ack && !self.precheck(now, flow, &msg) {
                    return;
                }
                if *method == Method::Register
                    && self.txn.server_transactions_from(flow.remote.ip()) >= self.max_per_source
                    && !self.txn.has_server(&TxKey::of(&msg))
                {
                    // A site's phones re-registering at once after its
                    // network returns (one NAT address, hundreds of
                    // operators) are answered without a transaction: the
                    // registrar's nonces make that safe (a retransmission
                    // whose 200 was lost is a replay: a fresh challenge,
                    // never a failure), and nothing is kept per request.
                    self.metrics.registrations_stateless.inc();
                    let resp = self.register(now, flow, &msg);
                    self.send_stateless(flow, &resp);
                    return;
                }
                if *method != Method::Ack && !self.within_source_bound(flow, &msg) {
                    return;
                }
                self.txn.handle_request(now, flow, msg);
            }
        }
    }

    /// Each server transaction lingers after its answer (Timer J, 64·T1 on
    /// UDP), so one address could fill memory with cheap requests: past
    /// `sip.max_transactions_per_source` live ones, a new request from an
    /// address that is not a trunk peer gets 503 with no state kept
    /// (retransmissions of live ones still reach their transaction).
    pub(super) fn within_source_bound(&mut self, flow: Flow, msg: &Message) -> bool {
        let ip = flow.remote.ip();
        if self.txn.server_transactions_from(ip) < self.max_per_source
            || self.txn.has_server(&TxKey::of(msg))
            || self.trunks.iter().any(|t| t.peers.contains(&ip))
        {
            return true;
        }
        warn!(peer = %ip, "too many transactions from one address: 503");
        self.reject(flow, msg, 503, "source_busy", &[("Retry-After", "30")]);
        false
    }

    /// Stateless checks before any transaction exists: anything refused here
    /// leaves no state behind (scanners, untrusted sources, bad requests).
    pub(super) fn precheck(&mut self, now: Instant, flow: Flow, msg: &Message) -> bool {
        if msg.header("User-Agent").is_some_and(is_scanner) {
            // Dropped without a word: a scanner learns nothing is here, and
            // answering a flood would only amplify it.
            self.metrics
                .sip_rejected
                .with_label_values(&["scanner"])
                .inc();
            debug!(peer = %flow.remote.ip(), "scanner dropped");
            return false;
        }
        let method = msg.method().clone();
        let ruri = msg.request_uri().unwrap_or_default();
        if matches!(method, Method::Other(_)) {
            self.reject(flow, msg, 501, "unknown_method", &[("Allow", ALLOW)]);
            return false;
        }
        // The guard validated the Request-URI: its scheme is read alone.
        let scheme = uri::scheme(ruri);
        if scheme == Some(Scheme::Other) {
            self.reject(flow, msg, 416, "unsupported_uri_scheme", &[]);
            return false;
        }
        if scheme == Some(Scheme::Sips) && flow.transport != Transport::Tls {
            // A sips: Request-URI promises TLS on every hop (RFC 3261
            // §26.2.2, RFC 5630 §3.1.3): taking it over UDP or TCP would
            // quietly break that promise.
            self.reject(flow, msg, 416, "sips_not_over_tls", &[]);
            return false;
        }
        // Extensions we implement: session timers (RFC 4028) and reliable
        // provisional responses (RFC 3262).
        let required: Vec<String> = msg
            .headers_named("Require")
            .flat_map(uri::split_list)
            .filter(|o| {
                !o.is_empty()
                    && !o.eq_ignore_ascii_case("timer")
                    && !o.eq_ignore_ascii_case("100rel")
            })
            .map(str::to_owned)
            .collect();
        if !required.is_empty() && method != Method::Cancel {
            let list = required.join(", ");
            self.reject(flow, msg, 420, "bad_extension", &[("Unsupported", &list)]);
            return false;
        }
        if method == Method::Cancel
            && self
                .by_a
                .get(msg.call_id.as_str())
                .and_then(|c| self.calls.get(c))
                .is_some_and(|c| !self.same_peer(c.a_leg.flow, flow))
        {
            // A CANCEL must come from where its INVITE came from (§9.2 also
            // wants the same branch; a stranger who learnt it is still a
            // stranger). Refused before any transaction: one kept would
            // make the caller's own CANCEL look like a merged request.
            warn!(peer = %flow.remote.ip(), "CANCEL from a stranger refused");
            self.reject(flow, msg, 481, "foreign_dialog", &[]);
            return false;
        }
        if msg.to_tag.is_some() && !matches!(method, Method::Register | Method::Options) {
            // In-dialog: the dialog must be ours, named by Call-ID and both
            // tags, and the request must come from that dialog's peer (the
            // trunk, or the operator's registered flow). A Call-ID alone is
            // no secret: it travels in every message and logs. (Some phones
            // put a To tag on REGISTER refreshes and OPTIONS keepalives:
            // those never need a dialog.)
            if method == Method::Cancel {
                return true;
            }
            if let Some(ours) = self.phone_monitor_dialog(flow, msg) {
                if !ours {
                    self.reject(flow, msg, 481, "foreign_dialog", &[]);
                }
                return ours;
            }
            if let Err(reason) = self.match_dialog(flow, msg) {
                if reason == "foreign_dialog" {
                    warn!(peer = %flow.remote.ip(), method = method.as_str(), "in-dialog request refused: not from the dialog's peer or wrong tags");
                }
                self.reject(flow, msg, 481, reason, &[]);
                return false;
            }
            return true;
        }
        match method {
            Method::Invite => self.precheck_invite(now, flow, msg),
            Method::Register if self.trunks.iter().any(|t| t.outbound == Some(flow.remote)) => {
                // A carrier's own address never registers an operator: its
                // bindings would be rung through the carrier.
                warn!(peer = %flow.remote.ip(), "REGISTER from a trunk's outbound address refused");
                self.reject(flow, msg, 403, "trunk_register", &[]);
                false
            }
            Method::Register | Method::Options | Method::Cancel => true,
            Method::Bye => {
                self.reject(flow, msg, 481, "no_dialog", &[]);
                false
            }
            _ => {
                self.reject(flow, msg, 405, "method_not_allowed", &[("Allow", ALLOW)]);
                false
            }
        }
    }

    pub(super) fn precheck_invite(&mut self, now: Instant, flow: Flow, msg: &Message) -> bool {
        // Another node handing over a call to the operator held for it:
        // only from that node's address, naming the grant's secret.
        let handover = self.handover_for(flow.remote.ip(), msg).is_some();
        // A supervisor's phone dialling a feature code: challenged when
        // handled (it never reaches a trunk).
        let feature = monitor_phone::feature_code(msg).is_some();
        // An operator's consultation of a queue (attended transfer):
        // challenged when handled, like a feature code.
        let feature = feature || (!handover && self.consult_queue(flow, msg).is_some());
        if !handover
            && !feature
            && !self
                .trunks
                .iter()
                .any(|t| t.peers.contains(&flow.remote.ip()))
        {
            // No toll fraud and no state for strangers: only trunk peers may
            // start calls, and only towards local DIDs.
            warn!(peer = %flow.remote.ip(), "INVITE from an untrusted address refused");
            self.reject(flow, msg, 403, "untrusted_source", &[]);
            return false;
        };
        if msg.max_forwards == Some(0) {
            self.reject(flow, msg, 483, "too_many_hops", &[]);
            return false;
        }
        if let Some(ct) = msg.header("Content-Type") {
            let mime = ct.split(';').next().unwrap_or_default().trim();
            if !mime.eq_ignore_ascii_case("application/sdp") {
                self.reject(
                    flow,
                    msg,
                    415,
                    "unsupported_media_type",
                    &[("Accept", "application/sdp")],
                );
                return false;
            }
        }
        let accepts: Vec<&str> = msg
            .headers_named("Accept")
            .flat_map(uri::split_list)
            .collect();
        if !accepts.is_empty()
            && !accepts.iter().any(|a| {
                let m = a.split(';').next().unwrap_or_default().trim();
                ["application/sdp", "application/*", "*/*"]
                    .iter()
                    .any(|ok| m.eq_ignore_ascii_case(ok))
            })
        {
            self.reject(
                flow,
                msg,
                406,
                "not_acceptable",
                &[("Accept", "application/sdp")],
            );
            return false;
        }
        if feature {
            // Answered (401 first) under the per-source transaction limit;
            // an overloaded node keeps its time for its callers.
            if self.overloaded || self.calls.len() >= self.max_calls {
                self.reject(flow, msg, 503, "overload", &[("Retry-After", "5")]);
                return false;
            }
            return true;
        }
        if handover {
            // Granted: a lease is a promise, draining or not.
            if self.calls.len() >= self.max_calls {
                self.reject(flow, msg, 503, "overload", &[("Retry-After", "5")]);
                return false;
            }
            return true;
        }
        if self.inbound(flow, msg).is_none() {
            if self.inbound_by_address(flow.remote.ip(), msg).is_some() {
                // Its address and DID name a trunk known by its client
                // certificate, and this connection did not present it: an
                // address alone proves nothing to such a trunk (D1).
                warn!(peer = %flow.remote.ip(), transport = flow.transport.as_str(), "INVITE for a certificate-authenticated trunk without its certificate refused");
                self.reject(flow, msg, 403, "trunk_not_authenticated", &[]);
                return false;
            }
            self.reject(flow, msg, 404, "unknown_did", &[]);
            return false;
        }
        if self.draining {
            // Another node (the carrier's next route) takes it.
            self.reject(flow, msg, 503, "draining", &[("Retry-After", "30")]);
            return false;
        }
        if self.overloaded || self.calls.len() >= self.max_calls || !self.admit(now) {
            self.reject(flow, msg, 503, "overload", &[("Retry-After", "5")]);
            return false;
        }
        true
    }

    /// Takes one token from the admission bucket (`sip.max_calls_per_second`):
    /// a steady rate with one second of burst.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        let Some((tokens, rate, last)) = self.admission.as_mut() else {
            return true;
        };
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * *rate).min(*rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The trunk an INVITE from `source` came in on, and where its DID
    /// goes: a trunk is known by (source address, DID), so two trunks
    /// behind one carrier SBC (one per tenant) each get their own DIDs'
    /// calls (`check-config` refuses a DID two of them could claim).
    /// A trunk with `tls_peer_names` counts only over a TLS connection
    /// whose client certificate it accepted.
    pub(super) fn inbound(&self, flow: Flow, msg: &Message) -> Option<(TrunkId, Target)> {
        let proven = (flow.transport == Transport::Tls)
            .then(|| self.conn_trunks.get(&flow.conn))
            .flatten();
        self.inbound_where(flow.remote.ip(), msg, |i| {
            let t = &self.trunks[i.index()];
            !t.mtls || proven.is_some_and(|names| names.contains(&t.name))
        })
    }

    /// The trunk an INVITE would belong to by its address and DID alone.
    pub(super) fn inbound_by_address(
        &self,
        source: IpAddr,
        msg: &Message,
    ) -> Option<(TrunkId, Target)> {
        self.inbound_where(source, msg, |_| true)
    }

    pub(super) fn inbound_where(
        &self,
        source: IpAddr,
        msg: &Message,
        allowed: impl Fn(TrunkId) -> bool,
    ) -> Option<(TrunkId, Target)> {
        let ruri = msg.request_uri()?;
        let did = match uri::scheme(ruri)? {
            Scheme::Tel => ruri.split_once(':')?.1.split(';').next()?,
            _ => uri::user(ruri)?.split(';').next()?,
        };
        self.trunks
            .iter()
            .enumerate()
            .map(|(i, t)| (TrunkId::at(i), t))
            .filter(|(i, t)| t.peers.contains(&source) && allowed(*i))
            .find_map(|(i, t)| Some((i, t.dids.get(did)?.clone())))
    }
}

/// User-Agents of SIP scanners and toll-fraud tools (case-insensitive
/// substrings).
const SCANNERS: [&str; 9] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "pplsip",
    "sundayddr",
    "iwar",
    "sip-scan",
    "smap",
];

/// Whether a User-Agent is a known scanner's (no allocation: it runs on
/// every request).
fn is_scanner(user_agent: &str) -> bool {
    let ua = user_agent.as_bytes();
    SCANNERS.iter().any(|s| {
        ua.windows(s.len())
            .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
    })
}

/// Whether a peer's request or answer lists UPDATE in its `Allow`.
pub(super) fn allows_update(msg: &Message) -> bool {
    allows(msg, "UPDATE")
}

/// Whether `msg`'s `Allow` names `method`. `Allow` is a list of method
/// tokens (RFC 3261 §20.5): no quoted strings or angle brackets to honour,
/// so commas split it (`uri::split_list`, char by char into a vector, was
/// 3 % of the engine's instructions per call, three lists per call).
pub(super) fn allows(msg: &Message, method: &str) -> bool {
    msg.headers_named("Allow").any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|m| m.trim_ascii().eq_ignore_ascii_case(method.as_bytes()))
    })
}

/// The caller a trusted carrier asserts (RFC 3325 `P-Asserted-Identity`,
/// one `sip:` and/or one `tel:` value): its telephone number, `tel:` first.
pub(super) fn asserted_caller(msg: &Message) -> Option<String> {
    let uris: Vec<&str> = msg
        .headers_named("P-Asserted-Identity")
        .flat_map(uri::split_list)
        .take(2)
        .filter_map(|v| uri::parse_name_addr(v).map(|n| n.uri))
        .collect();
    let tel = uris
        .iter()
        .find(|u| u.len() > 4 && u[..4].eq_ignore_ascii_case("tel:"));
    tel.into_iter()
        .chain(uris.iter())
        .find_map(|u| uri::telephone_number(u))
        .map(str::to_owned)
}

/// Whether `ip` is in the discard-only block (RFC 6666, `100::/64`) that
/// names the browsers' flows (`Engine::browser_phone`).
pub(super) fn is_browser_address(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[..4] == [0x0100, 0, 0, 0])
}
