//! Every metric Centralino exports, in one place.
//!
//! Labels are bounded: method, code, direction, reason, outcome, queue,
//! tenant, state. Never a call id, a number or an operator id.

use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every label name a Centralino metric may carry: each has a bounded set
/// of values (never a call id, a number or an operator id).
pub const LABELS: [&str; 16] = [
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
    "event",
    "threshold",
    "kind",
    "action",
];

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
    /// `centralino_transfer_early_media_total`: transfers to a number
    /// whose caller heard the far network's early media (its ringback,
    /// its announcement) before the answer.
    pub transfer_early_media: IntCounter,
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
    /// `centralino_dtmf_converted_total{direction}`: keys passed on in
    /// another form than they came (`rfc4733_to_info`, `info_to_rfc4733`).
    pub dtmf_converted: IntCounterVec,
    /// `centralino_info_relayed_total{outcome}`: key presses relayed by
    /// INFO to the other leg, by its answer: delivered, refused, gone
    /// (481, 408, no answer), not_taken (405, 415, 469, 501).
    pub info_relayed: IntCounterVec,
    /// `centralino_draining`: 1 once the node refuses new calls to stop
    /// (a drain), whether or not any call has come since.
    pub draining: IntGauge,
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
    /// `centralino_dead_ends_total{queue,reason}`: calls that ended
    /// unanswered, with no callback and no transfer (`queue` empty when it
    /// ended before reaching one, e.g. in the IVR).
    pub dead_ends: IntCounterVec,
    /// `centralino_queue_wait_duration_seconds{queue}`
    pub queue_wait: HistogramVec,
    /// `centralino_dispatch_seconds`: from the caller's INVITE read off the
    /// socket (its wait in the engine's input queue included; the
    /// engine's clock where the driver gives no read time) to the first
    /// operator's INVITE, for calls that found an operator free as they
    /// entered the queue (their media ports reserved on the way): the
    /// ACD's own latency, no wait for an operator in it.
    pub dispatch: Histogram,
    /// `centralino_agents{tenant,state}`
    pub agents: IntGaugeVec,
    /// `centralino_agent_state_seconds_total{tenant,state}`: operator-seconds
    /// spent in each state (the integral of `centralino_agents`, to the
    /// engine's 100 ms refresh, not the scrape's samples): occupancy and
    /// the like are exact over any window in PromQL.
    pub agent_state_seconds: CounterVec,
    /// `centralino_queue_agents{queue,state}`: operators a queue reaches in
    /// its first ring, by state available/busy/paused/logged_out (an
    /// operator counts in each of its queues).
    pub queue_agents: IntGaugeVec,
    /// `centralino_queue_expected_wait_seconds{queue}`: for a call arriving
    /// now (0 until a handle time is known).
    pub queue_ewt: IntGaugeVec,
    /// `centralino_queue_offered_total{queue}`: visits started (README,
    /// "Service figures").
    pub queue_offered: IntCounterVec,
    /// `centralino_queue_answered_total{queue}`: visits answered, once each.
    pub queue_answered: IntCounterVec,
    /// `centralino_queue_answered_within_total{queue,threshold}`: answered
    /// within the queue's T (`t`) or second T (`t2`).
    pub queue_answered_within: IntCounterVec,
    /// `centralino_queue_answered_wait_seconds{queue}`: the answered
    /// visits' waits (buckets at every queue's thresholds).
    pub queue_answered_wait: HistogramVec,
    /// Its bucket bounds (the standard ones and the thresholds).
    answered_buckets: Vec<f64>,
    /// `centralino_queue_abandoned_total{queue,kind}`: callers who hung up
    /// unanswered, `short` (within the short threshold) or `after_short`.
    pub queue_abandoned: IntCounterVec,
    /// `centralino_queue_timed_out_total{queue}`: ended at
    /// `max_wait_seconds`.
    pub queue_timed_out: IntCounterVec,
    /// `centralino_queue_callbacks_total{queue}`: visits that ended in a
    /// callback request (the caller's key, or the queue's offer).
    pub queue_callbacks: IntCounterVec,
    /// `centralino_queue_callbacks_kept_total{queue,in_time}`: callbacks
    /// done (an operator talked to the citizen), `in_time` `yes` within
    /// the queue's `callback_promise_minutes` of its callback hours, `no`
    /// later, `none` when no promise could be made.
    pub queue_callbacks_kept: IntCounterVec,
    /// `centralino_queue_overflowed_total{queue}`: callers the queue could
    /// not serve, passed to its `overflow_queue`.
    pub queue_overflowed: IntCounterVec,
    /// `centralino_queue_transferred_total{queue}`: calls an operator
    /// transferred out of the queue (the reports' `transferred`).
    pub queue_transferred: IntCounterVec,
    /// `centralino_queue_agents_needed{queue}`: operators Erlang C (Erlang A
    /// once the callers' patience is measured) asks for the queue's
    /// service level, on the last 15 minutes' traffic.
    pub queue_agents_needed: IntGaugeVec,
    /// `centralino_queue_agents_short{queue}`: of those, not logged in and
    /// available or busy.
    pub queue_agents_short: IntGaugeVec,
    /// `centralino_queue_patience_seconds{queue}`: the callers' mean
    /// patience measured over the last 15 minutes (0 until 10 of them gave
    /// up): with it the advisor counts by Erlang A.
    pub queue_patience: IntGaugeVec,
    /// `centralino_queue_service_level_target{queue}`: the share the
    /// queue's service level is to reach (`service_level_target`).
    pub queue_sl_target: GaugeVec,
    /// `centralino_queue_handle_time_seconds{queue}`: the recent mean
    /// handling time (talk, hold and wrap-up) the staffing advisor counts
    /// with: the AHT as the router measures it, live.
    pub queue_handle_time: GaugeVec,
    /// `centralino_unserved_total{queue,reason,action}`: callers a queue
    /// could not serve (`max_wait`, `full`, `nobody`) and what its
    /// `when_unserved` did (`callback_offered`, `callback`, `overflow`,
    /// `hangup`).
    pub unserved: IntCounterVec,
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
    /// `centralino_agent_events_total{event}`: login, logout, pause,
    /// unpause.
    pub agent_events: IntCounterVec,
    /// `centralino_calls_requeued_total{reason}`: callers put back in the
    /// queue after losing their operator.
    pub calls_requeued: IntCounterVec,
    /// `centralino_transfers_total{target,outcome}`: operators' transfers
    /// (REFER): `target` queue/operator/external/unknown, `outcome`
    /// done/refused.
    pub transfers: IntCounterVec,
    /// `centralino_monitors_total{mode}`: supervisors joining operators'
    /// calls, and changing mode, by the mode entered.
    pub monitors: IntCounterVec,
    /// `centralino_agents_unreachable_total`: operators logged out because
    /// their phone stopped answering OPTIONS.
    pub agents_unreachable: IntCounter,
    /// `centralino_flow_calls_total{flow,outcome}`: started, queued, hung_up.
    pub flow_calls: IntCounterVec,
    /// `centralino_callbacks_total{outcome}`: created, deduplicated,
    /// rejected, updated, cancelled.
    pub callbacks: IntCounterVec,
    /// `centralino_campaign_attempts_total{tenant,campaign,outcome}`:
    /// campaign attempts by how they ended (campaign names come from
    /// configuration or the API: bounded; unique within their tenant, so
    /// two firms' campaigns of the same name are two series).
    pub campaign_attempts: IntCounterVec,
    /// `centralino_campaign_lines{tenant,campaign}`: citizens being dialled or
    /// waiting for an operator, per campaign.
    pub campaign_lines: IntGaugeVec,
    /// `centralino_campaign_previews_total{tenant,campaign,outcome}`: preview
    /// contacts shown on a desk, accepted, skipped, expired.
    pub campaign_previews: IntCounterVec,
    /// `centralino_campaign_callers_total{tenant,campaign}`: calls to a
    /// campaign's number from one of its contacts.
    pub campaign_callers: IntCounterVec,
    /// `centralino_cluster_offers_received_total{outcome}`: other nodes'
    /// calls offered here: granted, no_operator, unknown_queue,
    /// no_agreement, capacity, draining; and grants released or lapsed.
    pub cluster_offers_in: IntCounterVec,
    /// `centralino_cluster_offers_sent_total{outcome}`: this node's
    /// waiting calls offered to other nodes: sent, granted, refused,
    /// timed_out, released (a grant let go: the call was taken here
    /// meanwhile, or left).
    pub cluster_offers_out: IntCounterVec,
    /// `centralino_cluster_handovers_total{outcome}`: calls handed over
    /// between nodes by SIP: connected (another node's operator took
    /// this node's call), returned (they did not: back to its place),
    /// taken (another node's call rung here), sent_back (not taken here:
    /// back to its node).
    pub cluster_handovers: IntCounterVec,
    /// `centralino_campaign_pacing_ratio{tenant,campaign}`: lines per free
    /// operator at the last decision (1 progressive; above 1 predictive
    /// dialling ahead).
    pub campaign_pacing: GaugeVec,
    /// `centralino_dial_plan_refused_total{via,reason}`: numbers a tenant's
    /// dial plan kept from a trunk (via: api, virtual_hold, ivr, callback,
    /// transfer; reason: malformed, blocked, not_allowed).
    pub dial_plan_refused: IntCounterVec,
    /// `centralino_trunk_up{trunk}`: 1 while an outbound trunk answers
    /// OPTIONS (or is not asked), 0 while it is down.
    pub trunk_up: IntGaugeVec,
    /// `centralino_trunk_failovers_total{reason}`: citizens' INVITEs sent
    /// again through the next outbound trunk (5xx, timeout).
    pub trunk_failovers: IntCounterVec,
}

