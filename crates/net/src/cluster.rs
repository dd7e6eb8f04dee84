//! The national network's driver: this node's NATS connection, its
//! summary published every second on `centralino.v1.summary.<node>`, the
//! others' read into a [`Membership`], and the national picture kept for
//! the API (`GET /api/v1/cluster`) and the metrics. NATS down is not an
//! emergency: every node routes its own calls as alone, the summaries it
//! could not send are replaced by the next (a summary is state, not an
//! event: the latest says everything), and on return the picture comes
//! back within a few heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use axum::body::Bytes;
use centralino_cluster::OfferReply;
use centralino_cluster::offer::{LEASE, Release};
use centralino_cluster::{Event, Membership, NationalQueue, OfferRequest, QueueSummary, Summary};
use centralino_config::ClusterConfig;
use futures_util::StreamExt;
use tracing::{info, warn};

use tokio::sync::mpsc;

use crate::api::Desks;
use crate::handle::EngineInput;
use crate::metrics::NetMetrics;

/// How often a node tells the others about itself.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Offers and releases the engine may have waiting for the driver.
pub(crate) const OUT_QUEUE: usize = 4096;

/// What the engine asks of the national network.
#[derive(Debug)]
pub(crate) enum ClusterOut {
    /// Offer a waiting call to `node` (NATS request-reply).
    Offer {
        node: String,
        request: Box<OfferRequest>,
    },
    /// Tell `node` to let the operator it holds for offer `id` go.
    Release { node: String, id: String },
    /// An operator is free again where none was: publish the summary now.
    News,
}

/// Other nodes' offers being answered at once, at most: beyond, an offer
/// gets no answer (its asker's timeout keeps the call in its place).
const MAX_OFFERS_IN_FLIGHT: usize = 1024;

/// How far an offer's send time may be from the receiver's clock, on a
/// network with a key (the nodes' clocks kept by NTP).
const OFFER_FRESH_MS: i64 = 10_000;

/// Least time between two summaries published on news.
const NEWS_GAP: Duration = Duration::from_millis(200);

/// The subject every summary goes to (`*`: the sender's node name).
const SUMMARIES: &str = "centralino.v1.summary.*";

/// The network as the API shows it, rebuilt each heartbeat.
#[derive(Clone, Debug, Default)]
pub(crate) struct Picture {
    /// This node.
    pub(crate) node: String,
    /// Its NATS connection is up.
    pub(crate) connected: bool,
    /// The other nodes heard from: name, up, seconds silent, draining.
    pub(crate) nodes: Vec<(String, bool, u64, bool)>,
    /// Each queue across the nodes that are up.
    pub(crate) queues: Vec<NationalQueue>,
    /// Calls lent under agreements across the nodes that are up:
    /// (borrower, lender, calls).
    pub(crate) lending: Vec<(String, String, u32)>,
}

/// What the driver works with.
pub(crate) struct Links {
    /// The supervisors' views (the queues it summarises, the picture).
    pub(crate) desks: Desks,
    pub(crate) metrics: NetMetrics,
    pub(crate) draining: Arc<AtomicBool>,
    /// The engine, for other nodes' offers.
    pub(crate) engine: mpsc::Sender<EngineInput>,
    /// This node's SIP address for hand-overs.
    pub(crate) target: String,
    /// The engine's offers and releases.
    pub(crate) outputs: mpsc::Receiver<ClusterOut>,
    /// The work stream's driver, with `durability = "jetstream"`.
    pub(crate) work: Option<crate::work::WorkLinks>,
    /// The network's key: every message sent is signed with it, and every
    /// message received must be (`None`: none is, as on a network
    /// without `key_file`).
    pub(crate) key: Option<Arc<crate::netkey::NetworkKey>>,
}

/// Sends and checks the nodes' messages with the network's key, if any.
#[derive(Clone)]
struct Wire {
    client: async_nats::Client,
    key: Option<Arc<crate::netkey::NetworkKey>>,
}

