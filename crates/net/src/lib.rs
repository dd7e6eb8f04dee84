//! Drivers: they own the sockets, threads and the clock and pump the
//! sans-IO [`centralino_b2bua::Engine`] and media sessions.
//!
//! Owns: UDP and TCP SIP listeners, the engine task, the media threads and
//! RTP sockets, prompt loading, the recording writer, the HTTP endpoint
//! (`/metrics`, `/healthz`). Never does: protocol decisions.
//!
//! Shape: one engine task (tokio, one thread) owns all call state (no locks
//! on the call path); one reader task per UDP socket and one task per TCP
//! connection feed it through a bounded channel; the engine task sends UDP
//! itself and hands TCP bytes to the connection's writer. Media commands go
//! from the engine to one media thread per core (a channel and an eventfd);
//! media events come back on an unbounded channel (they are few: key
//! presses, silence, failures).

mod api;
mod http;
mod media;
mod prompts;
mod recorder;
mod session;
mod sip;

#[doc(hidden)]
pub use api::fuzz_api_body;
pub use api::{Api, ApiError, Desks, Loader, RecordSink, ReloadSlot, routes};
pub use http::serve_http;
pub use media::{BoundPorts, MediaPlane};
pub use sip::{NetError, Reloader, SipServer};
