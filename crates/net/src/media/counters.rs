//! The media threads' counters: kept per thread and per session, added to
//! Prometheus once a second (an atomic add per packet on shared counters
//! would bounce cache lines between the threads).

use super::*;

/// Counters kept per thread and added to Prometheus once a second: an
/// atomic add per packet on shared counters would bounce cache lines
/// between the media threads.
#[derive(Default)]
pub(super) struct Local {
    pub(super) sent: [u64; 2],
    pub(super) sent_bytes: [u64; 2],
    pub(super) send_errors: u64,
    pub(super) rtcp: u64,
    /// Datagrams on a browser's port that were not its session's.
    pub(super) browser_foreign: u64,
    /// Datagrams read and dropped on pairs between calls.
    pub(super) after_call: u64,
    /// Kept pairs closed for what they heard after their rest, or for
    /// hearing datagrams through [`super::kept`]'s longest rest.
    pub(super) stale: u64,
}

impl Local {
    /// Sends a playout packet to side `i` and counts it.
    pub(super) fn sent_from(&mut self, i: usize, sock: &UdpSocket, packet: &[u8], to: SocketAddr) {
        match sock.send_to(packet, to) {
            Ok(_) => {
                self.sent[i] += 1;
                self.sent_bytes[i] += packet.len() as u64;
            }
            Err(_) => self.send_errors += 1,
        }
    }
}

pub(super) struct Counters {
    pub(super) received: [IntCounter; 2],
    pub(super) received_bytes: [IntCounter; 2],
    pub(super) sent: [IntCounter; 2],
    pub(super) sent_bytes: [IntCounter; 2],
    pub(super) lost: [IntCounter; 2],
    pub(super) bad: IntCounter,
    pub(super) foreign: IntCounter,
    pub(super) late: IntCounter,
    pub(super) send_errors: IntCounter,
    pub(super) rtcp: IntCounter,
    pub(super) unexpected: IntCounter,
    pub(super) after_call: IntCounter,
    pub(super) stale: IntCounter,
}

impl Counters {
    pub(super) fn new(m: &NetMetrics) -> Self {
        let per_side = |vec: &prometheus::IntCounterVec, dir: &str| {
            [Side::A, Side::B].map(|s| vec.with_label_values(&[s.label(), dir]))
        };
        let drop = |r: &str| m.rtp_dropped.with_label_values(&[r]);
        Self {
            received: per_side(&m.rtp_packets, "in"),
            received_bytes: per_side(&m.rtp_bytes, "in"),
            sent: per_side(&m.rtp_packets, "out"),
            sent_bytes: per_side(&m.rtp_bytes, "out"),
            lost: [Side::A, Side::B].map(|s| m.rtp_lost.with_label_values(&[s.label()])),
            bad: drop("bad_packet"),
            foreign: drop("foreign_source"),
            late: drop("late_or_duplicate"),
            send_errors: drop("send_error"),
            rtcp: drop("rtcp_ignored"),
            unexpected: drop("before_bridge"),
            after_call: drop("after_call"),
            stale: drop("stale_port"),
        }
    }
}

/// Adds a session's new receive stats to the counters `c`.
pub(super) fn flush_stats(c: &Counters, s: &mut Session) {
    // Saturating: a mark ahead of a leg's counters (a leg replaced without
    // `changing_legs`) must never panic a media thread nor add 2^64.
    for side in [Side::A, Side::B] {
        let i = side.index();
        let now = s.media.stats(side);
        let was = s.flushed[i];
        c.received[i].inc_by(now.packets.saturating_sub(was.packets));
        c.received_bytes[i].inc_by(now.bytes.saturating_sub(was.bytes));
        c.lost[i].inc_by(now.lost.saturating_sub(was.lost));
        c.bad.inc_by(now.bad.saturating_sub(was.bad));
        c.foreign.inc_by(now.foreign.saturating_sub(was.foreign));
        c.late.inc_by(now.late.saturating_sub(was.late));
        s.flushed[i] = now;
    }
    let u = s.media.unexpected();
    c.unexpected.inc_by(u.saturating_sub(s.flushed_unexpected));
    s.flushed_unexpected = u;
}
