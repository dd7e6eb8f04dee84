//! An operator's desk: the offered call with the IVR's answers, its
//! events over a WebSocket, and the operator's state.

use super::*;

/// What a desktop shows: the call with the IVR's answers, the script, the
/// callback.
pub(super) fn desk_json(d: &AgentCall) -> Value {
    let variables: serde_json::Map<String, Value> = d
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "state": d.state.as_str(),
        "call": d.call,
        "queue": d.queue,
        "flow": d.flow,
        "variables": variables,
        "script": d.script,
        "callback": d.callback,
        "campaign": d.campaign,
        "contact": d.contact,
        "consultation": d.consultation,
    })
}

pub(super) async fn get_agent_call(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match authorize(&api, &headers, Need::Desk(&name)) {
        Err(r) => *r,
        Ok(t) => match api.desks.current(&name) {
            None => error(StatusCode::NOT_FOUND, "no call for this operator now"),
            Some(d) => {
                // Desktops poll: each (reader, call) is audited once.
                if api.desks.first_read(&t.name, &d.call) {
                    api.audit_as(&t.name, "agent_call", &d.call, StatusCode::OK);
                }
                ok(StatusCode::OK, &desk_json(&d))
            }
        },
    }
}

/// `GET /api/v1/agents/{name}/figures`: what the operator's desktop shows
/// of their work: each of their queues now (calls waiting, the oldest
/// wait, the expected wait, colleagues free: the engine's published view,
/// no store read, so 40,000 desktops polling cost nothing) and their own
/// calls answered and talk time today (kept by the desks from the
/// engine's news since midnight in Rome; the store's reports are the
/// record across restarts).
pub(super) async fn get_agent_figures(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if let Err(r) = authorize(&api, &headers, Need::Desk(&name)) {
        return *r;
    }
    let live = api.live();
    let Some(mine) = live.agent_queues.get(&name) else {
        return error(StatusCode::NOT_FOUND, "no such operator");
    };
    let views = api.desks.queues.borrow().clone();
    let now = unix_now_ms();
    let queues: Vec<Value> = mine
        .iter()
        .filter_map(|q| views.iter().find(|v| v.name == *q))
        .map(|q| {
            let available = q
                .agents
                .iter()
                .find(|(label, _)| *label == "available")
                .map_or(0, |(_, n)| *n);
            json!({
                "name": q.name,
                "waiting": q.waiting,
                "oldest_wait_seconds": q.oldest_since_ms.map_or(0, |t| (now - t).max(0) / 1000),
                "expected_wait_seconds": q.expected_wait_seconds,
                "available": available,
            })
        })
        .collect();
    let (calls, talk) = api.desks.today(&name);
    ok(
        StatusCode::OK,
        &json!({
            "agent": name,
            "queues": queues,
            "today": { "calls": calls, "talk_seconds": talk.as_secs() },
        }),
    )
}

/// Longest a desktop may take to accept one event before it is dropped.
pub(super) const DESK_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a desktop's operator state is read from the board.
pub(super) const DESK_STATE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Keep-alive towards desktops (and the proxies between).
pub(super) const DESK_PING: std::time::Duration = std::time::Duration::from_secs(30);

/// Desktops send control frames and a browser phone's SDP offer (at most
/// 16 KiB, `centralino_media::webrtc::MAX_OFFER`); anything larger is
/// refused.
pub(super) const DESK_MAX_MESSAGE: usize = 32 * 1024;

/// `GET /api/v1/agents/{name}/events`: a WebSocket that pushes the
/// operator's desk: the current state at once, then every change
/// (`offered`, `connected`, `idle`), each with a sequence number. The
/// desktop page authenticates with its session cookie, other clients with
/// the `Authorization` header: never a token in the URL (proxies and
/// browsers' histories keep URLs).
pub(super) async fn agent_events(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    upgrade: Upgrade,
) -> Response {
    let token = bearer(&headers);
    match authorize_token(&api, token, Need::Desk(&name)) {
        Err(r) => *r,
        Ok(_) if !api.live().agents.contains(&name) => {
            error(StatusCode::NOT_FOUND, "no such operator")
        }
        Ok(t) => match upgrade {
            Err(e) => upgrade_required(&e),
            Ok(ws) => {
                let rx = api.desks.watch(&name);
                let gauge = api.net.desk_connections.clone();
                let recheck = Recheck::new(
                    &api,
                    token.unwrap_or_default(),
                    Some(&name),
                    t.tenant.clone(),
                );
                let (api2, actor) = (api.clone(), t.name.clone());
                // Only the operator's own session may make this browser
                // one of their phones (an admin reading a desk must never
                // take its calls).
                let phone = t.role == centralino_config::Role::Agent;
                ws.max_message_size(DESK_MAX_MESSAGE)
                    .max_frame_size(DESK_MAX_MESSAGE)
                    .on_upgrade(move |socket| async move {
                        gauge.inc();
                        desk_socket(socket, rx, api2, name, actor, recheck, phone).await;
                        gauge.dec();
                    })
            }
        },
    }
}

