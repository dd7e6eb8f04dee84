//! The supervisor's views: queues, operators, and queue events over a
//! WebSocket, each limited to the token's tenant.

use super::*;

/// What a supervisor sees of the running campaigns (inside their
/// windows): each one's lines and operators now, the abandon rate over the
/// pacer's window, and its contacts by status (the store's count, at most
/// 10 s old). Their tenant's only when the token names one.
pub(super) fn campaigns_json(desks: &Desks, tenant: Option<&str>) -> Value {
    let views = desks.campaigns.borrow().clone();
    let progress = desks.progress.lock().unwrap_or_else(|e| e.into_inner());
    let lines: Vec<Value> = views
        .iter()
        .filter(|c| tenant.is_none_or(|t| c.tenant == t))
        .map(|c| {
            let contacts: serde_json::Map<String, Value> = progress
                .get(&c.id)
                .map(|p| p.iter().map(|(k, n)| ((*k).to_owned(), json!(n))).collect())
                .unwrap_or_default();
            json!({
                "id": c.id,
                "name": c.name,
                "queue": c.queue,
                "tenant": c.tenant,
                "mode": c.mode,
                "lines": c.lines,
                "previews": c.previews,
                "ringing": c.ringing,
                "talking": c.talking,
                "answered": c.answered,
                "abandoned": c.abandoned,
                "abandon_rate": c.abandon_rate,
                "contacts": contacts,
            })
        })
        .collect();
    json!(lines)
}

/// What a supervisor sees of the queues: their tenant's only when the
/// token names one.
pub(super) fn queues_json(views: &[QueueView], tenant: Option<&str>) -> Value {
    let now = unix_now_ms();
    let queues: Vec<Value> = views
        .iter()
        .filter(|q| tenant.is_none_or(|t| q.tenant == t))
        .map(|q| {
            let agents: serde_json::Map<String, Value> = q
                .agents
                .iter()
                .map(|(label, n)| ((*label).to_owned(), json!(n)))
                .collect();
            json!({
                "name": q.name,
                "tenant": q.tenant,
                "waiting": q.waiting,
                "oldest_wait_seconds": q.oldest_since_ms.map_or(0, |t| (now - t).max(0) / 1000),
                "expected_wait_seconds": q.expected_wait_seconds,
                "agents": agents,
                "agents_needed": q.agents_needed,
                "agents_short": q.agents_short,
            })
        })
        .collect();
    json!({ "queues": queues })
}

/// A frame as compared for change: without the oldest waits, which move
/// with the clock, not with events.
fn without_clock(event: &Value) -> Value {
    let mut v = event.clone();
    if let Some(queues) = v["queues"].as_array_mut() {
        for q in queues.iter_mut().filter_map(Value::as_object_mut) {
            q.remove("oldest_wait_seconds");
        }
    }
    v
}

/// `GET /api/v1/queues`: each queue's waiting calls, oldest wait, expected
/// wait and operators by state, and a line per running campaign
/// (supervisor and admin tokens; a supervisor token with a tenant sees
/// that tenant's queues and campaigns only).
pub(super) async fn get_queues(State(api): State<Api>, headers: HeaderMap) -> Response {
    match authorize(&api, &headers, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => {
            let views = api.desks.queues.borrow().clone();
            let mut v = queues_json(&views, t.tenant.as_deref());
            v["campaigns"] = campaigns_json(&api.desks, t.tenant.as_deref());
            // Each queue's callbacks not done yet, from the store (a
            // store that cannot answer leaves them out, `null`).
            let backlog = api.read_store(|s| s.callback_backlog()).await.ok();
            let now = unix_now();
            let forecasts = api
                .forecasts
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(queues) = v["queues"].as_array_mut() {
                for q in queues {
                    let b = backlog.as_ref().map(|all| {
                        all.iter()
                            .find(|b| q["name"].as_str() == Some(b.queue.as_str()))
                    });
                    q["callbacks_open"] = json!(b.map(|b| b.map_or(0, |b| b.open)));
                    q["callbacks_oldest_seconds"] =
                        json!(b.and_then(|b| b.map(|b| (now - b.oldest).max(0))));
                    // The next 15 minutes, from the same interval of the
                    // days before (null without history).
                    let f = q["name"].as_str().and_then(|n| forecasts.get(n));
                    q["forecast"] = f.map_or(Value::Null, |f| {
                        json!({"start": rfc3339(f.start_unix), "offered": f.offered, "agents": f.agents, "days": f.days})
                    });
                }
            }
            ok(StatusCode::OK, &v)
        }
    }
}

