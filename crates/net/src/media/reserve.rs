//! A new call's two port pairs: bound ahead when some are ready, bound at
//! the call otherwise, from the pool's random draw.

use std::net::IpAddr;
use std::time::Instant;

use centralino_b2bua::media::MediaEvent;
use centralino_types::CallId;
use tracing::debug;

use super::{Held, MediaPlane, Pair, bind_pair};

impl MediaPlane {
    /// A port busy in another process rests in quarantine again.
    pub(super) fn port_busy(&mut self, now: Instant, port: u16) {
        self.metrics
            .rtp_dropped
            .with_label_values(&["port_busy"])
            .inc();
        self.pool.release(now, port);
    }

    /// A port from the pool with RTP and RTCP bound on `ip`; a port another
    /// process holds is skipped (and rests in quarantine again).
    pub(super) fn bind_one(&mut self, now: Instant, ip: IpAddr) -> Option<(u16, Pair)> {
        if let Some(got) = self.bound_ahead(now, ip) {
            return Some(got);
        }
        // Bounded: at most the whole pool is tried once.
        for _ in 0..self.pool.capacity() {
            let port = self.pool.take(now).ok()?;
            match bind_pair(ip, port) {
                Ok(pair) => {
                    self.metrics.rtp_bound_at_call.inc();
                    return Some((port, pair));
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
        let Some((a_port, a)) = self.bind_one(now, ip) else {
            // A busy port skipped on the way rests in quarantine now.
            self.gauges();
            return MediaEvent::Failed { call };
        };
        let Some((b_port, b)) = self.bind_one(now, ip) else {
            self.pool.release(now, a_port);
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
            for p in old.ports {
                self.pool.release(now, p);
            }
        }
        self.gauges();
        MediaEvent::Reserved {
            call,
            a_port,
            b_port,
        }
    }
}
