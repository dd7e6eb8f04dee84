//! The media driver: one thread per core, each a level-triggered epoll
//! loop over the RTP sockets of the calls it owns, driving their sans-IO
//! [`CallMedia`]. Not a task per call: a call is a few slab entries in one
//! thread, and a packet costs one `recvfrom`, the relay logic and one
//! `sendto`, with no allocation and no lock.
//!
//! Level-triggered on purpose: each ready socket is read once per wait.
//! Edge-triggered readiness (mio, tokio) obliges a reader to drain until
//! `EAGAIN`, a third system call per packet when, as here, each socket
//! holds one datagram at a time (measured: see ARCHITECTURE "Decisions").
//!
//! The plane owns the port pool: the engine asks for a call's ports
//! (`Reserve`) and names them in an SDP only once they are bound here, so a
//! port held by another process is skipped, never promised.
//!
//! Batching: every call has its own sockets, which carry one packet per
//! 20 ms each way; `recvmmsg`/`sendmmsg` batch per socket and would find
//! one datagram per call. The batching that pays is epoll's: one wait
//! returns up to `EVENTS` ready sockets.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use crate::metrics::NetMetrics;
use centralino_b2bua::media::{MediaCommand, MediaEvent, Peer, Remote};
use centralino_config::{LatchMode, MediaConfig};
use centralino_media::g711::Law;
use centralino_media::leg::{Latch, Leg, Stats};
use centralino_media::monitor::MonitorMode;
use centralino_media::ports::Ports;
use centralino_media::relay::{Action, CallMedia, Side};
use centralino_media::webrtc::{BrowserLeg, DtlsCert, Polled, WebRtcError};
use centralino_types::CallId;
use prometheus::IntCounter;
use rustix::buffer::spare_capacity;
use rustix::event::{EventfdFlags, Timespec, epoll, eventfd};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::recorder::{RecMsg, Recorder};

mod ahead;
mod counters;
mod kept;
mod monitor;
mod out;
mod reserve;
mod waker;
use ahead::{Ahead, Returns};
use counters::{Counters, Local, flush_stats};
use kept::{Kept, PAIR_TOKEN, Place, Socks};
use monitor::{MonitorSide, drain_monitor};
use out::{drain_browser, send_to_side};
use waker::Waker;

/// Ready sockets taken per epoll wait.
const EVENTS: usize = 1024;
/// Playout granularity: frames due within a tick go out together.
const TICK: Duration = Duration::from_millis(5);
/// Liveness checks and metric flushes.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const WAKER: u64 = u64::MAX;
/// Epoll tokens per call: caller RTP and RTCP, operator RTP and RTCP,
/// supervisor RTP and RTCP (and two spare).
const TOKENS: usize = 8;

/// Largest datagram read; anything longer is truncated and fails parsing.
const RECV_BUF: usize = 2048;
/// Recorded audio is handed to the writer this far behind real time, so
/// late packets still find their place in the mix.
const RECORD_SLACK: Duration = Duration::from_millis(500);

