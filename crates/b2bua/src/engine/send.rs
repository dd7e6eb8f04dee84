//! What leaves the engine as SIP: requests, responses, stateless
//! rejections, Via and Contact of our own.

use super::*;

impl Engine {
    pub(super) fn token(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
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
        Via {
            transport: flow.transport.as_str().to_owned(),
            sent_by: flow.local.to_string(),
            branch: format!("z9hG4bK{}", self.token()),
        }
    }

    /// Our Contact towards a caller: `sips:` when their INVITE asked for a
    /// `sips:` Request-URI (over TLS, precheck made sure), as RFC 5630 §4.3
    /// wants, so the dialog stays secure end to end; the flow's otherwise.
    pub(super) fn caller_contact(call: &Call) -> String {
        let sips = call.a_leg.flow.transport == Transport::Tls
            && call
                .inbound()
                .and_then(|i| i.invite.request_uri())
                .and_then(uri::classify)
                .is_some_and(|s| s == Scheme::Sips);
        if sips {
            format!("<sips:centralino@{}>", call.a_leg.flow.local)
        } else {
            dialog::contact(call.a_leg.flow)
        }
    }
}

/// How long a kept ACK is sent again: the far end retransmits its 2xx for
/// 64·T1 (RFC 3261 §13.3.1.4).
const ACK_KEPT: Duration = Duration::from_secs(32);
/// Most ACKs kept (the oldest go first): each is a few hundred bytes.
const ACKS_MOST: usize = 65_536;

/// The ACKs of 2xx answers to INVITEs whose client transaction the engine
/// forgets at the answer (session refreshes, transfers' and callbacks'
/// legs): a retransmitted 2xx, our ACK lost, gets the same ACK again
/// instead of a far end that hangs up after 32 s. Bounded in time and
/// count.
#[derive(Default)]
pub(super) struct AckCache {
    by_key: HashMap<TxKey, (Flow, Vec<u8>)>,
    order: VecDeque<(Instant, TxKey)>,
}

impl AckCache {
    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < ACK_KEPT && self.order.len() <= ACKS_MOST {
                break;
            }
            self.by_key.remove(key);
            self.order.pop_front();
        }
    }

    fn keep(&mut self, now: Instant, key: TxKey, flow: Flow, bytes: Vec<u8>) {
        self.expire(now);
        if self.by_key.insert(key.clone(), (flow, bytes)).is_none() {
            self.order.push_back((now, key));
        }
        self.expire(now);
    }

    fn get(&mut self, now: Instant, key: &TxKey) -> Option<(Flow, Vec<u8>)> {
        self.expire(now);
        self.by_key.get(key).cloned()
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
            .keep(now, TxKey::of(resp), leg.flow, bytes.clone());
        self.out.push_back(Output::Transmit {
            flow: leg.flow,
            bytes,
        });
    }

    /// A 2xx to an INVITE no transaction of ours awaits: if we ACKed it
    /// (kept), the ACK again.
    pub(super) fn reack(&mut self, now: Instant, key: &TxKey) -> bool {
        let Some((flow, bytes)) = self.acks.get(now, key) else {
            return false;
        };
        self.metrics.sip_retransmissions.inc();
        self.out.push_back(Output::Transmit { flow, bytes });
        true
    }
}
