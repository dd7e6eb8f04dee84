//! Drivers: they own the sockets, threads and the clock and pump the
//! sans-IO [`centralino_b2bua::Engine`] and media sessions.
//!
//! Owns: UDP, TCP and TLS SIP listeners (and TLS connections to carriers), the engine task, the media threads and
//! RTP sockets, prompt loading, the recording writer, the HTTP endpoint
//! (`/metrics`, `/healthz`, the API; on a thread and runtime of its own,
//! started by the binary) and what `/healthz` reads (`health`). Never
//! does: protocol decisions.
//!
//! Shape: one engine task (tokio, one thread) owns all call state (no locks
//! on the call path); one reader task per UDP socket and one task per TCP
//! connection feed it through a bounded channel; the engine task sends UDP
//! itself and hands TCP bytes to the connection's writer. Media commands go
//! from the engine to one media thread per core (a channel and an eventfd);
//! media events come back on an unbounded channel (they are few: key
//! presses, silence, failures).

mod api;
mod browser;
mod campaigns;
mod cluster;
pub mod descriptors;
mod error;
mod handle;
mod health;
mod http;
mod input;
mod limits;
mod media;
mod metrics;
mod monitor;
mod netkey;
mod pages;
mod pressure;
mod prompts;
mod recorder;
mod scheduler;
mod session;
mod sip;
mod sip_io;
mod staffing;
pub mod streams;
mod tls;
pub mod web;
mod work;

#[doc(hidden)]
pub use api::fuzz_api_body;
pub use api::{
    Api, ApiError, Desks, Loader, ReloadError, agent_report_text, queue_report_text,
    replay_log_text, routes,
};
pub use browser::{BrowserIn, BrowserOut};
pub use centralino_store::service::RecordSink;
pub use error::NetError;
pub use handle::{EngineHandle, EngineInbox, EngineInput, EngineReloadError};
pub use health::{Health, Heartbeat, StoreProbe, Verdict};
pub use http::{bind_http, http_runtime, serve_http};
pub use media::{MediaPlane, PORT_QUARANTINE};
pub use metrics::NetMetrics;
pub use sip::SipServer;
pub use sip_io::background_thread;
