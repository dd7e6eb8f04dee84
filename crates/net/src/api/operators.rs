//! Operators provisioned live (admin tokens): `POST /api/v1/agents` (one
//! JSON object, a JSON array or CSV, up to 100,000 per request),
//! `PUT /api/v1/agents/{username}` (adds or replaces one),
//! `DELETE /api/v1/agents/{username}`. Kept in the store with their
//! digest secrets as HA1s (the password itself is never kept), merged
//! after the configuration file's `[[agents]]` and applied by the same
//! live reload: a change either applies whole or is undone.

use std::collections::BTreeMap;

use centralino_store::Operator;

use super::campaigns::{import_body, is_csv, numbered};
use super::*;

/// Operators in one request, at most.
const MAX_OPERATORS: usize = 100_000;
/// Refusals listed in one answer.
const MAX_LISTED: usize = 1000;

/// An operator as a request writes them.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct OperatorIn {
    username: Option<String>,
    password: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
    tenant: String,
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    skills: BTreeMap<String, u8>,
    #[serde(default)]
    languages: Vec<String>,
    site: Option<String>,
}

fn name_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

fn hex_of(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks one operator against what the node runs (tenants, queues) and
/// the token's firm; their secret becomes HA1s.
fn check(
    live: &Live,
    tenant_of_token: Option<&str>,
    mut o: OperatorIn,
) -> Result<Operator, String> {
    let username = o.username.take().unwrap_or_default();
    if !name_ok(&username, b".") {
        return Err("username: 1-64 of [A-Za-z0-9._-]".into());
    }
    if !live.tenants.contains(&o.tenant) {
        return Err(format!("tenant {:?}: no such tenant", o.tenant));
    }
    if tenant_of_token.is_some_and(|t| t != o.tenant) {
        return Err(format!("tenant {:?}: not this token's", o.tenant));
    }
    for q in &o.queues {
        match live.queues.get(q) {
            Some((t, _)) if *t == o.tenant => {}
            Some(_) => return Err(format!("queue {q:?}: another tenant's")),
            None => return Err(format!("queue {q:?}: no such queue")),
        }
    }
    for list in [&mut o.queues, &mut o.languages] {
        list.sort();
        list.dedup();
    }
    if o.queues.len() > 256 || o.skills.len() > 256 || o.languages.len() > 64 {
        return Err("at most 256 queues, 256 skills and 64 languages".into());
    }
    for (s, level) in &o.skills {
        if !name_ok(s, b"") {
            return Err(format!("skill {s:?}: 1-64 of [A-Za-z0-9_-]"));
        }
        if !(1..=10).contains(level) {
            return Err(format!("skill {s:?}: level in 1..=10"));
        }
    }
    for l in &o.languages {
        if !name_ok(l, b"") {
            return Err(format!("language {l:?}: 1-64 of [A-Za-z0-9_-]"));
        }
    }
    let site = o.site.unwrap_or_else(|| "default".into());
    if !name_ok(&site, b"") {
        return Err("site: 1-64 of [A-Za-z0-9_-]".into());
    }
    let (ha1_md5, ha1_sha256) = match (o.password, o.ha1_md5, o.ha1_sha256) {
        (Some(pw), None, None) => {
            if pw.chars().count() < 8 || pw.len() > 128 {
                return Err("password: 8 to 128 characters".into());
            }
            let c = centralino_sip::auth::Credentials::from_password(&username, &live.realm, &pw);
            (c.ha1_md5, c.ha1_sha256)
        }
        (None, md5, sha) if md5.is_some() || sha.is_some() => {
            if md5.as_deref().is_some_and(|h| !hex_of(h, 32))
                || sha.as_deref().is_some_and(|h| !hex_of(h, 64))
            {
                return Err("ha1_md5: 32 hex digits, ha1_sha256: 64".into());
            }
            (
                md5.map(|h| h.to_ascii_lowercase()),
                sha.map(|h| h.to_ascii_lowercase()),
            )
        }
        _ => return Err("a password, or ha1_md5 and/or ha1_sha256 (not both ways)".into()),
    };
    Ok(Operator {
        username,
        tenant: o.tenant,
        ha1_md5,
        ha1_sha256,
        site,
        skills: o.skills,
        languages: o.languages,
        queues: o.queues,
    })
}

/// One operator of a request, by line (or array position), or why not.
type Line = (usize, Result<OperatorIn, String>);

/// A CSV of operators: `username,password,tenant,queues,skills,languages,site`
/// (header first; lists split by `|`, skills as `name:level`).
fn csv_operators(text: &str) -> Result<Vec<Line>, (usize, String)> {
    let (header, rows) = csv_table(text, MAX_OPERATORS + 1)?;
    let known = [
        "username",
        "password",
        "ha1_md5",
        "ha1_sha256",
        "tenant",
        "queues",
        "skills",
        "languages",
        "site",
    ];
    if let Some(h) = header.iter().find(|h| !known.contains(&h.as_str())) {
        return Err((1, format!("unknown column {h:?}")));
    }
    let col = |n: &str| header.iter().position(|h| h == n);
    Ok(rows
        .iter()
        .map(|(line, f)| {
            if f.len() != header.len() {
                return (
                    *line,
                    Err(format!(
                        "{} fields, the header has {}",
                        f.len(),
                        header.len()
                    )),
                );
            }
            let get = |n: &str| {
                col(n)
                    .and_then(|i| f.get(i))
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            };
            let list = |n: &str| -> Vec<String> {
                get(n)
                    .map(|v| {
                        v.split('|')
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut skills = BTreeMap::new();
            for s in list("skills") {
                let Some((name, level)) = s.split_once(':') else {
                    return (*line, Err(format!("skill {s:?}: name:level")));
                };
                let Ok(level) = level.trim().parse::<u8>() else {
                    return (*line, Err(format!("skill {s:?}: level in 1..=10")));
                };
                skills.insert(name.trim().to_owned(), level);
            }
            (
                *line,
                Ok(OperatorIn {
                    username: get("username"),
                    password: get("password"),
                    ha1_md5: get("ha1_md5"),
                    ha1_sha256: get("ha1_sha256"),
                    tenant: get("tenant").unwrap_or_default(),
                    queues: list("queues"),
                    skills,
                    languages: list("languages"),
                    site: get("site"),
                }),
            )
        })
        .collect())
}

/// What a change was undone for.
fn reload_failed(e: ReloadError) -> Response {
    match e {
        ReloadError::Invalid(problems) => error(
            StatusCode::BAD_REQUEST,
            &format!("not applied (the configuration with these operators is invalid): {problems}"),
        ),
        other => error(StatusCode::CONFLICT, &format!("not applied: {other}")),
    }
}

/// Writes `ops` (and deletes `gone`), applies them by a live reload, and
/// undoes both (one transaction) if the reload does not apply; the
/// reload turn is held throughout, so no SIGHUP reload sees a half
/// state, and it runs in a task of its own, so a client that hangs up
/// cannot leave the store ahead of the running configuration.
async fn apply(
    api: &Api,
    ops: Vec<Operator>,
    gone: Vec<String>,
) -> Result<Vec<String>, Box<Response>> {
    let api = api.clone();
    let task = tokio::spawn(async move {
        let mut turn = api.reload_turn().await;
        let names: Vec<String> = ops
            .iter()
            .map(|o| o.username.clone())
            .chain(gone.iter().cloned())
            .collect();
        let now = unix_now_ms();
        let before = api
            .store
            .with(move |s| {
                let before: Vec<(String, Option<Operator>)> = names
                    .iter()
                    .map(|n| Ok((n.clone(), s.operator(n)?)))
                    .collect::<Result<_, StoreError>>()?;
                s.put_operators(&ops, now)?;
                s.delete_operators(&gone)?;
                Ok(before)
            })
            .await
            .map_err(|e| {
                Box::new(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the store: {e}"),
                ))
            })?;
        match api.reload_held(&mut turn).await {
            Ok(changed) => Ok(changed),
            Err(e) => {
                warn!(error = %e, "operators not applied: undone");
                let undo = api
                    .store
                    .with(move |s| {
                        let (restore, remove): (Vec<_>, Vec<_>) =
                            before.into_iter().partition(|(_, o)| o.is_some());
                        let remove: Vec<String> = remove.into_iter().map(|(n, _)| n).collect();
                        s.delete_operators(&remove)?;
                        let restore: Vec<Operator> =
                            restore.into_iter().filter_map(|(_, o)| o).collect();
                        s.put_operators(&restore, now)
                    })
                    .await;
                if let Err(u) = undo {
                    warn!(error = %u, "operators: the undo failed");
                }
                Err(Box::new(reload_failed(e)))
            }
        }
    });
    task.await.unwrap_or_else(|_| {
        Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the change did not finish",
        )))
    })
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The names provisioned in the store (the others the node runs come
/// from the file, and the API leaves them alone).
async fn provisioned(api: &Api) -> Result<HashSet<String>, Response> {
    api.store
        .with(|s| Ok(s.operators()?.into_iter().map(|o| o.username).collect()))
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store: {e}")))
}

/// `POST /api/v1/agents`: adds operators (201 `{"accepted", "rejected":
/// [{"line", "reason"}], "changed"}`); one already there is refused
/// (`PUT` replaces).
pub(super) async fn agents_create(
    State(api): State<Api>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let token = match authorize(&api, &headers, Need::Admin) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let (_permit, body) = match import_body(&api, body).await {
        Ok(pb) => pb,
        Err(r) => return *r,
    };
    let lines: Vec<Line> = if is_csv(&headers) {
        let Ok(text) = std::str::from_utf8(&body) else {
            return error(StatusCode::BAD_REQUEST, "the CSV is not UTF-8");
        };
        match csv_operators(text) {
            Ok(l) => l,
            Err((line, why)) => {
                return error(StatusCode::BAD_REQUEST, &format!("line {line}: {why}"));
            }
        }
    } else {
        let items: Vec<Value> = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(v)) => v,
            Ok(v @ Value::Object(_)) => vec![v],
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "an operator object or an array of them",
                );
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
        };
        numbered(items)
    };
    if lines.len() > MAX_OPERATORS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} operators: at most {MAX_OPERATORS} per request",
                lines.len()
            ),
        );
    }
    let provisioned = match provisioned(&api).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let live = api.live();
    let mut seen = HashSet::new();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (line, item) in lines {
        let checked = item
            .and_then(|o| check(&live, token.tenant.as_deref(), o))
            .and_then(|o| {
                if !seen.insert(o.username.clone()) {
                    Err("the same username earlier in this request".into())
                } else if provisioned.contains(&o.username) {
                    Err(format!(
                        "operator {:?} exists: PUT /api/v1/agents/{{username}} replaces it",
                        o.username
                    ))
                } else if live.agents.contains(&o.username) {
                    Err(format!(
                        "operator {:?} is in the configuration file",
                        o.username
                    ))
                } else {
                    Ok(o)
                }
            });
        match checked {
            Ok(o) => accepted.push(o),
            Err(reason) => rejected.push(json!({ "line": line, "reason": reason })),
        }
    }
    let n = accepted.len();
    let listed: Vec<Value> = rejected.iter().take(MAX_LISTED).cloned().collect();
    if n == 0 {
        return ok(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "no operator accepted", "accepted": 0, "rejected": listed, "rejected_total": rejected.len() }),
        );
    }
    match apply(&api, accepted, Vec::new()).await {
        Ok(_) => {
            info!(
                operators = n,
                rejected = rejected.len(),
                "operators provisioned"
            );
            ok(
                StatusCode::CREATED,
                &json!({ "accepted": n, "rejected": listed, "rejected_total": rejected.len() }),
            )
        }
        Err(r) => *r,
    }
}

