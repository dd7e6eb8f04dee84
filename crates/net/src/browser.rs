//! The WebRTC gateway for browser operators, in the engine's task: a
//! browser desktop is one more phone of its operator. To the engine it is
//! a registered binding on a [`Transport::Browser`] flow, offered calls
//! like any phone (ring-all with a desk phone, ring timeout, CANCEL,
//! requeue); this module answers for it in SIP and speaks to the browser
//! over its desk WebSocket in JSON. Its media ends on the call's operator
//! port, in the media threads (`MediaPlane::browser_accept`), so the
//! engine's whole call model (relay, whisper, recording, liveness, a
//! silent browser requeued as a silent phone is) holds unchanged.
//!
//! No SIP message of a browser leaves the process: the engine's requests
//! come here as its outputs on the browser's flow, and what the browser
//! does goes back to the engine as messages on that flow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use centralino_b2bua::Engine;
use centralino_media::g711::Law;
use centralino_media::relay::Side;
use centralino_media::sdp::{self, Direction, Local};
use centralino_sip::guard::{Limits, parse_message, reason_phrase};
use centralino_sip::txn::Flow;
use centralino_sip::{Message, Method, Transport, Via};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::media::MediaPlane;

mod consult;
use consult::Consultation;

/// Most calls one browser rings with at once (one is talked, one can
/// ring meanwhile; anything more is refused busy).
const MAX_DIALOGS: usize = 4;

/// What a desk's WebSocket asks of the gateway.
#[derive(Debug)]
pub enum BrowserIn {
    /// The desk's browser takes calls (its operator's own session).
    Open {
        /// The operator.
        agent: String,
        /// The desk connection, unique in the process.
        session: u64,
        /// Where the gateway's events for this desk go.
        tx: mpsc::UnboundedSender<BrowserOut>,
    },
    /// The desk closed or stopped taking calls.
    Close {
        /// The desk connection.
        session: u64,
    },
    /// The operator answers a ringing call with the browser's SDP offer.
    Answer {
        /// The desk connection.
        session: u64,
        /// The call, as `ring` named it.
        call: String,
        /// The browser's offer.
        sdp: String,
    },
    /// The operator transfers the talked call blind to `to` (a queue of
    /// the firm; the engine decides).
    Transfer {
        /// The desk connection.
        session: u64,
        /// The call.
        call: String,
        /// The target's name.
        to: String,
    },
    /// The operator consults a colleague or a queue of their firm about
    /// the talked call `call` (attended transfer): the browser places a
    /// second call, with the SDP offer of a second WebRTC connection.
    Consult {
        /// The desk connection.
        session: u64,
        /// The talked call the consultation is about.
        call: String,
        /// The colleague's or the queue's name.
        to: String,
        /// The browser's offer for the consultation's audio.
        sdp: String,
    },
    /// The operator hands the caller of `call` to the colleague their
    /// answered consultation reached (REFER with Replaces, RFC 3891).
    Complete {
        /// The desk connection.
        session: u64,
        /// The talked call.
        call: String,
    },
    /// The operator holds the talked call (`on`: the caller hears the
    /// music) or resumes it.
    Hold {
        /// The desk connection.
        session: u64,
        /// The call.
        call: String,
        /// Hold (else resume).
        on: bool,
    },
    /// The operator refuses a ringing call or hangs up a talked one.
    Hangup {
        /// The desk connection.
        session: u64,
        /// The call.
        call: String,
    },
}

