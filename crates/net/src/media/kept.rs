//! A media thread's RTP pairs, kept from call to call (ARCHITECTURE "RTP
//! pairs kept by their media thread").
//!
//! Each pair joins its thread's epoll set once, under tokens of its own
//! ([`PAIR_TOKEN`]), and stays there while the thread keeps it: a call
//! takes it and gives it back without a system call. Before, an ended
//! call's four sockets left the set, were connected to themselves while
//! they rested, opened again and emptied when a call took them: 20 of a
//! call's 44 system calls at 2,000 calls/s (`scripts/load --syscalls`).
//!
//! Between calls the thread reads whatever reaches a pair and drops it
//! (`centralino_rtp_dropped_total{reason="after_call"}`): nothing waits in
//! its buffer, however many pairs are kept, and a pair serves again only
//! after [`PORT_QUARANTINE`] without a datagram. Its ticket then goes to
//! the plane; anything heard on it before the plane takes it makes it
//! stale, and the thread closes it (`stale_port`). Once the plane has
//! taken it for a call, what arrives waits in the kernel for that call,
//! as on a pair bound for it: its early media (the caller may send as
//! soon as our SDP reaches it, before the call's media opens here).

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use tracing::warn;

use super::ahead::Ticket;
use super::{PORT_QUARANTINE, Pair, Worker};

/// Tokens of kept pairs' sockets carry this bit: `PAIR_TOKEN | pid << 1 |
/// k` (k: 0 RTP, 1 RTCP). The waker's token (all ones) is told apart first.
pub(super) const PAIR_TOKEN: u64 = 1 << 62;

/// The longest a pair may rest from its call's end: one still hearing
/// datagrams then (its last call's peer, or someone spraying it, every
/// second) closes, its port back to the pool, rather than resting (held,
/// out of the pool) for as long as they keep sending.
const MAX_REST: Duration = Duration::from_secs(3 * PORT_QUARANTINE.as_secs());

/// A kept pair's ticket states.
pub(super) const READY: u8 = 0;
pub(super) const TAKEN: u8 = 1;
pub(super) const STALE: u8 = 2;

/// A kept pair the plane took for a call on its thread.
pub(super) struct Kept {
    pub(super) thread: usize,
    pub(super) port: u16,
    pub(super) pid: u32,
    pub(super) state: Arc<AtomicU8>,
    /// Its RTP socket, shared with its thread until the call opens: the
    /// plane looks at it once when taking it.
    pub(super) rtp: Arc<UdpSocket>,
}

/// A call's pair as the plane hands it to the call's thread.
pub(super) enum Socks {
    /// Bound for the call, or ahead of it: joins the thread's set.
    Fresh(Pair),
    /// One the thread keeps.
    Kept(Kept),
}

/// Where a pair is, on its thread.
pub(super) enum Place {
    /// In session `slot`'s sockets, on side `side` (0: caller, 1: operator).
    Call { slot: usize, side: usize },
    /// Between calls.
    Idle(Idle),
    /// The pid is free.
    Free,
}

pub(super) struct Idle {
    /// Shared with its ticket once it goes to the plane.
    rtp: Arc<UdpSocket>,
    rtcp: UdpSocket,
    ip: IpAddr,
    port: u16,
    /// Since when it rests (again, after a datagram).
    since: Instant,
    /// When its last call ended.
    ended: Instant,
    /// When a datagram last reached it.
    heard: Option<Instant>,
    /// Its ticket, once it went to the plane.
    ticket: Option<Arc<AtomicU8>>,
    /// Sockets (RTP, RTCP) out of the wait: a datagram for the call that
    /// took the pair, left in the kernel until the call opens.
    paused: [bool; 2],
}

fn token_of(pid: u32, k: usize) -> epoll::EventData {
    epoll::EventData::new_u64(PAIR_TOKEN | u64::from(pid) << 1 | k as u64)
}

