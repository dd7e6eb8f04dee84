//! One outgoing RTP stream towards a leg, fed by changing sources (a
//! prompt, then the operator, then music on hold): the leg sees one SSRC
//! with continuous sequence numbers and timestamps, and a marker bit where
//! the source changed, as RFC 3550 §5.1 expects of a mixer's output.

use crate::rtp::Header;

/// Rewrites headers of packets from any source into one stream.
#[derive(Debug)]
pub struct Outgoing {
    ssrc: u32,
    next_seq: u16,
    /// The last packet sent: its source, its source's seq and timestamp,
    /// our timestamp, its length in samples.
    last: Last,
}

#[derive(Clone, Copy, Debug)]
struct Last {
    source: Option<u32>,
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
                src_seq: 0,
                src_ts: 0,
                out_ts: ts.wrapping_sub(160),
                samples: 160,
            },
        }
    }

    /// The header to send for a packet of `source` (any id the caller
    /// gives its sources) with its own header `h`, carrying `samples`
    /// samples. Returns `None` for a packet older than the last one sent
    /// from the same source (reordered or duplicated: dropped).
    pub fn rewrite(&mut self, source: u32, h: &Header, samples: u32) -> Option<Header> {
        let last = self.last;
        let (out_ts, marker) = if last.source == Some(source) {
            let dseq = h.seq.wrapping_sub(last.src_seq);
            if dseq == 0 || dseq > u16::MAX / 2 {
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
        self.last = Last {
            source: Some(source),
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
}
