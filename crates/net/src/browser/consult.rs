//! Attended transfer from the browser desktop: the browser phone does what
//! an operator's SIP phone does (RFC 5589 §7), so the engine's one
//! consultation model serves both. The desk holds the caller, the browser
//! places a second call (a consultation) to a colleague or a queue of the
//! firm, with a second WebRTC connection; the engine routes it as any
//! consultation (`consult_admit`: the same firm, about the call the
//! operator talks, one at a time) and the colleague who answers gets the
//! caller's requirements. `complete` sends REFER with `Replaces` naming
//! the consultation on the caller's dialog (RFC 3891): the colleague takes
//! the caller and both of the operator's calls end as `transferred`.
//!
//! The consultation's INVITE carries no SDP (a late offer): the node's
//! caller port is only known from its 2xx, where the browser's WebRTC leg
//! is then made (`MediaPlane::browser_accept` on the caller's side) and our
//! ACK answers with that port.

use super::*;

/// The browser's own call to a colleague or a queue.
pub(super) struct Consultation {
    /// The talked call it is about.
    pub(super) about: String,
    /// Whom it calls (the Request-URI's user).
    to: String,
    /// The browser's SDP offer, until the node's answer brings its own.
    offer: Option<String>,
    /// The node's To tag, from its 2xx.
    pub(super) remote_tag: Option<String>,
    /// The node's Contact, from its 2xx: our requests' Request-URI.
    pub(super) target: Option<String>,
    /// Cancelled before an answer: a 2xx that crosses the CANCEL is
    /// acknowledged and hung up.
    cancelled: bool,
}

/// The longest browser SDP offer taken (a WebRTC offer is 1 to 5 KiB).
const MAX_OFFER: usize = 16 * 1024;

/// The shortest time between two consultations of one browser: a page
/// must not ring a colleague again and again.
const CONSULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl Browsers {
    /// The operator consults `to` about the call `about` they talk here.
    pub(super) fn consult(
        &mut self,
        engine: &mut Engine,
        now: Instant,
        session: u64,
        about: String,
        to: String,
        offer: String,
    ) {
        let n = self.tokens;
        let (tag, id) = (self.token(), self.token());
        let Some(phone) = self.owned(session) else {
            return;
        };
        let refused = |phone: &Phone, message: &str| {
            let _ = phone.tx.send(BrowserOut::ConsultRefused {
                about: about.clone(),
                message: message.to_owned(),
            });
        };
        if !phone
            .dialogs
            .get(&about)
            .is_some_and(|d| d.answered.is_some() && d.consult.is_none() && !d.transferring)
        {
            return refused(phone, "no call talked here to consult about");
        }
        if phone.dialogs.values().any(|d| d.consult.is_some()) {
            return refused(phone, "a consultation is already under way");
        }
        if phone.dialogs.len() >= MAX_DIALOGS {
            return refused(phone, "too many calls in this browser");
        }
        if !valid_name(&to) {
            return refused(
                phone,
                "a consultation calls a colleague's or a queue's name",
            );
        }
        if offer.len() > MAX_OFFER || !offer.contains("m=audio ") {
            // Checked before a colleague rings for it (the leg is only made
            // at the answer).
            return refused(phone, "the browser's SDP offer has no audio or is too long");
        }
        if phone
            .consulted
            .is_some_and(|t| now.saturating_duration_since(t) < CONSULT_INTERVAL)
        {
            return refused(phone, "one consultation at a time: wait a moment");
        }
        phone.consulted = Some(now);
        let flow = phone.flow;
        let via = Via {
            transport: Transport::Browser.as_str().into(),
            sent_by: flow.remote.to_string().into(),
            branch: format!("z9hG4bKwb{n}c").into(),
        };
        let mut invite = Message::new_request(
            Method::Invite,
            &format!("sip:{to}@{}", flow.local),
            via,
            &format!("<sip:{}@{}>;tag={tag}", phone.agent, flow.local),
            &format!("<sip:{to}@{}>", flow.local),
            &id,
            1,
        );
        invite.push("Contact", &contact(&phone.agent));
        info!(agent = %phone.agent, "browser operator consults");
        phone.dialogs.insert(
            id.clone(),
            Dialog {
                invite: invite.clone(),
                tag,
                // The node's caller port, from its answer.
                port: SocketAddr::from(([0, 0, 0, 0], 0)),
                formats: Vec::new(),
                answered: None,
                cseq: 2,
                transferring: false,
                held: false,
                moving: None,
                consult: Some(Consultation {
                    about: about.clone(),
                    to,
                    offer: Some(offer),
                    remote_tag: None,
                    target: None,
                    cancelled: false,
                }),
            },
        );
        let _ = phone.tx.send(BrowserOut::Consulting { call: id, about });
        feed(engine, now, flow, &invite);
    }

    /// The operator hands the caller of `about` to the colleague their
    /// answered consultation reached: REFER with `Replaces` on the
    /// caller's dialog.
    pub(super) fn complete(
        &mut self,
        engine: &mut Engine,
        now: Instant,
        session: u64,
        about: String,
    ) {
        let n = self.tokens;
        self.tokens += 1;
        let Some(phone) = self.owned(session) else {
            return;
        };
        let flow = phone.flow;
        let consultation = phone.dialogs.iter().find_map(|(id, d)| {
            let c = d.consult.as_ref()?;
            (c.about == about && d.answered.is_some() && !c.cancelled).then(|| {
                (
                    id.clone(),
                    c.to.clone(),
                    c.remote_tag.clone().unwrap_or_default(),
                    d.tag.clone(),
                )
            })
        });
        let Some((id, to, to_tag, from_tag)) = consultation else {
            let _ = phone.tx.send(BrowserOut::Error {
                call: about,
                message: "no answered consultation to hand the call to".into(),
            });
            return;
        };
        let Some(d) = phone
            .dialogs
            .get_mut(&about)
            .filter(|d| d.answered.is_some() && d.consult.is_none())
        else {
            let _ = phone.tx.send(BrowserOut::Error {
                call: about,
                message: "the call to hand over is no longer here".into(),
            });
            return;
        };
        d.transferring = true;
        let mut refer = in_dialog(d, flow, Method::Refer, n);
        // RFC 3891 §3 in a URI header: `;` and `=` escaped. Our Call-IDs
        // and tags are letters and digits.
        refer.push(
            "Refer-To",
            &format!(
                "<sip:{to}@{}?Replaces={id}%3Bto-tag%3D{to_tag}%3Bfrom-tag%3D{from_tag}>",
                flow.local
            ),
        );
        refer.push("Referred-By", &contact(&phone.agent));
        if let Some(c) = phone.dialogs.get_mut(&id) {
            // The node's BYE that follows ends it as `transferred`.
            c.transferring = true;
        }
        feed(engine, now, flow, &refer);
    }
}

