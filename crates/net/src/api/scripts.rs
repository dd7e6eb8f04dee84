//! Operator scripts, the answers a desk records against a call, and an
//! inbound call's outcome kept with them.

use super::*;

pub(super) async fn get_script(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Operator) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    // An operator reads the scripts of the calls on their desk only: one
    // firm's scripts are none of another firm's operators' business (an
    // admin reads any). Another script is as unknown as one that is not.
    // By role: an operator's token without its operator reads none.
    if token.role == centralino_config::Role::Agent
        && !token
            .agent
            .as_deref()
            .is_some_and(|agent| api.desks.may_read_script(agent, &name))
    {
        return error(StatusCode::NOT_FOUND, "no such script");
    }
    let live = api.live();
    // A firm's own script, for its operators only: the desk keeps names,
    // and a reload may since have given the name to another firm's
    // script, or moved the operator to another firm.
    let theirs = |s: &centralino_config::Script| {
        token.role != centralino_config::Role::Agent
            || s.tenant.is_none()
            || live
                .agent_tenants
                .iter()
                .any(|(a, t)| Some(a.as_str()) == token.agent.as_deref() && s.serves(t))
    };
    let Some(s) = live
        .scripts
        .iter()
        .find(|s| s.name == name)
        .filter(|s| theirs(s))
    else {
        return error(StatusCode::NOT_FOUND, "no such script");
    };
    let questions: serde_json::Map<String, Value> = s
        .questions
        .iter()
        .map(|(id, q)| {
            let mut v = json!({ "text": q.text, "kind": q.kind.as_str() });
            if q.kind == centralino_config::QuestionKind::Choice {
                v["answers"] = json!(q.answers);
            } else {
                v["next"] = json!(q.next);
            }
            (id.clone(), v)
        })
        .collect();
    ok(
        StatusCode::OK,
        &json!({ "name": s.name, "start": s.start, "questions": questions }),
    )
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswersBody {
    pub(super) agent: Option<String>,
    pub(super) answers: std::collections::BTreeMap<String, String>,
}

/// `GET /api/v1/calls/{id}/answers`: what the operator recorded on a call,
/// for a supervisor of the firm whose queue took it (or an admin): the
/// script's answers and the outcome. Health data: every read is audited
/// under the token (the route layer), and a call of another firm is as
/// unknown as one that never was (`404`).
pub(super) async fn get_answers(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let call = id.clone();
    let Ok(found) = api.read_store(move |s| s.call_answers(&call)).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
    };
    let Some((queue, answers)) = found.filter(|(q, _)| {
        token.tenant.is_none()
            || q.as_deref()
                .is_some_and(|q| api.live().sees(token.tenant.as_deref(), q))
    }) else {
        return error(StatusCode::NOT_FOUND, "no such call");
    };
    let mut script = serde_json::Map::new();
    let (mut code, mut note) = (None, None);
    for (q, a) in answers {
        match q.as_str() {
            DISPOSITION_KEY => code = Some(a),
            NOTE_KEY => note = Some(a).filter(|n| !n.is_empty()),
            _ => {
                script.insert(q, json!(a));
            }
        }
    }
    let outcome = code.map(|c| json!({ "code": c, "note": note }));
    ok(
        StatusCode::OK,
        &json!({ "call": id, "queue": queue, "answers": script, "outcome": outcome }),
    )
}

pub(super) async fn post_answers(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    answers(&api, &headers, id.clone(), &body).await
}

pub(super) async fn answers(api: &Api, headers: &HeaderMap, id: String, body: &Bytes) -> Response {
    let (token, mut b): (_, AnswersBody) = match authorized_body(api, headers, body, Need::Operator)
    {
        Ok(tb) => tb,
        Err(r) => return *r,
    };
    // An operator's own desk vouches for its call: its record may not be
    // on disk yet (written in batches), the operator answers during it.
    let vouched = token.role == centralino_config::Role::Agent;
    if vouched {
        // An operator answers for their own calls only, under their name.
        let me = token.agent.clone().unwrap_or_default();
        if b.agent.as_ref().is_some_and(|a| *a != me) {
            return error(StatusCode::FORBIDDEN, "agent: not this token's operator");
        }
        if !api.desks.had_call(&me, &id) {
            return error(
                StatusCode::FORBIDDEN,
                "not a call of this token's operator (the current or the last one)",
            );
        }
        b.agent = Some(me);
    }
    if b.answers.is_empty() || b.answers.len() > 200 {
        return error(StatusCode::BAD_REQUEST, "answers: 1 to 200 question ids");
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    if let Some(q) = b.answers.keys().find(|q| !name_ok(q)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("answers: {:?} is not a question id", truncate(q)),
        );
    }
    if b.answers.values().any(|a| a.len() > 1000) {
        return error(
            StatusCode::BAD_REQUEST,
            "answers: at most 1000 characters each",
        );
    }
    if b.agent.as_deref().is_some_and(|a| !name_ok(a)) {
        return error(StatusCode::BAD_REQUEST, "agent: not an operator name");
    }
    let list: Vec<(String, String)> = b.answers.into_iter().collect();
    let n = list.len();
    let now = unix_now() * 1000;
    match api
        .store
        .ask(|r| StoreReq::Answers(id.clone(), b.agent, list, now, vouched, r))
        .await
    {
        Ok(true) => ok(StatusCode::CREATED, &json!({ "call": id, "saved": n })),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such call"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}

/// The outcomes of an inbound call (a citizen who called): kept with the
/// call's script answers.
pub(super) const INBOUND_CODES: &[&str] = &[
    "resolved",
    "booked",
    "information",
    "callback",
    "unresolved",
];

/// Keys of an inbound call's outcome among its script answers: `@` is in
/// no question id (the answers API refuses it), so a script cannot
/// overwrite them.
const DISPOSITION_KEY: &str = "@disposition";
const NOTE_KEY: &str = "@note";

/// The outcome of an inbound call, kept with its script answers under
/// keys no script can use; the operator's desk vouches for its own call
/// (its record may not be on disk yet), anyone else's needs the record.
pub(super) async fn inbound_disposition(
    api: &Api,
    token: &ApiToken,
    id: String,
    b: DispositionIn,
) -> Response {
    if !INBOUND_CODES.contains(&b.code.as_str()) {
        return problems_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[(
                "code".into(),
                format!(
                    "an inbound call's outcome is one of {}",
                    INBOUND_CODES.join(", ")
                ),
            )],
        );
    }
    if b.at.is_some() {
        return problems_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[("at".into(), "only for a campaign's call_later".into())],
        );
    }
    let vouched = token.role == centralino_config::Role::Agent;
    let by = token.agent.clone().unwrap_or_else(|| token.name.clone());
    let mut list = vec![(DISPOSITION_KEY.to_owned(), b.code.clone())];
    // A new outcome without a note clears an earlier one's.
    list.push((NOTE_KEY.to_owned(), b.note.unwrap_or_default()));
    let now = unix_now() * 1000;
    let call = id.clone();
    match api
        .store
        .ask(|r| StoreReq::Answers(call, Some(by), list, now, vouched, r))
        .await
    {
        Ok(true) => {
            info!(code = %b.code, "inbound call's outcome recorded");
            ok(StatusCode::OK, &json!({ "call": id, "code": b.code }))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "no such call"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}
