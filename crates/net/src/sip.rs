use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use centralino_b2bua::CallbackState;
use centralino_b2bua::media::MediaEvent;

use crate::error::NetError;
use crate::handle::{EngineInbox, EngineInput};
use crate::input::{BATCH, Lifecycle, Next, take_input};
use crate::media::MediaPlane;
use crate::metrics::NetMetrics;
use centralino_b2bua::{Engine, Metrics, Output};
use centralino_config::{Config, ListenTransport};
use centralino_sip::{Limits, Transport};
use rand::TryRngCore;
use std::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Inputs or datagrams waiting for the engine beyond which new calls are
/// refused (503):
/// a deep backlog means every message already waits long enough for peers
/// to retransmit, and accepting more work would only feed that spiral.
pub(crate) const OVERLOAD_BACKLOG: usize = 2048;
/// How often the engine task beats its heartbeat (`/healthz` calls it
/// stalled after `health::STALE` without one).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Call records queued before a batch is handed to the store.
const RECORD_BATCH: usize = 512;
/// Longest a call record waits for its batch.
const RECORD_FLUSH: Duration = Duration::from_millis(200);

impl NetError {
    pub(crate) fn tls(file: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Self::Tls {
            file: file.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The SIP side of a running node.
pub struct SipServer {
    /// The bound SIP addresses, per transport (ephemeral ports resolved).
    pub bound: Vec<(ListenTransport, SocketAddr)>,
    engine_task: tokio::task::JoinHandle<()>,
}

impl SipServer {
    /// Binds every listener and starts the engine task, which beats
    /// `heartbeat` while its loop turns. TCP and TLS connections, accepted
    /// or opened to carriers, run on `streams` ([`crate::streams`]).
    #[allow(clippy::too_many_arguments)] // The node's parts, each once, as the binary built them.
    pub async fn start(
        config: &Config,
        metrics: Metrics,
        records: Option<centralino_store::service::RecordSink>,
        desks: Option<crate::api::Desks>,
        heartbeat: crate::health::Heartbeat,
        inbox: EngineInbox,
        net: NetMetrics,
        streams: crate::streams::StreamsHandle,
    ) -> Result<Self, NetError> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|_| NetError::Random)?;
        let now = Instant::now().into_std();
        let mut engine = Engine::new(&config.engine(), metrics, seed, now);
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let plane = MediaPlane::start(&config.media, net.clone(), media_tx).map_err(|source| {
            NetError::Io {
                what: "cannot start the media plane",
                source,
            }
        })?;
        let (library, music) = crate::prompts::load(config);
        engine.set_prompts(library, music);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        engine.set_wall_clock(now, unix);
        let EngineInbox { rx, handle } = inbox;
        let (tx, draining) = (handle.tx.clone(), handle.draining.clone());
        let mut udp = HashMap::new();
        let mut bound = Vec::new();
        let next_conn = Arc::new(AtomicU64::new(1));
        let open = Arc::new(AtomicUsize::new(0));
        let pressure = crate::pressure::Pressure::new(now);
        let io_threads = crate::sip_io::io_threads(config.sip.io_threads);
        let mut io_spawned = 0;
        let acceptor = |tls| crate::streams::Acceptor {
            tls,
            tx: tx.clone(),
            limits: engine.limits().clone(),
            metrics: net.clone(),
            next_conn: next_conn.clone(),
            open: open.clone(),
            max: config.sip.max_tcp_connections,
            partial_timeout: config.sip.tcp_idle_timeout,
        };
        for addr in &config.sip.listen {
            // Bind UDP first so an ephemeral port (0) resolves to one number
            // that TCP then takes too.
            let mut addr = *addr;
            if config.sip.transports.contains(&ListenTransport::Udp) {
                let group = crate::sip_io::bind_group(addr, io_threads)?;
                let asked = addr;
                let err = |source| NetError::Bind {
                    addr: asked,
                    source,
                };
                addr = group[0].local_addr().map_err(err)?;
                info!(%addr, io_threads = group.len(), "SIP listening on UDP");
                bound.push((ListenTransport::Udp, addr));
                // Clones of the group's sockets send: they share the
                // address, and sending steers nothing.
                let out = group
                    .iter()
                    .map(UdpSocket::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(err)?;
                udp.insert(addr, crate::sip_io::Senders::spawn(out, io_spawned, &net)?);
                for sock in group {
                    crate::sip_io::IoThread {
                        sock,
                        local: addr,
                        limits: config.sip.limits.clone(),
                        tx: tx.clone(),
                        metrics: net.clone(),
                        gauge: pressure.reader(now),
                        parse_errors: engine.metrics().sip_parse_errors.clone(),
                    }
                    .spawn(io_spawned)?;
                    // Numbered across addresses: thread names and the
                    // metric's `thread` label stay distinct.
                    io_spawned += 1;
                }
            }
            if config.sip.transports.contains(&ListenTransport::Tcp) {
                let acceptor = acceptor(None);
                let addr = crate::streams::listen(&streams, addr, acceptor)
                    .map_err(|source| NetError::Bind { addr, source })?;
                info!(%addr, "SIP listening on TCP");
                bound.push((ListenTransport::Tcp, addr));
            }
        }
        if let Some(tls) = &config.sip.tls {
            let (server, checks) = crate::tls::server_config(tls, &config.trunks)?;
            let tls_acceptor = (tokio_rustls::TlsAcceptor::from(Arc::new(server)), checks);
            for &addr in &tls.listen {
                // TLS shares the TCP path: one connection cap, one framer,
                // one idle timer, one gauge.
                let acceptor = acceptor(Some(tls_acceptor.clone()));
                let addr = crate::streams::listen(&streams, addr, acceptor)
                    .map_err(|source| NetError::Bind { addr, source })?;
                info!(%addr, "SIP listening on TLS");
                bound.push((ListenTransport::Tls, addr));
            }
        }
        if let Some(&(_, udp_addr)) = bound.iter().find(|(t, _)| *t == ListenTransport::Udp) {
            engine.set_outbound_local(udp_addr);
        }
        // Callbacks are executed only by a node that can place calls;
        // elsewhere they wait, pending, for one that can.
        // The running configuration for the campaigns' scheduler: a
        // reload the engine applies replaces it.
        let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
        // Callbacks that outlive this node: mirrored on the national work
        // stream, each dial fenced there first.
        // The network's key: a file the node cannot use stops it here.
        let network_key = match config.cluster.as_ref().and_then(|c| c.key_file.as_ref()) {
            Some(f) => Some(crate::netkey::NetworkKey::from_file(f)?),
            None => None,
        };
        let (mut work_ready, mut fence, mut work, mut ready_flag) = (None, None, None, None);
        if let (Some(c), Some(sink), Some(d), Some(key)) =
            (&config.cluster, &records, &desks, &network_key)
            && c.durability == centralino_config::Durability::JetStream
        {
            let can_dial = config.trunks.iter().any(|t| t.outbound.is_some());
            let w = crate::work::links(
                c,
                key.clone(),
                sink.handle(),
                d.clone(),
                net.clone(),
                can_dial,
            );
            ready_flag = Some(w.ready.clone());
            work_ready = Some((w.ready, w.claims.clone()));
            fence = Some((w.fence, w.claims));
            work = Some(w.links);
        }
        if let Some(sink) = &records
            && config.trunks.iter().any(|t| t.outbound.is_some())
        {
            info!("executing callbacks (agent first)");
            tokio::spawn(crate::scheduler::callback_scheduler(
                sink.clone(),
                tx.clone(),
                config_rx.clone(),
                draining.clone(),
                work_ready,
            ));
            // Campaigns dial through the same trunks.
            tokio::spawn(crate::campaigns::scheduler(
                sink.handle(),
                tx.clone(),
                draining.clone(),
                config_rx,
                net.clone(),
                desks.clone(),
            ));
        }
        if let Some(&(_, tls_addr)) = bound.iter().find(|(t, _)| *t == ListenTransport::Tls) {
            engine.set_outbound_tls_local(tls_addr);
        }
        // The national network, when this node is in one.
        let mut to_cluster = None;
        if let (Some(cluster), Some(d)) = (&config.cluster, &desks) {
            info!(node = %cluster.node, servers = cluster.nats_urls.len(), "joining the national network");
            // Where another node hands a call over to this one: the
            // first SIP address (UDP), as the operators' phones see it.
            let target = cluster
                .sip_address
                .or_else(|| {
                    bound
                        .iter()
                        .find(|(t, _)| *t == ListenTransport::Udp)
                        .map(|(_, a)| *a)
                })
                .map(|a| a.to_string())
                .unwrap_or_default();
            engine.join_cluster(&cluster.node);
            let (out_tx, out_rx) = mpsc::channel(crate::cluster::OUT_QUEUE);
            to_cluster = Some(out_tx);
            // Its client and the work stream's driver — NATS over TLS,
            // JSON, every record of the work stream opened (AES-GCM) at
            // start, on reconnect and every minute — on the stream
            // threads, not the engine's: they reach the engine by its
            // queue and read what it publishes (desks' views, draining).
            let _inside = streams.enter();
            crate::cluster::spawn(
                cluster.clone(),
                crate::cluster::Links {
                    desks: d.clone(),
                    metrics: net.clone(),
                    draining: draining.clone(),
                    engine: tx.clone(),
                    target,
                    outputs: out_rx,
                    work,
                    key: network_key,
                },
            );
        }
        let mut carriers = HashMap::new();
        for t in &config.trunks {
            if let (Some(remote), Some(tls)) = (t.outbound, &t.outbound_tls) {
                let carrier = crate::tls::carrier(&t.name, tls)?;
                if carriers.insert(remote, (carrier, None)).is_some() {
                    warn!(trunk = %t.name, %remote, "two TLS trunks share an outbound address: the last one's TLS settings apply");
                }
            }
        }
        let clients = Clients {
            carriers,
            // Weak: the engine task must not keep its own input open.
            tx: tx.downgrade(),
            next_conn: next_conn.clone(),
            limits: engine.limits().clone(),
            idle: config.sip.tcp_idle_timeout,
            metrics: net.clone(),
            cluster: to_cluster,
            fence,
            work_ready: ready_flag,
            streams,
        };
        // The store's answers come back through the engine's own queue.
        let answers = tx.downgrade();
        drop(tx);
        if let Some(d) = &desks {
            let (board, slots) = engine.board();
            d.set_board(board, slots);
            d.set_queues(engine.queue_views(Instant::now().into_std()));
        }
        tokio::spawn(crate::pressure::watch_drops(
            bound
                .iter()
                .filter(|(t, _)| *t == ListenTransport::Udp)
                .map(|(_, a)| a.port())
                .collect(),
            net.clone(),
        ));
        // Alive from here: the task beats again on its first turn.
        heartbeat.beat(Instant::now().into_std());
        let nice = config.sip.engine_nice;
        let engine_task = tokio::spawn(crate::sip_io::at_nice(
            nice,
            config.sip.engine_realtime_priority,
            net.engine_realtime_priority.clone(),
            run_engine(
                engine,
                rx,
                answers,
                media_rx,
                plane,
                udp,
                clients,
                records,
                desks,
                heartbeat,
                config.outbound.max_attempts_per_citizen_per_day,
                config_tx,
                crate::pressure::InputLag {
                    pressure,
                    overload: crate::pressure::Overload::new(config.sip.overload_lag),
                    queued: Duration::ZERO,
                    logged: None,
                    episodes: 0,
                },
            ),
        ));
        Ok(Self { bound, engine_task })
    }

    /// Waits for the engine task (it ends when every reader is gone).
    pub async fn join(self) {
        let _ = self.engine_task.await;
    }
}

#[allow(clippy::too_many_arguments)] // The engine task's inputs and outputs, each once.
async fn run_engine(
    mut engine: Engine,
    mut rx: mpsc::Receiver<EngineInput>,
    answers: mpsc::WeakSender<EngineInput>,
    mut media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    mut plane: MediaPlane,
    mut udp: HashMap<SocketAddr, crate::sip_io::Senders>,
    mut clients: Clients,
    records: Option<centralino_store::service::RecordSink>,
    desks: Option<crate::api::Desks>,
    heartbeat: crate::health::Heartbeat,
    max_per_day: u32,
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    mut lag: crate::pressure::InputLag,
) {
    let mut conns: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut browsers = crate::browser::Browsers::default();
    let mut media_events: Vec<MediaEvent> = Vec::new();
    // Call records leave in batches: one store transaction (one fsync)
    // per RECORD_BATCH events or RECORD_FLUSH of time, never per event.
    let mut batch: Vec<centralino_types::record::Record> = Vec::new();
    // The store's answers (virtual-hold requests, "dialling" marks) come
    // back as inputs, in order with the rest.
    let answer = |input: EngineInput| {
        if let Some(tx) = answers.upgrade() {
            tokio::spawn(async move {
                let _ = tx.send(input).await;
            });
        }
    };
    let staffing = crate::staffing::worker(answers.clone());
    let mut flush_at: Option<Instant> = None;
    let mut life = Lifecycle {
        max_per_day,
        config: Some(config_tx),
        ..Lifecycle::default()
    };
    // A tick of its own, so an idle engine beats too; a loop stuck in one
    // turn (or starved among ready inputs) misses it and shows stalled.
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Inputs already queued when the task wakes are taken without waiting,
    // up to BATCH of them, but each is followed by its outputs: an
    // operator's INVITE or a 100 Trying never waits for the rest of the
    // batch (it did: a batch of 256 made the dispatch latency's p99 the
    // batch's length), a browser's answer reaches the gateway before the
    // next input is read, and the media plane has carried out a leave's
    // commands before a supervisor's join is taken.
    let mut budget = 0usize;
    // What is left of a reader's batch of datagrams: each is an input of
    // its own, followed by its outputs, and counts in the turn's budget
    // (a turn takes at most 1 + BATCH inputs, datagrams counted one by
    // one, not batches: timers, media events and the lag signal wait no
    // longer than before).
    let mut pending = Vec::new().into_iter();
    // Inputs taken since the kept sends last left (`SEND_BATCH_INPUTS`).
    let mut taken = 0usize;
    loop {
        // The turn of the stream message taken in this pass, if any.
        let mut turn = None;
        let queued = if budget > 0 {
            budget -= 1;
            match pending.next() {
                Some(d) => Some(Next::Datagram(d)),
                None => rx
                    .try_recv()
                    .ok()
                    .and_then(|i| Next::of(i, &mut pending, &lag.pressure)),
            }
        } else {
            None
        };
        if let Some(input) = queued {
            // The sends kept so far leave every few inputs, not only when
            // the batch ends (see `SEND_BATCH_INPUTS`).
            taken += 1;
            if taken.is_multiple_of(crate::sip_io::SEND_BATCH_INPUTS) {
                udp.values_mut().for_each(crate::sip_io::Senders::flush);
            }
            let now = Instant::now().into_std();
            turn = take_input(
                &mut engine,
                &mut plane,
                &mut browsers,
                &mut conns,
                &mut life,
                &mut lag,
                now,
                input,
                &clients.metrics,
            );
        } else {
            budget = 0;
            taken = 0;
            // The batch's media commands and datagrams, before the task
            // waits: one wake-up per media or sending thread.
            plane.flush();
            udp.values_mut().for_each(crate::sip_io::Senders::flush);
            let deadline = [engine.poll_timeout().map(Instant::from_std), flush_at]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Nothing newer is taken before the rest of a batch.
                input = rx.recv(), if pending.len() == 0 => {
                    let Some(input) = input else { return };
                    let now = Instant::now().into_std();
                    engine.tick_clock(centralino_store::service::unix_now());
                    lag.turn(&mut engine, now, rx.len(), &clients.metrics);
                    let input = Next::of(input, &mut pending, &lag.pressure);
                    if let Some(input) = input {
                        turn = take_input(&mut engine, &mut plane, &mut browsers, &mut conns, &mut life, &mut lag, now, input, &clients.metrics);
                    }
                    budget = BATCH;
                }
                // The rest of a batch the last turn's budget left: it
                // competes with due timers and media events as a queued
                // input did, and nothing newer is taken before it.
                () = std::future::ready(()), if pending.len() > 0 => {
                    let now = Instant::now().into_std();
                    engine.tick_clock(centralino_store::service::unix_now());
                    lag.turn(&mut engine, now, rx.len(), &clients.metrics);
                    budget = BATCH;
                }
                () = sleep => {
                    let now = Instant::now().into_std();
                    engine.tick_clock(centralino_store::service::unix_now());
                    engine.handle_timeout(now);
                }
                Some(event) = media_rx.recv() => {
                    let now = Instant::now().into_std();
                    engine.tick_clock(centralino_store::service::unix_now());
                    engine.handle_media(now, event);
                }
                _ = beat.tick() => heartbeat.beat(Instant::now().into_std()),
            }
        }
        loop {
            let Some(out) = engine.poll_output() else {
                // Refusals from the plane itself (a port vanished) go back
                // to the engine, whose answer is output again.
                if media_events.is_empty() {
                    break;
                }
                let now = Instant::now().into_std();
                for e in media_events.drain(..) {
                    engine.handle_media(now, e);
                }
                continue;
            };
            match out {
                Output::Record(r) => {
                    if records.is_some() {
                        batch.push(r);
                        flush_at.get_or_insert_with(|| Instant::now() + RECORD_FLUSH);
                    }
                }
                Output::Media(cmd) => media_events.extend(plane.command(cmd)),
                Output::ClusterOffer { node, request } => {
                    clients.to_cluster(crate::cluster::ClusterOut::Offer { node, request });
                }
                Output::ClusterNews => clients.to_cluster(crate::cluster::ClusterOut::News),
                Output::SignedOut { agent, out } => {
                    if let Some(d) = &desks {
                        d.set_signed_out(agent, out);
                    }
                }
                Output::AgentsChanged => {
                    if let Some(d) = &desks {
                        let (board, slots) = engine.board();
                        d.set_board(board, slots);
                    }
                }
                Output::Lent(lent) => {
                    if let Some(d) = &desks {
                        d.set_lent(lent);
                    }
                }
                Output::ClusterRelease { node, id } => {
                    clients.to_cluster(crate::cluster::ClusterOut::Release { node, id });
                }
                Output::AgentCall { agent, info } => {
                    if let Some(d) = &desks {
                        d.set(agent, info);
                    }
                }
                Output::Queues(views) => {
                    if let Some(d) = &desks {
                        d.set_queues(views);
                    }
                }
                Output::Campaigns(views) => {
                    if let Some(d) = &desks {
                        d.set_campaigns(views);
                    }
                }
                Output::CallbackState { id, state } => match (&records, state) {
                    (Some(sink), CallbackState::Dialing { call }) if clients.fence.is_some() => {
                        if let Some((f, claims)) = &clients.fence {
                            crate::work::dialing(f, claims, sink, answers.clone(), id, call);
                        }
                    }
                    (Some(sink), CallbackState::Dialing { call }) => {
                        // Queued now, in order with what follows.
                        let marked = sink.mark_dialed(id);
                        if let Some(tx) = answers.upgrade() {
                            tokio::spawn(async move {
                                let recorded = marked.await.unwrap_or(false);
                                let _ = tx
                                    .send(EngineInput::CallbackDialing { call, recorded })
                                    .await;
                            });
                        }
                    }
                    (Some(sink), CallbackState::Requeue { outcome }) => {
                        sink.requeue(id, outcome.as_str());
                    }
                    (Some(sink), CallbackState::Done) => {
                        sink.finish(id, centralino_store::Status::Done, "answered");
                    }
                    (Some(sink), CallbackState::Failed { outcome }) => {
                        sink.finish(id, centralino_store::Status::Failed, outcome.as_str());
                    }
                    (Some(sink), CallbackState::Retry { outcome, after }) => {
                        sink.reschedule(id, after, outcome.as_str());
                    }
                    (None, CallbackState::Dialing { call }) => {
                        answer(EngineInput::CallbackDialing {
                            call,
                            recorded: false,
                        });
                    }
                    (None, _) => {}
                },
                Output::WantContacts { campaign, count } => match (&records, answers.upgrade()) {
                    // Durable work across nodes: no contact is claimed
                    // while the work stream cannot fence its dial.
                    (Some(sink), Some(tx))
                        if clients
                            .work_ready
                            .as_ref()
                            .is_none_or(|r| r.load(Ordering::Relaxed)) =>
                    {
                        let spec = life.campaigns.get(&campaign).cloned();
                        crate::campaigns::claim(
                            sink.handle(),
                            tx,
                            campaign,
                            spec,
                            count,
                            life.max_per_day,
                        );
                    }
                    _ => answer(EngineInput::CampaignContacts {
                        campaign,
                        due: Vec::new(),
                    }),
                },
                Output::ContactState {
                    call,
                    record,
                    state,
                } => {
                    if let (Some(sink), Some(tx)) = (&records, answers.upgrade()) {
                        crate::campaigns::contact_state(
                            &sink.handle(),
                            &tx,
                            &life.campaigns,
                            &call,
                            record,
                            state,
                            clients.fence.as_ref().map(|(f, _)| f),
                        );
                    }
                }
                Output::CallerLookup {
                    call,
                    record,
                    campaigns,
                    number,
                } => {
                    if let (Some(sink), Some(tx)) = (&records, answers.upgrade()) {
                        crate::campaigns::caller_lookup(
                            sink.handle(),
                            tx,
                            call,
                            record,
                            campaigns,
                            number,
                        );
                    }
                }
                Output::Staffing(job) => {
                    if let Some(w) = &staffing {
                        w.ask(job);
                    }
                }
                Output::StoreCallback {
                    call,
                    queue,
                    number,
                    enqueued_unix,
                } => match &records {
                    Some(sink) => {
                        if let Some(tx) = answers.upgrade() {
                            let sink = sink.clone();
                            // Promised from now, as the running
                            // configuration has the queue.
                            let promised_by = life.config.as_ref().and_then(|c| {
                                crate::scheduler::promised_by(
                                    &c.borrow(),
                                    &queue,
                                    centralino_store::service::unix_now(),
                                    None,
                                )
                            });
                            tokio::spawn(async move {
                                let stored = sink
                                    .create_callback(
                                        crate::api::random_id(),
                                        queue,
                                        number,
                                        enqueued_unix,
                                        promised_by,
                                    )
                                    .await
                                    .is_ok();
                                let _ = tx.send(EngineInput::CallbackStored { call, stored }).await;
                            });
                        }
                    }
                    None => answer(EngineInput::CallbackStored {
                        call,
                        stored: false,
                    }),
                },
                Output::Transmit { flow, bytes } => match flow.transport {
                    Transport::Browser => {
                        browsers.transmit(
                            &mut engine,
                            &mut plane,
                            Instant::now().into_std(),
                            flow,
                            &bytes,
                        );
                    }
                    Transport::Udp => {
                        if let Some(out) = udp.get_mut(&flow.local) {
                            out.send(flow.remote, bytes);
                        }
                    }
                    Transport::Tcp | Transport::Tls => {
                        if let Some(tx) = conns.get(&flow.conn) {
                            if tx.try_send(bytes).is_err() {
                                debug!(peer = %flow.remote, "TCP connection congested or closed, message dropped");
                            }
                        } else if flow.transport == Transport::Tls
                            && clients.carriers.contains_key(&flow.remote)
                        {
                            clients.send(&mut conns, flow.remote, bytes);
                        } else {
                            debug!(peer = %flow.remote, "no TCP connection for the flow, message dropped");
                        }
                    }
                },
            }
        }
        // Its outputs are out: the stream's reader may count it answered.
        drop(turn);
        if let Some(sink) = &records
            && (batch.len() >= RECORD_BATCH || flush_at.is_some_and(|t| t <= Instant::now()))
        {
            sink.send(std::mem::take(&mut batch));
            flush_at = None;
        }
        if engine.active_calls() == 0
            && let Some(idle) = life.idle.take()
        {
            let _ = idle.send(());
        }
        if let Some(done) = life.stopped.take() {
            // The BYEs and 503s leave (their sending threads have sent
            // them when this returns); the last records go to the store
            // and are committed before the process may exit.
            udp.values_mut().for_each(crate::sip_io::Senders::finish);
            if let Some(sink) = &records {
                sink.send(std::mem::take(&mut batch));
                sink.flush().await;
            }
            let _ = done.send(());
            return;
        }
    }
}

/// Our TLS connections to carriers, one per trunk outbound address:
/// opened on the first message, reused while open, opened again on the
/// next message once closed (by either side, the idle timer, or a failed
/// handshake). Lives in the engine task, like the connection table.
struct Clients {
    /// Per outbound address: how to reach it, and the connection now.
    carriers: HashMap<SocketAddr, (crate::tls::Carrier, Option<u64>)>,
    tx: mpsc::WeakSender<EngineInput>,
    next_conn: Arc<AtomicU64>,
    limits: Limits,
    idle: Duration,
    metrics: NetMetrics,
    /// The national network's driver (offers and releases to send).
    cluster: Option<mpsc::Sender<crate::cluster::ClusterOut>>,
    /// The work stream's fence before a callback is dialled, and the
    /// claims' tokens it checks.
    fence: Option<(mpsc::Sender<crate::work::Fence>, crate::work::Claims)>,
    /// The work stream is ready (`None`: no durable work across nodes).
    work_ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Where the connections run (`crate::streams`).
    streams: crate::streams::StreamsHandle,
}

impl Clients {
    /// Hands an offer or release to the national network's driver; its
    /// queue full (NATS far behind), the offer is dropped and counted:
    /// the engine's own timeout keeps the call in its place.
    fn to_cluster(&self, out: crate::cluster::ClusterOut) {
        if let Some(tx) = &self.cluster
            && tx.try_send(out).is_err()
        {
            self.metrics
                .cluster_summaries
                .with_label_values(&["dropped"])
                .inc();
        }
    }

    /// Sends `bytes` to the carrier at `remote`, opening the connection
    /// when there is none. Messages wait in the connection's queue while
    /// it opens; if it cannot, they are lost like datagrams to a dead
    /// host, and the transactions' timers fail over.
    fn send(
        &mut self,
        conns: &mut HashMap<u64, mpsc::Sender<Vec<u8>>>,
        remote: SocketAddr,
        bytes: Vec<u8>,
    ) {
        let Some((carrier, current)) = self.carriers.get_mut(&remote) else {
            return;
        };
        if let Some(out) = current.and_then(|c| conns.get(&c)) {
            if out.try_send(bytes).is_err() {
                debug!(peer = %remote, "TLS connection to the carrier congested, message dropped");
            }
            return;
        }
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (out_tx, out_rx) = mpsc::channel(crate::streams::STREAM_QUEUE);
        let _ = out_tx.try_send(bytes);
        let out = (out_tx.downgrade(), out_rx);
        conns.insert(conn, out_tx);
        *current = Some(conn);
        self.streams.connection(crate::streams::tls_client(
            conn,
            remote,
            carrier.clone(),
            out,
            tx,
            self.limits.clone(),
            self.idle,
            self.metrics.clone(),
        ));
    }
}
