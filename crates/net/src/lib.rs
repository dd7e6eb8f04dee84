//! Tokio drivers: they own the sockets and the clock and pump the sans-IO
//! [`centralino_b2bua::Engine`].
//!
//! Owns: UDP and TCP SIP listeners, the engine task, the HTTP endpoint
//! (`/metrics`, `/healthz`). Never does: protocol decisions.
//!
//! Shape: one engine task owns all call state (no locks on the call path);
//! one reader task per UDP socket and one task per TCP connection feed it
//! through a bounded channel; the engine task sends UDP itself and hands TCP
//! bytes to the connection's writer.

mod http;
mod media;
mod prompts;
mod recorder;
mod sip;

pub use http::serve_http;
pub use media::{BoundPorts, MediaPlane};
pub use sip::{NetError, SipServer};