/// What the gateway tells a desk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrowserOut {
    /// The browser is a phone of the operator now (or could not be).
    Phone {
        /// Registered.
        on: bool,
    },
    /// A call rings in the browser.
    Ring {
        /// The call's id for this desk (the operator leg's Call-ID).
        call: String,
        /// The call record (its desk data comes with the `offered` event).
        record: String,
    },
    /// A call this operator's phone talks already (a desk taking the
    /// phone over): it can be held, transferred, hung up from here.
    Talking {
        /// The call.
        call: String,
        /// The call record.
        record: String,
    },
    /// Whether the talked call `call` is held now (after the node took or
    /// refused a hold or a resume, and to a desk taking the phone over).
    Held {
        /// The call.
        call: String,
        /// Held.
        on: bool,
    },
    /// The node moved the call `call` to another of its ports (the
    /// operator was handed a caller by an attended transfer): the browser
    /// makes a new connection and answers with its offer, as at `Ring`.
    Move {
        /// The call.
        call: String,
    },
    /// The operator's consultation about `about` was not placed.
    ConsultRefused {
        /// The talked call it was to be about.
        about: String,
        /// Why, for the operator.
        message: String,
    },
    /// The operator's consultation `call` about `about` is placed (its
    /// audio comes with `Answer` when the colleague answers).
    Consulting {
        /// The consultation's id for this desk.
        call: String,
        /// The talked call it is about.
        about: String,
    },
    /// The node's SDP answer: the browser sets it and audio flows.
    Answer {
        /// The call.
        call: String,
        /// The SDP answer.
        sdp: String,
    },
    /// The call is over for this browser (`cancelled`, `hangup`,
    /// `refused`, `transferred`).
    Ended {
        /// The call.
        call: String,
        /// Why.
        reason: &'static str,
    },
    /// The browser's answer could not be used.
    Error {
        /// The call.
        call: String,
        /// Why, for the operator.
        message: String,
    },
}

/// One call offered to a browser.
struct Dialog {
    /// The engine's INVITE (responses are built from it).
    invite: Message,
    /// Our To tag.
    tag: String,
    /// The call's operator port, as the engine's offer names it.
    port: SocketAddr,
    /// The engine's formats, to answer with one of them.
    formats: Vec<u8>,
    /// Answered: the law of the browser's leg and our SDP's version.
    answered: Option<(Law, u64)>,
    /// Our next CSeq in this dialog.
    cseq: u32,
    /// A consultation this browser placed: the dialog is the browser's as
    /// caller (`invite` is ours, the node's answer brings its offer).
    consult: Option<Consultation>,
    /// A transfer asked for (the node's BYE that follows ends the call
    /// here as `transferred`).
    transferring: bool,
    /// The operator holds the call (our SDP says `sendonly`).
    held: bool,
    /// The engine's re-INVITE naming another of its ports (an attended
    /// transfer moved this operator onto the caller's call), answered once
    /// the desk's new WebRTC offer makes the leg there.
    moving: Option<Moving>,
}

struct Phone {
    agent: String,
    tx: mpsc::UnboundedSender<BrowserOut>,
    flow: Flow,
    dialogs: HashMap<String, Dialog>,
    /// The desk connection that owns it now (a reconnected or reloaded
    /// desk of the same operator takes it over, calls and all).
    owner: u64,
    /// A desk is connected: the binding is up and calls ring here.
    attached: bool,
    /// When this browser last placed a consultation (a colleague's phone
    /// is not rung again and again from a page).
    consulted: Option<Instant>,
}

/// A re-INVITE moving a browser's call to another port of the node.
struct Moving {
    invite: Message,
    port: SocketAddr,
    formats: Vec<u8>,
}

/// The browsers the node answers for: one browser phone per operator,
/// numbered by the desk connection that opened it (its flow's `conn`).
#[derive(Default)]
pub(crate) struct Browsers {
    phones: HashMap<u64, Phone>,
    by_agent: HashMap<String, u64>,
    limits: Limits,
    tokens: u64,
}

impl Browsers {
    fn token(&mut self) -> String {
        // Tags and branches must be unique, not secret: the messages never
        // leave the process.
        self.tokens += 1;
        format!("wb{}x{}", self.tokens, std::process::id())
    }

