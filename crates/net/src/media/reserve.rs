//! A new call's two port pairs: bound ahead when some are ready, bound at
//! the call otherwise, from the pool's random draw.

use std::net::IpAddr;
use std::time::Instant;

use centralino_b2bua::media::MediaEvent;
use centralino_types::CallId;
use tracing::debug;

use super::kept::{Kept, Socks};
use super::{Cmd, Held, MediaPlane, bind_pair};

impl MediaPlane {
    /// A port busy in another process rests in quarantine again.
    pub(super) fn port_busy(&mut self, now: Instant, port: u16) {
        self.metrics
            .rtp_dropped
            .with_label_values(&["port_busy"])
            .inc();
        self.pool.release(now, port);
    }

    /// A port from the pool with RTP and RTCP bound on `ip` (or kept by
    /// media thread `thread`, when given); a port another process holds is
    /// skipped (and rests in quarantine again).
    pub(super) fn bind_one(
        &mut self,
        now: Instant,
        thread: Option<usize>,
        ip: IpAddr,
    ) -> Option<(u16, Socks)> {
        if let Some(got) = self.bound_ahead(now, thread, ip) {
            return Some(got);
        }
        // Bounded: at most the whole pool is tried once.
        for _ in 0..self.pool.capacity() {
            let port = self.pool.take(now).ok()?;
            match bind_pair(ip, port) {
                Ok(pair) => {
                    self.metrics.rtp_bound_at_call.inc();
                    return Some((port, Socks::Fresh(pair)));
                }
                Err(e) => {
                    debug!(port, error = %e, "RTP port busy, skipped");
                    self.port_busy(now, port);
                }
            }
        }
        None
    }

    /// Two bound pairs for a new call, or `Failed` (nothing is held then).
    pub(super) fn reserve(&mut self, call: CallId, ip: IpAddr) -> MediaEvent {
        let now = Instant::now();
        // The pairs its media thread keeps serve it first.
        let thread = Some(call.0 as usize % self.workers.len());
        let Some((a_port, a)) = self.bind_one(now, thread, ip) else {
            // A busy port skipped on the way rests in quarantine now.
            self.gauges();
            return MediaEvent::Failed { call };
        };
        let Some((b_port, b)) = self.bind_one(now, thread, ip) else {
            self.let_go(now, a_port, a);
            self.gauges();
            return MediaEvent::Failed { call };
        };
        let ports = [a_port, b_port];
        if let Some(old) = self.held.insert(
            call,
            Held {
                ports,
                socks: Some([a, b]),
                ip,
                browser: [None, None],
                monitor: None,
                monitor_pending: None,
            },
        ) {
            // A call reserves once; should the engine ask again, the old
            // ports are not leaked.
            match old.socks {
                Some(socks) => {
                    for (port, socks) in old.ports.into_iter().zip(socks) {
                        self.let_go(now, port, socks);
                    }
                }
                None => {
                    for p in old.ports {
                        self.pool.release(now, p);
                    }
                }
            }
        }
        self.gauges();
        MediaEvent::Reserved {
            call,
            a_port,
            b_port,
        }
    }

    /// A call's pair it did not use: bound for it, closed here (its port
    /// rests); kept, closed by its thread (which gives the port back).
    pub(super) fn let_go(&mut self, now: Instant, port: u16, socks: Socks) {
        match socks {
            Socks::Fresh(pair) => {
                drop(pair);
                self.pool.release(now, port);
            }
            Socks::Kept(kept) => self.close_kept(now, kept),
        }
    }

    /// A kept pair the plane took is closed by its thread.
    pub(super) fn close_kept(&mut self, now: Instant, kept: Kept) {
        let thread = kept.thread;
        let port = kept.port;
        let sent = self
            .workers
            .get(thread)
            .is_some_and(|w| w.0.send(Cmd::Release(kept)).is_ok());
        if sent {
            self.unwoken[thread] = true;
        } else {
            // Its thread is gone, and its sockets with it.
            self.pool.release(now, port);
        }
    }
}