impl Metrics {
    /// The answered-wait histogram made again when `thresholds` (the
    /// queues' T, second T and short threshold, after a reload) need other
    /// bucket bounds than it has: registered in place of the old one, its
    /// series start from zero (PromQL's `rate` reads it as the counter
    /// reset it is). Whether it was made again; the caller creates the
    /// queues' series anew.
    pub fn rebucket_answered_wait(&mut self, thresholds: &[f64]) -> bool {
        let buckets = answered_buckets(thresholds);
        if buckets == self.answered_buckets {
            return false;
        }
        let fresh = answered_wait(&buckets);
        // The old one is ours: unregistering cannot fail but for a
        // collector never registered, which leaves nothing to remove.
        let _ = self
            .registry
            .unregister(Box::new(self.queue_answered_wait.clone()));
        self.queue_answered_wait = register(&self.registry, fresh);
        self.answered_buckets = buckets;
        true
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        Self::with_thresholds(&[])
    }

    /// [`Self::new`], the answered-wait histogram with a bucket at each of
    /// `thresholds` (seconds: the queues' T, second T and short
    /// threshold), so PromQL reads the service level from the buckets too.
    pub fn with_thresholds(thresholds: &[f64]) -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {
                register(&registry, $m)
            };
        }
        let (cv, gv, c) = (counter_vec, gauge_vec, counter);
        let wait_buckets = WAIT_BUCKETS.to_vec();
        let answered_buckets = answered_buckets(thresholds);
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
            trunk_auth: reg!(cv(
                "centralino_trunk_auth_total",
                "Carriers' digest challenges to our INVITEs, by outcome",
                &["outcome"]
            )),
            callback_early_media: reg!(c(
                "centralino_callback_early_media_total",
                "Callbacks whose waiting operator heard the network's early media"
            )),
            transfer_early_media: reg!(c(
                "centralino_transfer_early_media_total",
                "Transfers to a number whose caller heard the far network's early media"
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
            dtmf_converted: reg!(cv(
                "centralino_dtmf_converted_total",
                "Keys passed on to the other leg in another form than they came",
                &["direction"]
            )),
            info_relayed: reg!(cv(
                "centralino_info_relayed_total",
                "Key presses relayed by INFO to the other leg, by its answer",
                &["outcome"]
            )),
            draining: reg!(
                IntGauge::new(
                    "centralino_draining",
                    "1 while the node is draining (new calls refused with 503)"
                )
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
            dead_ends: reg!(cv(
                "centralino_dead_ends_total",
                "Calls that ended unanswered with no callback and no transfer",
                &["queue", "reason"]
            )),
            dispatch: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "centralino_dispatch_seconds",
                        "From a caller's INVITE to the first operator's INVITE, for calls that found an operator free"
                    )
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 1.0
                    ])
                )
                .expect("valid metric")
            ),
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
            agent_state_seconds: reg!(
                CounterVec::new(
                    Opts::new(
                        "centralino_agent_state_seconds_total",
                        "Operator-seconds spent in each state, by tenant"
                    ),
                    &["tenant", "state"]
                )
                .expect("valid metric")
            ),
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
            queue_offered: reg!(cv(
                "centralino_queue_offered_total",
                "Visits to the queue started (a caller put back after losing their operator is the same visit)",
                &["queue"]
            )),
            queue_answered: reg!(cv(
                "centralino_queue_answered_total",
                "Visits an operator answered, once each",
                &["queue"]
            )),
            queue_answered_within: reg!(cv(
                "centralino_queue_answered_within_total",
                "Visits answered within the queue's T (threshold t) or second T (t2)",
                &["queue", "threshold"]
            )),
            queue_answered_wait: reg!(answered_wait(&answered_buckets)),
            answered_buckets,
            queue_abandoned: reg!(cv(
                "centralino_queue_abandoned_total",
                "Callers who hung up unanswered: within the short threshold (short) or after it",
                &["queue", "kind"]
            )),
            queue_timed_out: reg!(cv(
                "centralino_queue_timed_out_total",
                "Callers the queue ended at max_wait_seconds",
                &["queue"]
            )),
            queue_callbacks: reg!(cv(
                "centralino_queue_callbacks_total",
                "Visits that ended in a callback request",
                &["queue"]
            )),
            queue_callbacks_kept: reg!(cv(
                "centralino_queue_callbacks_kept_total",
                "Callbacks done (an operator talked to the citizen), within their promise or not",
                &["queue", "in_time"]
            )),
            queue_overflowed: reg!(cv(
                "centralino_queue_overflowed_total",
                "Callers the queue could not serve, passed to its overflow queue",
                &["queue"]
            )),
            queue_transferred: reg!(cv(
                "centralino_queue_transferred_total",
                "Calls an operator transferred out of the queue",
                &["queue"]
            )),
            queue_agents_needed: reg!(gv(
                "centralino_queue_agents_needed",
                "Operators Erlang C asks for the queue's service level on the last 15 minutes' traffic",
                &["queue"]
            )),
            queue_agents_short: reg!(gv(
                "centralino_queue_agents_short",
                "Operators needed beyond those available or busy in the queue",
                &["queue"]
            )),
            queue_patience: reg!(gv(
                "centralino_queue_patience_seconds",
                "Callers' mean patience over the last 15 minutes, 0 until 10 gave up",
                &["queue"]
            )),
            unserved: reg!(cv(
                "centralino_unserved_total",
                "Callers a queue could not serve, by reason and what its policy did",
                &["queue", "reason", "action"]
            )),
            queue_sl_target: reg!(
                GaugeVec::new(
                    Opts::new(
                        "centralino_queue_service_level_target",
                        "The service level the queue is to reach (0..1)"
                    ),
                    &["queue"]
                )
                .expect("valid metric")
            ),
            queue_handle_time: reg!(
                GaugeVec::new(
                    Opts::new(
                        "centralino_queue_handle_time_seconds",
                        "Recent mean handling time of the queue's calls (talk, hold, wrap-up)"
                    ),
                    &["queue"]
                )
                .expect("valid metric")
            ),
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
            monitors: reg!(cv(
                "centralino_monitors_total",
                "Supervisors joining operators' calls (and changing mode) by the mode entered",
                &["mode"]
            )),
            transfers: reg!(cv(
                "centralino_transfers_total",
                "Operators' transfers (REFER) by target kind and outcome",
                &["target", "outcome"]
            )),
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
            callbacks: reg!(cv(
                "centralino_callbacks_total",
                "Callback requests by outcome",
                &["outcome"]
            )),
            campaign_attempts: reg!(cv(
                "centralino_campaign_attempts_total",
                "Campaign attempts by campaign and outcome",
                &["tenant", "campaign", "outcome"]
            )),
            campaign_lines: reg!(gv(
                "centralino_campaign_lines",
                "Citizens being dialled or waiting for an operator, by campaign",
                &["tenant", "campaign"]
            )),
            campaign_previews: reg!(cv(
                "centralino_campaign_previews_total",
                "Preview contacts shown on an operator's desk, accepted, skipped or expired, by campaign",
                &["tenant", "campaign", "outcome"]
            )),
            campaign_callers: reg!(cv(
                "centralino_campaign_callers_total",
                "Calls to a campaign's number from one of its contacts, by campaign",
                &["tenant", "campaign"]
            )),
            cluster_offers_in: reg!(cv(
                "centralino_cluster_offers_received_total",
                "Other nodes' calls offered to this node's operators, by outcome",
                &["outcome"]
            )),
            cluster_offers_out: reg!(cv(
                "centralino_cluster_offers_sent_total",
                "This node's waiting calls offered to other nodes, by outcome",
                &["outcome"]
            )),
            cluster_handovers: reg!(cv(
                "centralino_cluster_handovers_total",
                "Calls handed over between nodes by SIP, by outcome",
                &["outcome"]
            )),
            campaign_pacing: reg!(
                GaugeVec::new(
                    Opts::new(
                        "centralino_campaign_pacing_ratio",
                        "Lines per free operator at the pacer's last decision, by campaign"
                    ),
                    &["tenant", "campaign"]
                )
                .expect("valid metric")
            ),
            dial_plan_refused: reg!(cv(
                "centralino_dial_plan_refused_total",
                "Numbers refused by the tenant's dial plan before any trunk saw them",
                &["via", "reason"]
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
            flow_calls: reg!(cv(
                "centralino_flow_calls_total",
                "Calls through IVR flows by outcome",
                &["flow", "outcome"]
            )),
            registry,
        }
    }
}