    /// A desk's request.
    pub(crate) fn input(
        &mut self,
        engine: &mut Engine,
        plane: &mut MediaPlane,
        now: Instant,
        input: BrowserIn,
    ) {
        match input {
            BrowserIn::Open { agent, session, tx } => {
                let tokens = self.tokens;
                self.tokens += 1;
                if let Some(&id) = self.by_agent.get(&agent)
                    && let Some(phone) = self.phones.get_mut(&id)
                {
                    // The same operator's desk again (a reconnect, a
                    // reload, another tab): it takes the phone over, with
                    // the call it may be talking.
                    if phone.owner != session {
                        let _ = phone.tx.send(BrowserOut::Phone { on: false });
                    }
                    phone.tx = tx;
                    phone.owner = session;
                    if !phone.attached {
                        phone.attached = engine.browser_phone(now, &agent, id, true).is_some();
                    }
                    let _ = phone.tx.send(BrowserOut::Phone { on: phone.attached });
                    // A consultation was the other page's (its connection,
                    // its buttons): it ends, the caller waits on hold for
                    // this page.
                    consult::end_all(engine, now, phone, None, tokens);
                    // The calls it talks, so the new page can hold, resume,
                    // transfer or hang them up (and make the leg a move
                    // waits for).
                    for (call, d) in &phone.dialogs {
                        if d.answered.is_none() || d.consult.is_some() {
                            continue;
                        }
                        let record = d.invite.header("X-Centralino-Call").unwrap_or_default();
                        let _ = phone.tx.send(BrowserOut::Talking {
                            call: call.clone(),
                            record: record.to_owned(),
                        });
                        let _ = phone.tx.send(BrowserOut::Held {
                            call: call.clone(),
                            on: d.held,
                        });
                        if d.moving.is_some() {
                            let _ = phone.tx.send(BrowserOut::Move { call: call.clone() });
                        }
                    }
                    return;
                }
                let flow = engine.browser_phone(now, &agent, session, true);
                let _ = tx.send(BrowserOut::Phone { on: flow.is_some() });
                if let Some(flow) = flow {
                    self.by_agent.insert(agent.clone(), session);
                    self.phones.insert(
                        session,
                        Phone {
                            agent,
                            tx,
                            flow,
                            dialogs: HashMap::new(),
                            owner: session,
                            attached: true,
                            consulted: None,
                        },
                    );
                }
            }
            BrowserIn::Close { session } => {
                let tokens = self.tokens;
                self.tokens += 1;
                let Some((&id, phone)) = self.phones.iter_mut().find(|(_, p)| p.owner == session)
                else {
                    return;
                };
                if phone.attached {
                    engine.browser_phone(now, &phone.agent, id, false);
                    phone.attached = false;
                }
                let ringing: Vec<String> = phone
                    .dialogs
                    .iter()
                    .filter(|(_, d)| d.answered.is_none())
                    .map(|(c, _)| c.clone())
                    .collect();
                // Its consultation ends with the desk: nobody is left to
                // hand the caller over (a page that comes back resumes them).
                consult::end_all(engine, now, phone, None, tokens);
                for call in ringing {
                    if phone.dialogs.get(&call).is_none_or(|d| d.consult.is_some()) {
                        continue;
                    }
                    // Ringing: the offer fails at once, not at the ring
                    // timeout.
                    if let Some(d) = phone.dialogs.remove(&call) {
                        let busy = d
                            .invite
                            .response(480, "Temporarily Unavailable", Some(&d.tag));
                        feed(engine, now, phone.flow, &busy);
                    }
                }
                for d in phone.dialogs.values_mut() {
                    // No desk to make the leg on the new port.
                    if let Some(mv) = d.moving.take() {
                        let r = mv.invite.response(480, reason_phrase(480), None);
                        feed(engine, now, phone.flow, &r);
                    }
                }
                // A call talked goes on while its media flows: the desk
                // that comes back takes it over; a browser gone for good
                // is a silent phone (the caller goes back to the queue).
                self.forget_if_idle(id);
            }
            BrowserIn::Answer { session, call, sdp } => {
                self.answer(engine, plane, now, session, &call, &sdp);
            }
            BrowserIn::Transfer { session, call, to } => {
                let tokens = self.tokens;
                self.tokens += 1;
                let Some(phone) = self.owned(session) else {
                    return;
                };
                let flow = phone.flow;
                let valid = consult::valid_name(&to);
                if phone
                    .dialogs
                    .values()
                    .any(|d| d.consult.as_ref().is_some_and(|c| c.about == call))
                {
                    // One transfer at a time: hand over or end it first.
                    let _ = phone.tx.send(BrowserOut::Error {
                        call,
                        message: "a consultation is under way: hand the call over or go back first"
                            .into(),
                    });
                    return;
                }
                let Some(d) = phone
                    .dialogs
                    .get_mut(&call)
                    .filter(|d| d.answered.is_some())
                else {
                    let _ = phone.tx.send(BrowserOut::Error {
                        call,
                        message: "no call talked here to transfer".into(),
                    });
                    return;
                };
                if !valid {
                    let _ = phone.tx.send(BrowserOut::Error {
                        call,
                        message:
                            "a transfer target is a queue's or a colleague's name, or a number"
                                .into(),
                    });
                    return;
                }
                d.transferring = true;
                let mut refer = in_dialog(d, flow, Method::Refer, tokens);
                refer.push("Refer-To", &format!("<sip:{to}@{}>", flow.local));
                refer.push("Referred-By", &contact(&phone.agent));
                feed(engine, now, flow, &refer);
            }
            BrowserIn::Consult {
                session,
                call,
                to,
                sdp,
            } => self.consult(engine, now, session, call, to, sdp),
            BrowserIn::Complete { session, call } => self.complete(engine, now, session, call),
            BrowserIn::Hold { session, call, on } => {
                let tokens = self.tokens;
                self.tokens += 1;
                let Some(phone) = self.owned(session) else {
                    return;
                };
                let flow = phone.flow;
                let Some(d) = phone.dialogs.get_mut(&call) else {
                    return;
                };
                let Some((law, version)) = d.answered else {
                    return;
                };
                d.answered = Some((law, version + 1));
                d.held = on;
                let mut reinvite = in_dialog(d, flow, Method::Invite, tokens);
                reinvite.push("Contact", &contact(&phone.agent));
                reinvite.set_body(
                    Some("application/sdp"),
                    local_sdp(d.port, law, version + 1, direction(on)),
                );
                feed(engine, now, flow, &reinvite);
            }
            BrowserIn::Hangup { session, call } => {
                // Two: the BYE, and the consultation's that may follow.
                let tokens = self.tokens;
                self.tokens += 2;
                let Some(phone) = self.owned(session) else {
                    return;
                };
                let flow = phone.flow;
                if phone
                    .dialogs
                    .get(&call)
                    .is_some_and(|d| d.consult.is_some() && d.answered.is_none())
                {
                    consult::cancel(engine, now, phone, &call);
                    let _ = phone.tx.send(BrowserOut::Ended {
                        call,
                        reason: "hangup",
                    });
                    return;
                }
                let Some(mut d) = phone.dialogs.remove(&call) else {
                    return;
                };
                if let Some(mv) = d.moving.take() {
                    // The move is not taken: the engine puts the caller
                    // back in queue.
                    let r = mv.invite.response(488, reason_phrase(488), None);
                    feed(engine, now, flow, &r);
                }
                if d.consult.is_none() {
                    consult::end_all(engine, now, phone, Some(&call), tokens + 1);
                }
                if d.answered.is_none() {
                    feed(
                        engine,
                        now,
                        flow,
                        &d.invite.response(603, "Decline", Some(&d.tag)),
                    );
                    let _ = phone.tx.send(BrowserOut::Ended {
                        call,
                        reason: "refused",
                    });
                    return;
                }
                let bye = in_dialog(&mut d, flow, Method::Bye, tokens);
                feed(engine, now, flow, &bye);
                let _ = phone.tx.send(BrowserOut::Ended {
                    call,
                    reason: "hangup",
                });
            }
        }
    }

