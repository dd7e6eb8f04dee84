//! SDP towards both legs from a call's anchored media (named for what it
//! builds: `sdp` is the media crate's parser).

use super::*;

pub(super) fn open_command(call: CallId, media: &mut AnchoredMedia) -> MediaCommand {
    media.opened = true;
    MediaCommand::Open {
        call,
        ip: media.ip,
        a_port: media.a_port,
        b_port: media.b_port,
        a: media.a.into(),
    }
}

/// Our SDP `local` for `side`'s leg with its `o=` version: the one the leg
/// was last sent when it says the same, the next when it does not (RFC
/// 3264 §8: "incremented by one" on a change, the same otherwise), 1 for
/// the leg's first.
pub(super) fn stamped(m: &mut AnchoredMedia, side: Side, local: Local<'_>) -> Vec<u8> {
    stamp(&mut m.sent[side.index()], local)
}

/// [`stamped`] for a leg whose last SDP sent is `last` (digest, version).
pub(super) fn stamp(last: &mut Option<(u64, u64)>, mut local: Local<'_>) -> Vec<u8> {
    use std::hash::BuildHasher;
    local.version = 0;
    // The fields, not the body they make: the same body is the same
    // fields, and serialising twice per SDP was an eighth of the engine's
    // instructions per call (`cargo bench --bench engine`). foldhash with
    // a fixed seed rather than std's SipHash, whose keys were fixed and
    // public as well: a 64-bit digest of a few small integers (address,
    // port, payload types, direction, session), compared with the leg's
    // own last one. Two different SDPs giving one digest (odds of 2^-64
    // per change) would keep the version, and the peer could ignore the
    // change (RFC 3264 §8).
    let digest = foldhash::fast::FixedState::with_seed(0x5d9).hash_one(local);
    let version = match *last {
        Some((d, v)) if d == digest => v,
        Some((_, v)) => v + 1,
        None => 1,
    };
    *last = Some((digest, version));
    local.version = version;
    local.to_bytes()
}

/// Centralino's SDP towards the caller: our offer in the 200 OK after a
/// late offer, else the answer to theirs.
pub(super) fn a_sdp(m: &mut AnchoredMedia, codecs: &[Law]) -> Vec<u8> {
    if m.late_offer && !m.opened {
        let (port, session) = (m.a_port, m.session);
        return sdp_offer(m, codecs, Side::A, port, session);
    }
    let formats = [m.a.law.payload_type()];
    let local = Local {
        addr: m.sdp_ip,
        port: m.a_port,
        formats: &formats,
        telephone_event: m.a.telephone_event,
        direction: m.a_direction,
        session: m.session,
        version: 0,
    };
    stamped(m, Side::A, local)
}

/// Centralino's SDP towards the answered operator (re-INVITE answers).
pub(super) fn b_sdp(m: &mut AnchoredMedia) -> Vec<u8> {
    let Some(b) = m.b else {
        return Vec::new();
    };
    let formats = [b.law.payload_type()];
    let local = Local {
        addr: m.sdp_ip,
        port: m.b_port,
        formats: &formats,
        telephone_event: b.telephone_event,
        direction: m.b_direction,
        session: m.b_session,
        version: 0,
    };
    stamped(m, Side::B, local)
}

/// Our offer to `side`'s leg in the 2xx to its re-INVITE without SDP,
/// built as for a new call (RFC 3261 §14.2): the law in use first, then
/// the others configured (the media plane transcodes), telephone-event,
/// `sendrecv` (what the node wants: it never holds a leg itself, so a
/// phone resuming this way is not answered with its own hold), on the
/// leg's own port and session.
pub(super) fn reoffer(m: &mut AnchoredMedia, codecs: &[Law], side: Side) -> Vec<u8> {
    let (current, port, session) = match side {
        Side::A => (m.a.law, m.a_port, m.session),
        Side::B => (m.b.map_or(m.a.law, |b| b.law), m.b_port, m.b_session),
    };
    match side {
        Side::A => m.a_direction = Direction::SendRecv,
        Side::B => m.b_direction = Direction::SendRecv,
    }
    offer_from(m, codecs, side, port, session, current)
}

/// The offer to an operator: the caller's law first (no transcoding when
/// the phone takes it), then the others configured, and telephone-event.
/// A new dialog: its versions start afresh.
pub(super) fn b_offer(m: &mut AnchoredMedia, codecs: &[Law]) -> Vec<u8> {
    m.sent[Side::B.index()] = None;
    m.offered_in_2xx[Side::B.index()] = None;
    let (port, session) = (m.b_port, m.b_session);
    sdp_offer(m, codecs, Side::B, port, session)
}

/// The citizen's side of a placed call learns its peer (early media or the
/// answer): opened now, or, already opened for the operator's whisper,
/// told its address.
pub(super) fn citizen_peer(call_id: CallId, media: &mut AnchoredMedia, peer: Peer) -> MediaCommand {
    media.a = peer;
    if media.opened {
        MediaCommand::Update {
            call: call_id,
            side: Side::A,
            peer: peer.into(),
            held: false,
        }
    } else {
        open_command(call_id, media)
    }
}

/// Our offer to `side`'s leg from `port`: the caller's law (or the first
/// configured) first.
pub(super) fn sdp_offer(
    m: &mut AnchoredMedia,
    codecs: &[Law],
    side: Side,
    port: u16,
    session: u64,
) -> Vec<u8> {
    let first = m.a.law;
    offer_from(m, codecs, side, port, session, first)
}

/// Our offer to `side`'s leg from `port`: `first`, then the other laws
/// configured, telephone-event, `sendrecv`.
fn offer_from(
    m: &mut AnchoredMedia,
    codecs: &[Law],
    side: Side,
    port: u16,
    session: u64,
    first: Law,
) -> Vec<u8> {
    let mut formats = vec![first.payload_type()];
    formats.extend(
        codecs
            .iter()
            .map(|l| l.payload_type())
            .filter(|pt| *pt != first.payload_type()),
    );
    let local = Local {
        addr: m.sdp_ip,
        port,
        formats: &formats,
        telephone_event: Some(TELEPHONE_EVENT),
        direction: Direction::SendRecv,
        session,
        version: 0,
    };
    stamped(m, side, local)
}

/// An operator's answer (signalled from `from`): its media and the
/// direction we answer with.
pub(super) fn b_answer(msg: &Message, codecs: &[Law], from: IpAddr) -> Option<(Peer, Direction)> {
    let a = sdp::parse(&msg.body).ok()?;
    if a.port == 0 {
        return None;
    }
    let law = a.choose(codecs)?;
    Some((
        Peer {
            addr: SocketAddr::new(a.addr, a.port),
            law,
            telephone_event: a.telephone_event,
            signalling: Some(from),
            browser: false,
        },
        a.direction.answer(),
    ))
}
