//! The national network, sans-IO: several Centralino nodes (one per firm
//! or site) federated over NATS. Each node publishes a [`Summary`] of its
//! queues every second; every node keeps the others' in a [`Membership`]
//! and marks a node silent for three heartbeats down; the national
//! picture of a queue (same tenant and name on several nodes: one queue)
//! is the sum over the nodes that are up.
//!
//! Nothing here touches a socket or a clock: the driver (`centralino-net`)
//! hands in what arrived and the time, and publishes what comes out, so
//! every rule is tested in virtual time. A waiting call is offered to
//! another node by [`offer`] (request, grant with a lease, hand-over,
//! each step idempotent and timed out), across firms only under an
//! [`agreements`] with a capacity. Callbacks outlive their node through
//! [`work`]: mirrored on a stream, taken over by compare-and-set.

pub mod agreements;
pub mod membership;
pub mod offer;
pub mod summary;
pub mod work;

pub use agreements::{Agreement, Lending};
pub use membership::{Event, Membership, NationalQueue, NodeView, PeerQueue, Refused};
pub use offer::{Decision, Grants, OfferReply, OfferRequest, Outcome, Outgoing, Refusal};
pub use summary::{QueueSummary, Summary, WireError};

#[cfg(test)]
mod tests;