    /// The phone the desk connection `session` owns now.
    fn owned(&mut self, session: u64) -> Option<&mut Phone> {
        self.phones.values_mut().find(|p| p.owner == session)
    }

    /// A phone with no desk and no call is forgotten.
    fn forget_if_idle(&mut self, id: u64) {
        if let Some(p) = self.phones.get(&id)
            && !p.attached
            && p.dialogs.is_empty()
        {
            self.by_agent.remove(&p.agent);
            self.phones.remove(&id);
        }
    }

    fn answer(
        &mut self,
        engine: &mut Engine,
        plane: &mut MediaPlane,
        now: Instant,
        session: u64,
        call: &str,
        offer: &str,
    ) {
        let Some(phone) = self.owned(session) else {
            return;
        };
        let flow = phone.flow;
        let Some(d) = phone.dialogs.get_mut(call) else {
            let _ = phone.tx.send(BrowserOut::Error {
                call: call.to_owned(),
                message: "this call no longer rings here".into(),
            });
            return;
        };
        if let Some(mv) = d.moving.take() {
            // The leg made anew on the port the engine's re-INVITE names.
            let version = d.answered.map_or(1, |(_, v)| v + 1);
            match plane.browser_accept(mv.port, Side::B, offer, &laws_of(&mv.formats)) {
                Ok((law, answer)) => {
                    d.port = mv.port;
                    d.answered = Some((law, version));
                    let mut ok = mv.invite.response(200, "OK", None);
                    ok.push("Contact", &contact(&phone.agent));
                    ok.set_body(
                        Some("application/sdp"),
                        local_sdp(d.port, law, version, direction(d.held)),
                    );
                    info!(agent = %phone.agent, "browser moved onto another call's port");
                    let _ = phone.tx.send(BrowserOut::Answer {
                        call: call.to_owned(),
                        sdp: answer,
                    });
                    feed(engine, now, flow, &ok);
                }
                Err(e) => {
                    warn!(agent = %phone.agent, error = %e, "browser could not move");
                    let _ = phone.tx.send(BrowserOut::Error {
                        call: call.to_owned(),
                        message: e.to_string(),
                    });
                    feed(
                        engine,
                        now,
                        flow,
                        &mv.invite.response(488, reason_phrase(488), None),
                    );
                }
            }
            return;
        }
        if d.answered.is_some() {
            return;
        }
        // The engine's laws only: the leg is never made in a law the call
        // cannot use.
        let laws = laws_of(&d.formats);
        let (law, answer) = match plane.browser_accept(d.port, Side::B, offer, &laws) {
            Ok(x) => x,
            Err(e) => {
                warn!(agent = %phone.agent, error = %e, "browser answer refused");
                let _ = phone.tx.send(BrowserOut::Error {
                    call: call.to_owned(),
                    message: e.to_string(),
                });
                return;
            }
        };
        d.answered = Some((law, 1));
        let ok = ok_with_sdp(d, &phone.agent, law, 1);
        info!(agent = %phone.agent, "browser answered");
        let _ = phone.tx.send(BrowserOut::Answer {
            call: call.to_owned(),
            sdp: answer,
        });
        feed(engine, now, flow, &ok);
    }

