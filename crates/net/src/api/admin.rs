//! `POST /api/v1/config/reload`.

use super::*;

pub(super) async fn reload_config(State(api): State<Api>, headers: HeaderMap) -> Response {
    reload(&api, &headers).await
}

pub(super) async fn reload(api: &Api, headers: &HeaderMap) -> Response {
    if let Err(r) = authorize(api, headers, Need::Admin) {
        return *r;
    }
    match api.reload().await {
        Ok(changed) => ok(
            StatusCode::OK,
            &json!({ "applied": true, "changed": changed }),
        ),
        Err(ReloadError::Invalid(problems)) => error(StatusCode::BAD_REQUEST, &problems),
        Err(ReloadError::Restart(keys)) => {
            let message = ReloadError::Restart(keys.clone()).to_string();
            ok(
                StatusCode::CONFLICT,
                &json!({ "applied": false, "error": message, "keys": keys }),
            )
        }
        Err(e @ ReloadError::Refused(_)) => ok(
            StatusCode::CONFLICT,
            &json!({ "applied": false, "error": e.to_string(), "keys": [] }),
        ),
    }
}
