//! `/api/v1/campaigns`: outbound campaigns, their contacts, and the
//! do-not-call lists (`/api/v1/dnc`). Admins see every tenant; a
//! supervisor token of a tenant sees and steers that tenant's campaigns
//! only (another tenant's is a 403).

use super::*;
use centralino_campaigns::spec::{Known, RawSpec, Spec, validate};
use centralino_store::{
    Campaign, CampaignStatus, ContactStatus, Imported, NewContact, StatusChange,
};

/// Most campaigns a tenant keeps (the scheduler looks at every running
/// one each second).
const MAX_CAMPAIGNS_PER_TENANT: u64 = 200;

/// Most contacts one import carries.
pub(super) const MAX_CONTACTS: usize = 100_000;
/// Largest import body (100,000 contacts with their data).
pub(super) const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024;
/// Longest an import's body may take to arrive: a trickling upload holds
/// the node's import slot no longer.
const IMPORT_READ: std::time::Duration = std::time::Duration::from_secs(60);

/// The node's import slot (one import at a time: each may hold 16 MiB),
/// then the body, whole, within [`IMPORT_READ`] and 16 MiB.
pub(super) async fn import_body(
    api: &Api,
    body: axum::body::Body,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Bytes), Box<Response>> {
    let Ok(permit) = api.imports.clone().try_acquire_owned() else {
        return Err(Box::new(error(
            StatusCode::TOO_MANY_REQUESTS,
            "another import is running: try again when it is done",
        )));
    };
    match tokio::time::timeout(IMPORT_READ, axum::body::to_bytes(body, MAX_IMPORT_BODY)).await {
        Ok(Ok(b)) => Ok((permit, b)),
        Ok(Err(_)) => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than 16 MiB (or cut short)",
        ))),
        Err(_) => Err(Box::new(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body took longer than 60 s to arrive",
        ))),
    }
}

/// Each item of a JSON import read as a `T`, numbered from 1 (the
/// "line" a refusal names).
pub(super) fn numbered<T: serde::de::DeserializeOwned>(
    items: Vec<Value>,
) -> Vec<(usize, Result<T, String>)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, serde_json::from_value(v).map_err(|e| e.to_string())))
        .collect()
}

/// Whether a request's body is CSV (`text/csv`).
pub(super) fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/csv"))
}

/// Refusals listed in one answer (the total is given too).
const MAX_LISTED: usize = 1000;
/// Largest `data` of one contact, as JSON.
const MAX_DATA: usize = 2048;

impl Known for Live {
    fn queue_tenant(&self, name: &str) -> Option<String> {
        self.queues.get(name).map(|(t, _)| t.clone())
    }

    fn outbound_trunk_tenant(&self, name: &str) -> Option<String> {
        self.outbound_trunks.get(name).cloned()
    }

    fn script(&self, tenant: &str, name: &str) -> bool {
        self.scripts
            .iter()
            .any(|s| s.name == name && s.serves(tenant))
    }

    fn presentable(&self, tenant: &str, number: &str) -> bool {
        self.presentable
            .get(tenant)
            .is_some_and(|numbers| numbers.contains(number))
    }
}

/// The names a token limited to one tenant may resolve: another tenant's
/// queues and trunks look unknown (their existence and owner stay
/// private).
struct Scoped<'a> {
    live: &'a Live,
    tenant: Option<&'a str>,
}

impl Known for Scoped<'_> {
    fn queue_tenant(&self, name: &str) -> Option<String> {
        self.live
            .queue_tenant(name)
            .filter(|t| self.tenant.is_none_or(|mine| mine == t))
    }

    fn outbound_trunk_tenant(&self, name: &str) -> Option<String> {
        self.live
            .outbound_trunk_tenant(name)
            .filter(|t| self.tenant.is_none_or(|mine| mine == t))
    }

    fn script(&self, tenant: &str, name: &str) -> bool {
        self.live.script(tenant, name)
    }

    fn presentable(&self, tenant: &str, number: &str) -> bool {
        self.live.presentable(tenant, number)
    }
}

/// The campaign `id` if the token may see it: 404 when there is none, 403
/// when it is another tenant's.
async fn visible(api: &Api, token: &ApiToken, id: String) -> Result<Campaign, Box<Response>> {
    match api.store.with(move |s| s.campaign(&id)).await {
        Ok(Some(c)) if token.tenant.as_ref().is_none_or(|t| *t == c.tenant) => Ok(c),
        Ok(Some(_)) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this campaign belongs to another tenant",
        ))),
        Ok(None) => Err(Box::new(error(StatusCode::NOT_FOUND, "no such campaign"))),
        Err(e) => Err(Box::new(unavailable(&e))),
    }
}

