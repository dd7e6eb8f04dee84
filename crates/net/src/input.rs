//! One input of the engine task: what the driver does with each message
//! of the engine's queue (`run_engine` in `sip` takes them; this file
//! carries each out), and the shutdown steps that wait on the engine.

use std::collections::HashMap;
use std::sync::Arc;

use centralino_b2bua::Engine;
use centralino_config::Config;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::handle::{Datagram, EngineInput, Reload};
use crate::media::MediaPlane;
use crate::metrics::NetMetrics;

/// Who waits on the engine's shutdown steps.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// Told when no call is left (draining).
    pub(crate) idle: Option<tokio::sync::oneshot::Sender<()>>,
    /// The campaigns running now (as last scheduled), by id.
    pub(crate) campaigns: crate::campaigns::Running,
    /// `outbound.max_attempts_per_citizen_per_day`.
    pub(crate) max_per_day: u32,
    /// Where an applied reload's configuration goes (the campaigns'
    /// scheduler reads it).
    pub(crate) config: Option<tokio::sync::watch::Sender<Arc<Config>>>,
    /// Told once the records of the ended calls are stored.
    pub(crate) stopped: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Inputs the engine task takes from its queue without waiting, after the
/// one that woke it.
pub(crate) const BATCH: usize = 256;

/// One input of the engine task: a datagram of a reader's batch, or
/// anything else its queue carries.
pub(crate) enum Next {
    Datagram(Datagram),
    Input(EngineInput),
}

impl Next {
    /// `input` as the engine task takes it: a batch of datagrams is kept
    /// in `pending` and its first one taken (`None`: an empty batch); it
    /// leaves the queue's count of datagrams (`pressure`).
    pub(crate) fn of(
        input: EngineInput,
        pending: &mut std::vec::IntoIter<Datagram>,
        pressure: &crate::pressure::Pressure,
    ) -> Option<Self> {
        match input {
            EngineInput::Datagrams(batch) => {
                debug_assert!(
                    pending.len() == 0,
                    "a batch taken before the last one's end"
                );
                pressure.taken(batch.len());
                *pending = batch.into_iter();
                pending.next().map(Self::Datagram)
            }
            input => Some(Self::Input(input)),
        }
    }
}

/// One input from the engine's queue: browsers' and supervisors' requests
/// need the media plane, the rest goes to the engine.
#[allow(clippy::too_many_arguments)]
pub(crate) fn take_input(
    engine: &mut Engine,
    plane: &mut MediaPlane,
    browsers: &mut crate::browser::Browsers,
    conns: &mut HashMap<u64, mpsc::Sender<Vec<u8>>>,
    life: &mut Lifecycle,
    lag: &mut crate::pressure::InputLag,
    now: std::time::Instant,
    input: Next,
    net: &NetMetrics,
) -> Option<Turn> {
    match input {
        Next::Datagram(d) => {
            lag.queued = lag.queued.max(now.saturating_duration_since(d.read_at));
            engine.handle_framed_read(now, d.read_at, d.flow, d.framed);
        }
        Next::Input(EngineInput::Browser(b)) => browsers.input(engine, plane, now, b),
        Next::Input(EngineInput::Monitor(m)) => crate::monitor::input(engine, plane, now, m),
        Next::Input(input) => return handle(engine, conns, life, now, input, net),
    }
    None
}

/// A stream message's turn ([`EngineInput::Framed`]), held until the
/// engine's outputs for it are out: its connection's reader waits for
/// every turn back before a close, so what it read is answered first.
pub(crate) type Turn = tokio::sync::OwnedSemaphorePermit;