    /// A message the engine sent on a browser's flow.
    pub(crate) fn transmit(
        &mut self,
        engine: &mut Engine,
        plane: &mut MediaPlane,
        now: Instant,
        flow: Flow,
        bytes: &[u8],
    ) {
        let Ok(msg) = parse_message(bytes, &self.limits, false) else {
            return;
        };
        if !msg.is_request()
            && *msg.method() == Method::Invite
            && self.phones.get(&flow.conn).is_some_and(|p| {
                p.dialogs
                    .get(msg.call_id.as_str())
                    .is_some_and(|d| d.consult.is_some() && d.invite.cseq == msg.cseq)
            })
        {
            // The node's answer to the consultation this browser placed
            // (two numbers: its ACK, and a BYE that may follow).
            let tokens = self.tokens;
            self.tokens += 2;
            if let Some(phone) = self.phones.get_mut(&flow.conn) {
                consult::on_response(engine, plane, now, phone, &msg, tokens);
            }
            self.forget_if_idle(flow.conn);
            return;
        }
        if !msg.is_request() && *msg.method() == Method::Invite {
            // The answer to our re-INVITE (hold, resume): acknowledged,
            // as RFC 3261 §13.2.2.4 wants of every 2xx.
            if let Some(phone) = self.phones.get_mut(&flow.conn)
                && let Some(d) = phone.dialogs.get_mut(msg.call_id.as_str())
            {
                if (200..300).contains(&msg.code()) {
                    let _ = phone.tx.send(BrowserOut::Held {
                        call: msg.call_id.to_string(),
                        on: d.held,
                    });
                    let mut ack = in_dialog(d, flow, Method::Ack, self.tokens);
                    self.tokens += 1;
                    // The ACK names the INVITE's CSeq, not a new one.
                    d.cseq -= 1;
                    ack.cseq = msg.cseq;
                    ack.remove("CSeq");
                    ack.push("CSeq", &format!("{} ACK", msg.cseq));
                    feed(engine, now, flow, &ack);
                } else if msg.code() >= 300 {
                    // Refused: the call stays as it was.
                    d.held = !d.held;
                    let _ = phone.tx.send(BrowserOut::Error {
                        call: msg.call_id.to_string(),
                        message: format!("hold refused: {}", msg.code()),
                    });
                    let _ = phone.tx.send(BrowserOut::Held {
                        call: msg.call_id.to_string(),
                        on: d.held,
                    });
                }
            }
            return;
        }
        if !msg.is_request() {
            // A refused transfer is told; answers to our BYE need nothing.
            if *msg.method() == Method::Refer
                && msg.code() >= 300
                && let Some(phone) = self.phones.get_mut(&flow.conn)
            {
                for (call, d) in &mut phone.dialogs {
                    // The call itself, and its consultation (an attended
                    // transfer's REFER names the caller's call).
                    if *call == msg.call_id
                        || d.consult.as_ref().is_some_and(|c| c.about == msg.call_id)
                    {
                        d.transferring = false;
                    }
                }
                let _ = phone.tx.send(BrowserOut::Error {
                    call: msg.call_id.to_string(),
                    message: format!("transfer refused: {}", msg.code()),
                });
            }
            return;
        }
        let session = flow.conn;
        let method = msg.method().clone();
        let tag = self.token();
        let n = self.tokens;
        self.tokens += 1;
        let Some(phone) = self.phones.get_mut(&session) else {
            // The desk is gone: its calls end cleanly.
            let code = match method {
                Method::Bye | Method::Cancel | Method::Options => 200,
                Method::Ack => return,
                Method::Invite if msg.to_tag.is_none() => 480,
                _ => 481,
            };
            feed(
                engine,
                now,
                flow,
                &msg.response(code, reason_phrase(code), Some(&tag)),
            );
            return;
        };
        match method {
            Method::Invite if msg.to_tag.is_none() => {
                let offer = sdp::parse(&msg.body).ok();
                let Some(offer) = offer.filter(|o| o.port != 0) else {
                    feed(
                        engine,
                        now,
                        flow,
                        &msg.response(488, reason_phrase(488), Some(&tag)),
                    );
                    return;
                };
                if !phone.attached {
                    // Kept only for the call it talks: nothing new rings.
                    feed(
                        engine,
                        now,
                        flow,
                        &msg.response(480, reason_phrase(480), Some(&tag)),
                    );
                    return;
                }
                if phone.dialogs.len() >= MAX_DIALOGS {
                    feed(
                        engine,
                        now,
                        flow,
                        &msg.response(486, reason_phrase(486), Some(&tag)),
                    );
                    return;
                }
                let call = msg.call_id.to_string();
                let record = msg
                    .header("X-Centralino-Call")
                    .unwrap_or_default()
                    .to_owned();
                feed(engine, now, flow, &msg.response(180, "Ringing", Some(&tag)));
                phone.dialogs.insert(
                    call.clone(),
                    Dialog {
                        invite: msg,
                        tag,
                        port: SocketAddr::new(offer.addr, offer.port),
                        formats: offer.formats,
                        answered: None,
                        cseq: 1,
                        transferring: false,
                        held: false,
                        consult: None,
                        moving: None,
                    },
                );
                let _ = phone.tx.send(BrowserOut::Ring { call, record });
            }
            Method::Invite
                if phone.dialogs.get(msg.call_id.as_str()).is_some_and(|d| {
                    d.answered.is_some() && d.consult.is_none() && moves(d, &msg.body).is_some()
                }) =>
            {
                // Another port of the node: the desk makes a new WebRTC
                // leg there and its offer answers (see `answer`); a desk
                // gone cannot (the engine puts the caller back in queue).
                let d = phone
                    .dialogs
                    .get_mut(msg.call_id.as_str())
                    .expect("checked");
                let code = if !phone.attached {
                    480
                } else if d.moving.is_some() {
                    491
                } else {
                    let (port, formats) = moves(d, &msg.body).expect("checked");
                    let call = msg.call_id.to_string();
                    d.moving = Some(Moving {
                        invite: msg,
                        port,
                        formats,
                    });
                    let _ = phone.tx.send(BrowserOut::Move { call });
                    return;
                };
                feed(
                    engine,
                    now,
                    flow,
                    &msg.response(code, reason_phrase(code), None),
                );
            }
            Method::Invite => {
                // A re-INVITE (session refresh, the caller's hold): the
                // browser's leg stays as it is; the same answer.
                let resp = match phone.dialogs.get_mut(msg.call_id.as_str()) {
                    Some(d) if d.answered.is_some() => {
                        let (law, version) = d.answered.expect("checked");
                        d.answered = Some((law, version + 1));
                        let mut r = msg.response(200, "OK", None);
                        r.push("Contact", &contact(&phone.agent));
                        r.set_body(
                            Some("application/sdp"),
                            local_sdp(d.port, law, version + 1, direction(d.held)),
                        );
                        r
                    }
                    _ => msg.response(481, reason_phrase(481), None),
                };
                feed(engine, now, flow, &resp);
            }
            Method::Ack => {}
            Method::Bye => {
                let known = phone.dialogs.remove(msg.call_id.as_str());
                let code = if known.is_some() { 200 } else { 481 };
                feed(
                    engine,
                    now,
                    flow,
                    &msg.response(code, reason_phrase(code), None),
                );
                if let Some(d) = known {
                    let _ = phone.tx.send(BrowserOut::Ended {
                        call: msg.call_id.to_string(),
                        reason: if d.transferring {
                            "transferred"
                        } else {
                            "hangup"
                        },
                    });
                    if let Some(mv) = d.moving {
                        let r = mv.invite.response(487, reason_phrase(487), None);
                        feed(engine, now, flow, &r);
                    }
                    // The caller gone, their consultation has no purpose
                    // (one handing them over the node ends itself).
                    if d.consult.is_none() {
                        consult::end_all(engine, now, phone, Some(&msg.call_id), n);
                    }
                }
            }
            Method::Cancel => {
                feed(engine, now, flow, &msg.response(200, "OK", None));
                if let Some(d) = phone.dialogs.remove(msg.call_id.as_str()) {
                    // Ringing: the INVITE ends 487. Answered here while the
                    // CANCEL was on its way: the engine took another
                    // phone's answer and drops ours; the leg ends too.
                    if d.answered.is_none() {
                        let r = d.invite.response(487, reason_phrase(487), Some(&d.tag));
                        feed(engine, now, flow, &r);
                    }
                    let _ = phone.tx.send(BrowserOut::Ended {
                        call: msg.call_id.to_string(),
                        reason: "cancelled",
                    });
                    consult::end_all(engine, now, phone, Some(&msg.call_id), n);
                }
            }
            // An offer in an UPDATE is not taken (the leg stays as it is).
            Method::Update if !msg.body.is_empty() => {
                feed(
                    engine,
                    now,
                    flow,
                    &msg.response(488, reason_phrase(488), None),
                );
            }
            Method::Options | Method::Info | Method::Update | Method::Notify => {
                feed(engine, now, flow, &msg.response(200, "OK", None));
            }
            _ => feed(
                engine,
                now,
                flow,
                &msg.response(501, reason_phrase(501), None),
            ),
        }
        self.forget_if_idle(session);
    }
}

