//! `/api/v1/callbacks`: create, list, read, edit and cancel callback
//! requests, checked field by field, scoped to the token's tenant.

use super::*;

pub(super) fn view(cb: &Callback) -> Value {
    json!({
        "id": cb.id,
        "queue": cb.queue,
        "number": cb.number,
        "status": cb.status.as_str(),
        "not_before": cb.not_before.map(rfc3339),
        "requirements": cb.requirements,
        "priority": cb.priority,
        "attempts": cb.attempts,
        "outcome": cb.outcome,
        "source": cb.source,
        "created_at": rfc3339(cb.created_at),
        "updated_at": rfc3339(cb.updated_at),
        "promised_by": cb.promised_by.map(rfc3339),
    })
}

/// A time: RFC 3339 text or Unix seconds.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(super) enum When {
    Unix(i64),
    Text(String),
}

pub(super) fn when(w: &When) -> Result<i64, String> {
    match w {
        When::Unix(t) if (0..=253_402_300_799).contains(t) => Ok(*t),
        When::Unix(_) => Err("not_before: out of range".into()),
        When::Text(s) => parse_rfc3339(s).ok_or_else(|| {
            format!(
                "not_before: not an RFC 3339 time (2026-12-01T09:00:00+01:00): {:?}",
                truncate(s)
            )
        }),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    pub(super) queue: String,
    pub(super) number: String,
    pub(super) not_before: Option<When>,
    pub(super) requirements: Option<String>,
    pub(super) priority: Option<i32>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    pub(super) not_before: Option<Option<When>>,
    pub(super) priority: Option<i32>,
    #[serde(default, deserialize_with = "present")]
    pub(super) requirements: Option<Option<String>>,
}

/// Tells a present `null` (clear) from an absent field (keep).
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// E.164-like: an optional `+`, 6 to 15 digits.
pub(super) fn valid_number(n: &str) -> bool {
    let digits = n.strip_prefix('+').unwrap_or(n);
    (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn check_requirements(api: &Api, r: &str) -> Result<(), String> {
    Requirement::parse(r, &api.live().catalog)
        .map(|_| ())
        .map_err(|e| format!("requirements: {e}"))
}

pub(super) fn check_priority(p: i32) -> Result<(), String> {
    if (-100..=100).contains(&p) {
        Ok(())
    } else {
        Err("priority: must be in -100..=100".into())
    }
}

pub(crate) fn random_id() -> String {
    use rand::TryRngCore;
    let mut b = [0u8; 16];
    let _ = rand::rngs::OsRng.try_fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) async fn create_callback(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(&api, peer, &headers, &body).await
}

pub(super) async fn create(
    api: &Api,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (token, b): (_, CreateBody) = match authorized_body(api, headers, body, Need::Callbacks) {
        Ok(tb) => tb,
        Err(r) => return *r,
    };
    let live = api.live();
    let mut problems = Vec::new();
    // A token of one tenant knows no other tenant's queues.
    let queue = live
        .queues
        .get(&b.queue)
        .filter(|_| live.sees(token.tenant.as_deref(), &b.queue));
    if queue.is_none() {
        problems.push(format!("queue: unknown queue {:?}", truncate(&b.queue)));
    }
    // The number is stored as the dial plan reads it (E.164), so what
    // was checked is what a trunk dials, and `0039…`, `+39…` and a
    // national spelling are one request for deduplication and limits.
    let mut e164 = None;
    if !valid_number(&b.number) {
        problems.push("number: an optional + and 6 to 15 digits".to_owned());
    } else if let Some((tenant, plan)) = queue {
        let why = match plan.check(&b.number) {
            Ok(n) => {
                e164 = Some(n);
                None
            }
            Err(why) => Some(why),
        };
        if let Some(why) = why {
            // TEST-MATRIX D18: refused before anything is stored or dialled.
            info!(number = %Masked(&b.number), tenant = %tenant, reason = why.label(), "callback refused by the dial plan");
            api.metrics
                .dial_plan_refused
                .with_label_values(&["api", why.label()])
                .inc();
            api.metrics
                .callbacks
                .with_label_values(&["dial_plan"])
                .inc();
            let problem = format!("number: refused by the dial plan: {why}");
            return ok(
                StatusCode::FORBIDDEN,
                &json!({ "error": problem, "problems": [problem] }),
            );
        }
    }
    let not_before = match b.not_before.as_ref().map(when).transpose() {
        Ok(t) => t,
        Err(e) => {
            problems.push(e);
            None
        }
    };
    if let Some(r) = &b.requirements
        && let Err(e) = check_requirements(api, r)
    {
        problems.push(e);
    }
    if let Err(e) = check_priority(b.priority.unwrap_or(0)) {
        problems.push(e);
    }
    if !problems.is_empty() {
        api.metrics.callbacks.with_label_values(&["rejected"]).inc();
        return ok(
            StatusCode::BAD_REQUEST,
            &json!({ "error": problems.join("; "), "problems": problems }),
        );
    }
    let number = e164.unwrap_or(b.number);
    if let Some(wait) = api.limited(peer, &number) {
        api.metrics
            .callbacks
            .with_label_values(&["rate_limited"])
            .inc();
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many callback requests from this client or for this number: try again later",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let now = unix_now();
    // The promise is made now, as the queue keeps it now (a reload or a
    // retry later does not move it).
    let promised_by = api
        .live()
        .promises
        .get(&b.queue)
        .and_then(|q| q.callback_promised_by(now, not_before));
    let new = NewCallback {
        id: random_id(),
        queue: b.queue,
        number,
        not_before,
        requirements: b.requirements,
        priority: b.priority.unwrap_or(0),
        source: "api".into(),
        created_at: None,
        promised_by,
    };
    match api.store.ask(|r| StoreReq::Create(new, now, r)).await {
        Ok(Created::New(cb)) => {
            info!(id = %cb.id, queue = %cb.queue, number = %Masked(&cb.number), "callback requested");
            api.metrics.callbacks.with_label_values(&["created"]).inc();
            ok(StatusCode::CREATED, &view(&cb))
        }
        Ok(Created::Existing(cb)) => {
            api.metrics
                .callbacks
                .with_label_values(&["deduplicated"])
                .inc();
            let mut v = view(&cb);
            v["deduplicated"] = json!(true);
            ok(StatusCode::OK, &v)
        }
        Err(e) => {
            warn!(error = %e, "callback not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot take the request now; retry",
            )
        }
    }
}

pub(super) async fn get_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match authorize(&api, &headers, Need::Callbacks) {
        Err(r) => *r,
        Ok(token) => match api.store.ask(|r| StoreReq::Get(id, r)).await {
            Ok(Some(cb)) if api.live().sees(token.tenant.as_deref(), &cb.queue) => {
                ok(StatusCode::OK, &view(&cb))
            }
            // Another tenant's callback is as absent as one that never was.
            Ok(_) => error(StatusCode::NOT_FOUND, "no such callback"),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
        },
    }
}

pub(super) async fn list_callbacks(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    list(&api, &headers, query.as_deref()).await
}

pub(super) async fn list(api: &Api, headers: &HeaderMap, query: Option<&str>) -> Response {
    let token = match authorize(api, headers, Need::Callbacks) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // A tenant's token lists its tenant's queues only.
    let queues: Option<Vec<String>> = token.tenant.as_deref().map(|t| {
        api.live()
            .queues
            .iter()
            .filter(|(_, (qt, _))| qt == t)
            .map(|(q, _)| q.clone())
            .collect()
    });
    let mut status = None;
    let mut limit = 100;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("status", s)) => match Status::parse(s) {
                Some(s) => status = Some(s),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "status: one of pending, in_progress, done, failed, cancelled",
                    );
                }
            },
            Some(("limit", l)) => match l.parse::<usize>() {
                Ok(l) if (1..=centralino_store::MAX_LIST).contains(&l) => limit = l,
                _ => return error(StatusCode::BAD_REQUEST, "limit: 1 to 1000"),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unknown query parameter (status, limit)",
                );
            }
        }
    }
    match api
        .store
        .ask(|r| StoreReq::List(status, queues, limit, r))
        .await
    {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(view).collect();
            ok(StatusCode::OK, &json!({ "callbacks": items }))
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}