fn unavailable(e: &ServiceError) -> Response {
    warn!(error = %e, "campaign request failed in the store");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is not available",
    )
}

/// A stored campaign's definition checked against the configuration
/// running now (a reload may have removed its queue or trunk).
fn current_spec(live: &Live, c: &Campaign) -> Result<Spec, Vec<(String, String)>> {
    let raw: RawSpec = serde_json::from_str(&c.spec)
        .map_err(|e| vec![("spec".to_owned(), format!("unreadable: {e}"))])?;
    validate("", &raw, live)
}

pub(super) fn problems_response(code: StatusCode, problems: &[(String, String)]) -> Response {
    let list: Vec<Value> = problems
        .iter()
        .map(|(k, m)| json!({ "key": k, "message": m }))
        .collect();
    let first = problems
        .first()
        .map_or(String::new(), |(k, m)| format!("{k}: {m}"));
    ok(code, &json!({ "error": first, "problems": list }))
}

async fn campaign_json(api: &Api, c: &Campaign) -> Result<Value, ServiceError> {
    let id = c.id.clone();
    let p = api.store.with(move |s| s.progress(&id)).await?;
    let spec: Value = serde_json::from_str(&c.spec).unwrap_or(Value::Null);
    let mut contacts = serde_json::Map::new();
    contacts.insert("total".into(), json!(p.contacts.iter().sum::<u64>()));
    for (status, n) in ContactStatus::ALL.iter().zip(p.contacts) {
        contacts.insert(status.as_str().into(), json!(n));
    }
    let talked = p.answered + p.abandoned;
    Ok(json!({
        "id": c.id,
        "name": c.name,
        "tenant": c.tenant,
        "queue": spec.get("queue"),
        "mode": spec.get("mode"),
        "fragile": spec.get("fragile").cloned().unwrap_or(Value::Bool(false)),
        "source": c.source,
        "status": c.status.as_str(),
        "contacts": contacts,
        "attempts": p.attempts,
        "answered": p.answered,
        "abandoned": p.abandoned,
        "abandon_rate": if talked == 0 { 0.0 } else { p.abandoned as f64 / talked as f64 },
        "created_at": rfc3339(c.created_at),
    }))
}

/// `GET /api/v1/campaigns`.
pub(super) async fn campaigns_list(State(api): State<Api>, headers: HeaderMap) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let tenant = token.tenant.clone();
    let list = match api
        .store
        .with(move |s| s.campaigns(tenant.as_deref()))
        .await
    {
        Ok(l) => l,
        Err(e) => return unavailable(&e),
    };
    let mut out = Vec::with_capacity(list.len());
    for c in &list {
        match campaign_json(&api, c).await {
            Ok(v) => out.push(v),
            Err(e) => return unavailable(&e),
        }
    }
    ok(StatusCode::OK, &json!({ "campaigns": out }))
}