impl Worker {
    /// Puts a call's two pairs in session `slot`: a fresh pair joins the
    /// set, a kept one just changes place. Its four sockets (A-RTP,
    /// A-RTCP, B-RTP, B-RTCP) and pids; `None` if one could not (what was
    /// already placed closes, its ports come back with the call's close).
    pub(super) fn attach(
        &mut self,
        slot: usize,
        socks: [Socks; 2],
    ) -> Option<([UdpSocket; 4], [u32; 2])> {
        let mut got: Vec<(u32, Pair)> = Vec::with_capacity(2);
        let mut socks = socks.into_iter().enumerate();
        while let Some((side, s)) = socks.next() {
            let placed = match s {
                Socks::Fresh(pair) => self.join(pair),
                Socks::Kept(k) => self.unrest(k),
            };
            let Some((pid, pair)) = placed else {
                for (pid, _) in got {
                    self.free_pid(pid);
                }
                // The other kept pair closes too, or it would wait here
                // taken for good (its port goes back with the call's
                // close, as these do).
                for (_, rest) in socks {
                    if let Socks::Kept(k) = rest {
                        self.close_taken(k);
                    }
                }
                return None;
            };
            self.pairs[pid as usize] = Place::Call { slot, side };
            got.push((pid, pair));
        }
        let (pb, b) = got.pop()?;
        let (pa, a) = got.pop()?;
        Some(([a.rtp, a.rtcp, b.rtp, b.rtcp], [pa, pb]))
    }

    fn join(&mut self, pair: Pair) -> Option<(u32, Pair)> {
        let pid = self.free_pids.pop().unwrap_or_else(|| {
            self.pairs.push(Place::Free);
            (self.pairs.len() - 1) as u32
        });
        for (k, sock) in [&pair.rtp, &pair.rtcp].into_iter().enumerate() {
            if let Err(e) = epoll::add(&self.poll, sock, token_of(pid, k), epoll::EventFlags::IN) {
                warn!(error = %e, "cannot watch an RTP socket");
                self.free_pids.push(pid);
                return None;
            }
        }
        Some((pid, pair))
    }

    /// A kept pair the plane took: out of its rest, its wait restored if
    /// a datagram for the call paused it.
    fn unrest(&mut self, k: Kept) -> Option<(u32, Pair)> {
        let i = k.pid as usize;
        let mine = matches!(&self.pairs.get(i), Some(Place::Idle(idle))
            if idle.ticket.as_ref().is_some_and(|t| Arc::ptr_eq(t, &k.state)));
        if !mine || k.state.load(Ordering::Acquire) != TAKEN {
            warn!(
                pid = k.pid,
                "a kept RTP pair handed to a call is not this thread's"
            );
            return None;
        }
        let Place::Idle(idle) = std::mem::replace(&mut self.pairs[i], Place::Free) else {
            return None;
        };
        // The plane's share goes with its ticket: the socket is the
        // call's alone now.
        let Kept { pid, rtp, .. } = k;
        drop(rtp);
        let rtp = match Arc::try_unwrap(idle.rtp) {
            Ok(rtp) => rtp,
            Err(shared) => {
                // Whoever else holds it keeps it open: out of the set,
                // or it would wake this thread under a freed pid.
                warn!(pid, "a kept RTP socket is still shared at its call");
                let _ = epoll::delete(&self.poll, &*shared);
                self.free_pid(pid);
                return None;
            }
        };
        let pair = Pair {
            rtp,
            rtcp: idle.rtcp,
        };
        for (kk, sock) in [&pair.rtp, &pair.rtcp].into_iter().enumerate() {
            if idle.paused[kk]
                && epoll::modify(&self.poll, sock, token_of(pid, kk), epoll::EventFlags::IN)
                    .is_err()
            {
                self.free_pid(pid);
                return None;
            }
        }
        Some((pid, pair))
    }

    /// A kept pair taken for a call that will not open: closed here.
    fn close_taken(&mut self, k: Kept) {
        let mine = matches!(&self.pairs.get(k.pid as usize), Some(Place::Idle(idle))
            if idle.ticket.as_ref().is_some_and(|t| Arc::ptr_eq(t, &k.state)));
        if mine {
            self.free_pid(k.pid);
        }
    }

