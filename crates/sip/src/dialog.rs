//! One side of a dialog, as a user agent needs it to send requests in it
//! (RFC 3261 §12), and the requests built from it: in-dialog requests,
//! the ACK of a 2xx, the CANCEL of an INVITE. Branches come from the
//! caller (it owns the randomness); nothing here reads a clock or a socket.

use crate::message::{Message, Method, Transport, Value, Via};
use crate::txn::Flow;
use crate::uri;

/// One side of a dialog, as needed to send requests in it.
#[derive(Clone, Debug)]
pub struct Leg {
    /// The dialog's Call-ID.
    pub call_id: Value,
    /// Our From value for requests we send (our tag included).
    pub local: String,
    /// The peer's value for To (their tag included).
    pub remote: String,
    /// Where requests go (the peer's Contact); empty: the flow's address.
    pub remote_target: String,
    /// Route headers for requests, in order.
    pub route_set: Vec<String>,
    /// The CSeq of our last request.
    pub cseq: u32,
    /// The connection or address pair the dialog runs on.
    pub flow: Flow,
}

impl Leg {
    /// The UAC's side of a dialog a response to our request created
    /// (§12.1.2): the target from its Contact, the route set from its
    /// Record-Route reversed, the peer's To with its tag.
    pub fn from_response(local: &str, flow: Flow, resp: &Message) -> Self {
        let remote_target = resp
            .header("Contact")
            .and_then(uri::parse_name_addr)
            .map(|n| n.uri.to_owned())
            .unwrap_or_else(|| format!("sip:{}", flow.remote));
        let mut route_set: Vec<String> = resp
            .headers_named("Record-Route")
            .flat_map(uri::split_list)
            .map(str::to_owned)
            .collect();
        route_set.reverse();
        Self {
            call_id: resp.call_id.detached(),
            local: local.to_owned(),
            remote: resp.header("To").unwrap_or_default().to_owned(),
            remote_target,
            route_set,
            cseq: resp.cseq,
            flow,
        }
    }

    /// Whether `resp` answers a request we sent in this dialog: its
    /// Call-ID, and the peer's tag in its To. A response the transaction
    /// layer matched by branch but with another tag (a forking proxy, a
    /// broken peer) must not refresh this dialog's target or media.
    pub fn answers(&self, resp: &Message) -> bool {
        resp.call_id == self.call_id
            && uri::parse_name_addr(&self.remote)
                .and_then(|n| n.param("tag").flatten())
                .is_some_and(|t| resp.to_tag.as_deref() == Some(t))
    }

    /// A target refresh (§12.2.1.2, §12.2.2: a re-INVITE or UPDATE, or the
    /// 2xx to ours) with a Contact: the peer's new target for the
    /// requests that follow (a phone whose address changed). Where they
    /// are sent stays the leg's flow, so it moves nothing but the
    /// Request-URI.
    pub fn refresh_target(&mut self, msg: &Message) {
        if let Some(n) = msg.header("Contact").and_then(uri::parse_name_addr) {
            self.remote_target = n.uri.to_owned();
        }
    }

    /// The UAS's side of a dialog an INVITE `req` creates (§12.1.1), with
    /// our To `tag`: the target from its Contact (none: the flow's
    /// address), the route set from its Record-Route in order.
    pub fn from_request(req: &Message, tag: &str, flow: Flow) -> Self {
        let to = req.header("To").unwrap_or_default();
        Self {
            call_id: req.call_id.detached(),
            local: [to, ";tag=", tag].concat(),
            remote: req.header("From").unwrap_or_default().to_owned(),
            remote_target: req
                .header("Contact")
                .and_then(uri::parse_name_addr)
                .map(|n| n.uri.to_owned())
                .unwrap_or_default(),
            route_set: req
                .headers_named("Record-Route")
                .flat_map(uri::split_list)
                .map(str::to_owned)
                .collect(),
            cseq: 1,
            flow,
        }
    }

    /// A request in this dialog with its current CSeq (§12.2.1.1): to its
    /// remote target (the flow's address when it gave none), along its
    /// route set.
    pub fn request(&self, method: Method, via: Via) -> Message {
        let target = if self.remote_target.is_empty() {
            format!("sip:{}", self.flow.remote)
        } else {
            self.remote_target.clone()
        };
        let mut req = Message::new_request(
            method,
            &target,
            via,
            &self.local,
            &self.remote,
            &self.call_id,
            self.cseq,
        );
        for r in &self.route_set {
            req.push("Route", r);
        }
        req
    }

    /// The ACK of a 2xx to our INVITE `resp` answered (§13.2.2.4: a
    /// request of its own, with the INVITE's CSeq number).
    pub fn ack(&self, via: Via, resp: &Message) -> Message {
        let mut ack = Message::new_request(
            Method::Ack,
            &self.remote_target,
            via,
            &self.local,
            &self.remote,
            &self.call_id,
            resp.cseq,
        );
        for r in &self.route_set {
            ack.push("Route", r);
        }
        ack
    }
}