/// `POST /api/v1/campaigns`: a new campaign (`draft`), 201 `{"id"}`.
pub(super) async fn campaigns_create(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token, raw): (_, RawSpec) = match authorized_body(&api, &headers, &body, Need::Supervisor)
    {
        Ok(tb) => tb,
        Err(r) => return *r,
    };
    let live = api.live();
    let scoped = Scoped {
        live: &live,
        tenant: token.tenant.as_deref(),
    };
    let spec = match validate("", &raw, &scoped) {
        Ok(s) => s,
        Err(p) => return problems_response(StatusCode::UNPROCESSABLE_ENTITY, &p),
    };
    if token.tenant.as_ref().is_some_and(|t| *t != spec.tenant) {
        return error(
            StatusCode::FORBIDDEN,
            "the campaign's queue belongs to another tenant",
        );
    }
    let tenant = spec.tenant.clone();
    match api.store.with(move |s| s.campaign_count(&tenant)).await {
        Ok(n) if n >= MAX_CAMPAIGNS_PER_TENANT => {
            return error(
                StatusCode::CONFLICT,
                &format!(
                    "the tenant has {MAX_CAMPAIGNS_PER_TENANT} campaigns: delete finished ones first"
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return unavailable(&e),
    }
    let now = unix_now();
    let c = Campaign {
        id: random_id(),
        name: spec.name.clone(),
        tenant: spec.tenant.clone(),
        spec: serde_json::to_string(&raw).unwrap_or_default(),
        source: "api".into(),
        status: CampaignStatus::Draft,
        created_at: now,
        updated_at: now,
    };
    let id = c.id.clone();
    match api.store.with(move |s| s.create_campaign(&c)).await {
        Ok(true) => {
            info!(campaign = %spec.name, tenant = %spec.tenant, mode = spec.mode.as_str(), "campaign created");
            ok(StatusCode::CREATED, &json!({ "id": id }))
        }
        Ok(false) => error(
            StatusCode::CONFLICT,
            &format!("the tenant has a campaign named {:?}", truncate(&spec.name)),
        ),
        Err(e) => unavailable(&e),
    }
}

/// `GET /api/v1/campaigns/{id}`.
pub(super) async fn campaign_get(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let c = match visible(&api, &token, id).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match campaign_json(&api, &c).await {
        Ok(v) => ok(StatusCode::OK, &v),
        Err(e) => unavailable(&e),
    }
}

/// `DELETE /api/v1/campaigns/{id}`: only when not running.
pub(super) async fn campaign_delete(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let c = match visible(&api, &token, id).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match api.store.with(move |s| s.delete_campaign(&c.id)).await {
        Ok(StatusChange::Done(c)) => {
            info!(campaign = %c.name, tenant = %c.tenant, "campaign deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(StatusChange::Refused(_)) => error(
            StatusCode::CONFLICT,
            "the campaign is running: pause or stop it first",
        ),
        Ok(StatusChange::NotFound) => error(StatusCode::NOT_FOUND, "no such campaign"),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/v1/campaigns/{id}/start|pause|stop`.
async fn change(api: &Api, headers: &HeaderMap, id: String, action: &'static str) -> Response {
    use CampaignStatus::*;
    let token = match authorize(api, headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let c = match visible(api, &token, id).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (from, to): (&[CampaignStatus], _) = match action {
        "start" => (&[Draft, Paused], Running),
        "pause" => (&[Running], Paused),
        _ => (&[Draft, Running, Paused], Finished),
    };
    if to == Running
        && let Err(p) = current_spec(&api.live(), &c)
    {
        // Checked again at start: a reload may have removed its queue.
        return problems_response(StatusCode::CONFLICT, &p);
    }
    let now = unix_now();
    match api
        .store
        .with(move |s| s.set_campaign_status(&c.id, from, to, now))
        .await
    {
        Ok(StatusChange::Done(c)) => {
            info!(campaign = %c.name, tenant = %c.tenant, status = c.status.as_str(), "campaign {action}");
            match campaign_json(api, &c).await {
                Ok(v) => ok(StatusCode::OK, &v),
                Err(e) => unavailable(&e),
            }
        }
        Ok(StatusChange::Refused(c)) => error(
            StatusCode::CONFLICT,
            &format!("cannot {action} a campaign that is {}", c.status.as_str()),
        ),
        Ok(StatusChange::NotFound) => error(StatusCode::NOT_FOUND, "no such campaign"),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/v1/campaigns/{id}/start`.
pub(super) async fn campaign_start(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    change(&api, &headers, id, "start").await
}

/// `POST /api/v1/campaigns/{id}/pause`.
pub(super) async fn campaign_pause(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    change(&api, &headers, id, "pause").await
}

/// `POST /api/v1/campaigns/{id}/stop`.
pub(super) async fn campaign_stop(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    change(&api, &headers, id, "stop").await
}

/// A JSON array of contacts read without holding more than the limit: a
/// body of millions of tiny items is refused as it is read, not after.
struct Bounded(Vec<Value>);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Bounded;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of contacts")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bounded, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    if items.len() == MAX_CONTACTS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_CONTACTS} contacts in one request"
                        )));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_seq(Items)
    }
}

/// One contact as the API takes it (JSON).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactIn {
    number: String,
    name: Option<String>,
    priority: Option<i32>,
    language: Option<String>,
    not_before: Option<String>,
    data: Option<serde_json::Map<String, Value>>,
}