    /// A pid whose sockets closed (or never joined).
    pub(super) fn free_pid(&mut self, pid: u32) {
        if let Some(p) = self.pairs.get_mut(pid as usize) {
            *p = Place::Free;
            self.free_pids.push(pid);
        }
    }

    /// An ended call's pairs rest here, still in the set: `socks` (A-RTP,
    /// A-RTCP, B-RTP, B-RTCP) bound on `ip` at `ports`.
    pub(super) fn rest(
        &mut self,
        now: Instant,
        pids: [u32; 2],
        socks: [UdpSocket; 4],
        (ip, ports): (IpAddr, [u16; 2]),
    ) {
        let [a_rtp, a_rtcp, b_rtp, b_rtcp] = socks;
        let pairs = [
            Pair {
                rtp: a_rtp,
                rtcp: a_rtcp,
            },
            Pair {
                rtp: b_rtp,
                rtcp: b_rtcp,
            },
        ];
        for ((pid, pair), port) in pids.into_iter().zip(pairs).zip(ports) {
            self.pairs[pid as usize] = Place::Idle(Idle {
                rtp: Arc::new(pair.rtp),
                rtcp: pair.rtcp,
                ip,
                port,
                since: now,
                ended: now,
                heard: None,
                ticket: None,
                paused: [false; 2],
            });
            self.resting.push_back(pid);
        }
    }

