//! The end-to-end tests: the real `centralino` binary between real peers
//! (SIPp as carrier and phones, softphones, Kamailio, scanners, an HTTPS
//! SMS gateway), on loopback with ephemeral ports. One test binary, one
//! module per area, so the suite links once; tests run as many at a time
//! as `cargo test` runs threads, each on a node of its own.

mod browser;
mod common;

mod alerts;
mod api_callbacks;
mod attacks;
mod callbacks_exec;
mod campaigns;
mod campaigns_dial;
mod campaigns_preview;
mod carriers;
mod cli_check_config;
mod cli_simulate;
mod cluster;
mod cluster_work;
mod desktop;
mod drain;
mod http_health;
mod http_limits;
mod http_web;
mod ivr_calls;
mod media_calls;
mod monitor;
mod operators_live;
mod otlp;
mod phones;
mod reports;
mod scanners;
mod sip_calls;
mod sip_conformance;
mod sip_io;
mod sip_ipv6;
mod sip_limits;
mod sip_skills;
mod sip_tls;
mod store_outage;
mod transfers;
mod trunk_digest;
mod webrtc;