impl Wire {
    async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), ()> {
        let sent = match &self.key {
            Some(k) => {
                let h = k.sign(&subject, "", &payload);
                self.client
                    .publish_with_headers(subject, h, Bytes::from(payload))
                    .await
            }
            None => self.client.publish(subject, Bytes::from(payload)).await,
        };
        sent.map_err(|_| ())
    }

    /// Publishes a request whose answer comes to this node's own `inbox`
    /// (signed with it: a replay cannot send the answer elsewhere).
    async fn request(&self, subject: String, inbox: String, payload: Vec<u8>) -> Result<(), ()> {
        let sent = match &self.key {
            Some(k) => {
                let h = k.sign(&subject, &inbox, &payload);
                self.client
                    .publish_with_reply_and_headers(subject, inbox, h, Bytes::from(payload))
                    .await
            }
            None => {
                self.client
                    .publish_with_reply(subject, inbox, Bytes::from(payload))
                    .await
            }
        };
        sent.map_err(|_| ())
    }

    /// A message from another node: accepted only with the network's MAC
    /// (when the network has a key).
    fn authentic(&self, msg: &async_nats::Message) -> bool {
        self.key.as_ref().is_none_or(|k| {
            let reply = msg.reply.as_ref().map_or("", |r| r.as_str());
            k.verify(
                msg.subject.as_str(),
                reply,
                &msg.payload,
                msg.headers.as_ref(),
            )
        })
    }
}

/// Connects to NATS (in the background: a server down at start is no
/// reason not to start) and runs the heartbeat. Returns at once.
pub(crate) fn spawn(config: ClusterConfig, links: Links) {
    links.desks.set_cluster(Picture {
        node: config.node.clone(),
        ..Picture::default()
    });
    tokio::spawn(async move {
        let client = match connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                // Only a configuration the client cannot use gets here (a
                // server down is retried in the background).
                warn!(error = %e, "national network: cannot use the NATS settings; this node runs alone");
                return;
            }
        };
        run(client, config.node, links).await;
    });
}

async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("centralino {}", config.node))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .max_reconnects(None::<usize>);
    if config.key_file.is_none() {
        // Without the network's key the node trusts its one host alone:
        // not the servers a loopback server tells it of elsewhere.
        options = options.ignore_discovered_servers();
    }
    if let Some(file) = &config.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cluster.token_file {}: {e}", file.display()))?;
        options = options.token(token.trim().to_owned());
    }
    if let Some(file) = &config.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| format!("cluster.password_file {}: {e}", file.display()))?;
        options = options.user_and_password(config.node.clone(), password.trim().to_owned());
    }
    // Replies to this node's offers come to an inbox of its own, so a
    // server can let each node subscribe to its own replies only.
    options = options.custom_inbox_prefix(format!("_INBOX_{}", config.node));
    if config.nats_urls.iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    options
        .connect(config.nats_urls.clone())
        .await
        .map_err(|e| e.to_string())
}