/// `GET /api/v1/cluster`: the national network as this node sees it: its
/// NATS connection, the other nodes (up, silent for how long, draining)
/// and each queue summed over the nodes that are up (a supervisor token
/// with a tenant sees that firm's queues only). 404 on a node alone.
pub(super) async fn get_cluster(State(api): State<Api>, headers: HeaderMap) -> Response {
    let t = match authorize(&api, &headers, Need::Supervisor) {
        Err(r) => return *r,
        Ok(t) => t,
    };
    let picture = api
        .desks
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(p) = picture else {
        return error(
            StatusCode::NOT_FOUND,
            "this node runs alone (no [cluster] section)",
        );
    };
    let tenant = t.tenant.as_deref();
    let nodes: Vec<Value> = p
        .nodes
        .iter()
        .map(|(node, up, silent, draining)| {
            json!({ "node": node, "up": up, "silent_seconds": silent, "draining": draining })
        })
        .collect();
    let queues: Vec<Value> = p
        .queues
        .iter()
        .filter(|q| tenant.is_none_or(|t| q.tenant == t))
        .map(|q| {
            json!({
                "tenant": q.tenant,
                "queue": q.queue,
                "nodes": q.nodes,
                "waiting": q.waiting,
                "oldest_wait_seconds": q.oldest_wait_ms / 1000,
                "agents": {
                    "available": q.available,
                    "busy": q.busy,
                    "paused": q.paused,
                    "logged_out": q.logged_out,
                },
            })
        })
        .collect();
    // What firms lend each other under agreements, nationally: a firm's
    // supervisor sees what it lends and what it borrows.
    let lending: Vec<Value> = p
        .lending
        .iter()
        .filter(|(from, to, _)| tenant.is_none_or(|t| from == t || to == t))
        .map(|(from, to, calls)| json!({ "borrower": from, "lender": to, "calls": calls }))
        .collect();
    ok(
        StatusCode::OK,
        &json!({ "node": p.node, "connected": p.connected, "nodes": nodes, "queues": queues, "lending": lending }),
    )
}

/// `GET /api/v1/agents`: every operator's state now (read from the routing
/// board), per tenant as for the queues.
pub(super) async fn get_agents(State(api): State<Api>, headers: HeaderMap) -> Response {
    match authorize(&api, &headers, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => {
            let tenant = t.tenant.as_deref();
            let live = api.live();
            let agents: Vec<Value> = live
                .agent_tenants
                .iter()
                .filter(|(_, at)| tenant.is_none_or(|t| at == t))
                .map(|(name, at)| {
                    let (state, reason) = api.desks.agent_state(name).unwrap_or(("unknown", None));
                    let seconds = api.desks.seconds_in_state(name);
                    json!({ "agent": name, "tenant": at, "state": state, "reason": reason,
                            "seconds_in_state": seconds })
                })
                .collect();
            ok(StatusCode::OK, &json!({ "agents": agents }))
        }
    }
}

/// `GET /api/v1/queues/events`: a WebSocket pushing the queues view (as
/// `GET /api/v1/queues`, with a `seq`) at once and whenever it changes, at
/// most once a second. Token in the header or the wallboard's session
/// cookie, never in the URL.
pub(super) async fn queue_events(
    State(api): State<Api>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let token = bearer(&headers);
    match authorize_token(&api, token, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => match upgrade {
            Err(e) => upgrade_required(&e),
            Ok(ws) => {
                let rx = api.desks.queues.subscribe();
                let tenant = t.tenant.clone();
                let recheck = Recheck::new(&api, token.unwrap_or_default(), None, tenant.clone());
                let api = api.clone();
                ws.max_message_size(DESK_MAX_MESSAGE)
                    .max_frame_size(DESK_MAX_MESSAGE)
                    .on_upgrade(move |socket| supervisor_socket(socket, rx, tenant, api, recheck))
            }
        },
    }
}

pub(super) async fn supervisor_socket(
    mut socket: axum::extract::ws::WebSocket,
    mut rx: tokio::sync::watch::Receiver<Arc<Vec<QueueView>>>,
    tenant: Option<String>,
    api: Api,
    mut recheck: Recheck,
) {
    use axum::extract::ws::Message;
    let mut seq = 0u64;
    let mut ping = tokio::time::interval(DESK_PING);
    ping.tick().await;
    // The token is checked again (cheaply) this often.
    let mut poll = tokio::time::interval(DESK_STATE_POLL);
    let mut views = rx.borrow_and_update().clone();
    let mut campaigns = api.desks.campaigns.subscribe();
    campaigns.borrow_and_update();
    // A frame goes out at once, then only on a clock of one second: when
    // what the token sees changed, or while one of its queues shows a
    // waiting call (the oldest wait moves on). The views are published
    // again on any firm's activity, and a frame sent then would tell a
    // firm when the others are busy (TEST-MATRIX D12).
    let mut clock = tokio::time::interval(std::time::Duration::from_secs(1));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    clock.tick().await;
    let mut last: Option<Value> = None;
    loop {
        let mut event = queues_json(&views, tenant.as_deref());
        event["campaigns"] = campaigns_json(&api.desks, tenant.as_deref());
        let shown = without_clock(&event);
        let waiting = views.iter().any(|q| {
            q.oldest_since_ms.is_some() && tenant.as_deref().is_none_or(|t| q.tenant == t)
        });
        if last.as_ref() != Some(&shown) || waiting {
            last = Some(shown);
            if !send_seq(&mut socket, &mut seq, event).await {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    views = rx.borrow_and_update().clone();
                }
                changed = campaigns.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    campaigns.borrow_and_update();
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                _ = poll.tick() => {
                    if !recheck.allowed(&api) {
                        close_revoked(&mut socket).await;
                        return;
                    }
                }
                _ = ping.tick() => {
                    if !send_ws(&mut socket, Message::Ping(Bytes::new())).await {
                        return;
                    }
                }
                _ = clock.tick() => break,
            }
        }
    }
}
