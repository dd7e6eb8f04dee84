//! One outgoing RTP stream towards a leg, fed by changing sources (a
//! prompt, then the operator, then music on hold): the leg sees one SSRC
//! with continuous sequence numbers and timestamps, and a marker bit where
//! the source changed, as RFC 3550 §5.1 expects of a mixer's output.

use crate::rtp::Header;

/// A jump of more sequence numbers than this (RFC 3550 A.1's MAX_DROPOUT)
/// is not loss: either stray packets or a source that restarted.
const MAX_DROPOUT: u16 = 3000;
/// Packets this far behind the last one are late or duplicated (A.1's
/// MAX_MISORDER); further back is a jump, like one forward.
const MAX_MISORDER: u16 = 100;

/// Rewrites headers of packets from any source into one stream.
#[derive(Debug)]
pub struct Outgoing {
    ssrc: u32,
    next_seq: u16,
    /// The last packet sent: its source, its source's seq and timestamp,
    /// our timestamp, its length in samples.
    last: Last,
    /// After a jump: the sequence number that, arriving next, proves the
    /// source restarted (two in a row, as RFC 3550 A.1's probation).
    probe: Option<u16>,
}

#[derive(Clone, Copy, Debug)]
struct Last {
    source: Option<u32>,
    /// The source's own SSRC: a new one is a new stream.
    src_ssrc: u32,
    src_seq: u16,
    src_ts: u32,
    out_ts: u32,
    samples: u32,
}

impl Outgoing {
    /// A stream with this SSRC, first sequence number and first timestamp
    /// (both random in production: RFC 3550 §5.1).
    pub fn new(ssrc: u32, seq: u16, ts: u32) -> Self {
        Self {
            ssrc,
            next_seq: seq,
            // As if a 160-sample packet of no source ended just before `ts`.
            last: Last {
                source: None,
                src_ssrc: 0,
                src_seq: 0,
                src_ts: 0,
                out_ts: ts.wrapping_sub(160),
                samples: 160,
            },
            probe: None,
        }
    }

    /// The peer renegotiated its session (a re-INVITE: hold, a new
    /// address): its next packet starts a new run, whatever its sequence
    /// number (phones often restart it).
    pub fn restart_source(&mut self) {
        self.last.source = None;
        self.probe = None;
    }

