//! The media plane, sans-IO: RTP packets, G.711 µ-law and A-law, RFC 4733
//! telephone events.
//!
//! Owns: parsing and writing media packets, codec conversion, DTMF
//! detection. Never does: sockets, clocks, threads (time comes in as RTP
//! timestamps or `now`).
#![warn(missing_docs)]

pub mod announce;
pub mod dtmf;
pub mod g711;
pub mod leg;
pub mod monitor;
pub mod ports;
pub mod prompt;
pub mod record;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod stream;
pub mod webrtc;