async fn run(client: async_nats::Client, node: String, links: Links) {
    let Links {
        desks,
        metrics,
        draining,
        engine,
        target,
        mut outputs,
        work,
        key,
    } = links;
    if key.is_none() {
        warn!(node = %node, "national network: no cluster.key_file: messages between the nodes are not authenticated (any NATS credential is a node)");
    }
    let wire = Wire {
        client: client.clone(),
        key,
    };
    // Who is alive, for the work stream's driver: it takes over only
    // from nodes this one knows to be down.
    let (liveness, alive) = tokio::sync::watch::channel(crate::work::Liveness::default());
    if let Some(w) = work {
        tokio::spawn(crate::work::run(client.clone(), node.clone(), w, alive));
    }
    let mut connected_since: Option<Instant> = None;
    let mut last_tick: Option<Instant> = None;
    let sip = target
        .parse::<std::net::SocketAddr>()
        .ok()
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0);
    if sip.is_none() {
        warn!(node = %node, address = %target, "national network: no SIP address the others can reach (set cluster.sip_address or listen on a real address): this node takes no calls from other nodes");
    }
    let mut membership = Membership::new(&node, HEARTBEAT);
    // A new boot each start, later than the last: the others tell a
    // restart from a replay of a past life.
    let boot = u64::try_from(unix_ms()).unwrap_or(0);
    let mut seq = 0u64;
    let subject = format!("centralino.v1.summary.{node}");
    // Subscribed once: the client subscribes again after a reconnect.
    let mut incoming = subscribe(&client, SUMMARIES.to_owned()).await;
    let mut offers = subscribe(&client, format!("centralino.v1.offer.{node}")).await;
    let mut releases = subscribe(&client, format!("centralino.v1.release.{node}")).await;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = None;
    let mut last_sent: Option<Instant> = None;
    // Offers being decided at once, at most (each waits for the engine).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_OFFERS_IN_FLIGHT));
    loop {
        tokio::select! {
            msg = incoming.next() => {
                let Some(msg) = msg else {
                    warn!("national network: the subscription ended");
                    return;
                };
                if !wire.authentic(&msg) {
                    metrics.cluster_summaries.with_label_values(&["refused"]).inc();
                    continue;
                }
                match Summary::decode(&msg.payload) {
                    // The subject names the sender: a summary claiming to
                    // be another node's is refused.
                    Ok(s) if msg.subject.as_str().rsplit('.').next() == Some(s.node.as_str()) => {
                        let free = s.queues.iter().any(|q| q.available > 0);
                        let outcome = match membership.receive(Instant::now(), s) {
                            Ok(()) => "received",
                            Err(centralino_cluster::Refused::Own) => continue,
                            Err(_) => "refused",
                        };
                        metrics.cluster_summaries.with_label_values(&[outcome]).inc();
                        if free && outcome == "received" {
                            // Operators free there: waiting calls are
                            // offered now, not at the next heartbeat.
                            let _ = engine.try_send(EngineInput::ClusterPeers {
                                peers: membership.offerable(),
                                lent_elsewhere: membership.lent_all(),
                            });
                        }
                    }
                    Ok(_) | Err(_) => {
                        metrics.cluster_summaries.with_label_values(&["refused"]).inc();
                    }
                }
            }
            msg = offers.next() => {
                let Some(msg) = msg else { return };
                answer_offer(&wire, &engine, &target, &membership, &metrics, &in_flight, msg);
            }
            out = outputs.recv() => {
                let Some(out) = out else { return };
                if matches!(out, ClusterOut::News) {
                    if last_sent.is_none_or(|t: Instant| t.elapsed() >= NEWS_GAP)
                        && client.connection_state() == State::Connected
                    {
                        seq += 1;
                        let s = summary(&node, boot, seq, &draining, summaries(&desks), &desks, sip);
                        publish(&wire, &subject, &s, &metrics).await;
                        last_sent = Some(Instant::now());
                    }
                    continue;
                }
                send_out(&wire, &engine, &node, &metrics, out);
            }
            msg = releases.next() => {
                let Some(msg) = msg else { return };
                if !wire.authentic(&msg) {
                    metrics.cluster_refused.with_label_values(&["release"]).inc();
                    continue;
                }
                match Release::decode(&msg.payload) {
                    Ok(r) => {
                        // Never wait on a full engine queue here: the
                        // heartbeat must go on (a lost release lapses).
                        let _ = engine.try_send(EngineInput::RemoteRelease { id: r.id, from: r.from });
                    }
                    Err(_) => metrics.cluster_refused.with_label_values(&["release"]).inc(),
                }
            }
            _ = tick.tick() => {
                let connected = client.connection_state() == State::Connected;
                if was_connected != Some(connected) {
                    if connected {
                        info!(node = %node, "national network: connected to NATS");
                    } else if was_connected.is_some() {
                        warn!(node = %node, "national network: NATS unreachable; routing locally until it returns");
                    }
                    was_connected = Some(connected);
                    metrics.cluster_connected.set(i64::from(connected));
                }
                let mine = summaries(&desks);
                if connected {
                    seq += 1;
                    let s = summary(&node, boot, seq, &draining, mine.clone(), &desks, sip);
                    publish(&wire, &subject, &s, &metrics).await;
                    last_sent = Some(Instant::now());
                } else {
                    metrics.cluster_summaries.with_label_values(&["unsent"]).inc();
                }
                let now = Instant::now();
                membership.tick(now);
                while let Some(e) = membership.poll_event() {
                    match &e {
                        Event::Up(n) => info!(node = %n, "national network: node up"),
                        Event::Down(n) => warn!(node = %n, "national network: node down (silent for 3 heartbeats)"),
                        Event::Restarted(n) => info!(node = %n, "national network: node restarted"),
                    }
                }
                // This node frozen or starved for several heartbeats (a
                // stopped process, a VM paused) saw nobody meanwhile:
                // its picture settles again before it judges anyone dead.
                let stalled = last_tick.is_some_and(|t: Instant| now.duration_since(t) > HEARTBEAT * 3);
                last_tick = Some(now);
                if !connected {
                    connected_since = None;
                } else if connected_since.is_none() || stalled {
                    connected_since = Some(now);
                }
                liveness.send_replace(crate::work::liveness(
                    &membership,
                    connected_since.map(|t| now.duration_since(t)),
                    now,
                ));
                let elsewhere = membership.lent_all();
                let _ = engine.try_send(EngineInput::ClusterPeers {
                    peers: membership.offerable(),
                    lent_elsewhere: elsewhere.clone(),
                });
                let mut lending: std::collections::BTreeMap<(String, String), u32> =
                    std::collections::BTreeMap::new();
                for (f, t, k) in elsewhere.into_iter().chain(desks.lent()) {
                    let n = lending.entry((f, t)).or_default();
                    *n = n.saturating_add(k);
                }
                let picture = Picture {
                    node: node.clone(),
                    connected,
                    nodes: Vec::new(),
                    queues: membership.national(&mine),
                    lending: lending.into_iter().map(|((f, t), n)| (f, t, n)).collect(),
                };
                publish_picture(&membership, picture, &desks, &metrics, now);
            }
        }
    }
}