/// A pair of bound sockets: RTP and RTCP.
struct Pair {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

/// How long a released port rests at least before reuse, so late packets
/// of the old call never reach the next one. Short on purpose: the pool
/// hands ports out least recently used first, so in practice a port rests
/// until the whole pool has turned over; a long hard quarantine would only
/// exhaust the pool at high call rates (3,000 calls/s × 2 pairs × 10 s =
/// 60,000 pairs, measured with `scripts/load`).
pub const PORT_QUARANTINE: Duration = Duration::from_secs(1);

/// How long a browser's leg may stay unconnected with the silence check
/// off (`inactivity_timeout_seconds = 0`) before its call counts it gone.
const BROWSER_GONE: Duration = Duration::from_secs(30);

/// The least time a browser's leg is given to connect (ICE and DTLS),
/// whatever the silence check's timeout.
const BROWSER_SETUP: Duration = Duration::from_secs(10);

/// A live call's ports, and their sockets until `Open` hands them to the
/// call's media thread.
struct Held {
    ports: [u16; 2],
    socks: Option<[Socks; 2]>,
    /// The address the ports are bound on.
    ip: IpAddr,
    /// Browsers that answered before the call's media opened (a late
    /// offer, an agent-first callback, a browser operator's consultation
    /// on the caller's port), per side: their legs go with `Open`.
    browser: [Option<Box<BrowserLeg>>; 2],
    /// A supervisor's port, held until they leave, the operator's leg
    /// goes or the call ends.
    monitor: Option<u16>,
    /// Their sockets (and a browser's leg, made by
    /// [`MediaPlane::monitor_browser`]; none for a phone) until the
    /// engine's `Monitor` command puts them on the call.
    monitor_pending: Option<(Pair, Option<Box<BrowserLeg>>)>,
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<Pair> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok(Pair { rtp, rtcp })
}

/// A command for a media thread, with the sockets it needs.
enum Cmd {
    Open {
        call: CallId,
        a: Peer,
        socks: [Socks; 2],
        /// The two RTP sockets' addresses, as bound (A, B).
        locals: [SocketAddr; 2],
        browser: [Option<Box<BrowserLeg>>; 2],
    },
    /// A browser answered: the side's port speaks WebRTC from now on.
    Browser {
        call: CallId,
        side: Side,
        leg: Box<BrowserLeg>,
    },
    /// A supervisor joins the call: their browser's leg, or their phone's
    /// RTP.
    Monitor {
        call: CallId,
        mode: MonitorMode,
        pair: Pair,
        leg: Option<Box<BrowserLeg>>,
        phone: Option<Peer>,
    },
    /// The call ends; `back` (their address and ports): its pairs stay
    /// with the thread (to serve another call after resting), not closed.
    Close {
        call: CallId,
        back: Option<(IpAddr, [u16; 2])>,
    },
    /// A kept pair the plane took and let go unused: to close.
    Release(Kept),
    Other(MediaCommand),
}

/// The media threads.
pub struct MediaPlane {
    workers: Vec<(Sender<Cmd>, Arc<Waker>)>,
    /// Threads with commands queued since the last [`MediaPlane::flush`].
    unwoken: Vec<bool>,
    /// Free ports; a port is taken only once both its sockets are bound.
    pool: Ports,
    held: HashMap<CallId, Held>,
    metrics: NetMetrics,
    /// The DTLS certificate of every browser leg (`None`: none could be
    /// made; browsers are refused).
    cert: Option<DtlsCert>,
    /// Pairs bound ahead on the `media-bind` thread (`None`: a small pool,
    /// every pair bound at its call).
    ahead: Option<Ahead>,
}

impl MediaPlane {
    /// Starts the threads.
    pub fn start(
        config: &MediaConfig,
        metrics: NetMetrics,
        events: UnboundedSender<MediaEvent>,
    ) -> std::io::Result<Self> {
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let recorder = match &config.recordings_dir {
            Some(dir) => Some(Recorder::start(dir.clone(), metrics.clone())?),
            None => None,
        };
        // Drawn at random (a guessable next port lets a stranger send to
        // it first), keyed from the OS.
        let mut seed = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut seed)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let pool = Ports::new(config.ports.0, config.ports.1, PORT_QUARANTINE, seed)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
        let mut place = [0u8; 8];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut place)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let keep = !matches!(config.latch, LatchMode::FirstPacket);
        let ahead = Ahead::start(pool.capacity(), u64::from_le_bytes(place), keep)?;
        let returns = ahead.as_ref().map(|a| Returns(a.shared.clone()));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            epoll::add(
                &poll,
                &efd,
                epoll::EventData::new_u64(WAKER),
                epoll::EventFlags::IN,
            )?;
            let waker = Arc::new(Waker {
                fd: efd,
                pending: AtomicBool::new(false),
            });
            let (tx, rx) = channel();
            let mut worker = Worker::new(poll, waker.clone(), rx, events.clone(), config, &metrics);
            worker.recorder = recorder.clone();
            worker.returns = returns.clone();
            worker.index = i;
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || worker.run())?;
            workers.push((tx, waker));
        }
        info!(threads, ports = ?config.ports, "media plane started");
        let cert = match centralino_media::webrtc::certificate() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "no DTLS certificate: browser operators cannot take calls");
                None
            }
        };
        let plane = Self {
            unwoken: vec![false; workers.len()],
            workers,
            pool,
            held: HashMap::new(),
            metrics,
            cert,
            ahead,
        };
        plane.gauges();
        Ok(plane)
    }

    fn gauges(&self) {
        let free = self.pool.available() as i64;
        let resting = self.pool.resting() as i64;
        let ready = self.ahead.as_ref().map_or(0, Ahead::held) as i64;
        let ports = &self.metrics.rtp_ports;
        ports.with_label_values(&["free"]).set(free);
        ports.with_label_values(&["resting"]).set(resting);
        ports.with_label_values(&["ready"]).set(ready);
        ports
            .with_label_values(&["in_use"])
            .set(self.pool.capacity() as i64 - free - resting - ready);
    }

    /// A browser answers the call whose `side` port is `port` with its
    /// SDP `offer`: the leg is made here (the SDP answer is needed at once)
    /// and handed to the call's thread, ahead of the engine's `Bridge` (the
    /// operator port: a browser operator answering) or `Open` (the
    /// caller's port: a browser operator's own consultation, where they
    /// are the caller). Returns the leg's law and the SDP answer.
    pub fn browser_accept(
        &mut self,
        port: SocketAddr,
        side: Side,
        offer: &str,
        laws: &[Law],
    ) -> Result<(Law, String), WebRtcError> {
        let cert = self.cert.clone().ok_or(WebRtcError::Certificate)?;
        let (call, held) = self
            .held
            .iter_mut()
            .find(|(_, h)| h.ports[side.index()] == port.port())
            .ok_or_else(|| WebRtcError::Refused("the call is over".into()))?;
        let call = *call;
        if side == Side::A && held.socks.is_none() {
            // The caller's side is known by the address `Open` named: a
            // leg there is made before it, at the consultation's answer.
            return Err(WebRtcError::Refused(
                "the call's media is already open".into(),
            ));
        }
        // Our candidate is the socket as bound; the address the SDP named
        // (behind NAT, the advertised one) is the same socket from outside.
        let local = SocketAddr::new(held.ip, port.port());
        let mut ssrc = [0u8; 4];
        let _ = getrandom(&mut ssrc);
        let (leg, answer) = BrowserLeg::accept(
            Instant::now(),
            local,
            Some(port),
            offer,
            &cert,
            u32::from_ne_bytes(ssrc),
            laws,
        )?;
        let law = leg.law();
        self.metrics.browser_legs.inc();
        if held.socks.is_some() {
            // Not opened yet: the leg goes with `Open`.
            held.browser[side.index()] = Some(Box::new(leg));
            return Ok((law, answer));
        }
        let (tx, waker) = &self.workers[call.0 as usize % self.workers.len()];
        if tx
            .send(Cmd::Browser {
                call,
                side,
                leg: Box::new(leg),
            })
            .is_err()
            || waker.wake().is_err()
        {
            return Err(WebRtcError::Refused("media thread gone".into()));
        }
        Ok((law, answer))
    }

    /// Hands an engine command to the thread that owns the call (answers a
    /// `Reserve` here); an event for the engine when the command could not
    /// be carried out.
    pub fn command(&mut self, cmd: MediaCommand) -> Option<MediaEvent> {
        let call = match &cmd {
            MediaCommand::Reserve { call, ip } => return Some(self.reserve(*call, *ip)),
            MediaCommand::MonitorPort { call } => return Some(self.monitor_port(*call)),
            MediaCommand::Open { call, .. }
            | MediaCommand::Play { call, .. }
            | MediaCommand::Whisper { call, .. }
            | MediaCommand::Unbridge { call }
            | MediaCommand::Bridge { call, .. }
            | MediaCommand::Update { call, .. }
            | MediaCommand::Monitor { call, .. }
            | MediaCommand::Key { call, .. }
            | MediaCommand::Close { call } => *call,
        };
        let cmd = match cmd {
            MediaCommand::Open {
                call,
                a_port,
                b_port,
                a: Remote::Rtp(a),
                ..
            } => match self.held.get_mut(&call) {
                Some(held) if held.ports == [a_port, b_port] && held.socks.is_some() => {
                    let socks = held.socks.take().expect("checked");
                    let mut browser = std::mem::take(&mut held.browser);
                    let mut a = a;
                    if !a.browser {
                        browser[Side::A.index()] = None;
                    } else if browser[Side::A.index()].is_none() {
                        // A browser's answer names our own port: with no
                        // leg on it, nothing is sent anywhere.
                        a.addr = SocketAddr::from(([0, 0, 0, 0], 0));
                    }
                    Cmd::Open {
                        call,
                        a,
                        socks,
                        locals: held.ports.map(|p| SocketAddr::new(held.ip, p)),
                        browser,
                    }
                }
                _ => return Some(MediaEvent::Failed { call }),
            },
            MediaCommand::Close { call } => {
                // Sockets not handed over yet close here (a kept pair on
                // its thread). The thread keeps a call's pairs bound (bind
                // and close were a sixth of a call's CPU), their ports held
                // until they serve again.
                let mut back = None;
                if let Some(mut held) = self.held.remove(&call) {
                    let now = Instant::now();
                    let held_now = self.ahead.as_ref().map_or(0, Ahead::held);
                    let in_calls = (self.pool.capacity())
                        .saturating_sub(self.pool.available() + self.pool.resting() + held_now);
                    back = (held.socks.is_none()
                        && self
                            .ahead
                            .as_mut()
                            .is_some_and(|a| a.expect_back(now, held.ip, in_calls)))
                    .then_some((held.ip, held.ports));
                    if let Some(socks) = held.socks.take() {
                        for (port, socks) in held.ports.into_iter().zip(socks) {
                            self.let_go(now, port, socks);
                        }
                    } else if back.is_none() {
                        for p in held.ports {
                            self.pool.release(now, p);
                        }
                    }
                    if let Some(p) = held.monitor {
                        self.pool.release(now, p);
                    }
                    self.gauges();
                }
                Cmd::Close { call, back }
            }
            MediaCommand::Monitor {
                call,
                mode: Some(mode),
                phone,
            } if self
                .held
                .get(&call)
                .is_some_and(|h| h.monitor_pending.is_some()) =>
            {
                let held = self.held.get_mut(&call).expect("checked");
                let (pair, leg) = held.monitor_pending.take().expect("checked");
                Cmd::Monitor {
                    call,
                    mode,
                    pair,
                    leg,
                    phone: phone.map(|Remote::Rtp(p)| p),
                }
            }
            MediaCommand::Monitor {
                call, mode: None, ..
            }
            | MediaCommand::Unbridge { call } => {
                // The supervisor's leg ends (with the operator's).
                self.release_monitor(Instant::now(), call);
                self.gauges();
                Cmd::Other(cmd)
            }
            other => Cmd::Other(other),
        };
        let thread = call.0 as usize % self.workers.len();
        match self.workers[thread].0.send(cmd) {
            Ok(()) => self.unwoken[thread] = true,
            Err(std::sync::mpsc::SendError(cmd)) => {
                // No thread to give the pairs back: they closed with it.
                if let (
                    Cmd::Close {
                        back: Some((ip, ports)),
                        ..
                    },
                    Some(a),
                ) = (cmd, &self.ahead)
                {
                    Returns(a.shared.clone()).gone(ip, ports);
                }
                self.metrics
                    .rtp_dropped
                    .with_label_values(&["media_thread_gone"])
                    .inc();
                return Some(MediaEvent::Failed { call });
            }
        }
        None
    }

    /// Wakes the threads that have commands queued since the last call:
    /// the engine task calls it at the end of every turn, so a turn's
    /// commands cost each thread one wake-up.
    pub fn flush(&mut self) {
        self.bind_ahead();
        for (thread, unwoken) in self.unwoken.iter_mut().enumerate() {
            if std::mem::take(unwoken)
                && let Err(e) = self.workers[thread].1.wake()
            {
                // An eventfd write fails only if its counter is full: the
                // thread is awake with wake-ups pending anyway.
                warn!(error = %e, thread, "media thread wake-up failed");
            }
        }
    }
}

