//! Every metric Centralino exports, in one place.
//!
//! Labels are bounded: method, code, direction, reason, outcome, queue,
//! tenant, state. Never a call id, a number or an operator id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The metric handles, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `centralino_sip_requests_total{method,direction}`
    pub sip_requests: IntCounterVec,
    /// `centralino_sip_responses_total{code,direction}`
    pub sip_responses: IntCounterVec,
    /// `centralino_sip_parse_errors_total{reason}`
    pub sip_parse_errors: IntCounterVec,
    /// `centralino_sip_rejected_total{reason}`: requests refused by policy.
    pub sip_rejected: IntCounterVec,
    /// `centralino_sip_transactions{side}`
    pub sip_transactions: IntGaugeVec,
    /// `centralino_sip_retransmissions_total`
    pub sip_retransmissions: IntCounter,
    /// `centralino_sip_transaction_timeouts_total`
    pub sip_transaction_timeouts: IntCounter,
    /// `centralino_sip_stray_responses_total`
    pub sip_stray_responses: IntCounter,
    /// `centralino_sip_udp_receive_errors_total`
    pub sip_udp_receive_errors: IntCounter,
    /// `centralino_sip_tcp_connections`
    pub sip_tcp_connections: IntGauge,
    /// `centralino_sip_tcp_connections_refused_total`
    pub sip_tcp_refused: IntCounter,
    /// `centralino_trunk_auth_total{outcome}`: carriers' digest challenges
    /// to our INVITEs: `answered` (sent again with credentials), `refused`
    /// (challenged again after that), `unanswerable` (no challenge we can
    /// answer).
    pub trunk_auth: IntCounterVec,
    /// `centralino_session_timer_expired_total`: calls ended because the
    /// caller's side stopped refreshing its session (RFC 4028).
    pub session_timer_expired: IntCounter,
    /// `centralino_session_refreshes_total{outcome}`: the session refreshes
    /// Centralino made (RFC 4028) by how they were answered: `refreshed`,
    /// `too_small` (422), `update_refused` (then re-INVITE), `retry`,
    /// `gone` (408, 481 or no answer: the call was ended).
    pub session_refreshes: IntCounterVec,
    /// `centralino_callback_early_media_total`: callbacks whose waiting
    /// operator was bridged to the network's early media (a carrier's 18x
    /// with SDP) before the citizen answered.
    pub callback_early_media: IntCounter,
    /// `centralino_sip_tls_handshake_failures_total{direction,reason}`:
    /// TLS handshakes that did not complete; `direction` is `in` (our
    /// listener) or `out` (towards a carrier), `reason` one of `timeout`,
    /// `certificate`, `incompatible` (version or ciphers), `protocol`, `io`.
    pub sip_tls_handshake_failures: IntCounterVec,
    /// `centralino_registrations_total{outcome}`
    pub registrations: IntCounterVec,
    /// `centralino_registrations_stateless_total`: REGISTERs answered
    /// without a transaction because their address already had
    /// `sip.max_transactions_per_source` (a site re-registering at once).
    pub registrations_stateless: IntCounter,
    /// `centralino_registered_agents`
    pub registered_agents: IntGauge,
    /// `centralino_auth_bans_total{scope}`: bans started after repeated
    /// authentication failures (user from an address, or the address).
    pub auth_bans: IntCounterVec,
    /// `centralino_auth_banned{scope}`: bans in force.
    pub auth_banned: IntGaugeVec,
    /// `centralino_calls_total{outcome}`
    pub calls: IntCounterVec,
    /// `centralino_calls_active`
    pub calls_active: IntGauge,
    /// `centralino_call_setup_duration_seconds`: INVITE in to 200 OK out.
    pub call_setup: Histogram,
    /// `centralino_queue_calls{queue}`: calls waiting now.
    pub queue_calls: IntGaugeVec,
    /// `centralino_queue_oldest_wait_seconds{queue}`
    pub queue_oldest_wait: IntGaugeVec,
    /// `centralino_queue_enqueued_total{queue}`
    pub queue_enqueued: IntCounterVec,
    /// `centralino_queue_dequeued_total{queue,outcome}`
    pub queue_dequeued: IntCounterVec,
    /// `centralino_queue_wait_duration_seconds{queue}`
    pub queue_wait: HistogramVec,
    /// `centralino_agents{tenant,state}`
    pub agents: IntGaugeVec,
    /// `centralino_queue_agents{queue,state}`: operators a queue reaches in
    /// its first ring, by state available/busy/paused/logged_out (an
    /// operator counts in each of its queues).
    pub queue_agents: IntGaugeVec,
    /// `centralino_queue_expected_wait_seconds{queue}`: for a call arriving
    /// now (0 until a handle time is known).
    pub queue_ewt: IntGaugeVec,
    /// `centralino_routing_groups`: distinct (queue, requirement) sets.
    pub routing_groups: IntGauge,
    /// `centralino_agent_offers_total{outcome}`
    pub agent_offers: IntCounterVec,
    /// `centralino_sdp_rejected_total{reason}`: offers/answers refused
    /// (488 to a caller, an operator's answer we cannot use).
    pub sdp_rejected: IntCounterVec,
    /// `centralino_dtmf_digits_total{source}`: key presses (rfc4733, info).
    pub dtmf_digits: IntCounterVec,
    /// `centralino_media_timeouts_total{side}`: calls ended by RTP silence.
    pub media_timeouts: IntCounterVec,
    /// `centralino_announcements_total{outcome}`: played / skipped (prompts missing).
    pub announcements: IntCounterVec,
    /// `centralino_whispers_total{kind}`: context played to an operator on
    /// answering (call, callback).
    pub whispers: IntCounterVec,
    /// `centralino_desk_connections`: operator desktops following their
    /// desk over a WebSocket.
    pub desk_connections: IntGauge,
    /// `centralino_agent_events_total{event}`: login, logout, pause,
    /// unpause.
    pub agent_events: IntCounterVec,
    /// `centralino_calls_requeued_total{reason}`: callers put back in the
    /// queue after losing their operator.
    pub calls_requeued: IntCounterVec,
    /// `centralino_agents_unreachable_total`: operators logged out because
    /// their phone stopped answering OPTIONS.
    pub agents_unreachable: IntCounter,
    /// `centralino_rtp_ports{state}`: in use / free (driver).
    pub rtp_ports: IntGaugeVec,
    /// `centralino_media_sessions`: calls with anchored media (driver).
    pub media_sessions: IntGauge,
    /// `centralino_rtp_packets_total{side,direction}` (driver).
    pub rtp_packets: IntCounterVec,
    /// `centralino_rtp_bytes_total{side,direction}` (driver).
    pub rtp_bytes: IntCounterVec,
    /// `centralino_rtp_dropped_total{reason}`: bad, foreign, late, unbound
    /// port (driver).
    pub rtp_dropped: IntCounterVec,
    /// `centralino_rtp_lost_total{side}`: sequence gaps seen (driver).
    pub rtp_lost: IntCounterVec,
    /// `centralino_recordings_total{outcome}`: completed, recovered_partial,
    /// failed, dropped_audio (driver).
    pub recordings: IntCounterVec,
    /// `centralino_flow_calls_total{flow,outcome}`: started, queued, hung_up.
    pub flow_calls: IntCounterVec,
    /// `centralino_api_requests_total{route,code}`: HTTP API requests.
    pub api_requests: IntCounterVec,
    /// `centralino_callbacks_total{outcome}`: created, deduplicated,
    /// rejected, updated, cancelled.
    pub callbacks: IntCounterVec,
    /// `centralino_dial_plan_refused_total{via,reason}`: numbers a tenant's
    /// dial plan kept from a trunk (via: api, virtual_hold, ivr, callback,
    /// transfer; reason: malformed, blocked, not_allowed).
    pub dial_plan_refused: IntCounterVec,
    /// `centralino_notifications_total{event,outcome}`: SMS hook deliveries
    /// (sent, retry, dead_letter).
    pub notifications: IntCounterVec,
    /// `centralino_store_errors_total`: batches of call records not written.
    pub store_errors: IntCounter,
    /// `centralino_store_group_requests`: requests applied per store
    /// transaction (group commit: a slow disk makes groups larger).
    pub store_group: Histogram,
    /// `centralino_trunk_up{trunk}`: 1 while an outbound trunk answers
    /// OPTIONS (or is not asked), 0 while it is down.
    pub trunk_up: IntGaugeVec,
    /// `centralino_trunk_failovers_total{reason}`: citizens' INVITEs sent
    /// again through the next outbound trunk (5xx, timeout).
    pub trunk_failovers: IntCounterVec,
    /// `centralino_store_backlog`: writes nobody waits for (records,
    /// callback state, audit) kept in memory because the disk refused
    /// them; written again each second.
    pub store_backlog: IntGauge,
    /// `centralino_store_dropped_total`: kept writes given up (backlog
    /// full, or one that kept failing alone).
    pub store_dropped: IntCounter,
    /// `centralino_store_commit_seconds`: time of one store transaction,
    /// fsync included; what a slow disk costs every callback and record.
    pub store_commit: Histogram,
    /// `centralino_config_reloads_total{outcome}`: applied, refused (an invalid file is only logged).
    pub config_reloads: IntCounterVec,
    /// `centralino_http_connections`: open HTTP connections, WebSockets
    /// included.
    pub http_connections: IntGauge,
    /// `centralino_http_connections_refused_total`: connections closed at
    /// once because `http.max_connections` were open.
    pub http_refused: IntCounter,
    /// `centralino_http_timeouts_total{reason}`: connections closed (or
    /// request bodies failed) because the client was too slow: header,
    /// idle, body.
    pub http_timeouts: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                // Names are unique by construction; a clash is a programming error.
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric name");
                m
            }};
        }
        let cv = |n: &str, h: &str, l: &[&str]| {
            IntCounterVec::new(Opts::new(n, h), l).expect("valid metric")
        };
        let gv = |n: &str, h: &str, l: &[&str]| {
            IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric")
        };
        let c = |n: &str, h: &str| IntCounter::new(n, h).expect("valid metric");
        let wait_buckets = vec![
            0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        Self {
            sip_requests: reg!(cv(
                "centralino_sip_requests_total",
                "SIP requests by method and direction",
                &["method", "direction"]
            )),
            sip_responses: reg!(cv(
                "centralino_sip_responses_total",
                "SIP responses by status code and direction",
                &["code", "direction"]
            )),
            sip_parse_errors: reg!(cv(
                "centralino_sip_parse_errors_total",
                "Messages refused by the ingress guard",
                &["reason"]
            )),
            sip_rejected: reg!(cv(
                "centralino_sip_rejected_total",
                "Requests refused by policy before any state",
                &["reason"]
            )),
            sip_transactions: reg!(gv(
                "centralino_sip_transactions",
                "Live SIP transactions",
                &["side"]
            )),
            sip_retransmissions: reg!(c(
                "centralino_sip_retransmissions_total",
                "SIP retransmissions sent"
            )),
            sip_transaction_timeouts: reg!(c(
                "centralino_sip_transaction_timeouts_total",
                "Client transactions that got no final response"
            )),
            sip_stray_responses: reg!(c(
                "centralino_sip_stray_responses_total",
                "Responses matching no transaction"
            )),
            sip_udp_receive_errors: reg!(c(
                "centralino_sip_udp_receive_errors_total",
                "UDP receive errors"
            )),
            sip_tcp_connections: reg!(
                IntGauge::new("centralino_sip_tcp_connections", "Open SIP TCP connections")
                    .expect("valid metric")
            ),
            sip_tcp_refused: reg!(c(
                "centralino_sip_tcp_connections_refused_total",
                "TCP connections refused at the cap"
            )),
            trunk_auth: reg!(cv(
                "centralino_trunk_auth_total",
                "Carriers' digest challenges to our INVITEs, by outcome",
                &["outcome"]
            )),
            callback_early_media: reg!(c(
                "centralino_callback_early_media_total",
                "Callbacks whose waiting operator heard the network's early media"
            )),
            session_refreshes: reg!(cv(
                "centralino_session_refreshes_total",
                "Session refreshes made by Centralino, by how they were answered",
                &["outcome"]
            )),
            session_timer_expired: reg!(c(
                "centralino_session_timer_expired_total",
                "Calls ended because the caller's session timer expired"
            )),
            sip_tls_handshake_failures: reg!(cv(
                "centralino_sip_tls_handshake_failures_total",
                "SIP TLS handshakes that failed, by direction and reason",
                &["direction", "reason"]
            )),
            registrations: reg!(cv(
                "centralino_registrations_total",
                "REGISTER outcomes",
                &["outcome"]
            )),
            registrations_stateless: reg!(c(
                "centralino_registrations_stateless_total",
                "REGISTERs answered without a transaction: their address had too many"
            )),
            auth_bans: reg!(cv(
                "centralino_auth_bans_total",
                "Bans started after repeated authentication failures, by scope",
                &["scope"]
            )),
            auth_banned: reg!(gv(
                "centralino_auth_banned",
                "Authentication bans in force, by scope",
                &["scope"]
            )),
            registered_agents: reg!(
                IntGauge::new(
                    "centralino_registered_agents",
                    "Operators with a live binding"
                )
                .expect("valid metric")
            ),
            calls: reg!(cv(
                "centralino_calls_total",
                "Finished calls by outcome",
                &["outcome"]
            )),
            calls_active: reg!(
                IntGauge::new("centralino_calls_active", "Calls in progress")
                    .expect("valid metric")
            ),
            call_setup: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "centralino_call_setup_duration_seconds",
                        "From the caller's INVITE to the 200 OK sent to the caller"
                    )
                    .buckets(wait_buckets.clone())
                )
                .expect("valid metric")
            ),
            queue_calls: reg!(gv(
                "centralino_queue_calls",
                "Calls waiting in the queue",
                &["queue"]
            )),
            queue_oldest_wait: reg!(gv(
                "centralino_queue_oldest_wait_seconds",
                "Wait of the oldest call in the queue",
                &["queue"]
            )),
            queue_enqueued: reg!(cv(
                "centralino_queue_enqueued_total",
                "Calls that entered the queue",
                &["queue"]
            )),
            queue_dequeued: reg!(cv(
                "centralino_queue_dequeued_total",
                "Calls that left the queue",
                &["queue", "outcome"]
            )),
            queue_wait: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "centralino_queue_wait_duration_seconds",
                        "Time from entering the queue to leaving it"
                    )
                    .buckets(wait_buckets),
                    &["queue"]
                )
                .expect("valid metric")
            ),
            agents: reg!(gv(
                "centralino_agents",
                "Operators by tenant and state",
                &["tenant", "state"]
            )),
            queue_agents: reg!(gv(
                "centralino_queue_agents",
                "Operators a queue reaches in its first ring, by state",
                &["queue", "state"]
            )),
            queue_ewt: reg!(gv(
                "centralino_queue_expected_wait_seconds",
                "Expected wait of a call arriving now: (calls + 1) x recent handle time / staffed operators",
                &["queue"]
            )),
            routing_groups: reg!(
                IntGauge::new(
                    "centralino_routing_groups",
                    "Distinct (queue, call requirement) groups in the router"
                )
                .expect("valid metric")
            ),
            agent_offers: reg!(cv(
                "centralino_agent_offers_total",
                "Calls offered to operators by outcome",
                &["outcome"]
            )),
            sdp_rejected: reg!(cv(
                "centralino_sdp_rejected_total",
                "SDP offers or answers refused",
                &["reason"]
            )),
            dtmf_digits: reg!(cv(
                "centralino_dtmf_digits_total",
                "Key presses received",
                &["source"]
            )),
            media_timeouts: reg!(cv(
                "centralino_media_timeouts_total",
                "Calls ended because a bridged leg sent no RTP",
                &["side"]
            )),
            announcements: reg!(cv(
                "centralino_announcements_total",
                "Queue announcements by outcome",
                &["outcome"]
            )),
            whispers: reg!(cv(
                "centralino_whispers_total",
                "Whispers played to operators on answering, by kind of call",
                &["kind"]
            )),
            agents_unreachable: reg!(
                IntCounter::new(
                    "centralino_agents_unreachable_total",
                    "Operators logged out because their phone stopped answering OPTIONS"
                )
                .expect("valid metric")
            ),
            calls_requeued: reg!(cv(
                "centralino_calls_requeued_total",
                "Callers put back in the queue after losing their operator, by reason",
                &["reason"]
            )),
            agent_events: reg!(cv(
                "centralino_agent_events_total",
                "Operator events: login, logout, pause, unpause",
                &["event"]
            )),
            desk_connections: reg!(
                IntGauge::new(
                    "centralino_desk_connections",
                    "Operator desktops connected to their desk's WebSocket"
                )
                .expect("valid metric")
            ),
            rtp_ports: reg!(gv(
                "centralino_rtp_ports",
                "RTP port pairs by state",
                &["state"]
            )),
            media_sessions: reg!(
                IntGauge::new("centralino_media_sessions", "Calls with anchored media")
                    .expect("valid metric")
            ),
            rtp_packets: reg!(cv(
                "centralino_rtp_packets_total",
                "RTP packets by call side and direction",
                &["side", "direction"]
            )),
            rtp_bytes: reg!(cv(
                "centralino_rtp_bytes_total",
                "RTP payload bytes by call side and direction",
                &["side", "direction"]
            )),
            rtp_dropped: reg!(cv(
                "centralino_rtp_dropped_total",
                "Media datagrams dropped, by reason",
                &["reason"]
            )),
            rtp_lost: reg!(cv(
                "centralino_rtp_lost_total",
                "RTP sequence numbers never received, by call side",
                &["side"]
            )),
            recordings: reg!(cv(
                "centralino_recordings_total",
                "Call recordings by outcome",
                &["outcome"]
            )),
            api_requests: reg!(cv(
                "centralino_api_requests_total",
                "HTTP API requests by route and status code",
                &["route", "code"]
            )),
            callbacks: reg!(cv(
                "centralino_callbacks_total",
                "Callback requests by outcome",
                &["outcome"]
            )),
            dial_plan_refused: reg!(cv(
                "centralino_dial_plan_refused_total",
                "Numbers refused by the tenant's dial plan before any trunk saw them",
                &["via", "reason"]
            )),
            notifications: reg!(cv(
                "centralino_notifications_total",
                "SMS hook notifications by event and outcome",
                &["event", "outcome"]
            )),
            store_errors: reg!(c(
                "centralino_store_errors_total",
                "Store writes that failed (records, callback state, audit)"
            )),
            trunk_up: reg!(gv(
                "centralino_trunk_up",
                "Outbound trunks answering OPTIONS (1) or down (0)",
                &["trunk"]
            )),
            trunk_failovers: reg!(cv(
                "centralino_trunk_failovers_total",
                "Callbacks' INVITEs sent again through the next outbound trunk, by reason",
                &["reason"]
            )),
            store_backlog: reg!(
                IntGauge::new(
                    "centralino_store_backlog",
                    "Store writes kept in memory until the disk takes them"
                )
                .expect("valid metric")
            ),
            store_dropped: reg!(c(
                "centralino_store_dropped_total",
                "Kept store writes given up (backlog full or failing alone)"
            )),
            store_group: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "centralino_store_group_requests",
                        "Requests applied in one store transaction"
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0
                    ])
                )
                .expect("valid metric")
            ),
            store_commit: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "centralino_store_commit_seconds",
                        "Duration of one store transaction, fsync included"
                    )
                    .buckets(vec![
                        0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0
                    ])
                )
                .expect("valid metric")
            ),
            config_reloads: reg!(cv(
                "centralino_config_reloads_total",
                "Configuration reloads (SIGHUP) by outcome",
                &["outcome"]
            )),
            flow_calls: reg!(cv(
                "centralino_flow_calls_total",
                "Calls through IVR flows by outcome",
                &["flow", "outcome"]
            )),
            http_connections: reg!(
                IntGauge::new(
                    "centralino_http_connections",
                    "Open HTTP connections, WebSockets included"
                )
                .expect("valid metric")
            ),
            http_refused: reg!(c(
                "centralino_http_connections_refused_total",
                "HTTP connections closed at once at the cap"
            )),
            http_timeouts: reg!(cv(
                "centralino_http_timeouts_total",
                "HTTP connections closed or request bodies failed for a slow client, by reason",
                &["reason"]
            )),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.sip_requests.with_label_values(&["INVITE", "in"]).inc();
        m.calls.with_label_values(&["answered"]).inc();
        for f in m.registry.gather() {
            let name = f.name();
            assert!(name.starts_with("centralino_"), "{name}");
            let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(counter, name.ends_with("_total"), "{name}");
            for metric in f.get_metric() {
                for l in metric.get_label() {
                    assert!(
                        [
                            "method",
                            "direction",
                            "code",
                            "reason",
                            "outcome",
                            "queue",
                            "tenant",
                            "state",
                            "side",
                            "source",
                            "flow",
                            "route",
                            "event"
                        ]
                        .contains(&l.name()),
                        "label {} on {name}",
                        l.name()
                    );
                }
            }
        }
    }
}