/// Registers `m` in `registry` and returns it. Names are unique by
/// construction: a clash is a programming error.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric name");
    m
}

/// Bucket bounds of the waits (seconds).
const WAIT_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The answered waits' bucket bounds: the standard ones and each of
/// `thresholds` (seconds), in order, once each.
fn answered_buckets(thresholds: &[f64]) -> Vec<f64> {
    let mut b = WAIT_BUCKETS.to_vec();
    b.extend(thresholds.iter().filter(|t| t.is_finite() && **t > 0.0));
    b.sort_by(f64::total_cmp);
    b.dedup();
    b
}

/// `centralino_queue_answered_wait_seconds{queue}` with these bounds.
fn answered_wait(buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(
            "centralino_queue_answered_wait_seconds",
            "Wait of the answered visits",
        )
        .buckets(buckets.to_vec()),
        &["queue"],
    )
    .expect("valid metric")
}

/// A counter with labels.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// A gauge with labels.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// A counter.
pub fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

/// What breaks the conventions in `registry`: a name without the
/// `centralino_` prefix, a counter without `_total` (or a gauge with it),
/// a label outside [`LABELS`]. Empty when all is well (tests of both the
/// engine's and the drivers' metrics call it).
pub fn convention_problems(registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for f in registry.gather() {
        let name = f.name();
        if !name.starts_with("centralino_") {
            problems.push(format!("{name}: no centralino_ prefix"));
        }
        let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
        if counter != name.ends_with("_total") {
            problems.push(format!("{name}: _total is for counters only"));
        }
        for metric in f.get_metric() {
            for l in metric.get_label() {
                if !LABELS.contains(&l.name()) {
                    problems.push(format!("{name}: label {}", l.name()));
                }
            }
        }
    }
    problems
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
        assert_eq!(convention_problems(&m.registry), Vec::<String>::new());
    }
}
