//! What leaves a call's session other than relayed packets: a browser
//! leg's own output, and packets the call's media makes for one side
//! (the supervisor's voice, keys sent as telephone events), each out
//! through that side's socket or its browser's WebRTC leg.

use super::*;

/// Runs the output of the browser's leg on `side`: its datagrams out of
/// that side's port, its audio through the relay to the other side (a
/// socket, or the other side's browser, whose output is run next: two
/// browsers on one call are an operator in a browser consulting a
/// colleague in one).
pub(super) fn drain_browser(local: &mut Local, s: &mut Session, now: Instant, side: Side) {
    let mut side = side;
    // Each turn may queue audio on the other leg; bounded, as each turn
    // only relays what its browser had already sent.
    for _ in 0..3 {
        if !drain_one(local, s, now, side) {
            return;
        }
        side = side.other();
    }
}

/// One browser leg's output; whether audio went to the other side's
/// browser.
fn drain_one(local: &mut Local, s: &mut Session, now: Instant, side: Side) -> bool {
    let (i, o) = (side.index(), side.other().index());
    let Session {
        call,
        media,
        socks,
        browser,
        locals,
        ..
    } = s;
    let [a, b] = browser;
    let (this, other) = if side == Side::A { (a, b) } else { (b, a) };
    let Some(BrowserSide {
        leg,
        peer,
        gone_since,
    }) = this.as_mut()
    else {
        return false;
    };
    let (call, addr) = (*call, peer.unwrap_or(locals[i]));
    let mut audio = [0u8; 1500];
    let mut outbuf = [0u8; 1500];
    let mut relayed = false;
    leg.poll(&mut audio, |p, buf| match p {
        Polled::Transmit { to, bytes } => local.sent_from(i, &socks[2 * i], &bytes, to),
        Polled::Audio { len } => {
            // Audio from it: connected, whatever ICE said last.
            *gone_since = None;
            if let Action::Send { to, len } =
                media.receive(now, side, addr, &buf[..len], &mut outbuf)
            {
                match other.as_mut() {
                    Some(theirs) => {
                        theirs.leg.send_rtp(now, &outbuf[..len]);
                        relayed = true;
                    }
                    None => local.sent_from(o, &socks[2 * o], &outbuf[..len], to),
                }
            }
        }
        Polled::Connected => {
            *gone_since = None;
            info!(%call, side = side.label(), "browser media connected");
        }
        // Its silence is noticed by the liveness check, as a phone's; on
        // hold, its disconnection (`gone_since`).
        Polled::Disconnected => {
            gone_since.get_or_insert(now);
            info!(%call, side = side.label(), "browser media disconnected");
        }
    });
    relayed
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
    let i = side.index();
    match s.browser[i].as_mut() {
        Some(b) => b.leg.send_rtp(now, packet),
        None => local.sent_from(i, &s.socks[2 * i], packet, to),
    }
}
