//! Sans-IO SIP for Centralino.
//!
//! Owns: the ingress guard (framing, size caps, strict lexical checks), the
//! [`Message`] type and its escaping writer, the transaction layer (RFC 3261 §17
//! with RFC 6026), digest authentication (RFC 8760), the registrar,
//! session timers (RFC 4028) and dialogs' request builders (`dialog`).
//! Never does: sockets, threads, files or reading the clock; time comes in as
//! `now: Instant` and work goes out as returned values.
//!
//! The grammar is our own (see ARCHITECTURE.md "Dependencies" for why
//! `rsipstack` is not used: it no longer builds without its tokio platform).
#![warn(missing_docs)]

pub mod auth;
pub mod dialog;
mod error;
pub mod guard;
mod message;
pub mod registrar;
pub mod replaces;
pub mod segmap;
pub mod session_timer;
pub mod throttle;
pub mod txn;
pub mod uri;

pub use error::ParseError;
pub use guard::{Framed, Limits, StreamFramer, parse_datagram, parse_message};
pub use message::{
    Header, Message, Method, StartLine, Transport, Value, Via, escape_header_value, joined,
};

/// The hash of tables keyed by what the node makes itself: its own
/// branches, Call-IDs and call numbers, its operators' configured names.
/// `foldhash` is a few times cheaper than std's SipHash on short strings
/// (hashing was an eighth of the engine's instructions per call, by
/// callgrind) but only "minimally" resistant to chosen-key collisions, so
/// tables whose keys a peer picks — the server transactions by the Via
/// branch it sent, the calls by the caller's Call-ID, the registrar's
/// contacts — keep SipHash. Looking a peer's value up in a table of our
/// own keys is safe: a peer cannot make our keys collide.
pub type OwnKeys = foldhash::fast::RandomState;