/// Checks one contact; the number comes out in E.164 as the tenant's dial
/// plan reads it.
fn contact_in(c: ContactIn, plan: &DialPlan) -> Result<NewContact, String> {
    let number = c.number.trim();
    if !valid_number(number) {
        return Err("number: an optional + and 6 to 15 digits".into());
    }
    let number = plan
        .check(number)
        .map_err(|r| format!("number: refused by the dial plan ({})", r.label()))?;
    if let Some(n) = &c.name
        && (n.chars().count() > 128 || n.chars().any(char::is_control))
    {
        return Err("name: at most 128 characters, no control characters".into());
    }
    let priority = c.priority.unwrap_or(0);
    check_priority(priority)?;
    if let Some(l) = &c.language
        && (l.is_empty()
            || l.len() > 16
            || !l.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-'))
    {
        return Err("language: 1 to 16 letters or '-' (e.g. \"it\", \"de-CH\")".into());
    }
    let not_before = match &c.not_before {
        Some(t) => Some(parse_rfc3339(t).ok_or("not_before: an RFC 3339 time")?),
        None => None,
    };
    let data = match c.data {
        Some(d) => {
            let s = Value::Object(d).to_string();
            if s.len() > MAX_DATA {
                return Err(format!("data: at most {MAX_DATA} bytes of JSON"));
            }
            Some(s)
        }
        None => None,
    };
    Ok(NewContact {
        number,
        name: c.name.filter(|n| !n.is_empty()),
        priority,
        language: c.language,
        not_before,
        data,
    })
}

/// A contact line: its number and the contact, or why it is refused.
type ContactLine = (usize, Result<ContactIn, String>);

/// The contacts of a CSV body: a header line naming `number` (and any of
/// `name`, `priority`, `language`, `not_before`); other columns go into the
/// contact's `data`.
fn csv_contacts(text: &str) -> Result<Vec<ContactLine>, CsvError> {
    let (header, rows) = csv_table(text, MAX_CONTACTS + 1)?;
    let col = |n: &str| header.iter().position(|h| h == n);
    let Some(number) = col("number") else {
        return Err((1, "the header names no \"number\" column".into()));
    };
    let known = ["number", "name", "priority", "language", "not_before"];
    Ok(rows
        .iter()
        .map(|(line, f)| {
            let get = |i: Option<usize>| {
                i.and_then(|i| f.get(i))
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            };
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
            let priority = match get(col("priority")).map(|p| p.parse::<i32>()) {
                Some(Err(_)) => return (*line, Err("priority: an integer".into())),
                Some(Ok(p)) => Some(p),
                None => None,
            };
            let data: serde_json::Map<String, Value> = header
                .iter()
                .zip(f)
                .filter(|(h, v)| !known.contains(&h.as_str()) && !v.trim().is_empty())
                .map(|(h, v)| (h.clone(), Value::String(v.trim().to_owned())))
                .collect();
            (
                *line,
                Ok(ContactIn {
                    number: get(Some(number)).unwrap_or_default(),
                    name: get(col("name")),
                    priority,
                    language: get(col("language")),
                    not_before: get(col("not_before")),
                    data: (!data.is_empty()).then_some(data),
                }),
            )
        })
        .collect())
}

/// `POST /api/v1/campaigns/{id}/contacts`: JSON (an array) or CSV
/// (`text/csv`), up to 100,000 contacts. All or nothing: one refused line
/// and nothing is stored (422 with every refusal, its line and reason).
pub(super) async fn contacts_import(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Body,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let c = match visible(&api, &token, id).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if c.status == CampaignStatus::Finished {
        return error(StatusCode::CONFLICT, "the campaign is finished");
    }
    let (_permit, body) = match import_body(&api, body).await {
        Ok(pb) => pb,
        Err(r) => return *r,
    };
    let csv = is_csv(&headers);
    let lines: Vec<ContactLine> = if csv {
        let Ok(text) = std::str::from_utf8(&body) else {
            return error(StatusCode::BAD_REQUEST, "the CSV is not UTF-8");
        };
        match csv_contacts(text) {
            Ok(l) => l,
            Err((line, why)) => {
                return ok(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": format!("line {line}: {why}"), "accepted": 0,
                             "rejected": [{ "line": line, "reason": why }] }),
                );
            }
        }
    } else {
        let items: Vec<Value> = match serde_json::from_slice::<Bounded>(&body) {
            Ok(v) => v.0,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid JSON body (an array of contacts): {e}"),
                );
            }
        };
        numbered(items)
    };
    if lines.len() > MAX_CONTACTS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} contacts: at most {MAX_CONTACTS} per request",
                lines.len()
            ),
        );
    }
    let plan = api
        .live()
        .queues
        .values()
        .find(|(t, _)| *t == c.tenant)
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    let mut rejected = Vec::new();
    let mut contacts: Vec<NewContact> = Vec::with_capacity(lines.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut merged_here = 0u64;
    for (line, item) in lines {
        match item.and_then(|c| contact_in(c, &plan)) {
            Ok(k) => match seen.get(&k.number) {
                // The same number twice in one import: one contact, the
                // later line's details.
                Some(&i) => {
                    contacts[i] = k;
                    merged_here += 1;
                }
                None => {
                    seen.insert(k.number.clone(), contacts.len());
                    contacts.push(k);
                }
            },
            Err(reason) => rejected.push((line, reason)),
        }
    }
    if !rejected.is_empty() {
        api.net
            .campaign_contacts_rejected
            .inc_by(rejected.len() as u64);
        let total = rejected.len();
        let list: Vec<Value> = rejected
            .iter()
            .take(MAX_LISTED)
            .map(|(line, reason)| json!({ "line": line, "reason": reason }))
            .collect();
        let (line, reason) = &rejected[0];
        return ok(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "error": format!("line {line}: {reason} (nothing was stored)"),
                "accepted": 0,
                "rejected": list,
                "rejected_total": total,
            }),
        );
    }
    let accepted = contacts.len() as u64 + merged_here;
    let now = unix_now();
    let campaign = c.id.clone();
    match api
        .store
        .with(move |s| s.import_contacts(&campaign, &contacts, now))
        .await
    {
        Ok(Imported { added, merged }) => {
            info!(campaign = %c.name, tenant = %c.tenant, added, merged = merged + merged_here, "contacts imported");
            ok(
                StatusCode::OK,
                &json!({ "accepted": accepted, "added": added, "merged": merged + merged_here, "rejected": [] }),
            )
        }
        Err(e) => unavailable(&e),
    }
}

