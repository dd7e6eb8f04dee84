//! WebSocket plumbing shared by the desk and the supervisor view.

use super::*;

/// A WebSocket upgrade, or why the request is not one.
pub(super) type Upgrade = Result<
    axum::extract::ws::WebSocketUpgrade,
    axum::extract::ws::rejection::WebSocketUpgradeRejection,
>;

pub(super) fn upgrade_required(
    e: &axum::extract::ws::rejection::WebSocketUpgradeRejection,
) -> Response {
    error(
        StatusCode::UPGRADE_REQUIRED,
        &format!("a WebSocket upgrade is needed here ({e})"),
    )
}

/// Sends one message; `false` when the peer is gone or took longer than
/// [`DESK_SEND_TIMEOUT`] (the connection is then dropped).
pub(super) async fn send_ws(
    socket: &mut axum::extract::ws::WebSocket,
    msg: axum::extract::ws::Message,
) -> bool {
    matches!(
        tokio::time::timeout(DESK_SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Sends `event` as a text frame with the next sequence number.
pub(super) async fn send_seq(
    socket: &mut axum::extract::ws::WebSocket,
    seq: &mut u64,
    mut event: Value,
) -> bool {
    *seq += 1;
    event["seq"] = json!(*seq);
    send_ws(
        socket,
        axum::extract::ws::Message::Text(event.to_string().into()),
    )
    .await
}

/// The `access_token` query parameter (browsers' WebSockets).
pub(super) fn query_token(query: Option<&str>) -> Option<String> {
    query.and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("access_token="))
            .map(str::to_owned)
    })
}
