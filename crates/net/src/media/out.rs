//! What leaves a call's session other than relayed packets: a browser
//! leg's own output, and packets the call's media makes for one side
//! (the supervisor's voice, keys sent as telephone events), each out
//! through that side's socket or its browser's WebRTC leg.

use super::*;

/// Runs a browser leg's output: its datagrams out of the operator port,
/// its audio through the relay to the caller.
pub(super) fn drain_browser(local: &mut Local, s: &mut Session, now: Instant) {
    let Session {
        call,
        media,
        socks,
        browser: Some(BrowserSide { leg: b, peer }),
        b_local,
        ..
    } = s
    else {
        return;
    };
    let (call, addr) = (*call, peer.unwrap_or(*b_local));
    let mut audio = [0u8; 1500];
    let mut outbuf = [0u8; 1500];
    b.poll(&mut audio, |p, buf| match p {
        Polled::Transmit { to, bytes } => local.sent_from(1, &socks[2], &bytes, to),
        Polled::Audio { len } => {
            if let Action::Send { to, len } =
                media.receive(now, Side::B, addr, &buf[..len], &mut outbuf)
            {
                local.sent_from(0, &socks[0], &outbuf[..len], to);
            }
        }
        Polled::Connected => info!(%call, "browser media connected"),
        // Its silence is noticed by the liveness check, as a phone's.
        Polled::Disconnected => info!(%call, "browser media disconnected"),
    });
}

/// A packet the call's media made for `side` (not a relayed one): from
/// that side's socket, or through its browser's WebRTC leg.
pub(super) fn send_to_side(
    local: &mut Local,
    s: &mut Session,
    now: Instant,
    side: Side,
    to: SocketAddr,
    packet: &[u8],
) {
    match (side, s.browser.as_mut()) {
        (Side::B, Some(b)) => b.leg.send_rtp(now, packet),
        (Side::B, None) => local.sent_from(1, &s.socks[2], packet, to),
        (Side::A, _) => local.sent_from(0, &s.socks[0], packet, to),
    }
}
