//! The call engine: a back-to-back user agent that takes calls from trunks,
//! queues them, offers them to operators and bridges the two legs.
//!
//! Owns: the composition of the sans-IO cores (guard, transactions,
//! registrar, router) and the call state. Never does: sockets, threads,
//! clocks. Entry type: [`Engine`]; see its docs for the drive loop.

mod engine;
pub mod media;
pub mod metrics;

pub use engine::{
    AgentCall, AgentStateError, CallbackState, CampaignCall, CampaignRun, CampaignView, DeskState,
    DueCallback, Engine, MonitorError, MonitorTarget, Output, PreviewError, QueueView,
    ReloadRefused, StaffingJob,
};
pub use metrics::Metrics;