pub(super) async fn desk_socket(
    mut socket: axum::extract::ws::WebSocket,
    mut rx: tokio::sync::watch::Receiver<u64>,
    api: Api,
    agent: String,
    actor: String,
    mut recheck: Recheck,
    may_phone: bool,
) {
    let desks = api.desks.clone();
    let (btx, mut brx) = tokio::sync::mpsc::unbounded_channel();
    let mut phone = PhoneGuard {
        session: NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        engine: api.engine.tx.clone(),
        open: false,
        allowance: PHONE_BURST,
        refilled: std::time::Instant::now(),
    };
    // Each call whose data this desktop receives is in the audit log once.
    let mut audited: Option<String> = None;
    let mut audit = |d: Option<&AgentCall>| {
        if let Some(d) = d
            && audited.as_deref() != Some(d.call.as_str())
        {
            audited = Some(d.call.clone());
            api.audit_as(&actor, "agent_events_call", &d.call, StatusCode::OK);
        }
    };
    use axum::extract::ws::Message;
    let mut seq = 0u64;
    let mut ping = tokio::time::interval(DESK_PING);
    ping.tick().await;
    // The operator's own state is read from the board (lock-free) a few
    // times a second and pushed when it changes.
    let mut poll = tokio::time::interval(DESK_STATE_POLL);
    // The current state first, then every change after it.
    rx.borrow_and_update();
    let (mut seen, first) = desks.snapshot(&agent);
    audit(first.as_deref());
    let mut pending = vec![call_event(first.as_deref())];
    let mut shown_state = None;
    loop {
        for event in pending.drain(..) {
            if !send_seq(&mut socket, &mut seq, event).await {
                return;
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                rx.borrow_and_update();
                match desks.since(&agent, seen) {
                    Since::Events(events, newest) => {
                        for e in &events {
                            audit(e.as_deref());
                            pending.push(call_event(e.as_deref()));
                        }
                        seen = newest;
                    }
                    Since::Gap(now, missed, newest) => {
                        audit(now.as_deref());
                        let mut e = call_event(now.as_deref());
                        e["missed"] = json!(missed);
                        pending.push(e);
                        seen = newest;
                    }
                }
            }
            _ = poll.tick() => {
                if !recheck.allowed(&api) {
                    close_revoked(&mut socket).await;
                    return;
                }
                let now = desks.agent_state(&agent);
                if now.is_some() && now != shown_state {
                    shown_state = now;
                    if let Some((state, why)) = now {
                        pending.push(json!({ "event": "agent", "state": state, "reason": why }));
                    }
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                // The browser phone's requests; pings are answered by the
                // WebSocket layer.
                Some(Ok(Message::Text(text))) => {
                    if let Err(message) = phone.request(&agent, may_phone, &btx, &text).await {
                        pending.push(json!({ "event": "phone_error", "message": message }));
                    }
                }
                Some(Ok(_)) => {}
            },
            Some(out) = brx.recv() => {
                // Taken over by another desk of the operator, or refused:
                // this connection's end then closes nothing.
                if let crate::browser::BrowserOut::Phone { on } = &out {
                    phone.open = *on;
                }
                pending.push(browser_event(out));
            }
            _ = ping.tick() => {
                if !send_ws(&mut socket, Message::Ping(Bytes::new())).await {
                    return;
                }
            }
        }
    }
}

/// Desk connections, numbered for the WebRTC gateway.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A desk's browser phone: its requests to the gateway, and its binding
/// removed when the desk's connection ends, however it ends.
struct PhoneGuard {
    session: u64,
    engine: tokio::sync::mpsc::Sender<crate::handle::EngineInput>,
    open: bool,
    /// Requests allowed now (a token bucket: `PHONE_RATE` a second, at most
    /// `PHONE_BURST`), refilled at `refilled`: a desk flooding requests
    /// must not fill the engine's queue that calls share.
    allowance: f64,
    refilled: std::time::Instant,
}

/// A browser phone's requests per second, and in a burst.
const PHONE_RATE: f64 = 20.0;
const PHONE_BURST: f64 = 40.0;

/// A desk's request for its browser phone.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum PhoneRequest {
    /// Take calls in this browser (`on`) or stop.
    Phone { on: bool },
    /// Answer a ringing call with the browser's SDP offer.
    Answer { call: String, sdp: String },
    /// Transfer the talked call blind to a queue or a colleague.
    Transfer { call: String, to: String },
    /// Consult a colleague or a queue about the talked call, with the SDP
    /// offer of the consultation's own WebRTC connection.
    Consult {
        call: String,
        to: String,
        sdp: String,
    },
    /// Hand the caller to the colleague the consultation reached.
    Complete { call: String },
    /// Hold the talked call (the caller hears the music) or resume it.
    Hold { call: String, on: bool },
    /// Refuse a ringing call or hang up.
    Hangup { call: String },
}