/// The port and formats an engine's re-INVITE names for `d`, when it is
/// another port than the leg's.
fn moves(d: &Dialog, body: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let o = sdp::parse(body).ok().filter(|o| o.port != 0)?;
    let port = SocketAddr::new(o.addr, o.port);
    (port != d.port).then_some((port, o.formats))
}

/// The G.711 laws among an SDP's payload types, in its order.
fn laws_of(formats: &[u8]) -> Vec<Law> {
    formats
        .iter()
        .filter_map(|&pt| match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        })
        .collect()
}

/// Hands a message to the engine as if it came on the browser's flow.
fn feed(engine: &mut Engine, now: Instant, flow: Flow, msg: &Message) {
    engine.handle_datagram(now, flow, &msg.to_bytes());
}

fn contact(agent: &str) -> String {
    format!("<sip:{agent}@browser.invalid;transport=ws>")
}

/// Our SDP for the engine: the call's own operator port, where the
/// browser's WebRTC leg ends, in the browser's law.
/// Our direction: `sendonly` while the operator holds the call.
fn direction(held: bool) -> Direction {
    if held {
        Direction::SendOnly
    } else {
        Direction::SendRecv
    }
}

fn local_sdp(port: SocketAddr, law: Law, version: u64, direction: Direction) -> Vec<u8> {
    Local {
        addr: port.ip(),
        port: port.port(),
        formats: &[law.payload_type()],
        telephone_event: None,
        direction,
        session: u64::from(port.port()),
        version,
    }
    .to_bytes()
}

