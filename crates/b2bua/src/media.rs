//! What the engine asks of the media plane, and what it hears back. The
//! engine decides (which ports, which codecs, what the caller hears); the
//! driver's media threads move the packets.

use std::net::{IpAddr, SocketAddr};

use centralino_media::g711::Law;
use centralino_media::monitor::MonitorMode;
use centralino_media::prompt::Prompt;
use centralino_media::relay::Side;
use centralino_types::CallId;

/// A leg's negotiated media: where the peer wants RTP, in which law, with
/// which telephone-event payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's SDP address.
    pub addr: SocketAddr,
    /// Negotiated law.
    pub law: Law,
    /// Negotiated telephone-event payload type.
    pub telephone_event: Option<u8>,
    /// Where the leg's signalling comes from (the registered phone's
    /// address, the carrier's SBC): behind NAT or on a multi-homed host
    /// its RTP comes from there, not from the SDP's address.
    pub signalling: Option<IpAddr>,
    /// A browser operator's leg: the address is the call's own operator
    /// port, where the media plane ends the browser's WebRTC leg (the
    /// engine knows it from the leg's flow, never from the address).
    pub browser: bool,
}

/// The far end of a leg's media, as the media plane is told of it: RTP.
/// A browser operator's leg is RTP here too: the driver's WebRTC gateway
/// answers for the browser with the call's own operator port, and the
/// media plane ends ICE, DTLS and SRTP on that port (the engine's call
/// model stays one for phones and browsers). A far end the engine must
/// treat differently would be a new variant; both sides match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// RTP/AVP to an address, as an SDP offer or answer named it.
    Rtp(Peer),
}

impl Remote {
    /// The RTP peer, when the far end is plain RTP.
    pub fn rtp(&self) -> Option<&Peer> {
        match self {
            Self::Rtp(p) => Some(p),
        }
    }
}

impl From<Peer> for Remote {
    fn from(p: Peer) -> Self {
        Self::Rtp(p)
    }
}

/// A media instruction for one call.
#[derive(Debug)]
pub enum MediaCommand {
    /// Hold two port pairs on `ip` for a new call (the caller's and the
    /// operator's), bound before any SDP names them; answered by
    /// [`MediaEvent::Reserved`] or [`MediaEvent::Failed`]. The ports go
    /// back to the pool at `Close`.
    Reserve {
        /// The call.
        call: CallId,
        /// Local address the ports are to be on (the call's signalling
        /// address).
        ip: IpAddr,
    },
    /// Anchor a new call: RTP on `a_port` (caller) and `b_port` (operator,
    /// used once bridged), both on `ip`.
    Open {
        /// The call.
        call: CallId,
        /// Local address the ports are on.
        ip: IpAddr,
        /// The caller's port (even; RTCP on +1).
        a_port: u16,
        /// The operator's port.
        b_port: u16,
        /// The caller's media.
        a: Remote,
    },
    /// Play these prompts to the caller, then `music` in a loop.
    Play {
        /// The call.
        call: CallId,
        /// Prompts in order.
        prompts: Vec<Prompt>,
        /// Music afterwards.
        music: Option<Prompt>,
    },
    /// The operator answered: they hear `prompts` (the call's context)
    /// before a bridge asked for meanwhile happens.
    Whisper {
        /// The call.
        call: CallId,
        /// The operator's media.
        b: Remote,
        /// Prompts in order.
        prompts: Vec<Prompt>,
    },
    /// The operator answered: relay between the legs.
    Bridge {
        /// The call.
        call: CallId,
        /// The operator's media.
        b: Remote,
        /// Record the conversation (both legs mixed).
        record: bool,
    },
    /// The operator's leg is gone: back to playback for the caller (a
    /// `Play` follows), ready for the next operator's `Bridge`.
    Unbridge {
        /// The call.
        call: CallId,
    },
    /// A side sent a new SDP (re-INVITE).
    Update {
        /// The call.
        call: CallId,
        /// Which side.
        side: Side,
        /// Its new media.
        peer: Remote,
        /// It holds the call (sendonly, inactive, 0.0.0.0).
        held: bool,
    },
    /// The supervisor on the call enters `mode`, or leaves (`None`). The
    /// first `Some` after their port was made puts their leg on the call:
    /// a browser's (made by the driver), or a phone's RTP to `phone`.
    Monitor {
        /// The call.
        call: CallId,
        /// Listen, whisper, barge; `None`: their leg ends.
        mode: Option<MonitorMode>,
        /// A supervisor's phone: its media (with the first `Some`).
        phone: Option<Remote>,
    },
    /// Send `digit` to `side` as RFC 4733 telephone events in its stream
    /// (a key that came by SIP INFO from the other side, for a side that
    /// takes events but not INFO).
    Key {
        /// The call.
        call: CallId,
        /// Who hears the key.
        side: Side,
        /// The key (`0`–`9`, `*`, `#`, `A`–`D`).
        digit: char,
    },
    /// Bind a port for a supervisor's phone joining the call; answered by
    /// [`MediaEvent::MonitorPort`].
    MonitorPort {
        /// The call.
        call: CallId,
    },
    /// The call is over: close its sockets.
    Close {
        /// The call.
        call: CallId,
    },
}

/// What the media plane reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key press (RFC 4733), once per press.
    Dtmf {
        /// The call.
        call: CallId,
        /// Which side pressed.
        side: Side,
        /// The key.
        digit: char,
    },
    /// A bridged side sent nothing for the inactivity timeout.
    Idle {
        /// The call.
        call: CallId,
        /// The silent side.
        side: Side,
    },
    /// The plane holds the call's ports (answers `Reserve`).
    Reserved {
        /// The call.
        call: CallId,
        /// The caller's port (even; RTCP on +1).
        a_port: u16,
        /// The operator's port.
        b_port: u16,
    },
    /// A supervisor's phone pressed a key (RFC 4733): `1` listen, `2`
    /// whisper, `3` barge.
    MonitorDigit {
        /// The call.
        call: CallId,
        /// The key.
        digit: char,
    },
    /// A supervisor's browser went (no ICE/DTLS): the plane ended their
    /// leg.
    MonitorGone {
        /// The call.
        call: CallId,
    },
    /// The port of a supervisor's phone (answers `MonitorPort`; `None`:
    /// none free, or the call is over).
    MonitorPort {
        /// The call.
        call: CallId,
        /// The port (even; RTCP on +1).
        port: Option<u16>,
    },
    /// The call's media could not be set up: no port free for a
    /// `Reserve`, or its ports vanished before `Open`.
    Failed {
        /// The call.
        call: CallId,
    },
}