/// Whether `to` can be a queue's or an operator's name.
pub(super) fn valid_name(to: &str) -> bool {
    !to.is_empty()
        && to.len() <= 64
        && to
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.".contains(c))
}

/// Ends the browser's consultations about the call `about` (all of them
/// when `None`: the desk is gone): a ringing one cancelled, an answered one
/// hung up; the desk is told.
pub(super) fn end_all(
    engine: &mut Engine,
    now: Instant,
    phone: &mut Phone,
    about: Option<&str>,
    n: u64,
) {
    let ids: Vec<String> = phone
        .dialogs
        .iter()
        .filter(|(_, d)| {
            // One handing its caller over is the node's to end.
            !d.transferring
                && d.consult
                    .as_ref()
                    .is_some_and(|c| !c.cancelled && about.is_none_or(|a| c.about == a))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let answered = phone.dialogs.get(&id).is_some_and(|d| d.answered.is_some());
        if answered {
            if let Some(mut d) = phone.dialogs.remove(&id) {
                let bye = in_dialog(&mut d, phone.flow, Method::Bye, n);
                feed(engine, now, phone.flow, &bye);
            }
        } else {
            cancel(engine, now, phone, &id);
        }
        info!(agent = %phone.agent, "browser consultation ended with its call or desk");
        let _ = phone.tx.send(BrowserOut::Ended {
            call: id,
            reason: "hangup",
        });
    }
}

/// Cancels the browser's unanswered consultation `id` (RFC 3261 §9.1:
/// the INVITE's Request-URI, Call-ID, From, To and branch). It is kept
/// until the node's final answer, to acknowledge it.
pub(super) fn cancel(engine: &mut Engine, now: Instant, phone: &mut Phone, id: &str) {
    let Some(d) = phone.dialogs.get_mut(id) else {
        return;
    };
    let Some(c) = d.consult.as_mut().filter(|c| !c.cancelled) else {
        return;
    };
    c.cancelled = true;
    let cancel = centralino_sip::dialog::cancel(&d.invite, None);
    feed(engine, now, phone.flow, &cancel);
}

/// The node's response to the consultation's INVITE.
pub(super) fn on_response(
    engine: &mut Engine,
    plane: &mut MediaPlane,
    now: Instant,
    phone: &mut Phone,
    msg: &Message,
    n: u64,
) {
    let flow = phone.flow;
    let code = msg.code();
    if code < 200 {
        return;
    }
    let Some(d) = phone.dialogs.get_mut(msg.call_id.as_str()) else {
        return;
    };
    if code >= 300 {
        // Refused, busy, nobody answered, or cancelled: acknowledged on
        // the INVITE's branch (§17.1.1.3), and over.
        let inv = &d.invite;
        let mut ack = Message::new_request(
            Method::Ack,
            inv.request_uri().unwrap_or_default(),
            inv.via.clone(),
            inv.header("From").unwrap_or_default(),
            msg.header("To").unwrap_or_default(),
            &inv.call_id,
            inv.cseq,
        );
        ack.max_forwards = Some(70);
        feed(engine, now, flow, &ack);
        let cancelled = d.consult.as_ref().is_some_and(|c| c.cancelled);
        phone.dialogs.remove(msg.call_id.as_str());
        if !cancelled {
            info!(agent = %phone.agent, code, "browser consultation not answered");
            let _ = phone.tx.send(BrowserOut::Error {
                call: msg.call_id.to_string(),
                message: format!("consultation not answered: {code}"),
            });
            let _ = phone.tx.send(BrowserOut::Ended {
                call: msg.call_id.to_string(),
                reason: "refused",
            });
        }
        return;
    }
    let Some(c) = d.consult.as_mut() else {
        return;
    };
    if d.answered.is_some() || c.remote_tag.is_some() {
        // A 2xx repeated (our ACK lost): acknowledged again.
        let mut ack = in_dialog(d, flow, Method::Ack, n);
        d.cseq -= 1;
        set_cseq(&mut ack, msg.cseq);
        if let Some((law, version)) = d.answered {
            ack.set_body(
                Some("application/sdp"),
                local_sdp(d.port, law, version, Direction::SendRecv),
            );
        }
        feed(engine, now, flow, &ack);
        return;
    }
    c.remote_tag = msg.to_tag.as_deref().map(str::to_owned);
    c.target = msg.header("Contact").map(contact_uri);
    let cancelled = c.cancelled;
    let offer = c.offer.take().unwrap_or_default();
    // The node's offer: the consultation's caller port and its laws.
    let node = sdp::parse(&msg.body).ok().filter(|o| o.port != 0);
    let accepted = match (&node, cancelled) {
        (Some(o), false) => {
            let laws = laws_of(&o.formats);
            let port = SocketAddr::new(o.addr, o.port);
            d.port = port;
            plane
                .browser_accept(port, Side::A, &offer, &laws)
                .map_err(|e| e.to_string())
        }
        (None, false) => Err("the node's answer carries no usable offer".to_owned()),
        (_, true) => Err(String::new()),
    };
    if cancelled && let Some(o) = &node {
        // Cancelled while the answer was on its way: answered with the
        // node's own port (the plane sends nothing there without a leg)
        // and hung up, an ordinary end rather than a refused answer.
        let port = SocketAddr::new(o.addr, o.port);
        let law = laws_of(&o.formats).first().copied().unwrap_or(Law::Alaw);
        let mut ack = in_dialog(d, flow, Method::Ack, n);
        d.cseq -= 1;
        set_cseq(&mut ack, msg.cseq);
        ack.set_body(
            Some("application/sdp"),
            local_sdp(port, law, 1, Direction::Inactive),
        );
        feed(engine, now, flow, &ack);
        let bye = in_dialog(d, flow, Method::Bye, n + 1);
        feed(engine, now, flow, &bye);
        phone.dialogs.remove(msg.call_id.as_str());
        return;
    }
    let mut ack = in_dialog(d, flow, Method::Ack, n);
    d.cseq -= 1;
    set_cseq(&mut ack, msg.cseq);
    match accepted {
        Ok((law, answer)) => {
            d.answered = Some((law, 1));
            ack.set_body(
                Some("application/sdp"),
                local_sdp(d.port, law, 1, Direction::SendRecv),
            );
            feed(engine, now, flow, &ack);
            info!(agent = %phone.agent, "browser consultation answered");
            let _ = phone.tx.send(BrowserOut::Answer {
                call: msg.call_id.to_string(),
                sdp: answer,
            });
        }
        Err(e) => {
            // Acknowledged without an answer: the node hangs up (as for a
            // phone whose ACK carries no usable SDP); or cancelled while
            // the answer was on its way: hung up here.
            feed(engine, now, flow, &ack);
            if cancelled {
                let bye = in_dialog(d, flow, Method::Bye, n + 1);
                feed(engine, now, flow, &bye);
                phone.dialogs.remove(msg.call_id.as_str());
                return;
            }
            warn!(agent = %phone.agent, error = %e, "browser consultation's media refused");
            let _ = phone.tx.send(BrowserOut::Error {
                call: msg.call_id.to_string(),
                message: e,
            });
        }
    }
}

/// An ACK names the INVITE's CSeq, not a new one.
fn set_cseq(ack: &mut Message, cseq: u32) {
    ack.cseq = cseq;
    ack.remove("CSeq");
    ack.push("CSeq", &format!("{cseq} ACK"));
}