    /// The header to send for a packet of `source` (any id the caller
    /// gives its sources) with its own header `h`, carrying `samples`
    /// samples. Returns `None` for a packet just behind the last one sent
    /// from the same source (reordered or duplicated: dropped), and for
    /// the first packet after a jump of the sequence; a second one in
    /// sequence after it means the source restarted (a phone after a
    /// re-INVITE, a carrier's media server): the stream goes on from it,
    /// so a restart mutes nobody.
    pub fn rewrite(&mut self, source: u32, h: &Header, samples: u32) -> Option<Header> {
        let last = self.last;
        let same = last.source == Some(source) && last.src_ssrc == h.ssrc;
        let dseq = h.seq.wrapping_sub(last.src_seq);
        let restarted = same
            && (MAX_DROPOUT..=u16::MAX - MAX_MISORDER).contains(&dseq)
            && self.probe.take() == Some(h.seq);
        let (out_ts, marker) = if same && !restarted {
            if dseq == 0 || dseq > u16::MAX - MAX_MISORDER {
                return None;
            }
            if dseq >= MAX_DROPOUT {
                self.probe = Some(h.seq.wrapping_add(1));
                return None;
            }
            // Same source: keep its timing (gaps included).
            (
                last.out_ts
                    .wrapping_add(h.timestamp.wrapping_sub(last.src_ts)),
                h.marker,
            )
        } else {
            // New source: continue right after what the leg last heard.
            (last.out_ts.wrapping_add(last.samples), true)
        };
        self.probe = None;
        self.last = Last {
            source: Some(source),
            src_ssrc: h.ssrc,
            src_seq: h.seq,
            src_ts: h.timestamp,
            out_ts,
            samples,
        };
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        Some(Header {
            marker,
            payload_type: h.payload_type,
            seq,
            timestamp: out_ts,
            ssrc: self.ssrc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, ts: u32) -> Header {
        Header {
            marker: false,
            payload_type: 0,
            seq,
            timestamp: ts,
            ssrc: 7,
        }
    }

    #[test]
    fn sources_change_without_breaking_the_stream() {
        let mut o = Outgoing::new(0xABCD, 65534, 4_294_967_000);
        let mut out = Vec::new();
        // Prompt (source 1): 3 packets.
        for i in 0..3u16 {
            out.push(
                o.rewrite(1, &pkt(100 + i, 5000 + 160 * u32::from(i)), 160)
                    .unwrap(),
            );
        }
        // Operator (source 2) with its own random seq/ts; one duplicate.
        out.push(o.rewrite(2, &pkt(9, 777), 160).unwrap());
        assert!(
            o.rewrite(2, &pkt(9, 777), 160).is_none(),
            "duplicate dropped"
        );
        assert!(o.rewrite(2, &pkt(8, 617), 160).is_none(), "older dropped");
        // A lost packet (seq 10) leaves a timestamp gap, kept.
        out.push(o.rewrite(2, &pkt(11, 777 + 320), 160).unwrap());
        // Back to music (source 3).
        out.push(o.rewrite(3, &pkt(1, 1), 160).unwrap());
        let seqs: Vec<u16> = out.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, [65534, 65535, 0, 1, 2, 3], "one sequence, wrapping");
        let ts: Vec<u32> = out.iter().map(|h| h.timestamp).collect();
        assert_eq!(
            ts,
            [4_294_967_000, 4_294_967_160, 24, 184, 504, 664],
            "continuous across sources, gap kept within a source, wrapping"
        );
        let markers: Vec<bool> = out.iter().map(|h| h.marker).collect();
        assert_eq!(markers, [true, false, false, true, false, true]);
        assert!(out.iter().all(|h| h.ssrc == 0xABCD));
    }

    #[test]
    fn a_source_that_restarts_its_sequence_is_heard_again_at_once() {
        let mut o = Outgoing::new(1, 0, 0);
        for i in 0..50u16 {
            assert!(
                o.rewrite(2, &pkt(40_000 + i, 160 * u32::from(i)), 160)
                    .is_some()
            );
        }
        // A re-INVITE: the phone starts again from a low sequence number
        // (to the old logic "older than the last", for minutes).
        o.restart_source();
        let h = o
            .rewrite(2, &pkt(7, 99), 160)
            .expect("heard after the update");
        assert!(h.marker, "a new run is marked");
        assert!(o.rewrite(2, &pkt(8, 259), 160).is_some());
        // Without an update: a jump costs one packet, then the stream
        // follows the new numbering.
        assert!(o.rewrite(2, &pkt(20_000, 5000), 160).is_none());
        assert!(o.rewrite(2, &pkt(20_001, 5160), 160).is_some());
        assert!(o.rewrite(2, &pkt(20_002, 5320), 160).is_some());
        // A new SSRC is a new stream at once.
        let mut other = pkt(3, 0);
        other.ssrc = 99;
        assert!(o.rewrite(2, &other, 160).is_some());
        // Late and duplicate packets are still dropped, and one stray jump
        // followed by in-order packets changes nothing.
        let mut p = pkt(4, 160);
        p.ssrc = 99;
        assert!(o.rewrite(2, &p, 160).is_some());
        assert!(o.rewrite(2, &p, 160).is_none(), "duplicate");
        let mut late = pkt(2, 0);
        late.ssrc = 99;
        assert!(o.rewrite(2, &late, 160).is_none(), "late");
        let mut stray = pkt(30_000, 0);
        stray.ssrc = 99;
        assert!(o.rewrite(2, &stray, 160).is_none(), "a stray jump");
        let mut next = pkt(5, 320);
        next.ssrc = 99;
        assert!(o.rewrite(2, &next, 160).is_some(), "the stream goes on");
    }
}