pub(super) fn edited(e: Result<Edit, ServiceError>) -> Response {
    match e {
        Ok(Edit::Done(cb)) => ok(StatusCode::OK, &view(&cb)),
        Ok(Edit::NotFound) => error(StatusCode::NOT_FOUND, "no such callback"),
        Ok(Edit::NotPending(cb)) => {
            let mut v = json!({ "error": format!("the callback is {}: it can no longer change", cb.status.as_str()) });
            v["callback"] = view(&cb);
            ok(StatusCode::CONFLICT, &v)
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}

pub(super) async fn patch_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    patch(&api, &headers, id.clone(), &body).await
}

/// `Err(404)` unless the callback exists and the token's tenant (if it
/// has one) owns its queue: ids of other tenants' callbacks act on nothing
/// and reveal nothing (TEST-MATRIX D12).
pub(super) async fn own_callback(api: &Api, token: &ApiToken, id: &str) -> Result<(), Response> {
    let Some(tenant) = token.tenant.as_deref() else {
        return Ok(());
    };
    let id = id.to_owned();
    match api.store.ask(|r| StoreReq::Get(id, r)).await {
        Ok(Some(cb)) if api.live().sees(Some(tenant), &cb.queue) => Ok(()),
        Ok(_) => Err(error(StatusCode::NOT_FOUND, "no such callback")),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable",
        )),
    }
}

