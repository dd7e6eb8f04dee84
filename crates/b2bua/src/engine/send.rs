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
