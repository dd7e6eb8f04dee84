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

/// How often an open WebSocket's token is checked again even when the
/// configuration did not change (a desk session expires).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// An open WebSocket's token, checked again whenever the configuration
/// changes (a reload swaps it whole) and once a minute: a removed token, a
/// new password or a token moved to another tenant closes the socket, as
/// it would refuse its next request.
pub(super) struct Recheck {
    token: String,
    /// The operator whose desk it is (`None`: the supervisors' view).
    desk: Option<String>,
    /// The tenant the socket was opened for.
    tenant: Option<String>,
    seen: Arc<Live>,
    checked: std::time::Instant,
}

impl Recheck {
    pub(super) fn new(api: &Api, token: &str, desk: Option<&str>, tenant: Option<String>) -> Self {
        Self {
            token: token.to_owned(),
            desk: desk.map(str::to_owned),
            tenant,
            seen: api.live(),
            checked: std::time::Instant::now(),
        }
    }

    /// Whether the socket may stay open (cheap unless a reload happened
    /// or a minute passed).
    pub(super) fn allowed(&mut self, api: &Api) -> bool {
        let live = api.live();
        if Arc::ptr_eq(&live, &self.seen) && self.checked.elapsed() < RECHECK_EVERY {
            return true;
        }
        self.seen = live;
        self.checked = std::time::Instant::now();
        let need = match &self.desk {
            Some(agent) => Need::Desk(agent),
            None => Need::Supervisor,
        };
        authorize_token(api, Some(&self.token), need).is_ok_and(|t| t.tenant == self.tenant)
    }
}

/// Closes a socket whose token no longer holds (1008: policy violation).
pub(super) async fn close_revoked(socket: &mut axum::extract::ws::WebSocket) {
    use axum::extract::ws::{CloseFrame, Message};
    let _ = send_ws(
        socket,
        Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "token no longer valid".into(),
        })),
    )
    .await;
}
