//! `POST /api/v1/login`: an operator's SIP credentials become a desk
//! session, with the same brute-force throttle as the registrar.

use super::*;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    pub(super) username: String,
    pub(super) password: String,
    /// The desktop page asks for the cookie only: the token never reaches
    /// its script.
    #[serde(default)]
    pub(super) cookie_only: bool,
}

/// `POST /api/v1/login` `{"username", "password"}` with an operator's SIP
/// credentials: `200 {"token", "agent", "expires_at"}`, a desk session for
/// that operator only (their desk, its WebSocket, scripts, answers, breaks).
/// Wrong credentials, or an unknown operator, get the same `401`; too many
/// failures from one address get `429` for the registrar's ban time, even
/// with the right password.
pub(super) async fn login(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("token").is_some()) {
        return token_login(&api, peer, &body);
    }
    let (r, user) = check_login(&api, peer, &body);
    if let Some(user) = user.filter(|u| api.live().credentials.contains_key(u)) {
        // Who logged in, or tried to as whom: in the audit log.
        api.audit_as(
            &format!("desk:{user}"),
            "login",
            &peer.ip().to_string(),
            r.status(),
        );
    }
    r
}

pub(super) fn check_login(api: &Api, peer: SocketAddr, body: &Bytes) -> (Response, Option<String>) {
    if !api.sessions.enabled() {
        return (
            error(
                StatusCode::NOT_FOUND,
                "operator logins are off (api.session_hours = 0)",
            ),
            None,
        );
    }
    let b: LoginBody = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return (*r, None),
    };
    if b.username.is_empty() || b.username.len() > 64 || b.password.len() > 256 {
        return (
            error(
                StatusCode::BAD_REQUEST,
                "username: 1 to 64 characters; password: at most 256",
            ),
            None,
        );
    }
    let now = std::time::Instant::now();
    let ip = peer.ip();
    let logins = &api.logins;
    let mut throttle = logins
        .throttle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if throttle.banned(now, ip, &b.username) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: try again later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
        return (r, Some(b.username));
    }
    // An unknown operator costs the same SHA-256 HA1 and comparison as a
    // known one (a stored HA1 no password gives), so timing does not tell
    // which usernames exist.
    let unknown = centralino_sip::auth::Credentials {
        ha1_md5: None,
        ha1_sha256: Some("-".repeat(64)),
    };
    let live = api.live();
    let creds = live.credentials.get(&b.username);
    let right = creds
        .unwrap_or(&unknown)
        .matches_password(&b.username, &live.realm, &b.password)
        && creds.is_some();
    if !right {
        let bans = throttle.failure(now, ip, &b.username);
        drop(throttle);
        for (scope, time) in bans {
            warn!(%ip, scope = scope.label(), seconds = time.as_secs(), "desk login guessing: address banned");
        }
        warn!(%ip, "desk login refused: wrong username or password");
        return (
            error(StatusCode::UNAUTHORIZED, "wrong username or password"),
            Some(b.username),
        );
    }
    throttle.success(ip, &b.username);
    drop(throttle);
    let secret = api.live().session_secret(&b.username).unwrap_or_default();
    let (token, expires) = api.sessions.issue(&b.username, &secret, unix_now());
    info!(agent = %b.username, "desk login");
    let r = session_answer(
        json!({ "agent": b.username, "expires_at": rfc3339(expires) }),
        &token,
        expires,
        b.cookie_only,
    );
    (r, Some(b.username))
}

/// `GET /api/v1/login`: whose session this is (the desktop page, after a
/// reload, asks rather than keep a name anywhere): `200 {"agent", "name",
/// "role"}` (`agent` null for an API token), `401` without a valid session
/// or token.
pub(super) async fn whoami(State(api): State<Api>, headers: HeaderMap) -> Response {
    match authorize(&api, &headers, Need::Any) {
        Err(r) => *r,
        Ok(t) => {
            use centralino_config::Role;
            let role = match t.role {
                Role::Admin => "admin",
                Role::Callbacks => "callbacks",
                Role::Agent => "agent",
                Role::Supervisor => "supervisor",
            };
            ok(
                StatusCode::OK,
                &json!({ "agent": t.agent, "name": t.name, "role": role }),
            )
        }
    }
}