fn summary(
    node: &str,
    boot: u64,
    seq: u64,
    draining: &AtomicBool,
    queues: Vec<QueueSummary>,
    desks: &Desks,
    sip: Option<std::net::SocketAddr>,
) -> Summary {
    Summary {
        node: node.to_owned(),
        boot,
        seq,
        at_ms: unix_ms(),
        draining: draining.load(Ordering::Relaxed),
        queues,
        lent: desks.lent(),
        sip,
    }
}

async fn publish(wire: &Wire, subject: &str, s: &Summary, metrics: &NetMetrics) {
    let outcome = match wire.publish(subject.to_owned(), s.encode()).await {
        Ok(()) => "sent",
        Err(()) => "unsent",
    };
    metrics
        .cluster_summaries
        .with_label_values(&[outcome])
        .inc();
}

async fn subscribe(client: &async_nats::Client, subject: String) -> async_nats::Subscriber {
    loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => return s,
            Err(e) => {
                warn!(error = %e, %subject, "national network: cannot subscribe yet");
                tokio::time::sleep(HEARTBEAT).await;
            }
        }
    }
}

/// Another node offers a call: the engine decides (its router stays the
/// only writer of the board), the answer goes back on the request's
/// reply subject. A malformed request gets no answer (the asker's
/// timeout returns its call to its place) and is counted.
fn answer_offer(
    wire: &Wire,
    engine: &mpsc::Sender<EngineInput>,
    target: &str,
    membership: &Membership,
    metrics: &NetMetrics,
    in_flight: &Arc<tokio::sync::Semaphore>,
    msg: async_nats::Message,
) {
    // With a key, only a request sent moments ago, answered to its
    // sender's own inbox, holds an operator: a recorded one replayed later
    // holds nobody.
    let fresh = |req: &OfferRequest| {
        wire.key.is_none()
            || req
                .sent_ms
                .is_some_and(|t| (unix_ms() - t).abs() <= OFFER_FRESH_MS)
    };
    let req = if wire.authentic(&msg) {
        OfferRequest::decode(&msg.payload).ok()
    } else {
        None
    };
    let (Some(reply_to), Some(req)) = (msg.reply.clone(), req) else {
        metrics.cluster_refused.with_label_values(&["offer"]).inc();
        return;
    };
    if !reply_to
        .as_str()
        .starts_with(&format!("_INBOX_{}.", req.from))
        || !fresh(&req)
    {
        metrics.cluster_refused.with_label_values(&["offer"]).inc();
        return;
    }
    // The asking node's address, if it is known and serves the firm the
    // call claims to be of (its own summary lists that firm's queues).
    let peer = membership
        .sip_of(&req.from)
        .filter(|_| membership.serves(&req.from, &req.tenant));
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        metrics
            .cluster_refused
            .with_label_values(&["offer_dropped"])
            .inc();
        return;
    };
    let (wire, engine, target) = (wire.clone(), engine.clone(), target.to_owned());
    tokio::spawn(async move {
        let _permit = permit;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let input = EngineInput::RemoteOffer {
            req: Box::new(req),
            target,
            peer,
            reply: tx,
        };
        if engine.send(input).await.is_err() {
            return;
        }
        if let Ok(reply) = rx.await {
            let _ = wire.publish(reply_to.to_string(), reply.encode()).await;
        }
    });
}