/// The `key=value` pairs of a query, or a 400 naming the keys it takes.
fn query_pairs<'a>(
    query: Option<&'a str>,
    keys: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, Box<Response>> {
    let mut out = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some((k, v)) if keys.contains(&k) => out.push((k, v)),
            _ => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter (takes {})", keys.join(", ")),
                )));
            }
        }
    }
    Ok(out)
}

/// `GET /api/v1/campaigns/{id}/contacts?status=&after=&limit=`: numbers
/// in full for admins, masked but for the last 3 digits for supervisors.
pub(super) async fn contacts_list(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let pairs = match query_pairs(query.as_deref(), &["status", "after", "limit"]) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (mut status, mut after, mut limit) = (None, 0, 100);
    for (k, v) in pairs {
        match k {
            "status" => match ContactStatus::parse(v) {
                Some(s) => status = Some(s),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "status: pending, in_progress, done, failed or dnc",
                    );
                }
            },
            "after" => match v.parse::<i64>() {
                Ok(a) => after = a,
                Err(_) => return error(StatusCode::BAD_REQUEST, "after: a contact id"),
            },
            _ => match v.parse::<usize>() {
                Ok(l) if (1..=1000).contains(&l) => limit = l,
                _ => return error(StatusCode::BAD_REQUEST, "limit: 1 to 1000"),
            },
        }
    }
    let c = match visible(&api, &token, id).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let full = token.role == centralino_config::Role::Admin;
    match api
        .store
        .with(move |s| s.contacts(&c.id, status, after, limit))
        .await
    {
        Ok(list) => {
            let contacts: Vec<Value> = list
                .iter()
                .map(|k| {
                    let number = if full {
                        k.number.clone()
                    } else {
                        centralino_types::masked(&k.number)
                    };
                    json!({
                        "id": k.id,
                        "number": number,
                        "name": k.name,
                        "priority": k.priority,
                        "language": k.language,
                        "status": k.status.as_str(),
                        "attempts": k.attempts,
                        "last_outcome": k.last_outcome,
                        "disposition": k.disposition,
                        "next_at": rfc3339(k.next_at),
                    })
                })
                .collect();
            ok(StatusCode::OK, &json!({ "contacts": contacts }))
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DncIn {
    number: String,
    tenant: Option<String>,
}

/// The list a request names: a tenant's (its supervisor or an admin) or
/// the national one (`""`, admins only); the number in E.164.
fn dnc_target(
    api: &Api,
    token: &ApiToken,
    number: &str,
    tenant: Option<String>,
) -> Result<(String, String), Box<Response>> {
    let live = api.live();
    let tenant = tenant.unwrap_or_default();
    if tenant.is_empty() && token.role != centralino_config::Role::Admin {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the national list needs an admin token; name your tenant",
        )));
    }
    if token.tenant.as_ref().is_some_and(|t| *t != tenant) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "another tenant's list",
        )));
    }
    let plan = if tenant.is_empty() {
        DialPlan::default()
    } else {
        match live.queues.values().find(|(t, _)| *t == tenant) {
            Some((_, p)) => p.clone(),
            None => {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    "no such tenant (with a queue)",
                )));
            }
        }
    };
    let number = number.trim();
    if !valid_number(number) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "number: an optional + and 6 to 15 digits",
        )));
    }
    // In E.164 whatever the plan allows or blocks (a plan widened later
    // must find the entry): `0041…` and `+41…` are one entry.
    let Some(e164) = centralino_types::dialplan::normalize(number, &plan.country_code) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "number: an optional + and 6 to 15 digits",
        )));
    };
    Ok((e164, tenant))
}

