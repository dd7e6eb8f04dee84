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

/// Centralino's SDP towards the caller: our offer in the 200 OK after a
/// late offer, else the answer to theirs.
pub(super) fn a_sdp(m: &AnchoredMedia, codecs: &[Law]) -> Vec<u8> {
    if m.late_offer && !m.opened {
        return sdp_offer(m, codecs, m.a_port, m.session);
    }
    Local {
        addr: m.sdp_ip,
        port: m.a_port,
        formats: &[m.a.law.payload_type()],
        telephone_event: m.a.telephone_event,
        direction: m.a_direction,
        session: m.session,
        version: m.version,
    }
    .to_bytes()
}

/// Centralino's SDP towards the answered operator (re-INVITE answers).
pub(super) fn b_sdp(m: &AnchoredMedia) -> Vec<u8> {
    let Some(b) = m.b else {
        return Vec::new();
    };
    Local {
        addr: m.sdp_ip,
        port: m.b_port,
        formats: &[b.law.payload_type()],
        telephone_event: b.telephone_event,
        direction: m.b_direction,
        session: m.b_session,
        version: m.b_version,
    }
    .to_bytes()
}

/// The offer to an operator: the caller's law first (no transcoding when
/// the phone takes it), then the others configured, and telephone-event.
pub(super) fn b_offer(m: &AnchoredMedia, codecs: &[Law]) -> Vec<u8> {
    sdp_offer(m, codecs, m.b_port, m.b_session)
}

/// The citizen's side of a placed call learns its peer (early media or the
/// answer): opened now, or, already opened for the operator's whisper,
/// told its address.
pub(super) fn citizen_peer(call_id: CallId, media: &mut AnchoredMedia, peer: Peer) -> MediaCommand {
    // Our offer to the citizen was version 1 with every law; what we send
    // next names the one chosen: version 2 (RFC 3264 §8), once.
    if media.version == 1 {
        media.version = 2;
    }
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

/// Our offer from `port`: the caller's law (or the first configured) first.
pub(super) fn sdp_offer(m: &AnchoredMedia, codecs: &[Law], port: u16, session: u64) -> Vec<u8> {
    let mut formats = vec![m.a.law.payload_type()];
    formats.extend(
        codecs
            .iter()
            .map(|l| l.payload_type())
            .filter(|pt| *pt != m.a.law.payload_type()),
    );
    Local {
        addr: m.sdp_ip,
        port,
        formats: &formats,
        telephone_event: Some(TELEPHONE_EVENT),
        direction: Direction::SendRecv,
        session,
        version: 1,
    }
    .to_bytes()
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