fn ok_with_sdp(d: &Dialog, agent: &str, law: Law, version: u64) -> Message {
    let mut ok = d.invite.response(200, "OK", Some(&d.tag));
    ok.push("Contact", &contact(agent));
    ok.set_body(
        Some("application/sdp"),
        local_sdp(d.port, law, version, Direction::SendRecv),
    );
    ok
}

/// The browser's request (BYE, REFER, ACK) in one of its dialogs: one the
/// engine's INVITE made (the browser answered), or its own consultation
/// (the browser called).
fn in_dialog(d: &mut Dialog, flow: Flow, method: Method, n: u64) -> Message {
    let inv = &d.invite;
    let uri = || inv.request_uri().unwrap_or_default().to_owned();
    let (target, from, to) = match &d.consult {
        Some(c) => (
            c.target.clone().unwrap_or_else(uri),
            inv.header("From").unwrap_or_default().to_owned(),
            format!(
                "{};tag={}",
                inv.header("To").unwrap_or_default(),
                c.remote_tag.as_deref().unwrap_or_default()
            ),
        ),
        None => (
            inv.header("Contact").map_or_else(uri, contact_uri),
            format!("{};tag={}", inv.header("To").unwrap_or_default(), d.tag),
            inv.header("From").unwrap_or_default().to_owned(),
        ),
    };
    let via = Via {
        transport: Transport::Browser.as_str().into(),
        sent_by: flow.remote.to_string().into(),
        branch: format!("z9hG4bKwb{n}x{}", d.cseq).into(),
    };
    let req = Message::new_request(method, &target, via, &from, &to, &inv.call_id, d.cseq);
    d.cseq += 1;
    req
}

/// The URI of a `Contact` value.
fn contact_uri(c: &str) -> String {
    c.trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or(c)
        .to_owned()
}
