//! Supervisors' legs in the media plane: the port and the WebRTC leg made
//! when one joins a call (`MediaPlane::monitor_browser`), and their run in
//! the call's media thread (the relay mixes: `centralino_media::monitor`).

use super::*;

impl MediaPlane {
    /// A supervisor's browser joins `call` with its SDP `offer`: a port of
    /// their own (bound on the call's address, named `sdp_ip` in SDP) and
    /// its WebRTC leg in one of `laws`, kept until the engine's `Monitor`
    /// command puts it on the call (in order with the call's other media
    /// commands). Returns the leg's law and the SDP answer.
    pub fn monitor_browser(
        &mut self,
        call: CallId,
        sdp_ip: IpAddr,
        offer: &str,
        laws: &[Law],
    ) -> Result<(Law, String), WebRtcError> {
        let cert = self.cert.clone().ok_or(WebRtcError::Certificate)?;
        let ip = self
            .held
            .get(&call)
            .filter(|h| h.socks.is_none())
            .map(|h| h.ip)
            .ok_or_else(|| WebRtcError::Refused("the call is over".into()))?;
        let now = Instant::now();
        let (port, pair) = self
            .bind_monitor(now, ip)
            .ok_or_else(|| WebRtcError::Refused("no media port free".into()))?;
        let mut ssrc = [0u8; 4];
        let _ = getrandom(&mut ssrc);
        let accepted = BrowserLeg::accept(
            now,
            SocketAddr::new(ip, port),
            Some(SocketAddr::new(sdp_ip, port)),
            offer,
            &cert,
            u32::from_ne_bytes(ssrc),
            laws,
        );
        let (leg, answer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                self.pool.release(now, port);
                self.gauges();
                return Err(e);
            }
        };
        // The same supervisor's earlier leg, if any, gives its port back.
        self.release_monitor(now, call);
        let held = self.held.get_mut(&call).expect("checked above");
        held.monitor = Some(port);
        let law = leg.law();
        held.monitor_pending = Some((pair, Some(Box::new(leg))));
        self.metrics.browser_legs.inc();
        self.gauges();
        Ok((law, answer))
    }

    /// A port for a supervisor's phone joining `call` (answers the
    /// engine's `MonitorPort`): held until their leg goes.
    pub(super) fn monitor_port(&mut self, call: CallId) -> MediaEvent {
        let Some(ip) = self
            .held
            .get(&call)
            .filter(|h| h.socks.is_none())
            .map(|h| h.ip)
        else {
            return MediaEvent::MonitorPort { call, port: None };
        };
        let now = Instant::now();
        let bound = self.bind_monitor(now, ip);
        if bound.is_some() {
            self.release_monitor(now, call);
        }
        let port = bound.map(|(port, pair)| {
            if let Some(held) = self.held.get_mut(&call) {
                held.monitor = Some(port);
                held.monitor_pending = Some((pair, None));
            }
            port
        });
        self.gauges();
        MediaEvent::MonitorPort { call, port }
    }

    /// A supervisor's pair: bound for them or ahead, never one a media
    /// thread keeps (theirs is not kept after their leg).
    fn bind_monitor(&mut self, now: Instant, ip: IpAddr) -> Option<(u16, Pair)> {
        match self.bind_one(now, None, ip)? {
            (port, Socks::Fresh(pair)) => Some((port, pair)),
            (port, socks) => {
                self.let_go(now, port, socks);
                None
            }
        }
    }

    /// The supervisor's port back to the pool (their sockets close with
    /// their leg in the thread, or here if never handed over).
    pub(super) fn release_monitor(&mut self, now: Instant, call: CallId) {
        if let Some(held) = self.held.get_mut(&call) {
            held.monitor_pending = None;
            if let Some(port) = held.monitor.take() {
                self.pool.release(now, port);
            }
        }
    }
}

/// A supervisor's browser leg on its own port.
pub(super) struct MonitorSide {
    /// RTP (ICE, DTLS, SRTP all on it) and RTCP.
    pub(super) socks: [UdpSocket; 2],
    /// The port's address as bound; what the relay knows them by.
    pub(super) local: SocketAddr,
    /// A browser's leg; none for a phone (plain RTP on the socket).
    pub(super) leg: Option<Box<BrowserLeg>>,
    /// When it joined, and whether its browser was ever connected.
    pub(super) since: Instant,
    pub(super) seen: bool,
    /// Since when a browser once connected is not (ICE comes back after a
    /// network blip: the supervisor stays).
    pub(super) lost_since: Option<Instant>,
}

/// A supervisor's browser that never connects is gone after this long
/// (their page closed, their network lost).
const BROWSER_GONE: Duration = Duration::from_secs(30);

/// A supervisor's browser that was connected and is no more (ICE consent
/// already failed for several seconds) is gone after this long.
const BROWSER_LOST: Duration = Duration::from_secs(5);