impl PhoneGuard {
    async fn request(
        &mut self,
        agent: &str,
        may_phone: bool,
        tx: &tokio::sync::mpsc::UnboundedSender<crate::browser::BrowserOut>,
        text: &str,
    ) -> Result<(), String> {
        use crate::browser::BrowserIn;
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * PHONE_RATE;
        (self.allowance, self.refilled) = ((self.allowance + refill).min(PHONE_BURST), now);
        if self.allowance < 1.0 {
            return Err(format!("too many requests: at most {PHONE_RATE} a second"));
        }
        self.allowance -= 1.0;
        let req: PhoneRequest = serde_json::from_str(text).map_err(|e| {
            format!("expected {{\"type\": \"phone\"|\"answer\"|\"transfer\"|\"consult\"|\"complete\"|\"hold\"|\"hangup\", ...}}: {e}")
        })?;
        let session = self.session;
        let input =
            match req {
                PhoneRequest::Phone { .. } if !may_phone => {
                    return Err("only the operator's own session takes calls in a browser".into());
                }
                PhoneRequest::Phone { on: true } if self.open => return Ok(()),
                PhoneRequest::Phone { on: true } => {
                    self.open = true;
                    BrowserIn::Open {
                        agent: agent.to_owned(),
                        session,
                        tx: tx.clone(),
                    }
                }
                PhoneRequest::Phone { on: false } => {
                    self.open = false;
                    BrowserIn::Close { session }
                }
                _ if !self.open => return Err(
                    "this browser is not a phone: send {\"type\": \"phone\", \"on\": true} first"
                        .into(),
                ),
                PhoneRequest::Answer { call, sdp } => BrowserIn::Answer { session, call, sdp },
                PhoneRequest::Transfer { call, to } => BrowserIn::Transfer { session, call, to },
                PhoneRequest::Consult { call, to, sdp } => BrowserIn::Consult {
                    session,
                    call,
                    to,
                    sdp,
                },
                PhoneRequest::Complete { call } => BrowserIn::Complete { session, call },
                PhoneRequest::Hold { call, on } => BrowserIn::Hold { session, call, on },
                PhoneRequest::Hangup { call } => BrowserIn::Hangup { session, call },
            };
        self.engine
            .send(crate::handle::EngineInput::Browser(input))
            .await
            .map_err(|_| "the node is stopping".to_owned())
    }
}

impl Drop for PhoneGuard {
    fn drop(&mut self) {
        if self.open {
            let (engine, session) = (self.engine.clone(), self.session);
            tokio::spawn(async move {
                let close = crate::browser::BrowserIn::Close { session };
                let _ = engine
                    .send(crate::handle::EngineInput::Browser(close))
                    .await;
            });
        }
    }
}