/// `DELETE /api/v1/login`: the desktop's log-out: the session presented
/// (cookie or bearer) and every earlier one of its operator are refused
/// from now on by this node, and the cookie is cleared (`204`, with or
/// without a session: clearing one's own cookie needs none).
pub(super) async fn logout(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(token) = bearer(&headers).filter(|t| Sessions::is_session(t)) {
        let live = api.live();
        if let Some(who) = api
            .sessions
            .log_out(token, unix_now(), |k, w| live.session_secret_for(k, w))
        {
            // A wallboard's session is its token's; a desk's, its operator's.
            let actor = if token.starts_with("cs2.") {
                info!(token = %who, "wallboard logout");
                who
            } else {
                info!(agent = %who, "desk logout");
                format!("desk:{who}")
            };
            api.audit_as(&actor, "logout", "", StatusCode::NO_CONTENT);
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/api; HttpOnly; SameSite=Strict; Max-Age=0"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenLoginBody {
    token: String,
    #[serde(default)]
    cookie_only: bool,
}

/// `POST /api/v1/login` `{"token", "cookie_only"?}`: a supervisor's API
/// token opens a wallboard session (never an admin's: its rights do not
/// belong in a wall screen's cookie), `cs2.NAME.EXPIRES.MAC`,
/// bound to that token's value, as the same `HttpOnly` cookie; the token
/// itself never has to stay in a page. Other roles get `403`; a wrong
/// token `401` and counts against the address like a wrong password.
fn token_login(api: &Api, peer: SocketAddr, body: &Bytes) -> Response {
    if !api.sessions.enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "logins are off (api.session_hours = 0)",
        );
    }
    let b: TokenLoginBody = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    // The throttle's name for token guesses from an address.
    const GUESS: &str = "~token";
    let now = std::time::Instant::now();
    let ip = peer.ip();
    let mut throttle = api
        .logins
        .throttle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if throttle.banned(now, ip, GUESS) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: try again later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
        return r;
    }
    let live = api.live();
    let mut found = None;
    for t in &live.tokens {
        if same(t.token.as_bytes(), b.token.as_bytes()) {
            found = Some(t);
        }
    }
    let Some(t) = found else {
        // Counted (the route's metric), never audited: an anonymous flood
        // must not grow the append-only log.
        let bans = throttle.failure(now, ip, GUESS);
        drop(throttle);
        for (scope, time) in bans {
            warn!(%ip, scope = scope.label(), seconds = time.as_secs(), "wallboard token guessing: address banned");
        }
        warn!(%ip, "wallboard login refused: unknown token");
        return error(StatusCode::UNAUTHORIZED, "unknown token");
    };
    throttle.success(ip, GUESS);
    drop(throttle);
    let Some(secret) = live.session_secret_for(crate::session::TOKEN, &t.name) else {
        api.audit_as(&t.name, "login", &ip.to_string(), StatusCode::FORBIDDEN);
        return error(
            StatusCode::FORBIDDEN,
            "only supervisor tokens open a wallboard session",
        );
    };
    let (token, expires) =
        api.sessions
            .issue_as(crate::session::TOKEN, &t.name, &secret, unix_now());
    info!(token = %t.name, "wallboard login");
    api.audit_as(&t.name, "login", &ip.to_string(), StatusCode::OK);
    session_answer(
        json!({ "name": t.name, "expires_at": rfc3339(expires) }),
        &token,
        expires,
        b.cookie_only,
    )
}

/// A login's `200`: `answer`, with the session `token` unless
/// `cookie_only`, and the session as a cookie no script reads, sent to
/// the API only, never from another site's page (the HTTP endpoint adds
/// `Secure` over HTTPS). Tokens stay out of URLs.
fn session_answer(mut answer: Value, token: &str, expires: i64, cookie_only: bool) -> Response {
    if !cookie_only && let Some(o) = answer.as_object_mut() {
        o.insert("token".into(), json!(token));
    }
    let mut r = ok(StatusCode::OK, &answer);
    let max_age = expires.saturating_sub(unix_now()).max(0);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/api; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