pub(super) async fn patch(api: &Api, headers: &HeaderMap, id: String, body: &Bytes) -> Response {
    let b: PatchBody = match authorized_body(api, headers, body, Need::Callbacks) {
        Ok((token, b)) => match own_callback(api, &token, &id).await {
            Ok(()) => b,
            Err(r) => return r,
        },
        Err(r) => return *r,
    };
    let not_before = match &b.not_before {
        None => None,
        Some(None) => Some(None),
        Some(Some(w)) => match when(w) {
            Ok(t) => Some(Some(t)),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    if let Some(Some(r)) = &b.requirements
        && let Err(e) = check_requirements(api, r)
    {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    if let Some(p) = b.priority
        && let Err(e) = check_priority(p)
    {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let now = unix_now();
    // The citizen chose another time: the promise is made again, from now
    // (or from that time), as the queue keeps it now.
    let promised_by = match not_before {
        Some(nb) => {
            let id = id.clone();
            match api.store.ask(|r| StoreReq::Get(id, r)).await {
                Ok(Some(cb)) => Some(
                    api.live()
                        .promises
                        .get(&cb.queue)
                        .and_then(|q| q.callback_promised_by(now, nb)),
                ),
                Ok(None) => return error(StatusCode::NOT_FOUND, "no such callback"),
                Err(_) => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
                }
            }
        }
        None => None,
    };
    let p = Patch {
        not_before,
        priority: b.priority,
        requirements: b.requirements,
        promised_by,
    };
    let e = api.store.ask(|r| StoreReq::Update(id, p, now, r)).await;
    if matches!(e, Ok(Edit::Done(_))) {
        api.metrics.callbacks.with_label_values(&["updated"]).inc();
    }
    edited(e)
}

pub(super) async fn delete_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Callbacks) {
        Ok(t) => own_callback(&api, &t, &id).await.map(|()| t),
        Err(r) => Err(*r),
    };
    match token {
        Err(r) => r,
        Ok(_) => {
            let now = unix_now();
            let e = api.store.ask(|r| StoreReq::Cancel(id, now, r)).await;
            if matches!(e, Ok(Edit::Done(_))) {
                api.metrics
                    .callbacks
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            edited(e)
        }
    }
}