/// What the gateway tells a desk, as its JSON event.
fn browser_event(out: crate::browser::BrowserOut) -> Value {
    use crate::browser::BrowserOut;
    match out {
        BrowserOut::Phone { on } => json!({ "event": "phone", "on": on }),
        BrowserOut::Talking { call, record } => {
            json!({ "event": "talking", "call": call, "record": record })
        }
        BrowserOut::Ring { call, record } => {
            json!({ "event": "ring", "call": call, "record": record })
        }
        BrowserOut::Answer { call, sdp } => json!({ "event": "sdp", "call": call, "sdp": sdp }),
        BrowserOut::Move { call } => json!({ "event": "move", "call": call }),
        BrowserOut::Held { call, on } => json!({ "event": "held", "call": call, "on": on }),
        BrowserOut::ConsultRefused { about, message } => {
            json!({ "event": "consult_refused", "about": about, "message": message })
        }
        BrowserOut::Consulting { call, about } => {
            json!({ "event": "consulting", "call": call, "about": about })
        }
        BrowserOut::Ended { call, reason } => {
            json!({ "event": "hangup", "call": call, "reason": reason })
        }
        BrowserOut::Error { call, message } => {
            json!({ "event": "phone_error", "call": call, "message": message })
        }
    }
}

/// A desk's call event: `offered`/`connected` with the call, or `idle`.
pub(super) fn call_event(d: Option<&AgentCall>) -> Value {
    d.map_or_else(
        || json!({ "event": "idle" }),
        |d| {
            let mut v = desk_json(d);
            v["event"] = json!(d.state.as_str());
            v
        },
    )
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StateBody {
    pub(super) state: String,
    pub(super) reason: Option<String>,
}

pub(super) async fn agent_state(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    set_state(&api, &headers, name.clone(), &body).await
}

/// `POST /api/v1/agents/{name}/state` `{"state": "paused" | "available" |
/// "logged_out", "reason"?}`: the operator's break from their desktop, or
/// their signing out of the service (back with `available` or `paused`).
pub(super) async fn set_state(
    api: &Api,
    headers: &HeaderMap,
    name: String,
    body: &Bytes,
) -> Response {
    use centralino_b2bua::AgentStateError;
    // The operator from their desk, or a supervisor of their firm from the
    // wallboard (audited under the supervisor's token, as every answer).
    let b: StateBody = match authorized_body(api, headers, body, Need::Operates(&name)) {
        Ok((_, b)) => b,
        Err(r) => return *r,
    };
    let paused = match b.state.as_str() {
        "paused" => Some(true),
        "available" => Some(false),
        "logged_out" => None,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "state: {:?} is none of \"paused\", \"available\", \"logged_out\"",
                    truncate(other)
                ),
            );
        }
    };
    if let Some(r) = &b.reason
        && (r.is_empty()
            || r.len() > 64
            || !r
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "reason: 1 to 64 letters, digits, - and _ (e.g. \"pausa_pranzo\")",
        );
    }
    let answer = match paused {
        Some(paused) => api.engine.set_paused(name.clone(), paused, b.reason).await,
        None => api.engine.sign_out(name.clone(), b.reason).await,
    };
    match answer {
        Ok(state) => ok(StatusCode::OK, &json!({ "agent": name, "state": state })),
        Err(Some(AgentStateError::Unknown)) => error(StatusCode::NOT_FOUND, "no such operator"),
        Err(Some(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(None) => error(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running"),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewBody {
    pub(super) contact: i64,
    pub(super) action: String,
}

/// `POST /api/v1/agents/{name}/preview` `{"contact": id, "action":
/// "accept" | "skip"}`: the operator's answer to the preview campaign's
/// contact on their desk (the desk's `contact`). Accept rings their
/// phone, then the citizen is dialled; skip leaves the contact for later
/// (30 minutes) with nobody dialled. 409 when that contact is not (or no
/// longer) on their desk.
pub(super) async fn agent_preview(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    use centralino_b2bua::PreviewError;
    let b: PreviewBody = match authorized_body(&api, &headers, &body, Need::Desk(&name)) {
        Ok((_, b)) => b,
        Err(r) => return *r,
    };
    let accept = match b.action.as_str() {
        "accept" => true,
        "skip" => false,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "action: {:?} is neither \"accept\" nor \"skip\"",
                    truncate(other)
                ),
            );
        }
    };
    match api.engine.preview(name.clone(), b.contact, accept).await {
        Ok(()) => ok(
            StatusCode::OK,
            &json!({ "agent": name, "contact": b.contact, "action": b.action }),
        ),
        Err(Some(PreviewError::Unknown)) => error(StatusCode::NOT_FOUND, "no such operator"),
        Err(Some(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(None) => error(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running"),
    }
}
