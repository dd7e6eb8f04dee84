//! Who may call what: bearer tokens (constant-time), desk sessions, roles
//! and tenants.

use super::*;

/// One API route: its path, its methods with the name each is counted
/// and audited under (`centralino_api_requests_total{route}`, the audit
/// log's action), and how it is audited.
pub(super) struct Route {
    pub(super) path: &'static str,
    pub(super) methods: &'static [&'static str],
    pub(super) names: &'static [&'static str],
    pub(super) audit: Audit,
    pub(super) handler: MethodRouter<Api>,
}

/// Which answers of a route go to the audit log (all are counted). Only
/// requests with a known token are audited: anonymous ones are only
/// counted, so a flood cannot fill the disk.
#[derive(Clone, Copy, Debug)]
pub(super) enum Audit {
    /// Every answer, under the name of the bearer token presented.
    Bearer,
    /// Refusals (403) only: someone tried another operator's desk. Reads
    /// are audited by the handler, once per reader and call.
    Refusals,
    /// None: the handler audits what matters, if anything.
    CountOnly,
}

/// What the counting and auditing layer of one route knows.
#[derive(Clone)]
pub(super) struct Audited {
    pub(super) api: Api,
    pub(super) methods: &'static [&'static str],
    pub(super) names: &'static [&'static str],
    pub(super) audit: Audit,
}

/// The name a request to a route is counted and audited under: its
/// method's, a HEAD as its GET (axum answers HEAD with the GET handler,
/// so it reads the same data: an outside review found HEAD went
/// uncounted and unaudited). `None`: a method the route does not have.
pub(super) fn route_name(
    methods: &[&str],
    names: &[&'static str],
    method: &str,
) -> Option<&'static str> {
    let method = if method == "HEAD" { "GET" } else { method };
    let i = methods.iter().position(|m| *m == method)?;
    names.get(i).copied()
}

/// A number a handler names for the audit log as it stores it (E.164),
/// in place of the path's spelling of it.
#[derive(Clone)]
pub(super) struct AuditNumber(pub(super) String);

/// Counts every answer of a route by name and status, and audits it as
/// the route says; the target is the route's path parameter (a record id
/// or an operator's name), a phone number (`/api/v1/dnc/{number}`) only
/// as its tag keyed with the audit key (the store writes it; the number
/// as the handler normalised it, `AuditNumber`): the audit log is kept
/// for years and chained, never trimmed.
pub(super) async fn audited_route(
    State(a): State<Audited>,
    params: Result<axum::extract::RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(name) = route_name(a.methods, a.names, req.method().as_str()) else {
        // A method the route does not have: axum answers 405.
        return next.run(req).await;
    };
    let target = params
        .ok()
        .and_then(|p| {
            p.iter().next().map(|(k, v)| {
                if k == "number" {
                    // Written as its keyed tag by the store, never itself.
                    format!("{}{v}", centralino_store::NUMBER_TARGET)
                } else {
                    // No other target passes for a number.
                    v.replace('\0', "\\0")
                }
            })
        })
        .unwrap_or_default();
    let token = match a.audit {
        Audit::Bearer | Audit::Refusals => bearer(req.headers()).map(str::to_owned),
        Audit::CountOnly => None,
    };
    let r = next.run(req).await;
    let target = match r.extensions().get::<AuditNumber>() {
        Some(AuditNumber(n)) => format!("{}{n}", centralino_store::NUMBER_TARGET),
        None => target,
    };
    match a.audit {
        Audit::Bearer => {
            a.api.done(name, token.as_deref(), &target, r.status());
        }
        Audit::Refusals if r.status() == StatusCode::FORBIDDEN => {
            a.api.done(name, token.as_deref(), &target, r.status());
        }
        Audit::Refusals | Audit::CountOnly => a.api.count(name, r.status()),
    }
    r
}

/// Constant-time comparison: a wrong token takes as long as a right one.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What a request needs of its token.
#[derive(Clone, Copy, Debug)]
pub(super) enum Need<'a> {
    /// Callbacks: admin and callbacks tokens.
    Callbacks,
    /// One operator's desk: admin, or that operator's own token.
    Desk(&'a str),
    /// Operator work (scripts, answers): admin and operator tokens.
    Operator,
    /// Queue and operator views: admin and supervisor tokens.
    Supervisor,
    /// Configuration: admin only.
    Admin,
    /// Any valid token or session (who am I).
    Any,
    /// Acting on one operator's state: admin, that operator's own token,
    /// or a supervisor of that operator's firm (all firms without a
    /// `tenant`).
    Operates(&'a str),
    /// Hearing one operator's conversations: a supervisor of that
    /// operator's firm only (all firms without a `tenant`); not an admin.
    Supervises(&'a str),
}

/// Whether `Authorization: Bearer` carries exactly `token`, compared in
/// constant time (the session cookie does not count: `/metrics`).
pub(crate) fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| same(got.trim().as_bytes(), token.as_bytes()))
}