/// Sends the engine's offer (its answer, read bounded, goes back to the
/// engine; none in time is the engine's timeout to handle) or release.
fn send_out(
    wire: &Wire,
    engine: &mpsc::Sender<EngineInput>,
    me: &str,
    metrics: &NetMetrics,
    out: ClusterOut,
) {
    let (wire, engine, metrics) = (wire.clone(), engine.clone(), metrics.clone());
    match out {
        ClusterOut::Offer { node, request } => {
            tokio::spawn(async move {
                let subject = format!("centralino.v1.offer.{node}");
                let mut request = request;
                request.sent_ms = Some(unix_ms());
                // The answer comes to an inbox of this request's own, read
                // until an authentic answer: a forged one first changes
                // nothing.
                let inbox = wire.client.new_inbox();
                let Ok(mut answers) = wire.client.subscribe(inbox.clone()).await else {
                    return;
                };
                if wire
                    .request(subject, inbox, request.encode())
                    .await
                    .is_err()
                {
                    return;
                }
                // Waited for up to a lease: a late grant goes to the engine,
                // which lets it go (its own timeout kept the call here).
                let deadline = tokio::time::Instant::now() + LEASE;
                while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await
                {
                    match OfferReply::decode(&answer.payload) {
                        Ok(reply) if reply.id() == request.id && wire.authentic(&answer) => {
                            let reply = Box::new(reply);
                            let _ = engine.send(EngineInput::ClusterReply { node, reply }).await;
                            break;
                        }
                        _ => metrics.cluster_refused.with_label_values(&["reply"]).inc(),
                    }
                }
                let _ = answers.unsubscribe().await;
            });
        }
        ClusterOut::News => {}
        ClusterOut::Release { node, id } => {
            let release = Release {
                id,
                from: me.to_owned(),
            };
            tokio::spawn(async move {
                let subject = format!("centralino.v1.release.{node}");
                let _ = wire.publish(subject, release.encode()).await;
            });
        }
    }
}

/// The picture for the API, with the other nodes, and the node gauges
/// (a node's series stays while it is known: bounded by the membership's
/// table).
fn publish_picture(
    m: &Membership,
    mut picture: Picture,
    desks: &Desks,
    metrics: &NetMetrics,
    now: Instant,
) {
    picture.nodes = m
        .nodes(now)
        .map(|v| {
            (
                v.node.to_owned(),
                v.up,
                v.silent.as_secs(),
                v.summary.draining,
            )
        })
        .collect();
    metrics
        .cluster_nodes
        .with_label_values(&["up"])
        .set(i64::try_from(m.up() - 1).unwrap_or(i64::MAX));
    metrics
        .cluster_nodes
        .with_label_values(&["down"])
        .set(i64::try_from(m.down()).unwrap_or(i64::MAX));
    for (name, up, _, _) in &picture.nodes {
        metrics
            .cluster_node_up
            .with_label_values(&[name])
            .set(i64::from(*up));
    }
    desks.set_cluster(picture);
}

/// This node's queues as a summary carries them.
fn summaries(desks: &Desks) -> Vec<QueueSummary> {
    let now = unix_ms();
    desks
        .queues()
        .iter()
        .map(|q| {
            let by = |label: &str| {
                q.agents
                    .iter()
                    .find(|(l, _)| *l == label)
                    .map_or(0, |(_, n)| *n)
            };
            QueueSummary {
                tenant: q.tenant.clone(),
                queue: q.name.clone(),
                waiting: q.waiting,
                oldest_wait_ms: q
                    .oldest_since_ms
                    .map_or(0, |t| u64::try_from(now - t).unwrap_or(0)),
                expected_wait_seconds: q.expected_wait_seconds,
                available: by("available"),
                busy: by("busy"),
                paused: by("paused"),
                logged_out: by("logged_out"),
            }
        })
        .collect()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
