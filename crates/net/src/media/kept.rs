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
use std::time::Instant;

use rustix::event::epoll;
use tracing::warn;

use super::ahead::Ticket;
use super::{PORT_QUARANTINE, Pair, Worker};

/// Tokens of kept pairs' sockets carry this bit: `PAIR_TOKEN | pid << 1 |
/// k` (k: 0 RTP, 1 RTCP). The waker's token (all ones) is told apart first.
pub(super) const PAIR_TOKEN: u64 = 1 << 62;

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
    pair: Pair,
    ip: IpAddr,
    port: u16,
    /// Since when it rests (again, after a datagram).
    since: Instant,
    /// When a datagram last reached it.
    heard: Option<Instant>,
    /// Its ticket, once it went to the plane.
    ticket: Option<Arc<AtomicU8>>,
    /// Out of the wait (a datagram for the call that took it, left in
    /// the kernel until the call opens).
    paused: bool,
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
        for (side, s) in socks.into_iter().enumerate() {
            let placed = match s {
                Socks::Fresh(pair) => self.join(pair),
                Socks::Kept(k) => self.unrest(&k),
            };
            let Some((pid, pair)) = placed else {
                for (pid, _) in got {
                    self.free_pid(pid);
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
    fn unrest(&mut self, k: &Kept) -> Option<(u32, Pair)> {
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
        if idle.paused {
            for (kk, sock) in [&idle.pair.rtp, &idle.pair.rtcp].into_iter().enumerate() {
                if epoll::modify(&self.poll, sock, token_of(k.pid, kk), epoll::EventFlags::IN)
                    .is_err()
                {
                    self.free_pid(k.pid);
                    return None;
                }
            }
        }
        Some((k.pid, idle.pair))
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
                pair,
                ip,
                port,
                since: now,
                heard: None,
                ticket: None,
                paused: false,
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
                    let port = idle.port;
                    self.local.after_call += 1;
                    self.free_pid(pid);
                    if let Some(r) = &self.returns {
                        r.let_go(port);
                    }
                    return None;
                }
                Err(TAKEN) => {
                    if !idle.paused {
                        idle.paused = true;
                        for (kk, sock) in [&idle.pair.rtp, &idle.pair.rtcp].into_iter().enumerate()
                        {
                            let _ = epoll::modify(
                                &self.poll,
                                sock,
                                token_of(pid, kk),
                                epoll::EventFlags::empty(),
                            );
                        }
                    }
                    return None;
                }
                Err(_) => return None,
            }
        }
        let sock = if k == 0 {
            &idle.pair.rtp
        } else {
            &idle.pair.rtcp
        };
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
    pub(super) fn release(&mut self, k: &Kept) {
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
            _ => return,
        };
        self.free_pid(k.pid);
        if let Some(r) = &self.returns {
            r.let_go(port);
        }
    }
}