/// The CANCEL of the INVITE `inv` (§9.1: its Request-URI, top Via, From,
/// To, Call-ID, CSeq number and Route), with an RFC 3326 `Reason` when
/// given.
pub fn cancel(inv: &Message, reason: Option<&str>) -> Message {
    let mut cancel = Message::new_request(
        Method::Cancel,
        inv.request_uri().unwrap_or_default(),
        inv.via.clone(),
        inv.header("From").unwrap_or_default(),
        inv.header("To").unwrap_or_default(),
        &inv.call_id,
        inv.cseq,
    );
    for r in inv.headers_named("Route") {
        cancel.push("Route", r);
    }
    if let Some(reason) = reason {
        cancel.push("Reason", reason);
    }
    cancel
}

/// Our Contact on `flow`.
pub fn contact(flow: Flow) -> String {
    let params = match flow.transport {
        Transport::Udp => ">",
        Transport::Tcp => ";transport=tcp>",
        // RFC 3261 §26.2.2: `sip:` with transport=tls (not `sips:`,
        // which promises TLS on every hop beyond the carrier too).
        Transport::Tls => ";transport=tls>",
        Transport::Browser => ";transport=ws>",
    };
    let mut out = String::with_capacity(64);
    out.push_str("<sip:centralino@");
    crate::message::push_addr(&mut out, flow.local);
    out.push_str(params);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{push_addr, push_ip};

    proptest::proptest! {
        #[test]
        fn addresses_are_written_as_display_writes_them(
            v4 in proptest::prelude::any::<[u8; 4]>(),
            v6 in proptest::prelude::any::<[u16; 8]>(),
            port in proptest::prelude::any::<u16>(),
        ) {
            for addr in [
                std::net::SocketAddr::from((v4, port)),
                std::net::SocketAddr::from((v6, port)),
            ] {
                let mut out = String::new();
                push_addr(&mut out, addr);
                proptest::prop_assert_eq!(out, addr.to_string());
                let mut out = String::new();
                push_ip(&mut out, addr.ip());
                proptest::prop_assert_eq!(out, addr.ip().to_string());
            }
            let mut f = flow();
            f.local = std::net::SocketAddr::from((v4, port));
            for (t, params) in [
                (Transport::Udp, ""),
                (Transport::Tcp, ";transport=tcp"),
                (Transport::Tls, ";transport=tls"),
                (Transport::Browser, ";transport=ws"),
            ] {
                f.transport = t;
                proptest::prop_assert_eq!(
                    contact(f),
                    format!("<sip:centralino@{}{params}>", f.local)
                );
            }
        }
    }

    fn flow() -> Flow {
        Flow {
            transport: Transport::Udp,
            local: "192.0.2.1:5060".parse().unwrap(),
            remote: "192.0.2.10:5060".parse().unwrap(),
            conn: 0,
        }
    }

    fn via() -> Via {
        Via {
            transport: "UDP".into(),
            sent_by: "192.0.2.1:5060".into(),
            branch: "z9hG4bKtest".into(),
        }
    }

    #[test]
    fn a_leg_from_a_record_routed_2xx_sends_along_the_reversed_route_set() {
        let resp = crate::parse_message(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\nRecord-Route: <sip:p2;lr>, <sip:p1;lr>\r\nFrom: <sip:a@x>;tag=ours\r\nTo: <sip:b@y>;tag=theirs\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nContact: <sip:b@192.0.2.20:5070>\r\nContent-Length: 0\r\n\r\n",
            &crate::Limits::default(),
            true,
        )
        .unwrap();
        let mut leg = Leg::from_response("<sip:a@x>;tag=ours", flow(), &resp);
        // Kept for the call: its own text, not the 2xx's header section
        // (nor do the requests made from it hold that).
        assert!(resp.call_id.shares_buffer(resp.to_tag.as_ref().unwrap()));
        assert!(!leg.call_id.shares_buffer(&resp.call_id));
        assert_eq!(leg.call_id, resp.call_id);
        let from_request = Leg::from_request(&leg.ack(via(), &resp), "t", flow());
        assert!(
            from_request.call_id.shares_buffer(&leg.call_id),
            "already its own"
        );
        assert!(
            !leg.request(Method::Info, via())
                .call_id
                .shares_buffer(&resp.call_id)
        );
        assert_eq!(leg.route_set, vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
        assert_eq!(leg.remote, "<sip:b@y>;tag=theirs");
        let ack = leg.ack(via(), &resp);
        assert_eq!(ack.request_uri(), Some("sip:b@192.0.2.20:5070"));
        assert_eq!(ack.cseq, 7);
        leg.cseq += 1;
        let bye = leg.request(Method::Bye, via());
        assert_eq!(bye.cseq, 8);
        let routes: Vec<&str> = bye.headers_named("Route").collect();
        assert_eq!(routes, vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
        let c = cancel(&bye, Some("SIP;cause=200"));
        assert_eq!(c.header("Reason"), Some("SIP;cause=200"));
        assert_eq!(c.via.branch, bye.via.branch, "the INVITE's branch");
    }
}