fn handle(
    engine: &mut Engine,
    conns: &mut HashMap<u64, mpsc::Sender<Vec<u8>>>,
    life: &mut Lifecycle,
    now: std::time::Instant,
    input: EngineInput,
    net: &NetMetrics,
) -> Option<Turn> {
    match input {
        EngineInput::Drain(idle) => {
            engine.set_draining();
            life.idle = Some(idle);
        }
        EngineInput::Shutdown(done) => {
            engine.shutdown(now);
            life.stopped = Some(done);
        }
        // Taken by the engine task one by one (`Next`).
        EngineInput::Datagrams(_) => {}
        EngineInput::Framed { flow, framed, turn } => {
            engine.handle_framed(now, flow, framed);
            // Given back by the caller once the outputs are out.
            return Some(turn);
        }
        EngineInput::ConnOpen { conn, tx, trunks } => {
            conns.insert(conn, tx);
            engine.connection_opened(conn, trunks);
        }
        EngineInput::ConnClosed { conn } => {
            conns.remove(&conn);
            engine.connection_closed(conn);
        }
        EngineInput::ConnFailed { remote } => engine.connection_failed(now, remote),
        // Taken by the engine task before `handle` (it needs the plane).
        EngineInput::Browser(_) | EngineInput::Monitor(_) => {}
        EngineInput::Callbacks(due) => {
            for cb in due {
                engine.start_callback(now, cb);
            }
        }
        EngineInput::CallbackRooms(reply) => {
            let _ = reply.send(engine.callback_rooms());
        }
        EngineInput::CallbackStored { call, stored } => engine.callback_stored(now, call, stored),
        EngineInput::Staffing { job, needed } => {
            engine.staffing_computed(now, job.queue, job.asked, needed);
        }
        EngineInput::CampaignNumbers(numbers) => engine.set_campaign_numbers(numbers),
        EngineInput::RemoteOffer {
            req,
            target,
            peer,
            reply,
        } => {
            let _ = reply.send(engine.remote_offer(now, &req, &target, peer));
        }
        EngineInput::ClusterPeers {
            peers,
            lent_elsewhere,
        } => engine.cluster_peers(now, peers, lent_elsewhere),
        EngineInput::ClusterReply { node, reply } => engine.cluster_reply(now, &node, *reply),
        EngineInput::RemoteRelease { id, from } => engine.remote_release(now, &id, &from),
        EngineInput::CallerKnown {
            call,
            record,
            campaign,
            contact,
            desk,
        } => engine.caller_known(call, &record, campaign, contact, desk),
        EngineInput::CampaignTick(list) => {
            let runs: Vec<centralino_b2bua::CampaignRun> =
                list.iter().map(|(r, _)| r.clone()).collect();
            life.campaigns = list.into_iter().map(|(r, s)| (r.id, s)).collect();
            engine.campaign_tick(now, &runs);
        }
        EngineInput::CampaignContacts { campaign, due } => {
            engine.campaign_contacts(now, &campaign, due);
        }
        EngineInput::CallbackDialing { call, recorded } => {
            engine.callback_dialing(now, call, recorded);
        }
        EngineInput::CallbackHeld { call } => engine.callback_held(now, call),
        EngineInput::CallbackGone { call } => engine.callback_gone(now, call),
        EngineInput::Pause {
            agent,
            paused,
            reason,
            reply,
        } => {
            let _ = reply.send(engine.set_agent_paused(now, &agent, paused, reason));
        }
        EngineInput::SignOut {
            agent,
            reason,
            reply,
        } => {
            let _ = reply.send(engine.sign_out_agent(now, &agent, reason));
        }
        EngineInput::Preview {
            agent,
            contact,
            accept,
            reply,
        } => {
            let _ = reply.send(engine.preview_decision(now, &agent, contact, accept));
        }
        EngineInput::Reload(r) => {
            let Reload {
                reply,
                config,
                prompts,
                music,
            } = *r;
            let result = engine.reload(Instant::now().into_std(), &config.engine());
            if let Some(reply) = reply {
                let _ = reply.send(result.clone());
            }
            match result {
                Ok(()) => {
                    engine.set_prompts(prompts, music);
                    // A supervisor whose token is gone, or whose firm no
                    // longer covers the call, stops hearing it now.
                    let revoked = engine.revalidate_monitors(now, |name, firm| {
                        config.api_tokens.iter().any(|t| {
                            t.name == name
                                && t.role == centralino_config::Role::Supervisor
                                && t.tenant.as_deref().is_none_or(|tt| tt == firm)
                        })
                    });
                    if revoked > 0 {
                        info!(revoked, "supervisors taken off calls by the reload");
                    }
                    life.max_per_day = config.outbound.max_attempts_per_citizen_per_day;
                    if let Some(tx) = &life.config {
                        let _ = tx.send(Arc::new(config));
                    }
                    net.config_reloads.with_label_values(&["applied"]).inc();
                }
                Err(why) => {
                    warn!(reason = %why, "configuration reload refused, the running one stays");
                    net.config_reloads.with_label_values(&["refused"]).inc();
                }
            }
        }
    }
    None
}