/// One call in a media thread.
struct Session {
    call: CallId,
    media: CallMedia,
    /// A-RTP, A-RTCP, B-RTP, B-RTCP.
    socks: [UdpSocket; 4],
    /// The caller's and the operator's pairs' places on the thread.
    pids: [u32; 2],
    /// Stats already added to the counters.
    flushed: [Stats; 2],
    flushed_unexpected: u64,
    idle_reported: bool,
    /// A browser's WebRTC leg on a side's port: a browser operator's on
    /// the operator port; on the caller's port, a browser operator's own
    /// consultation (they are its caller).
    browser: [Option<BrowserSide>; 2],
    /// The caller's and the operator's RTP ports' addresses as bound.
    locals: [SocketAddr; 2],
    /// A supervisor's browser on the call, on a port of its own.
    monitor: Option<MonitorSide>,
}

/// A browser's leg on one of a call's ports.
struct BrowserSide {
    leg: Box<BrowserLeg>,
    /// The address the engine named for it (the bridge, whisper or open):
    /// the port itself, as the gateway's SDP says; what the relay knows
    /// the browser's side by. `None` until named.
    peer: Option<SocketAddr>,
    /// Since when its ICE is not connected (not yet, or no more: the page
    /// closed or crashed, consent checks stopped): on hold too, where
    /// silence is no sign.
    gone_since: Option<Instant>,
}

/// Names a recording: wall-clock milliseconds and the call number.
fn recording_name(call: CallId) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("call-{ms}-{}", call.0)
}

struct Worker {
    poll: OwnedFd,
    /// The waker (its eventfd read to reset it).
    waker: Arc<Waker>,
    rx: Receiver<Cmd>,
    events: UnboundedSender<MediaEvent>,
    latch: Latch,
    inactivity: Option<Duration>,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    by_call: HashMap<CallId, usize>,
    counters: Counters,
    local: Local,
    sessions_gauge: prometheus::IntGauge,
    seed: u64,
    recorder: Option<Recorder>,
    /// Where an ended call's pairs go back when the plane expects them.
    returns: Option<Returns>,
    /// This thread's number (the plane's `call % threads`).
    index: usize,
    /// Its pairs by pid ([`kept`]), the free pids, and those resting.
    pairs: Vec<Place>,
    free_pids: Vec<u32>,
    resting: VecDeque<u32>,
}

