//! `POST /api/v1/config/reload`.

use super::*;

pub(super) async fn reload_config(State(api): State<Api>, headers: HeaderMap) -> Response {
    reload(&api, &headers).await
}

pub(super) async fn reload(api: &Api, headers: &HeaderMap) -> Response {
    if let Err(r) = authorize(api, headers, Need::Admin) {
        return *r;
    }
    // In a task of its own: a client that hangs up cannot leave it half
    // done (queues bound, the engine not asked).
    let task = {
        let api = api.clone();
        tokio::spawn(async move { api.reload().await })
    };
    let Ok(done) = task.await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the reload failed");
    };
    match done {
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
        Err(ReloadError::QueueOwners(found)) => {
            let message = ReloadError::QueueOwners(found.clone()).to_string();
            let queues: Vec<&str> = found.iter().map(|c| c.queue.as_str()).collect();
            ok(
                StatusCode::CONFLICT,
                &json!({ "applied": false, "error": message, "keys": ["queues[].tenant"], "queues": queues }),
            )
        }
        Err(e @ ReloadError::Store(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ ReloadError::Refused(_)) => ok(
            StatusCode::CONFLICT,
            &json!({ "applied": false, "error": e.to_string(), "keys": [] }),
        ),
    }
}
