//! `POST`, `PATCH` and `DELETE /api/v1/agents/{name}/monitor`: a supervisor
//! listens to an operator's conversation from the wallboard's browser,
//! whispers to the operator, or barges in. Only a supervisor of the
//! operator's firm may: an admin configures the node and is refused (health
//! conversations are heard by those who coach, and by nobody else); each
//! request is audited under the supervisor's token, as every API call.

use super::*;
use crate::monitor::MonitorRefused;
use centralino_b2bua::MonitorError;
use centralino_media::monitor::MonitorMode;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MonitorBody {
    mode: String,
    /// The browser's SDP offer (joining only).
    sdp: Option<String>,
}

fn mode_of(s: &str) -> Result<MonitorMode, Box<Response>> {
    MonitorMode::parse(s).ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "mode: {:?} is none of \"listen\", \"whisper\", \"barge\"",
                truncate(s)
            ),
        ))
    })
}

/// A supervisor: their token's name and firm (`None`: every firm's).
type Supervisor = (String, Option<String>);

/// A join or a change: the supervisor, the mode and the body.
fn request(
    api: &Api,
    headers: &HeaderMap,
    name: &str,
    body: &Bytes,
) -> Result<(Supervisor, MonitorMode, MonitorBody), Box<Response>> {
    let (token, b): (_, MonitorBody) = authorized_body(api, headers, body, Need::Supervises(name))?;
    let mode = mode_of(&b.mode)?;
    Ok(((token.name.clone(), token.tenant.clone()), mode, b))
}

fn refused(e: Option<MonitorRefused>) -> Response {
    match e {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running"),
        Some(MonitorRefused::Engine(MonitorError::Unknown)) => {
            error(StatusCode::NOT_FOUND, "no such operator")
        }
        Some(MonitorRefused::Engine(e @ MonitorError::OtherFirm)) => {
            error(StatusCode::FORBIDDEN, &e.to_string())
        }
        Some(MonitorRefused::Engine(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Some(MonitorRefused::Offer(e)) => error(StatusCode::BAD_REQUEST, &format!("sdp: {e}")),
        Some(MonitorRefused::Unavailable(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `POST /api/v1/agents/{name}/monitor` `{"mode", "sdp"}`: the supervisor
/// joins the operator's conversation; the answer carries the SDP answer
/// for their browser. 409 when the operator is not talking or another
/// supervisor is on the call.
pub(super) async fn monitor_start(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let (supervisor, mode, b) = match request(&api, &headers, &name, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(offer) = b.sdp.filter(|s| !s.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "sdp: the browser's SDP offer is required to join",
        );
    };
    match api
        .engine
        .monitor_start(name.clone(), supervisor, mode, offer)
        .await
    {
        Ok(j) => ok(
            StatusCode::OK,
            &json!({ "agent": name, "call": j.record, "mode": mode.label(), "sdp": j.sdp }),
        ),
        Err(e) => refused(e),
    }
}

/// `PATCH /api/v1/agents/{name}/monitor` `{"mode"}`: the supervisor on the
/// call listens, whispers or barges from now.
pub(super) async fn monitor_patch(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    // A change concerns only a supervisor already on the call.
    let ((supervisor, _), mode, b) = match request(&api, &headers, &name, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if b.sdp.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "sdp: only joining (POST) takes an offer",
        );
    }
    match api
        .engine
        .monitor_set(name.clone(), supervisor, Some(mode))
        .await
    {
        Ok(call) => ok(
            StatusCode::OK,
            &json!({ "agent": name, "call": call, "mode": mode.label() }),
        ),
        Err(e) => refused(e),
    }
}

/// `DELETE /api/v1/agents/{name}/monitor`: the supervisor leaves the call.
pub(super) async fn monitor_delete(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let token = match authorize(&api, &headers, Need::Supervises(&name)) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let supervisor = token.name.clone();
    match api.engine.monitor_set(name.clone(), supervisor, None).await {
        Ok(call) => ok(
            StatusCode::OK,
            &json!({ "agent": name, "call": call, "mode": null }),
        ),
        Err(e) => refused(e),
    }
}