impl Worker {
    fn new(
        poll: OwnedFd,
        waker: Arc<Waker>,
        rx: Receiver<Cmd>,
        events: UnboundedSender<MediaEvent>,
        config: &MediaConfig,
        metrics: &NetMetrics,
    ) -> Self {
        let mut seed = [0u8; 8];
        // SSRCs and initial sequence numbers must not be guessable
        // (RFC 3550 §5.1); a failing OS RNG falls back to the clock.
        if getrandom(&mut seed).is_err() {
            seed = (Instant::now().elapsed().as_nanos() as u64).to_le_bytes();
        }
        Self {
            poll,
            waker,
            rx,
            events,
            latch: match config.latch {
                LatchMode::Symmetric => Latch::Symmetric,
                LatchMode::SdpAddress => Latch::SdpAddress,
                LatchMode::FirstPacket => Latch::FirstPacket,
            },
            inactivity: config.inactivity_timeout,
            sessions: Vec::new(),
            free: Vec::new(),
            by_call: HashMap::new(),
            counters: Counters::new(metrics),
            local: Local::default(),
            sessions_gauge: metrics.media_sessions.clone(),
            seed: u64::from_le_bytes(seed),
            recorder: None,
            returns: None,
            index: 0,
            pairs: Vec::new(),
            free_pids: Vec::new(),
            resting: VecDeque::new(),
        }
    }