impl MonitorSide {
    /// Whether their browser is gone: connected once and no more for
    /// [`BROWSER_LOST`], or never connected within [`BROWSER_GONE`]. A
    /// phone's leg ends by its BYE.
    pub(super) fn gone(&mut self, now: Instant) -> bool {
        let Some(leg) = self.leg.as_ref() else {
            return false;
        };
        if leg.connected() {
            (self.seen, self.lost_since) = (true, None);
            return false;
        }
        if self.seen {
            let lost = *self.lost_since.get_or_insert(now);
            return now.saturating_duration_since(lost) >= BROWSER_LOST;
        }
        now.saturating_duration_since(self.since) >= BROWSER_GONE
    }
}

impl Worker {
    /// Puts a supervisor's browser leg on the call (dropped, sockets
    /// closed, if the operator's leg is already gone).
    pub(super) fn monitor(
        &mut self,
        now: Instant,
        call: CallId,
        mode: MonitorMode,
        pair: Pair,
        leg: Option<Box<BrowserLeg>>,
        phone: Option<Peer>,
    ) {
        // The same supervisor's earlier leg on the call, if any, ends.
        self.end_monitor(call);
        let Some(&slot) = self.by_call.get(&call) else {
            return;
        };
        let r = self.random();
        let seed = (r as u32, (r >> 32) as u16, (r >> 48) as u32 * 65_536);
        let Some(s) = self.sessions[slot].as_mut() else {
            return;
        };
        let Ok(local) = pair.rtp.local_addr() else {
            return;
        };
        // A browser is known to the relay by the port itself (its leg
        // turns SRTP into RTP); a phone by its SDP and signalling, latched
        // as every phone is.
        let (law, relay_leg) = match (&leg, phone) {
            (Some(b), _) => (b.law(), Leg::new(Latch::SdpAddress, local, None)),
            // Never `first_packet` for a supervisor: whoever sent first to
            // the port would hear the conversation (and barge in).
            (None, Some(p)) => (
                p.law,
                Leg::new(
                    match self.latch {
                        Latch::FirstPacket => Latch::Symmetric,
                        l => l,
                    },
                    p.addr,
                    p.telephone_event,
                )
                .signalled_from(p.signalling),
            ),
            (None, None) => return,
        };
        if !s.media.monitor(now, mode, relay_leg, law, seed) {
            debug!(%call, "the operator's leg is gone: the supervisor's leg is dropped");
            return;
        }
        for (k, sock) in [&pair.rtp, &pair.rtcp].into_iter().enumerate() {
            if let Err(e) = epoll::add(
                &self.poll,
                sock,
                epoll::EventData::new_u64((slot * TOKENS + 4 + k) as u64),
                epoll::EventFlags::IN,
            ) {
                warn!(%call, error = %e, "cannot watch a supervisor's socket");
                let _ = epoll::delete(&self.poll, &pair.rtp);
                s.media.set_monitor(None);
                return;
            }
        }
        s.monitor = Some(MonitorSide {
            socks: [pair.rtp, pair.rtcp],
            local,
            leg,
            since: now,
            seen: false,
            lost_since: None,
        });
        drain_monitor(&mut self.local, s, now);
    }

    /// The supervisor's leg leaves the call: its sockets close.
    pub(super) fn end_monitor(&mut self, call: CallId) {
        let Some(&slot) = self.by_call.get(&call) else {
            return;
        };
        if let Some(s) = self.sessions[slot].as_mut()
            && let Some(m) = s.monitor.take()
        {
            for sock in &m.socks {
                let _ = epoll::delete(&self.poll, sock);
            }
            let (sent, received) = m.leg.as_ref().map_or((0, 0), |l| l.counts());
            info!(%call, sent, received, "supervisor's media closed");
        }
    }
}

/// Runs a supervisor's browser leg: its datagrams out of their port, their
/// voice into the relay for whoever hears them.
pub(super) fn drain_monitor(local: &mut Local, s: &mut Session, now: Instant) {
    let Session {
        call,
        media,
        monitor:
            Some(MonitorSide {
                socks,
                local: addr,
                leg: Some(leg),
                ..
            }),
        ..
    } = s
    else {
        return;
    };
    let (call, addr) = (*call, *addr);
    let mut audio = [0u8; 1500];
    leg.poll(&mut audio, |p, buf| match p {
        Polled::Transmit { to, bytes } => {
            if socks[0].send_to(&bytes, to).is_err() {
                local.send_errors += 1;
            }
        }
        Polled::Audio { len } => {
            media.receive_monitor(now, addr, &buf[..len]);
        }
        Polled::Connected => info!(%call, "supervisor's browser connected"),
        Polled::Disconnected => info!(%call, "supervisor's browser disconnected"),
    });
}