/// The bearer token of `Authorization`, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .trim(),
        ),
        // The desktop page's session cookie (set by `POST /api/v1/login`).
        None => session_cookie(headers),
    }
}

/// The desktop session's cookie name.
pub(crate) const SESSION_COOKIE: &str = "centralino_session";

/// The session cookie's value, if the request carries one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

pub(super) fn authorize<'a>(
    api: &'a Api,
    headers: &HeaderMap,
    need: Need<'_>,
) -> Result<Cow<'a, ApiToken>, Box<Response>> {
    authorize_token(api, bearer(headers), need)
}

/// What a desk session may do: an `agent` token of that operator, named
/// `desk:USER` in logs and the audit.
pub(super) fn session_token(agent: String) -> ApiToken {
    ApiToken {
        name: format!("desk:{agent}"),
        token: String::new(),
        role: centralino_config::Role::Agent,
        agent: Some(agent),
        tenant: None,
    }
}

/// 401 without a known token, 403 when its role may not do this.
pub(super) fn authorize_token<'a>(
    api: &'a Api,
    token: Option<&str>,
    need: Need<'_>,
) -> Result<Cow<'a, ApiToken>, Box<Response>> {
    use centralino_config::Role;
    let Some(token) = token else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>",
        )));
    };
    let t = if token.starts_with("cs2.") {
        // A wallboard's session, opened with a supervisor's (or admin's)
        // token: that token's rights, while the token stays the same.
        let live = api.live();
        let Some(name) = api
            .sessions
            .verify_as(crate::session::TOKEN, token, unix_now(), |n| {
                live.session_secret_for(crate::session::TOKEN, n)
            })
        else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "session expired or not valid: log in again",
            )));
        };
        let Some(t) = live
            .tokens
            .iter()
            .find(|t| t.name == name && t.role == Role::Supervisor)
        else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "session expired or not valid: log in again",
            )));
        };
        t.clone()
    } else if Sessions::is_session(token) {
        // An operator's desk session: signed, never stored.
        // Bound to the operator's current secret: a new password (a
        // reload) ends the sessions of the old one at once.
        let live = api.live();
        let Some(agent) = api
            .sessions
            .verify(token, unix_now(), |a| live.session_secret(a))
        else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "session expired or not valid: log in again",
            )));
        };
        session_token(agent)
    } else {
        // Every token is compared (constant time): which one matched
        // leaks nothing through timing.
        let live = api.live();
        let mut found = None;
        for t in &live.tokens {
            if same(t.token.as_bytes(), token.as_bytes()) {
                found = Some(t);
            }
        }
        let Some(t) = found else {
            warn!("API request with an unknown token refused");
            return Err(Box::new(error(StatusCode::UNAUTHORIZED, "unknown token")));
        };
        t.clone()
    };
    let allowed = match (t.role, need) {
        (Role::Supervisor, Need::Supervises(name) | Need::Operates(name)) => api
            .live()
            .agent_tenants
            .iter()
            .any(|(a, at)| a == name && t.tenant.as_deref().is_none_or(|tt| tt == at)),
        (_, Need::Supervises(_)) => false,
        (Role::Admin, _)
        | (_, Need::Any)
        | (Role::Callbacks, Need::Callbacks)
        | (Role::Agent, Need::Operator)
        | (Role::Supervisor, Need::Supervisor) => true,
        (Role::Agent, Need::Desk(name) | Need::Operates(name)) => t.agent.as_deref() == Some(name),
        _ => false,
    };
    if allowed {
        Ok(Cow::Owned(t))
    } else {
        warn!(token = %t.name, ?need, "API request beyond the token's role refused");
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            match need {
                Need::Admin => "needs an admin token",
                Need::Desk(_) => "an operator's token reads that operator's desk only",
                Need::Operates(_) => {
                    "only that operator, an admin, or a supervisor of their firm changes their state"
                }
                Need::Supervises(_) => {
                    "only a supervisor of the operator's firm joins their calls (not an admin)"
                }
                _ => "this token's role may not do this",
            },
        )))
    }
}