    fn random(&mut self) -> u64 {
        // SplitMix64 over the seed: fast, and good enough once seeded.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        let mut inbuf = [0u8; RECV_BUF];
        let mut outbuf = [0u8; 1500];
        let mut next_tick = Instant::now();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            let wait = next_tick
                .min(next_housekeeping)
                .saturating_duration_since(now);
            let timeout = Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            events.clear();
            if let Err(e) = epoll::wait(&self.poll, spare_capacity(&mut events), Some(&timeout)) {
                if e != rustix::io::Errno::INTR {
                    warn!(error = %e, "media poll failed");
                }
                continue;
            }
            let now = Instant::now();
            for ev in &events {
                let token = ev.data.u64();
                if token == WAKER {
                    self.waker.taken();
                    if !self.commands(now) {
                        return;
                    }
                    continue;
                }
                self.readable(now, token, &mut inbuf, &mut outbuf);
            }
            if !self.resting.is_empty() {
                self.rested(now);
            }
            if now >= next_tick {
                self.playout(now, &mut outbuf);
                next_tick = now + TICK;
            }
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
        }
    }

    /// Applies queued commands; `false` once the plane is gone.
    fn commands(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.command(now, cmd),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn command(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Open {
                call,
                a,
                socks,
                locals,
                browser,
            } => {
                let a_addr = a.addr;
                self.open(now, call, a, socks, locals);
                if let Some(s) = self.session(call) {
                    let [a_leg, b_leg] = browser;
                    // The caller's side is known by the address `Open` named.
                    s.browser = [
                        a_leg.map(|leg| BrowserSide {
                            leg,
                            peer: Some(a_addr),
                            gone_since: Some(now),
                        }),
                        b_leg.map(|leg| BrowserSide {
                            leg,
                            peer: None,
                            gone_since: Some(now),
                        }),
                    ];
                }
            }
            Cmd::Monitor {
                call,
                mode,
                pair,
                leg,
                phone,
            } => self.monitor(now, call, mode, pair, leg, phone),
            Cmd::Browser { call, side, leg } => {
                let Some(&slot) = self.by_call.get(&call) else {
                    return;
                };
                if let Some(s) = self.sessions[slot].as_mut() {
                    s.browser[side.index()] = Some(BrowserSide {
                        leg,
                        peer: None,
                        gone_since: Some(now),
                    });
                    drain_browser(&mut self.local, s, now, side);
                }
            }
            // Answered by the plane, never sent to a thread.
            Cmd::Other(MediaCommand::Reserve { .. } | MediaCommand::MonitorPort { .. }) => {}
            Cmd::Other(MediaCommand::Play {
                call,
                prompts,
                music,
            }) => {
                if let Some(s) = self.session(call) {
                    s.media.play(now, prompts, music);
                }
            }
            Cmd::Other(MediaCommand::Whisper {
                call,
                b: Remote::Rtp(b),
                prompts,
            }) => {
                let latch = self.latch;
                self.changing_legs(call, |s| {
                    let leg = operator_leg(s, &b, latch);
                    s.media.whisper(now, leg, b.law, prompts);
                });
            }
            Cmd::Other(MediaCommand::Monitor { call, mode, .. }) => {
                if let Some(s) = self.session(call) {
                    s.media.set_monitor(mode);
                }
                if mode.is_none() {
                    self.end_monitor(call);
                }
            }
            Cmd::Other(MediaCommand::Unbridge { call }) => {
                self.end_monitor(call);
                self.changing_legs(call, |s| {
                    s.media.unbridge();
                    // A browser's leg served that operator only.
                    s.browser[Side::B.index()] = None;
                    // The next operator's silence must be noticed too.
                    s.idle_reported = false;
                });
            }
            Cmd::Other(MediaCommand::Bridge {
                call,
                b: Remote::Rtp(b),
                record,
            }) => {
                let latch = self.latch;
                let recorder = self.recorder.clone();
                self.changing_legs(call, |s| {
                    let leg = operator_leg(s, &b, latch);
                    s.media.bridge_at(now, leg, b.law);
                    // The liveness clock starts at the answer (again at
                    // a callback's answer after its early media).
                    s.media.touch(now);
                    s.idle_reported = false;
                    // A second bridge (an attended transfer's colleague
                    // in a browser) goes on in the recording already open.
                    if record
                        && !s.media.recording()
                        && let Some(r) = recorder
                        && r.send(RecMsg::Open {
                            id: call.0,
                            name: recording_name(call),
                        })
                    {
                        s.media.record(now);
                    }
                });
            }
            Cmd::Other(MediaCommand::Update {
                call,
                side,
                peer: Remote::Rtp(peer),
                held,
            }) => {
                if let Some(s) = self.session(call) {
                    s.media.update(
                        side,
                        peer.addr,
                        peer.signalling,
                        peer.telephone_event,
                        peer.law,
                    );
                    s.media.set_held(now, side, held);
                    s.media.touch(now);
                }
            }
            Cmd::Other(MediaCommand::Key { call, side, digit }) => {
                if let Some(s) = self.session(call)
                    && !s.media.send_key(now, side, digit)
                {
                    debug!(
                        side = side.label(),
                        "key not sent as events: the side is not connected, takes no events, or has 16 waiting"
                    );
                }
            }
            Cmd::Close { call, back } => self.close(call, back),
            Cmd::Release(kept) => self.release(kept),
            Cmd::Other(MediaCommand::Close { call }) => self.close(call, None),
            Cmd::Other(MediaCommand::Open { call, .. }) => {
                let _ = self.events.send(MediaEvent::Failed { call });
            }
        }
    }

    /// Runs `change` on the call's session where it replaces or drops a
    /// leg (a bridge, a whisper, an unbridge): the stats so far are counted
    /// first, the next leg's from its own start (a leg's counters start at
    /// zero; the flushed marks must not run ahead of them).
    fn changing_legs(&mut self, call: CallId, change: impl FnOnce(&mut Session)) {
        let Some(&slot) = self.by_call.get(&call) else {
            return;
        };
        let Some(s) = self.sessions[slot].as_mut() else {
            return;
        };
        flush_stats(&self.counters, s);
        change(s);
        for side in [Side::A, Side::B] {
            s.flushed[side.index()] = s.media.stats(side);
        }
    }

    fn session(&mut self, call: CallId) -> Option<&mut Session> {
        let slot = *self.by_call.get(&call)?;
        self.sessions[slot].as_mut()
    }

    fn open(
        &mut self,
        now: Instant,
        call: CallId,
        a: Peer,
        socks: [Socks; 2],
        locals: [SocketAddr; 2],
    ) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        let Some((socks, pids)) = self.attach(slot, socks) else {
            warn!(%call, "cannot watch the call's RTP sockets");
            self.free.push(slot);
            let _ = self.events.send(MediaEvent::Failed { call });
            return;
        };
        let seeds = [0, 1].map(|_| {
            let r = self.random();
            (r as u32, (r >> 32) as u16, (r >> 48) as u32 * 65_536)
        });
        let leg = Leg::new(self.latch, a.addr, a.telephone_event).signalled_from(a.signalling);
        self.sessions[slot] = Some(Session {
            call,
            media: CallMedia::new(now, leg, a.law, seeds),
            socks,
            pids,
            flushed: [Stats::default(); 2],
            flushed_unexpected: 0,
            idle_reported: false,
            browser: [None, None],
            locals,
            monitor: None,
        });
        self.by_call.insert(call, slot);
        self.sessions_gauge.inc();
    }

    fn close(&mut self, call: CallId, back: Option<(IpAddr, [u16; 2])>) {
        self.end_monitor(call);
        let Some(mut s) = self.by_call.remove(&call).and_then(|slot| {
            let s = self.sessions[slot].take()?;
            self.free.push(slot);
            Some(s)
        }) else {
            // Never opened here (the sockets closed at the failure): the
            // plane still waits for the ports.
            if let (Some((ip, ports)), Some(r)) = (back, &self.returns) {
                r.gone(ip, ports);
            }
            return;
        };
        // No `epoll::delete` for sockets that close: closing a socket's
        // only descriptor (nothing duplicates these) takes it out of the
        // set; `s` drops below unless its pairs rest here.
        self.flush(&mut s);
        if s.media.recording()
            && let Some(r) = &self.recorder
        {
            let mut samples = Vec::new();
            s.media.finish_recording(Instant::now(), &mut samples);
            r.send(RecMsg::Data {
                id: call.0,
                samples,
            });
            r.send(RecMsg::Close { id: call.0 });
        }
        let (a, b) = (s.media.stats(Side::A), s.media.stats(Side::B));
        info!(
            %call,
            caller_packets = a.packets,
            caller_lost = a.lost,
            caller_late = a.late,
            caller_bad = a.bad,
            caller_foreign = a.foreign,
            operator_packets = b.packets,
            operator_lost = b.lost,
            operator_late = b.late,
            operator_bad = b.bad,
            operator_foreign = b.foreign,
            "media closed"
        );
        self.sessions_gauge.dec();
        // A browser's leg on them: they close (nothing of its ICE and DTLS
        // is to serve another call).
        let reusable = s.browser.iter().all(Option::is_none);
        let Session { socks, pids, .. } = s;
        match (back, &self.returns) {
            (Some(back), Some(_)) if reusable => self.rest(Instant::now(), pids, socks, back),
            (back, returns) => {
                if let (Some((ip, ports)), Some(r)) = (back, returns) {
                    r.gone(ip, ports);
                }
                drop(socks);
                for pid in pids {
                    self.free_pid(pid);
                }
            }
        }
    }

    /// Reads one datagram from a ready socket (level-triggered: if more
    /// are queued, the next wait reports the socket again).
    fn readable(&mut self, now: Instant, token: u64, inbuf: &mut [u8], outbuf: &mut [u8]) {
        let (slot, k) = if token & PAIR_TOKEN != 0 {
            // A call's pair, or one resting between calls (read here).
            match self.route(now, token, inbuf) {
                Some(at) => at,
                None => return,
            }
        } else {
            (token as usize / TOKENS, token as usize % TOKENS)
        };
        let Some(Some(s)) = self.sessions.get_mut(slot) else {
            return;
        };
        if k >= 4 {
            let Some(m) = s.monitor.as_mut() else {
                return;
            };
            let Ok((n, from)) = m.socks[k - 4].recv_from(inbuf) else {
                return;
            };
            // A browser's ICE, DTLS and SRTP on their RTP port, or a
            // phone's RTP; RTCP read and ignored.
            if k != 4 {
                self.local.rtcp += 1;
                return;
            }
            let theirs = match m.leg.as_mut() {
                Some(leg) => leg.receive(now, from, m.local, &inbuf[..n]),
                None => {
                    let theirs = s.media.receive_monitor(now, from, &inbuf[..n]);
                    if let Some(digit) = s.media.take_monitor_digit() {
                        let _ = self.events.send(MediaEvent::MonitorDigit {
                            call: s.call,
                            digit,
                        });
                    }
                    theirs
                }
            };
            if !theirs {
                self.local.browser_foreign += 1;
            }
            drain_monitor(&mut self.local, s, now);
            return;
        }
        let side = if k < 2 { Side::A } else { Side::B };
        // Errors (ICMP from a peer, a spurious wake-up) concern a peer,
        // not the socket: nothing to do.
        let Ok((n, from)) = s.socks[k].recv_from(inbuf) else {
            return;
        };
        if k % 2 == 0
            && let Some(b) = s.browser[side.index()].as_mut()
        {
            // The browser's ICE, DTLS and SRTP, all on the one port.
            if !b
                .leg
                .receive(now, from, s.locals[side.index()], &inbuf[..n])
            {
                self.local.browser_foreign += 1;
            }
            drain_browser(&mut self.local, s, now, side);
            return;
        }
        if k % 2 == 1 {
            // RTCP: read so the peer gets no ICMP; not relayed (each leg's
            // reports describe its own hop).
            self.local.rtcp += 1;
            return;
        }
        let (to, len) = match s.media.receive(now, side, from, &inbuf[..n], outbuf) {
            Action::Send { to, len } => (to, len),
            Action::Dtmf { digit, relay } => {
                let _ = self.events.send(MediaEvent::Dtmf {
                    call: s.call,
                    side,
                    digit,
                });
                match relay {
                    Some(r) => r,
                    None => return,
                }
            }
            Action::None => return,
        };
        if let Some(b) = s.browser[side.other().index()].as_mut() {
            b.leg.send_rtp(now, &outbuf[..len]);
            drain_browser(&mut self.local, s, now, side.other());
            return;
        }
        let out = &s.socks[if k < 2 { 2 } else { 0 }];
        let o = side.other().index();
        match out.send_to(&outbuf[..len], to) {
            Ok(_) => {
                self.local.sent[o] += 1;
                self.local.sent_bytes[o] += len as u64;
            }
            Err(_) => self.local.send_errors += 1,
        }
    }

    /// Sends the prompt and music frames that are due.
    fn playout(&mut self, now: Instant, outbuf: &mut [u8]) {
        for s in self.sessions.iter_mut().flatten() {
            for side in [Side::A, Side::B] {
                if let Some(b) = s.browser[side.index()].as_mut()
                    && b.leg.poll_timeout() <= now
                {
                    b.leg.handle_timeout(now);
                    drain_browser(&mut self.local, s, now, side);
                }
            }
            if let Some(leg) = s.monitor.as_mut().and_then(|m| m.leg.as_mut())
                && leg.poll_timeout() <= now
            {
                leg.handle_timeout(now);
                drain_monitor(&mut self.local, s, now);
            }
            if s.media.poll_timeout().is_none_or(|t| t > now) {
                continue;
            }
            // What the supervisor hears, both sides mixed.
            while let Some((to, len)) = s.media.poll_monitor(now, outbuf) {
                match s.monitor.as_mut() {
                    Some(MonitorSide { leg: Some(leg), .. }) => leg.send_rtp(now, &outbuf[..len]),
                    Some(MonitorSide { socks, .. })
                        if socks[0].send_to(&outbuf[..len], to).is_err() =>
                    {
                        self.local.send_errors += 1;
                    }
                    _ => {}
                }
            }
            // The supervisor's voice alone, to a side no relayed packet
            // carries it to now (on hold, a silent peer); keys that came
            // by INFO, as telephone events.
            while let Some((side, to, len)) = s.media.poll_monitor_voice(now, outbuf) {
                send_to_side(&mut self.local, s, now, side, to, &outbuf[..len]);
            }
            while let Some((side, to, len)) = s.media.poll_key(now, outbuf) {
                send_to_side(&mut self.local, s, now, side, to, &outbuf[..len]);
            }
            if s.monitor.is_some() {
                drain_monitor(&mut self.local, s, now);
            }
            // Prompts and music to the caller; the operator's whisper;
            // each from its side's socket or through its browser's leg.
            while let Some((to, len)) = s.media.poll_packet(now, outbuf) {
                send_to_side(&mut self.local, s, now, Side::A, to, &outbuf[..len]);
            }
            while let Some((to, len)) = s.media.poll_whisper(now, outbuf) {
                send_to_side(&mut self.local, s, now, Side::B, to, &outbuf[..len]);
            }
            for side in [Side::A, Side::B] {
                if s.browser[side.index()].is_some() {
                    drain_browser(&mut self.local, s, now, side);
                }
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let timeout = self.inactivity;
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut gone = Vec::new();
        for s in sessions.iter_mut().flatten() {
            self.flush(s);
            if s.media.recording()
                && let Some(r) = &self.recorder
            {
                let mut samples = Vec::new();
                s.media.take_recording(now, RECORD_SLACK, &mut samples);
                if !samples.is_empty() {
                    r.send(RecMsg::Data {
                        id: s.call.0,
                        samples,
                    });
                }
            }
            if s.monitor.as_mut().is_some_and(|m| m.gone(now)) {
                gone.push(s.call);
            }
            // A browser's leg not connected that long is gone even where
            // the relay would take silence for a hold (and with the silence
            // check off): never sooner than ICE and DTLS take to start.
            let gone_after = timeout.unwrap_or(BROWSER_GONE).max(BROWSER_SETUP);
            let browser_gone = [Side::A, Side::B].into_iter().find(|side| {
                s.browser[side.index()]
                    .as_ref()
                    .and_then(|b| b.gone_since)
                    .is_some_and(|since| now.saturating_duration_since(since) >= gone_after)
            });
            let idle = timeout
                .and_then(|t| s.media.idle_side(now, t))
                .or(browser_gone);
            if !s.idle_reported
                && let Some(side) = idle
            {
                s.idle_reported = true;
                let _ = self.events.send(MediaEvent::Idle { call: s.call, side });
            }
        }
        self.sessions = sessions;
        // A supervisor whose browser went leaves the call: the engine is
        // told (their place, their port).
        for call in gone {
            if let Some(s) = self.session(call) {
                s.media.set_monitor(None);
            }
            self.end_monitor(call);
            let _ = self.events.send(MediaEvent::MonitorGone { call });
        }
        let l = std::mem::take(&mut self.local);
        let c = &self.counters;
        for i in 0..2 {
            c.sent[i].inc_by(l.sent[i]);
            c.sent_bytes[i].inc_by(l.sent_bytes[i]);
        }
        c.send_errors.inc_by(l.send_errors);
        c.rtcp.inc_by(l.rtcp);
        c.foreign.inc_by(l.browser_foreign);
        c.after_call.inc_by(l.after_call);
        c.stale.inc_by(l.stale);
    }

    /// Adds a session's new receive stats to the counters.
    fn flush(&self, s: &mut Session) {
        flush_stats(&self.counters, s);
    }
}

/// The relay's operator leg for `b`. A browser's answer (the engine says
/// so) names the call's operator port itself: with a browser's leg on the
/// port, the relay knows the browser by that address; with none, nothing
/// is sent anywhere (never to our own port). A phone's answer ends any
/// browser's leg left on the port (another operator's, before a transfer
/// or a requeue).
fn operator_leg(s: &mut Session, b: &Peer, latch: Latch) -> Leg {
    let browser = &mut s.browser[Side::B.index()];
    if !b.browser {
        *browser = None;
        return Leg::new(latch, b.addr, b.telephone_event).signalled_from(b.signalling);
    }
    match browser.as_mut() {
        Some(side) => {
            side.peer = Some(b.addr);
            Leg::new(latch, b.addr, None)
        }
        None => Leg::new(latch, SocketAddr::from(([0, 0, 0, 0], 0)), None),
    }
}

fn getrandom(buf: &mut [u8]) -> Result<(), ()> {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_fill_bytes(buf).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use centralino_config::Config;
    use std::sync::atomic::Ordering;

    /// A plane, its metrics and its events' receiver (kept open).
    fn plane(
        config: &Config,
    ) -> (
        MediaPlane,
        NetMetrics,
        tokio::sync::mpsc::UnboundedReceiver<MediaEvent>,
    ) {
        let registry = prometheus::Registry::new();
        let metrics = NetMetrics::new(&registry);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let plane = MediaPlane::start(&config.media, metrics.clone(), tx).unwrap();
        (plane, metrics, rx)
    }

    /// A port another process holds is never handed to the engine: the
    /// plane skips it, and with nothing else free it says `Failed`.
    #[test]
    fn a_port_held_elsewhere_is_skipped_never_promised() {
        // Three pairs where the first is held by "another process".
        let (base, _held) = (21_000..30_000)
            .step_by(8)
            .find_map(|p: u16| {
                let held = bind_pair(IpAddr::from([127, 0, 0, 1]), p).ok()?;
                bind_pair(IpAddr::from([127, 0, 0, 1]), p + 2).ok()?;
                bind_pair(IpAddr::from([127, 0, 0, 1]), p + 4).ok()?;
                Some((p, held))
            })
            .expect("a free block of ports");
        let config = Config::from_toml(&format!(
            "[media]\nthreads = 1\nport_min = {base}\nport_max = {}\n",
            base + 5
        ))
        .unwrap();
        let (mut plane, metrics, _events) = plane(&config);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let Some(MediaEvent::Reserved { a_port, b_port, .. }) =
            plane.command(MediaCommand::Reserve {
                call: CallId(1),
                ip,
            })
        else {
            panic!("two pairs were free")
        };
        let mut got = [a_port, b_port];
        got.sort_unstable();
        assert_eq!(got, [base + 2, base + 4]);
        assert_eq!(
            plane.command(MediaCommand::Reserve {
                call: CallId(2),
                ip
            }),
            Some(MediaEvent::Failed { call: CallId(2) })
        );
        assert!(metrics.rtp_dropped.with_label_values(&["port_busy"]).get() >= 1);
        assert_eq!(
            metrics.rtp_ports.with_label_values(&["free"]).get(),
            0,
            "two held, one resting after the failed bind"
        );
        // Close gives the call's ports back to the pool (each rests in
        // quarantine first).
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(1) }), None);
        assert!(plane.held.is_empty());
    }

    /// A call's two ports from the plane (or the test fails).
    fn reserve(plane: &mut MediaPlane, ip: IpAddr, call: u64) -> [u16; 2] {
        match plane.command(MediaCommand::Reserve {
            call: CallId(call),
            ip,
        }) {
            Some(MediaEvent::Reserved { a_port, b_port, .. }) => [a_port, b_port],
            other => panic!("no ports: {other:?}"),
        }
    }

    /// A caller's peer for `Open`.
    fn caller(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            law: Law::Ulaw,
            telephone_event: None,
            signalling: None,
            browser: false,
        }
    }

    /// Runs a first call on `ip` and waits for its two pairs to come back
    /// from its media thread, rested: their tickets, in the order the
    /// thread keeps them (the next calls on thread 0 take them from the
    /// front).
    fn call_and_rest(plane: &mut MediaPlane, ip: IpAddr) -> [u16; 2] {
        let first = reserve(plane, ip, 2);
        let open = MediaCommand::Open {
            call: CallId(2),
            ip,
            a_port: first[0],
            b_port: first[1],
            a: Remote::Rtp(caller(SocketAddr::from(([127, 0, 0, 1], 9)))),
        };
        assert_eq!(plane.command(open), None);
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(2) }), None);
        plane.flush();
        let shared = plane.ahead.as_ref().expect("a large range").shared.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = shared.lock().unwrap();
            let kept: Vec<u16> = s
                .kept
                .get(&(0, ip))
                .map(|k| k.iter().map(|t| t.port).collect())
                .unwrap_or_default();
            // And the pairs asked of the binding thread all bound (or
            // failed), so none comes in later to change a call's choice.
            let ahead = s.ready.get(&ip).map_or(0, VecDeque::len) + s.failed.len();
            if kept.len() == 2 && ahead >= ahead::TARGET {
                let mut sorted = kept.clone();
                sorted.sort_unstable();
                let mut want = first;
                want.sort_unstable();
                assert_eq!(sorted, want, "both pairs back, as reserved");
                break [kept[0], kept[1]];
            }
            drop(s);
            assert!(Instant::now() < deadline, "the pairs never came back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a counter to reach `want` (the media threads add theirs
    /// once a second).
    fn await_count(c: &IntCounter, want: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.get() < want {
            assert!(Instant::now() < deadline, "{what}: {} of {want}", c.get());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An ended call's pairs stay bound with their media thread (no
    /// system call per call to close, rest or open them) and serve later
    /// calls on that thread once rested; one that hears anything after its
    /// rest is closed unused, as a pair bound ahead would be, and what
    /// reached it is read and dropped there, never by a call.
    #[test]
    fn an_ended_calls_pairs_rest_with_their_thread_and_serve_a_later_call() {
        let config =
            Config::from_toml("[media]\nthreads = 1\nport_min = 44200\nport_max = 48399\n")
                .unwrap();
        let (mut plane, metrics, _events) = plane(&config);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let kept = call_and_rest(&mut plane, ip);
        let shared = plane.ahead.as_ref().unwrap().shared.clone();
        // A stranger (or the last call's peer) sends to one of them now.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger
            .send_to(b"\x80\x00", ("127.0.0.1", kept[1]))
            .unwrap();
        let dropped = metrics.rtp_dropped.with_label_values(&["after_call"]);
        await_count(
            &dropped,
            1,
            "counted by the thread (marked stale, never read)",
        );
        let state = shared.lock().unwrap().kept[&(0, ip)]
            .iter()
            .find(|t| t.port == kept[1])
            .map(|t| t.state.load(Ordering::Acquire));
        assert_eq!(state, Some(kept::STALE), "marked stale, not to serve");
        // The next call takes the quiet one and never the stale one (the
        // pairs bound ahead set aside: the call takes kept ones first).
        shared.lock().unwrap().ready.clear();
        let bound = metrics.rtp_bound_at_call.get();
        let got = reserve(&mut plane, ip, 3);
        assert_eq!(got[0], kept[0], "the quiet pair served again");
        assert_ne!(got[1], kept[1], "never the stale one");
        let held = &plane.held[&CallId(3)];
        let Some([Socks::Kept(k), Socks::Fresh(_)]) = held.socks.as_ref() else {
            panic!("the kept pair, and one bound at the call");
        };
        assert_eq!(k.state.load(Ordering::Acquire), kept::TAKEN);
        assert_eq!(metrics.rtp_bound_at_call.get(), bound + 1);
        let stale = metrics.rtp_dropped.with_label_values(&["stale_port"]);
        await_count(&stale, 1, "the stale pair closed by its thread");
        // The call ends unopened: the kept pair goes back to its thread
        // to close, and no port is lost.
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(3) }), None);
        assert!(plane.held.is_empty());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The thread closes the unopened one; the plane takes the
            // ports back at its next turns.
            plane.flush();
            let held = plane.ahead.as_ref().map_or(0, Ahead::held);
            let pool = &plane.pool;
            let in_use = pool.capacity() - pool.available() - pool.resting() - held;
            if in_use == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{in_use} ports never came back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the caller sends to a kept pair once a call took it, before
    /// the call's media opens on its thread (as soon as our SDP reaches
    /// them), waits in the kernel for the call: the thread neither reads
    /// nor drops it.
    #[test]
    fn early_media_on_a_kept_pair_waits_for_its_call() {
        let config =
            Config::from_toml("[media]\nthreads = 1\nport_min = 48400\nport_max = 52599\n")
                .unwrap();
        let (mut plane, metrics, _events) = plane(&config);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let kept = call_and_rest(&mut plane, ip);
        // No pair bound ahead left: the next call takes both kept ones.
        plane
            .ahead
            .as_ref()
            .unwrap()
            .shared
            .lock()
            .unwrap()
            .ready
            .clear();
        assert_eq!(reserve(&mut plane, ip, 3), kept);
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rtp = [0u8; 172];
        rtp[0] = 0x80;
        rtp[11] = 7;
        phone.send_to(&rtp, ("127.0.0.1", kept[0])).unwrap();
        // Time for the thread to see it before the call opens there (the
        // case under test); the assertions hold either way.
        std::thread::sleep(Duration::from_millis(50));
        let open = MediaCommand::Open {
            call: CallId(3),
            ip,
            a_port: kept[0],
            b_port: kept[1],
            a: Remote::Rtp(caller(phone.local_addr().unwrap())),
        };
        assert_eq!(plane.command(open), None);
        plane.flush();
        let received = metrics.rtp_packets.with_label_values(&["caller", "in"]);
        await_count(&received, 1, "the caller's first packet reaches the call");
        assert_eq!(
            metrics.rtp_dropped.with_label_values(&["after_call"]).get(),
            0
        );
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(3) }), None);
    }

    /// After a first call on an address, pairs are bound ahead on the
    /// `media-bind` thread and the next calls take them; a pair that
    /// received anything before a call took it is closed unused, so
    /// nothing sent to a port before an SDP named it reaches a call.
    #[test]
    fn pairs_bound_ahead_serve_the_next_calls_and_a_touched_one_is_never_used() {
        let config =
            Config::from_toml("[media]\nthreads = 1\nport_min = 40000\nport_max = 44199\n")
                .unwrap();
        let (mut plane, metrics, _events) = plane(&config);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let reserve = |plane: &mut MediaPlane, call| reserve(plane, ip, call);
        reserve(&mut plane, 1);
        // The first call on an address binds its own two pairs (counted).
        assert_eq!(metrics.rtp_bound_at_call.get(), 2);
        plane.flush();
        // The thread binds `TARGET` (a port another test holds is given back).
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready: Vec<u16> = loop {
            let ahead = plane.ahead.as_ref().expect("a large range binds ahead");
            let s = ahead.shared.lock().unwrap();
            let ready: Vec<u16> = s
                .ready
                .get(&ip)
                .map(|r| r.iter().map(|(p, ..)| *p).collect())
                .unwrap_or_default();
            if ready.len() + s.failed.len() == ahead::TARGET {
                break ready;
            }
            drop(s);
            assert!(Instant::now() < deadline, "pairs never bound ahead");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(ready.len() >= 3, "{ready:?}");
        // A stranger sprays the port the next call would take first.
        let touched = ready[0];
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger
            .send_to(b"\x80\x00", ("127.0.0.1", touched))
            .unwrap();
        // Loopback delivers at send; wait for it all the same.
        let ahead = plane.ahead.as_ref().unwrap();
        while ahead.shared.lock().unwrap().ready[&ip]
            .front()
            .is_some_and(|(_, pair)| pair.is_quiet())
        {
            assert!(Instant::now() < deadline, "the datagram never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reserve(&mut plane, 2);
        assert_eq!(got, [ready[1], ready[2]]);
        assert_eq!(metrics.rtp_bound_at_call.get(), 2, "taken bound ahead");
        assert_eq!(
            metrics.rtp_dropped.with_label_values(&["stale_port"]).get(),
            1
        );
        // The touched port rests; the ones the calls took are in use.
        let s = plane.ahead.as_ref().unwrap().shared.lock().unwrap();
        assert!(
            s.ready[&ip]
                .iter()
                .all(|(p, ..)| !got.contains(p) && *p != touched)
        );
        drop(s);
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(1) }), None);
        assert_eq!(plane.command(MediaCommand::Close { call: CallId(2) }), None);
        assert!(plane.held.is_empty());
    }
}
