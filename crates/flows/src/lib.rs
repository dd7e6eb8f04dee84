//! IVR call trees ("alberature"), sans-IO: flow definitions from the
//! configuration, their validation (every problem with its key path), and
//! the interpreter a call walks with its key presses.
//!
//! Owns: the flow graph, opening-hours calendars in Europe/Rome, digit
//! collection and validation. Never does: sockets, clocks, prompts' audio
//! (time comes in as `now`, prompt durations and queue facts through
//! [`Facts`]).
#![warn(missing_docs)]

pub mod calendar;
pub mod def;
pub mod run;

pub use def::{Context, Flow, Node, RawFlow, Test, compile};
pub use run::{Action, Facts, Run};

#[cfg(test)]
mod tests;
