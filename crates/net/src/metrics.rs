//! The metrics of the node's drivers: transports, the media plane and
//! recordings, the HTTP endpoint, the API, desks and the store. The
//! engine's own are in `centralino_b2bua::Metrics`; both live in one
//! registry, the one `/metrics` encodes.
//!
//! Labels are bounded: never a call id, a number or an operator id.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

/// The drivers' metric handles.
#[derive(Clone)]
pub struct NetMetrics {
    /// The registry `/metrics` encodes (the engine's, shared).
    pub registry: Registry,
    /// `centralino_sip_udp_receive_errors_total`
    pub sip_udp_receive_errors: IntCounter,
    /// `centralino_sip_udp_send_errors_total`: datagrams not sent (the
    /// kernel refused them, or a sending thread's queue was full).
    pub sip_udp_send_errors: IntCounter,
    /// `centralino_sip_io_datagrams_total{thread}`: datagrams each SIP
    /// I/O thread read (how evenly the kernel spreads the peers).
    pub sip_io_datagrams: IntCounterVec,
    /// `centralino_sip_input_lag_seconds`: how long SIP input waited
    /// before the engine read it (socket buffer and input queue), observed
    /// at each turn of the engine task: the overload signal.
    pub sip_input_lag: Histogram,
    /// `centralino_sip_overloaded`: 1 while new calls are refused because
    /// the lag passed its limit.
    pub sip_overloaded: IntGauge,
    /// `centralino_engine_realtime_priority`: the real-time priority the
    /// engine's thread runs at (`SCHED_RR`), 0 under the normal scheduler:
    /// what `sip.engine_realtime_priority` asked, once the kernel granted it.
    pub engine_realtime_priority: IntGauge,
    /// `centralino_sip_udp_drops_total`: datagrams the kernel dropped on
    /// the SIP sockets because their receive buffer was full.
    pub sip_udp_drops: IntCounter,
    /// `centralino_sip_tcp_connections`
    pub sip_tcp_connections: IntGauge,
    /// `centralino_sip_tcp_connections_refused_total`
    pub sip_tcp_refused: IntCounter,
    /// `centralino_sip_tls_handshake_failures_total{direction,reason}`:
    /// TLS handshakes that did not complete; `direction` is `in` (our
    /// listener) or `out` (towards a carrier), `reason` one of `timeout`,
    /// `certificate`, `incompatible` (version or ciphers), `protocol`, `io`.
    pub sip_tls_handshake_failures: IntCounterVec,
    /// `centralino_desk_connections`: operator desktops following their
    /// desk over a WebSocket.
    pub desk_connections: IntGauge,
    /// `centralino_rtp_ports{state}`: in use / resting (released, in
    /// quarantine) / free (driver).
    pub rtp_ports: IntGaugeVec,
    /// `centralino_media_sessions`: calls with anchored media (driver).
    pub media_sessions: IntGauge,
    /// `centralino_browser_legs_total`: calls answered in a browser
    /// (WebRTC legs set up on an operator port).
    pub browser_legs: IntCounter,
    /// `centralino_rtp_packets_total{side,direction}` (driver).
    pub rtp_packets: IntCounterVec,
    /// `centralino_rtp_bytes_total{side,direction}` (driver).
    pub rtp_bytes: IntCounterVec,
    /// `centralino_rtp_dropped_total{reason}`: bad, foreign, late, unbound
    /// port (driver).
    pub rtp_dropped: IntCounterVec,
    /// `centralino_rtp_pairs_bound_at_call_total`: RTP pairs the engine's
    /// thread bound itself because none bound ahead was ready (the
    /// `media-bind` thread behind, or a small port range).
    pub rtp_bound_at_call: IntCounter,
    /// `centralino_rtp_lost_total{side}`: sequence gaps seen (driver).
    pub rtp_lost: IntCounterVec,
    /// `centralino_recordings_total{outcome}`: completed, recovered_partial,
    /// failed, dropped_audio (driver).
    pub recordings: IntCounterVec,
    /// `centralino_api_requests_total{route,code}`: HTTP API requests.
    pub api_requests: IntCounterVec,
    /// `centralino_notifications_total{event,outcome}`: SMS hook deliveries
    /// (sent, retry, dead_letter).
    pub notifications: IntCounterVec,
    /// `centralino_campaign_contacts_rejected_total`: contact lines refused
    /// at import (their request stored nothing).
    pub campaign_contacts_rejected: IntCounter,
    /// `centralino_queue_callbacks_open{queue}`: callbacks asked for and
    /// not done yet (pending or being placed), from the store every 5 s.
    pub queue_callbacks_open: IntGaugeVec,
    /// `centralino_queue_callbacks_oldest_seconds{queue}`: how long the
    /// oldest of them has waited (0 when none): what "Ti chiamiamo noi"
    /// promised, overdue when it grows.
    pub queue_callbacks_oldest: IntGaugeVec,
    /// `centralino_queue_forecast_offered{queue}`: calls expected in the
    /// next 15 minutes, from the same interval of the last 7 days.
    pub queue_forecast_offered: prometheus::GaugeVec,
    /// `centralino_queue_agents_forecast{queue}`: operators Erlang C asks
    /// for that forecast at the queue's target.
    pub queue_agents_forecast: IntGaugeVec,
    /// `centralino_campaign_contacts{tenant,campaign,status}`: each running
    /// campaign's contacts by status (pending, in_progress, done, failed,
    /// dnc), read from the store every 10 s.
    pub campaign_contacts: IntGaugeVec,
    /// `centralino_dnc_changes_total{change}`: numbers added to or removed
    /// from a do-not-call list.
    pub dnc_changes: IntCounterVec,
    /// `centralino_cluster_nats_connected`: 1 while this node's NATS
    /// connection is up (0 alone or disconnected).
    pub cluster_connected: IntGauge,
    /// `centralino_cluster_nodes{state}`: other nodes up and down.
    pub cluster_nodes: IntGaugeVec,
    /// `centralino_cluster_node_up{node}`: 1 while that node is heard
    /// from (labelled by node name only).
    pub cluster_node_up: IntGaugeVec,
    /// `centralino_cluster_summaries_total{outcome}`: summaries sent,
    /// unsent (NATS down: the next one replaces it), received, refused.
    pub cluster_summaries: IntCounterVec,
    /// `centralino_http_tls_failures_total`: HTTPS handshakes that failed.
    pub http_tls_failures: IntCounter,
    /// `centralino_http_cross_origin_total`: WebSocket handshakes from
    /// another site's page, refused.
    pub http_cross_origin: IntCounter,
    /// `centralino_cluster_refused_total{kind}`: other nodes' messages
    /// refused (offer, reply, release: unsigned, malformed, stale, to
    /// another inbox; offer_dropped: too many offers at once).
    pub cluster_refused: IntCounterVec,
    /// `centralino_cluster_work_total{event}`: callbacks mirrored on the
    /// work stream, taken over from a dead node, moved away, dials fenced
    /// (go, moved), and the stream unavailable.
    pub cluster_work: IntCounterVec,
    /// `centralino_cluster_work_ready`: 1 while this node's callbacks
    /// may be dialled (the work stream is reachable and read).
    pub cluster_work_ready: IntGauge,
    /// The store service's (`centralino_store_*`), registered with these.
    pub store: centralino_store::service::StoreMetrics,
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

impl NetMetrics {
    /// Creates the drivers' metrics and registers them in `registry`
    /// (the engine's, so one scrape has both).
    pub fn new(registry: &Registry) -> Self {
        use centralino_b2bua::metrics::{counter, counter_vec, gauge_vec, register};
        macro_rules! reg {
            ($m:expr) => {
                register(registry, $m)
            };
        }
        let (cv, gv, c) = (counter_vec, gauge_vec, counter);
        Self {
            registry: registry.clone(),
            sip_udp_receive_errors: reg!(c(
                "centralino_sip_udp_receive_errors_total",
                "UDP receive errors"
            )),
            sip_udp_send_errors: reg!(c(
                "centralino_sip_udp_send_errors_total",
                "SIP datagrams not sent: refused by the kernel, or the sending queue full"
            )),
            sip_input_lag: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "centralino_sip_input_lag_seconds",
                        "How long SIP input waited before the engine read it, at each turn of the engine task"
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]),
                )
                .expect("valid metric")
            ),
            sip_overloaded: reg!(
                IntGauge::new(
                    "centralino_sip_overloaded",
                    "1 while new calls are refused because the SIP input lag passed its limit"
                )
                .expect("valid metric")
            ),
            engine_realtime_priority: reg!(
                IntGauge::new(
                    "centralino_engine_realtime_priority",
                    "Real-time (SCHED_RR) priority of the engine's thread; 0: the normal scheduler"
                )
                .expect("valid metric")
            ),
            sip_udp_drops: reg!(c(
                "centralino_sip_udp_drops_total",
                "Datagrams the kernel dropped on the SIP sockets (receive buffer full)"
            )),
            sip_tcp_connections: reg!(
                IntGauge::new("centralino_sip_tcp_connections", "Open SIP TCP connections")
                    .expect("valid metric")
            ),
            sip_tcp_refused: reg!(c(
                "centralino_sip_tcp_connections_refused_total",
                "TCP connections refused at the cap"
            )),
            sip_io_datagrams: reg!(cv(
                "centralino_sip_io_datagrams_total",
                "SIP datagrams read by each I/O thread (sip.io_threads)",
                &["thread"]
            )),
            sip_tls_handshake_failures: reg!(cv(
                "centralino_sip_tls_handshake_failures_total",
                "SIP TLS handshakes that failed, by direction and reason",
                &["direction", "reason"]
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
            browser_legs: reg!(
                IntCounter::new(
                    "centralino_browser_legs_total",
                    "Calls answered in a browser over WebRTC"
                )
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
            rtp_bound_at_call: reg!(c(
                "centralino_rtp_pairs_bound_at_call_total",
                "RTP port pairs bound on the engine's thread at the call (none bound ahead was ready)"
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
            notifications: reg!(cv(
                "centralino_notifications_total",
                "SMS hook notifications by event and outcome",
                &["event", "outcome"]
            )),
            campaign_contacts_rejected: reg!(c(
                "centralino_campaign_contacts_rejected_total",
                "Contact lines refused at import (the request stored nothing)"
            )),
            queue_callbacks_open: reg!(gv(
                "centralino_queue_callbacks_open",
                "Callbacks asked for and not done yet, per queue",
                &["queue"]
            )),
            queue_callbacks_oldest: reg!(gv(
                "centralino_queue_callbacks_oldest_seconds",
                "How long the oldest callback not done yet has waited, per queue",
                &["queue"]
            )),
            queue_forecast_offered: reg!(
                prometheus::GaugeVec::new(
                    prometheus::Opts::new(
                        "centralino_queue_forecast_offered",
                        "Calls expected in the next 15 minutes, from the same interval of the last 7 days"
                    ),
                    &["queue"]
                )
                .expect("valid metric")
            ),
            queue_agents_forecast: reg!(gv(
                "centralino_queue_agents_forecast",
                "Operators Erlang C asks for the next 15 minutes' forecast",
                &["queue"]
            )),
            campaign_contacts: reg!(gv(
                "centralino_campaign_contacts",
                "Contacts of each running campaign by status",
                &["tenant", "campaign", "status"]
            )),
            dnc_changes: reg!(cv(
                "centralino_dnc_changes_total",
                "Numbers added to or removed from a do-not-call list",
                &["change"]
            )),
            cluster_connected: reg!(
                IntGauge::new(
                    "centralino_cluster_nats_connected",
                    "1 while this node's NATS connection is up"
                )
                .expect("valid metric")
            ),
            cluster_nodes: reg!(gv(
                "centralino_cluster_nodes",
                "Other nodes of the national network, up and down",
                &["state"]
            )),
            cluster_node_up: reg!(gv(
                "centralino_cluster_node_up",
                "1 while that node of the national network is heard from",
                &["node"]
            )),
            cluster_summaries: reg!(cv(
                "centralino_cluster_summaries_total",
                "Node summaries sent, unsent, received and refused",
                &["outcome"]
            )),
            http_tls_failures: reg!(
                IntCounter::new(
                    "centralino_http_tls_failures_total",
                    "HTTPS handshakes that failed"
                )
                .expect("valid metric")
            ),
            http_cross_origin: reg!(
                IntCounter::new(
                    "centralino_http_cross_origin_total",
                    "WebSocket handshakes from another site's page, refused"
                )
                .expect("valid metric")
            ),
            cluster_refused: reg!(cv(
                "centralino_cluster_refused_total",
                "Other nodes' offers, replies and releases refused, by kind",
                &["kind"]
            )),
            cluster_work: reg!(cv(
                "centralino_cluster_work_total",
                "Callbacks and campaign contacts on the national work stream: mirrored, taken over, moved away, closed, dials fenced, stream unavailable",
                &["event"]
            )),
            cluster_work_ready: reg!(
                IntGauge::new(
                    "centralino_cluster_work_ready",
                    "1 while this node's callbacks may be dialled (work stream reachable and read)"
                )
                .expect("valid metric")
            ),
            store: centralino_store::service::StoreMetrics::new(registry),
            config_reloads: reg!(cv(
                "centralino_config_reloads_total",
                "Configuration reloads (SIGHUP) by outcome",
                &["outcome"]
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drivers_metrics_share_the_engines_registry_and_conventions() {
        // Registering both in one registry panics on a name used twice.
        let engine = centralino_b2bua::Metrics::new();
        let m = NetMetrics::new(&engine.registry);
        m.http_timeouts.with_label_values(&["header"]).inc();
        m.rtp_packets.with_label_values(&["caller", "in"]).inc();
        m.store.dropped.inc();
        let families = engine.registry.gather();
        assert!(
            families
                .iter()
                .any(|f| f.name() == "centralino_http_timeouts_total")
        );
        assert!(
            families
                .iter()
                .any(|f| f.name() == "centralino_calls_active")
        );
        assert_eq!(
            centralino_b2bua::metrics::convention_problems(&engine.registry),
            Vec::<String>::new()
        );
    }
}