    /// A kept pair's socket is readable: what reached it is dropped, and
    /// its rest starts again; once its ticket went to the plane it is
    /// closed first, unless the plane took it for a call (then the
    /// datagram waits for the call). `Some((slot, k))`: a call's socket.
    pub(super) fn route(
        &mut self,
        now: Instant,
        token: u64,
        buf: &mut [u8],
    ) -> Option<(usize, usize)> {
        let pid = ((token & !PAIR_TOKEN) >> 1) as u32;
        let k = (token & 1) as usize;
        let idle = match self.pairs.get_mut(pid as usize)? {
            Place::Call { slot, side } => return Some((*slot, *side * 2 + k)),
            Place::Free => return None,
            Place::Idle(idle) => idle,
        };
        if let Some(t) = &idle.ticket {
            // Marked stale before the read: once the plane has it, no
            // datagram of the call's is read here.
            match t.compare_exchange(READY, STALE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // Its ticket still holds the RTP socket (the plane
                    // drops it, and gives the port back, when it meets
                    // it): out of the set and connected to itself until
                    // then, so nothing more is delivered to it.
                    if epoll::delete(&self.poll, &*idle.rtp).is_err() {
                        // Still in the set under a pid about to be
                        // freed: emptied, so it does not wake the thread
                        // (it never serves again).
                        for _ in 0..64 {
                            if idle.rtp.recv_from(buf).is_err() {
                                break;
                            }
                        }
                    }
                    if let Ok(me) = idle.rtp.local_addr() {
                        let _ = idle.rtp.connect(me);
                    }
                    self.local.after_call += 1;
                    self.local.stale += 1;
                    self.free_pid(pid);
                }
                Err(TAKEN) if !idle.paused[k] => {
                    let sock = if k == 0 { &*idle.rtp } else { &idle.rtcp };
                    let out = epoll::modify(
                        &self.poll,
                        sock,
                        token_of(pid, k),
                        epoll::EventFlags::empty(),
                    );
                    if out.is_ok() {
                        idle.paused[k] = true;
                    } else if sock.recv_from(buf).is_ok() {
                        // Not out of the wait: read (not to spin on it)
                        // and lost, as a datagram the kernel dropped.
                        self.local.after_call += 1;
                    }
                }
                Err(_) => {}
            }
            return None;
        }
        let sock = if k == 0 { &*idle.rtp } else { &idle.rtcp };
        if sock.recv_from(buf).is_ok() {
            self.local.after_call += 1;
            idle.heard = Some(now);
        }
        None
    }

    /// Pairs rested [`PORT_QUARANTINE`] without a datagram go to the plane.
    pub(super) fn rested(&mut self, now: Instant) {
        let mut ready: Vec<(IpAddr, Ticket)> = Vec::new();
        while let Some(&pid) = self.resting.front() {
            let Some(Place::Idle(idle)) = self.pairs.get_mut(pid as usize) else {
                self.resting.pop_front();
                continue;
            };
            if now.saturating_duration_since(idle.since) < PORT_QUARANTINE {
                break;
            }
            self.resting.pop_front();
            if let Some(heard) = idle.heard.take()
                && now.saturating_duration_since(heard) < PORT_QUARANTINE
            {
                if now.saturating_duration_since(idle.ended) >= MAX_REST {
                    let (ip, port) = (idle.ip, idle.port);
                    self.local.stale += 1;
                    self.free_pid(pid);
                    if let Some(r) = &self.returns {
                        r.gone(ip, [port]);
                    }
                    continue;
                }
                // Heard within its rest: it rests again from then.
                idle.since = heard;
                self.resting.push_back(pid);
                continue;
            }
            let state = Arc::new(AtomicU8::new(READY));
            idle.ticket = Some(state.clone());
            ready.push((
                idle.ip,
                Ticket {
                    port: idle.port,
                    pid,
                    state,
                    rtp: idle.rtp.clone(),
                },
            ));
        }
        if ready.is_empty() {
            return;
        }
        if let Some(r) = self.returns.clone() {
            r.ready(self.index, ready.into_iter(), || self.random());
        }
    }

    /// The plane let a kept pair go (it took it, then did not need it):
    /// closed, its port back to the pool.
    pub(super) fn release(&mut self, k: Kept) {
        let i = k.pid as usize;
        let port = match &self.pairs.get(i) {
            Some(Place::Idle(idle))
                if idle
                    .ticket
                    .as_ref()
                    .is_some_and(|t| Arc::ptr_eq(t, &k.state)) =>
            {
                idle.port
            }
            _ => {
                // Not this thread's idle pair (never so today): its port
                // goes back only if this was its last share.
                warn!(pid = k.pid, "a kept RTP pair let go is not this thread's");
                if Arc::strong_count(&k.rtp) == 1 {
                    let port = k.port;
                    drop(k);
                    if let Some(r) = &self.returns {
                        r.let_go(port);
                    }
                }
                return;
            }
        };
        self.free_pid(k.pid);
        // Closed (its last share) before its port goes back.
        drop(k);
        if let Some(r) = &self.returns {
            r.let_go(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ahead::{Returns, Shared};
    use super::super::bind_pair;
    use super::super::waker::Waker;
    use super::*;
    use crate::metrics::NetMetrics;
    use rustix::buffer::spare_capacity;
    use rustix::event::{EventfdFlags, Timespec, eventfd};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    /// A media thread's state, driven by the test instead of its loop.
    fn worker() -> (Worker, Arc<Mutex<Shared>>) {
        let config = centralino_config::Config::from_toml("").expect("defaults");
        let metrics = NetMetrics::new(&prometheus::Registry::new());
        let poll = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd");
        let waker = Arc::new(Waker {
            fd,
            pending: AtomicBool::new(false),
        });
        let rx = std::sync::mpsc::channel().1;
        let events = tokio::sync::mpsc::unbounded_channel().0;
        let mut w = Worker::new(poll, waker, rx, events, &config.media, &metrics);
        let shared = Arc::new(Mutex::new(Shared::default()));
        w.returns = Some(Returns(shared.clone()));
        (w, shared)
    }

    const IP: [u8; 4] = [127, 0, 0, 1];

    /// A pair bound on a free even port.
    fn pair() -> (u16, Pair) {
        (0..64)
            .find_map(|_| {
                let probe = UdpSocket::bind((IpAddr::from(IP), 0)).ok()?;
                let port = probe.local_addr().ok()?.port();
                drop(probe);
                (port % 2 == 0 && port < u16::MAX)
                    .then(|| bind_pair(IpAddr::from(IP), port).ok().map(|p| (port, p)))
                    .flatten()
            })
            .expect("a free pair")
    }

    /// One wait of the thread (`ms` at most), each ready pair's socket
    /// routed as its loop does: the tokens and where they went.
    fn turn(w: &mut Worker, now: Instant, ms: i64) -> Vec<(u64, Option<(usize, usize)>)> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: ms * 1_000_000,
        };
        epoll::wait(&w.poll, spare_capacity(&mut events), Some(&timeout)).expect("wait");
        let mut buf = [0u8; 2048];
        events
            .iter()
            .map(|e| {
                let token = e.data.u64();
                (token, w.route(now, token, &mut buf))
            })
            .collect()
    }

    fn send(port: u16) {
        let peer = UdpSocket::bind((IpAddr::from(IP), 0)).expect("peer");
        peer.send_to(b"\x80\x00late", (IpAddr::from(IP), port))
            .expect("send");
    }

    /// A call's pairs resting on their thread, from `t0`.
    fn rested_call(w: &mut Worker, t0: Instant) -> [(u16, u32); 2] {
        let ((pa, a), (pb, b)) = (pair(), pair());
        let (socks, pids) = w
            .attach(0, [Socks::Fresh(a), Socks::Fresh(b)])
            .expect("attached");
        w.rest(t0, pids, socks, (IpAddr::from(IP), [pa, pb]));
        [(pa, pids[0]), (pb, pids[1])]
    }

    /// The tickets the thread handed the plane, taken as the plane would,
    /// and the one for `port` among them.
    fn ticket_for(shared: &Mutex<Shared>, port: u16) -> (Ticket, Vec<Ticket>) {
        let mut s = shared.lock().expect("lock");
        let (mine, others) = s
            .kept
            .values_mut()
            .flat_map(|k| k.drain(..))
            .partition::<Vec<_>, _>(|t| t.port == port);
        let mine = mine.into_iter().next().expect("its ticket");
        (mine, others)
    }

    fn kept_ports(shared: &Mutex<Shared>) -> Vec<u16> {
        let s = shared.lock().expect("lock");
        s.kept
            .get(&(0, IpAddr::from(IP)))
            .map(|k| k.iter().map(|t| t.port).collect())
            .unwrap_or_default()
    }

    /// What reaches a resting pair is read and dropped there (nothing
    /// waits in its buffer), and its rest starts again; a quiet one goes
    /// to the plane after its rest; one still hearing datagrams three
    /// rests after its call closes, its port back to the pool.
    #[test]
    fn a_resting_pair_is_emptied_rests_again_and_closes_if_it_keeps_hearing() {
        let (mut w, shared) = worker();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let [(pa, pid_a), (pb, _)] = rested_call(&mut w, t0);
        send(pa);
        let routed = turn(&mut w, t0 + ms(500), 1000);
        assert_eq!(routed.len(), 1, "{routed:?}");
        assert_eq!(routed[0].1, None, "not a call's");
        assert_eq!(w.local.after_call, 1);
        assert!(turn(&mut w, t0 + ms(500), 0).is_empty(), "emptied");
        w.rested(t0 + ms(999));
        assert!(kept_ports(&shared).is_empty(), "still resting");
        w.rested(t0 + ms(1000));
        assert_eq!(kept_ports(&shared), [pb], "the quiet one only");
        // Heard through its rests, until three after its call: closed.
        for at in [1400, 2300, 3200] {
            send(pa);
            assert_eq!(turn(&mut w, t0 + ms(at), 1000).len(), 1);
            w.rested(t0 + ms(at + 100));
            let closed = shared.lock().expect("lock").closed.clone();
            if at < 3000 {
                assert!(closed.is_empty(), "{at}: {closed:?}");
            } else {
                assert_eq!(closed, [(IpAddr::from(IP), pa)], "back to the pool");
            }
        }
        assert!(matches!(w.pairs[pid_a as usize], Place::Free));
        assert_eq!((w.local.after_call, w.local.stale), (4, 1));
        assert_eq!(kept_ports(&shared), [pb]);
    }

    /// A kept pair the plane took leaves what reaches it in the kernel
    /// (out of the wait: no spinning on it) until its call opens, and the
    /// call reads it; one heard after its rest, before any call took it,
    /// is closed unread and its port given back.
    #[test]
    fn a_taken_pair_keeps_the_calls_datagrams_and_a_heard_one_closes() {
        let (mut w, shared) = worker();
        let t0 = Instant::now();
        let [(pa, pid_a), (pb, pid_b)] = rested_call(&mut w, t0);
        w.rested(t0 + PORT_QUARANTINE);
        let (ta, mut others) = ticket_for(&shared, pa);
        let tb = others.pop().expect("B's ticket");
        assert_eq!((tb.port, others.len()), (pb, 0));
        // The plane takes A for a call; the caller sends at once.
        ta.state.store(TAKEN, Ordering::Release);
        send(pa);
        let routed = turn(&mut w, t0 + PORT_QUARANTINE, 1000);
        assert_eq!(routed.len(), 1);
        let Place::Idle(idle) = &w.pairs[pid_a as usize] else {
            panic!("still between calls");
        };
        assert_eq!(idle.paused, [true, false]);
        assert!(turn(&mut w, t0, 0).is_empty(), "out of the wait: no spin");
        assert_eq!(w.local.after_call, 0, "not read");
        // The call opens: the datagram is the call's.
        let kept = Kept {
            thread: 0,
            port: pa,
            pid: ta.pid,
            state: ta.state,
            rtp: ta.rtp,
        };
        let (_c, c) = pair();
        let (socks, pids) = w
            .attach(1, [Socks::Kept(kept), Socks::Fresh(c)])
            .expect("opened");
        assert_eq!(pids[0], pid_a);
        let routed = turn(&mut w, t0, 1000);
        assert_eq!(routed.len(), 1);
        assert_eq!(routed[0].1, Some((1, 0)), "the call's caller RTP");
        let mut buf = [0u8; 64];
        let (n, _) = socks[0].recv_from(&mut buf).expect("the early datagram");
        assert_eq!(&buf[..n], b"\x80\x00late");
        // B is heard before any call took it: stale, let go (the plane
        // closes it with its ticket), delivered nothing more meanwhile.
        send(pb);
        assert_eq!(turn(&mut w, t0, 1000).len(), 1);
        assert_eq!(tb.state.load(Ordering::Acquire), STALE);
        assert!(matches!(w.pairs[pid_b as usize], Place::Free));
        assert_eq!(Arc::strong_count(&tb.rtp), 1, "the ticket's alone");
        assert_eq!(tb.rtp.peer_addr().ok(), tb.rtp.local_addr().ok());
        let (n, _) = tb.rtp.peek_from(&mut buf).expect("marked before any read");
        assert_eq!(&buf[..n], b"\x80\x00late");
        assert_eq!(w.local.stale, 1);
        assert!(turn(&mut w, t0, 0).is_empty(), "out of the set");
    }

    /// A call whose Open fails half-way (its first pair cannot join the
    /// set) closes the kept pair it was given too, rather than leaving it
    /// taken on the thread for good with its port bound.
    #[test]
    fn a_half_failed_open_closes_the_kept_pair_it_was_given() {
        let (mut w, shared) = worker();
        let t0 = Instant::now();
        let [(_, pid_a), (pb, pid_b)] = rested_call(&mut w, t0);
        w.rested(t0 + PORT_QUARANTINE);
        let (t, _) = ticket_for(&shared, pb);
        t.state.store(TAKEN, Ordering::Release);
        // A socket already in the set cannot join it again (EEXIST).
        let (_, fresh) = pair();
        epoll::add(&w.poll, &fresh.rtp, token_of(999, 0), epoll::EventFlags::IN).expect("add");
        let kept = Kept {
            thread: 0,
            port: pb,
            pid: t.pid,
            state: t.state,
            rtp: t.rtp,
        };
        assert!(
            w.attach(1, [Socks::Fresh(fresh), Socks::Kept(kept)])
                .is_none()
        );
        assert!(matches!(w.pairs[pid_b as usize], Place::Free));
        // Closed: its ports bind again.
        let ip = IpAddr::from(IP);
        drop(bind_pair(ip, pb).expect("B's ports are free"));
        assert!(
            matches!(w.pairs[pid_a as usize], Place::Idle(_)),
            "A untouched"
        );
    }
}