/// The `tenant` of a query.
fn tenant_of(query: Option<&str>) -> Result<Option<String>, Box<Response>> {
    Ok(query_pairs(query, &["tenant"])?
        .into_iter()
        .next()
        .map(|(_, t)| t.to_owned()))
}

/// `POST /api/v1/dnc`: `{"number", "tenant"?}` (201 when new, 200 when it
/// was listed), or `text/csv` with a `number` column and `?tenant=`.
pub(super) async fn dnc_add(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: axum::body::Body,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let query_tenant = match tenant_of(query.as_deref()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let csv = is_csv(&headers);
    let now = unix_now();
    if !csv {
        // One number: never behind an import (a legally required entry
        // must not wait for another tenant's upload).
        let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 16 KiB");
        };
        let b: DncIn = match parse_body(&body) {
            Ok(b) => b,
            Err(r) => return *r,
        };
        let (number, tenant) = match dnc_target(&api, &token, &b.number, b.tenant) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let t = tenant.clone();
        return match api.store.with(move |s| s.add_dnc(&number, &t, now)).await {
            Ok(added) => {
                if added {
                    api.net.dnc_changes.with_label_values(&["added"]).inc();
                }
                ok(
                    if added {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &json!({ "added": added, "tenant": tenant }),
                )
            }
            Err(e) => unavailable(&e),
        };
    }
    let (_permit, body) = match import_body(&api, body).await {
        Ok(pb) => pb,
        Err(r) => return *r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the CSV is not UTF-8");
    };
    let records = match csv_records(text, MAX_CONTACTS + 1) {
        Ok(r) => r,
        Err((line, why)) => return error(StatusCode::BAD_REQUEST, &format!("line {line}: {why}")),
    };
    let Some(((_, header), rows)) = records.split_first() else {
        return error(StatusCode::BAD_REQUEST, "empty: a header line is needed");
    };
    let Some(col) = header
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("number"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the header names no \"number\" column",
        );
    };
    if rows.len() > MAX_CONTACTS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {MAX_CONTACTS} numbers per request"),
        );
    }
    let mut numbers = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    let mut tenant = String::new();
    for (line, f) in rows {
        let n = f.get(col).map_or("", |s| s.as_str());
        match dnc_target(&api, &token, n, query_tenant.clone()) {
            Ok((n, t)) => {
                numbers.push(n);
                tenant = t;
            }
            Err(_) if !valid_number(n.trim()) => {
                rejected.push(
                    json!({ "line": line, "reason": "number: an optional + and 6 to 15 digits" }),
                );
            }
            Err(r) => return *r,
        }
    }
    if !rejected.is_empty() {
        let total = rejected.len();
        rejected.truncate(MAX_LISTED);
        return ok(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "error": "numbers refused (nothing was stored)", "accepted": 0,
                     "rejected": rejected, "rejected_total": total }),
        );
    }
    let count = numbers.len();
    let t = tenant.clone();
    match api
        .store
        .with(move |s| s.import_dnc(&numbers, &t, now))
        .await
    {
        Ok(added) => {
            api.net
                .dnc_changes
                .with_label_values(&["added"])
                .inc_by(added);
            ok(
                StatusCode::OK,
                &json!({ "accepted": count, "added": added, "tenant": tenant, "rejected": [] }),
            )
        }
        Err(e) => unavailable(&e),
    }
}