/// `PUT /api/v1/agents/{username}`: adds or replaces one provisioned
/// operator (200).
pub(super) async fn agent_put(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(username): UrlPath<String>,
    body: Bytes,
) -> Response {
    let token = match authorize(&api, &headers, Need::Admin) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let mut o: OperatorIn = match parse_body(&body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if o.username.as_ref().is_some_and(|u| *u != username) {
        return error(StatusCode::BAD_REQUEST, "username: the path's or none");
    }
    o.username = Some(username.clone());
    // The turn first: what is read below cannot change before the write.
    let Ok(_permit) = api.imports.clone().try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "another import is running: try again when it is done",
        );
    };
    let live = api.live();
    let provisioned = match provisioned(&api).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // Whose operator it is: the store's row (it may be ahead of the
    // running configuration), else the running configuration's.
    let stored_tenant = {
        let name = username.clone();
        api.store
            .with(move |s| Ok(s.operator(&name)?.map(|o| o.tenant)))
            .await
            .ok()
            .flatten()
    };
    if live.agents.contains(&username) && !provisioned.contains(&username) {
        return error(
            StatusCode::CONFLICT,
            "this operator is in the configuration file: change it there",
        );
    }
    let existing = stored_tenant.or_else(|| {
        live.agent_tenants
            .iter()
            .find(|(n, _)| *n == username)
            .map(|(_, t)| t.clone())
    });
    if let (Some(t), Some(at)) = (token.tenant.as_deref(), existing.as_deref())
        && t != at
    {
        return error(StatusCode::NOT_FOUND, "no such operator");
    }
    let op = match check(&live, token.tenant.as_deref(), o) {
        Ok(op) => op,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match apply(&api, vec![op], Vec::new()).await {
        Ok(changed) => ok(
            StatusCode::OK,
            &json!({ "applied": true, "changed": changed }),
        ),
        Err(r) => *r,
    }
}

/// `DELETE /api/v1/agents/{username}`: removes a provisioned operator
/// (204); one on a call leaves when the call ends.
pub(super) async fn agent_delete(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(username): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Admin) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let Ok(_permit) = api.imports.clone().try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "another import is running: try again when it is done",
        );
    };
    let live = api.live();
    let stored = {
        let name = username.clone();
        match api.store.with(move |s| s.operator(&name)).await {
            Ok(o) => o,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store: {e}")),
        }
    };
    let Some(stored) = stored else {
        let in_file = live.agents.contains(&username)
            && token.tenant.as_deref().is_none_or(|t| {
                live.agent_tenants
                    .iter()
                    .any(|(n, at)| *n == username && at == t)
            });
        return if in_file {
            error(
                StatusCode::CONFLICT,
                "this operator is in the configuration file: remove it there",
            )
        } else {
            error(StatusCode::NOT_FOUND, "no such operator")
        };
    };
    if token.tenant.as_deref().is_some_and(|t| stored.tenant != t) {
        return error(StatusCode::NOT_FOUND, "no such operator");
    }
    match apply(&api, Vec::new(), vec![username]).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => *r,
    }
}