/// `DELETE /api/v1/dnc/{number}?tenant=`: 204, or 404 when not listed.
pub(super) async fn dnc_delete(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(number): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervisor) {
        Ok(t) => t.into_owned(),
        Err(r) => return *r,
    };
    let tenant = match tenant_of(query.as_deref()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let (number, tenant) = match dnc_target(&api, &token, &number, tenant) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // Audited as stored (E.164), however it was written in the path.
    let audited = AuditNumber(number.clone());
    let mut r = match api
        .store
        .with(move |s| s.remove_dnc(&number, &tenant))
        .await
    {
        Ok(true) => {
            api.net.dnc_changes.with_label_values(&["removed"]).inc();
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "not on that list"),
        Err(e) => unavailable(&e),
    };
    r.extensions_mut().insert(audited);
    r
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DispositionIn {
    pub(super) code: String,
    pub(super) at: Option<String>,
    pub(super) note: Option<String>,
}

/// `POST /api/v1/calls/{id}/disposition`: an operator's disposition of a
/// call (`{id}` is the call record id the desk shows), during the call or
/// in wrap-up. An inbound call's (no campaign placed it) is one of
/// `INBOUND_CODES` with an optional note, kept with the call's answers
/// (`scripts::inbound_disposition`).
/// A campaign call's: `booked` and `refused` close the contact,
/// `wrong_number` fails it, `call_later` (at `at`, moved into the
/// campaign's window, or after the policy's delay) and `no_contact` ask for
/// another attempt within the retry policy; a campaign's own codes are
/// recorded and leave the contact as its call does.
pub(super) async fn post_disposition(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let (token, b): (_, DispositionIn) =
        match authorized_body(&api, &headers, &body, Need::Operator) {
            Ok(tb) => tb,
            Err(r) => return *r,
        };
    let token = token.into_owned();
    if token.role == centralino_config::Role::Agent {
        let me = token.agent.clone().unwrap_or_default();
        if !api.desks.had_call(&me, &id) {
            return error(
                StatusCode::FORBIDDEN,
                "not a call of this token's operator (the current or the last one)",
            );
        }
    }
    if b.note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 1000 || n.chars().any(|c| c.is_control() && c != '\n'))
    {
        return problems_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[(
                "note".into(),
                "at most 1000 characters, no control characters but line breaks".into(),
            )],
        );
    }
    let at = match b.at.as_deref().map(parse_rfc3339) {
        Some(None) => {
            return problems_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &[("at".into(), "an RFC 3339 time".into())],
            );
        }
        Some(Some(_)) if b.code != "call_later" => {
            return problems_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &[("at".into(), "only with call_later".into())],
            );
        }
        Some(t) => t,
        None => None,
    };
    let call = id.clone();
    let found = match api.store.with(move |s| s.attempt_by_call(&call)).await {
        Ok(Some(f)) => f,
        // Not (yet) a campaign attempt: what the desk that answered it
        // saw decides. The attempt's link to the call is written by a job
        // of its own, so a campaign call may get here a moment early:
        // never filed as inbound (its contact would be dialled again).
        Ok(None) => {
            let agent = if token.role == centralino_config::Role::Agent {
                token.agent.as_deref()
            } else {
                None
            };
            return match api.desks.call_kind(agent, &id) {
                Some(CallKind::Campaign) => error(
                    StatusCode::CONFLICT,
                    "this campaign call's record is being written: try again in a moment",
                ),
                Some(CallKind::Consultation) => error(
                    StatusCode::CONFLICT,
                    "a consultation between operators has no outcome",
                ),
                Some(CallKind::Citizen) | None => inbound_disposition(&api, &token, id, b).await,
            };
        }
        Err(e) => return unavailable(&e),
    };
    let c = match visible(&api, &token, found.contact.campaign.clone()).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let spec = match current_spec(&api.live(), &c) {
        Ok(s) => s,
        Err(p) => return problems_response(StatusCode::CONFLICT, &p),
    };
    if !spec.takes_code(&b.code) {
        return problems_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[(
                "code".into(),
                format!(
                    "not a code of this campaign ({}{}{})",
                    centralino_campaigns::spec::BUILTIN_CODES.join(", "),
                    if spec.extra_codes.is_empty() {
                        ""
                    } else {
                        ", "
                    },
                    spec.extra_codes.join(", ")
                ),
            )],
        );
    }
    let now = unix_now();
    let again = |o: centralino_campaigns::Outcome| match spec.retries.next(
        o,
        found.attempt,
        now,
        at,
        &spec.window,
    ) {
        centralino_campaigns::Next::Retry { at } => (Some(ContactStatus::Pending), Some(at)),
        _ => (Some(ContactStatus::Failed), None),
    };
    let (status, next_at) = match b.code.as_str() {
        "booked" | "refused" => (Some(ContactStatus::Done), None),
        "wrong_number" => (Some(ContactStatus::Failed), None),
        "call_later" => again(centralino_campaigns::Outcome::CallLater),
        "no_contact" => again(centralino_campaigns::Outcome::NoAnswer),
        _ => (None, None),
    };
    let d = centralino_store::Disposition {
        contact: found.contact.id,
        attempt: found.attempt,
        code: b.code.clone(),
        note: b.note.clone(),
        status,
        next_at,
        call: id.clone(),
        by: Some(token.agent.clone().unwrap_or_else(|| token.name.clone())),
    };
    match api.store.with(move |s| s.dispose(&d, now)).await {
        Ok(false) => error(
            StatusCode::CONFLICT,
            "this call is not the contact's latest attempt: its disposition changes nothing now",
        ),
        Ok(true) => {
            info!(campaign = %c.name, tenant = %c.tenant, code = %b.code, "disposition recorded");
            ok(
                StatusCode::OK,
                &json!({
                    "contact": found.contact.id,
                    "code": b.code,
                    "status": status.map(ContactStatus::as_str),
                    "next_at": next_at.map(rfc3339),
                }),
            )
        }
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_read_with_quotes_semicolons_and_line_numbers() {
        let text = "number;name;note\n+393331112223;\"Rossi; Maria\";\"ha detto \"\"sì\"\"\"\n\n0612345678;Bianchi;\"due\nrighe\"\n";
        let r = csv_records(text, 100).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1],
            (
                2,
                vec![
                    "+393331112223".into(),
                    "Rossi; Maria".into(),
                    "ha detto \"sì\"".into()
                ]
            )
        );
        assert_eq!(r[2].0, 4);
        assert_eq!(r[2].1[2], "due\nrighe");
        let c = csv_contacts(text).unwrap();
        let first = c[0].1.as_ref().unwrap();
        assert_eq!(first.name.as_deref(), Some("Rossi; Maria"));
        assert_eq!(
            first.data.as_ref().and_then(|d| d.get("note")),
            Some(&Value::String("ha detto \"sì\"".into()))
        );
        assert_eq!(csv_records("a,b\n\"open", 100).unwrap_err().0, 2);
        assert!(csv_records("a,b\nx\"y,z", 100).is_err());
        // A byte-order mark is not part of the header; a cap on lines.
        assert_eq!(
            csv_records("\u{feff}number\n1\n", 100).unwrap()[0].1,
            ["number"]
        );
        assert!(
            csv_records("n\n1\n2\n3\n", 3)
                .unwrap_err()
                .1
                .contains("more than 2")
        );
        assert_eq!(csv_contacts("name\nx").unwrap_err().0, 1);
        let short = csv_contacts("number,name\n+393331112223").unwrap();
        assert!(short[0].1.is_err());
    }

    #[test]
    fn a_contact_is_normalised_by_the_dial_plan_or_refused_with_its_reason() {
        let plan = DialPlan::default();
        let c = |n: &str| ContactIn {
            number: n.into(),
            name: None,
            priority: None,
            language: None,
            not_before: None,
            data: None,
        };
        assert_eq!(
            contact_in(c("0612345678"), &plan).unwrap().number,
            "+39061234567".to_owned() + "8"
        );
        assert!(
            contact_in(c("899123456"), &plan)
                .unwrap_err()
                .contains("dial plan")
        );
        assert!(
            contact_in(c("pizza"), &plan)
                .unwrap_err()
                .starts_with("number")
        );
        let mut bad = c("+393331112223");
        bad.not_before = Some("domani".into());
        assert!(
            contact_in(bad, &plan)
                .unwrap_err()
                .starts_with("not_before")
        );
    }
}
