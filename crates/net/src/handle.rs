//! The engine's control surface: the typed input its task reads (network
//! input, reloads, callbacks, drain, shutdown, pauses) and the handle the
//! rest of the node holds to send it. The API and `main` speak to the
//! engine through this module only, never through the SIP driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use centralino_b2bua::DueCallback;
use centralino_config::Config;
use centralino_sip::guard::{Framed, Rejection};
use centralino_sip::txn::Flow;
use centralino_types::CallId;
use tokio::sync::mpsc;

/// Inputs queued between their senders and the engine task. A reader's
/// batch of datagrams is one input; the readers also keep their
/// datagrams in the queue under `pressure::MAX_QUEUED_DATAGRAMS`, the
/// same number, so the queue holds as many UDP datagrams as when each was
/// an input of its own, however they are batched (other inputs, TCP and
/// TLS messages among them, take the slots the batches leave).
const INPUT_QUEUE: usize = 65_536;

/// A UDP datagram, framed by the I/O thread that read it.
pub struct Datagram {
    /// Where it came from and arrived.
    pub flow: Flow,
    /// The message or its rejection.
    pub framed: Result<Framed, Rejection>,
    /// When its reader took it off the socket (its wait in the input
    /// queue is part of the node's lag).
    pub read_at: std::time::Instant,
}

/// Everything the engine task reads, in one queue: network input from the
/// listeners, answers from the store, and orders from the API and `main`
/// (through [`EngineHandle`]). One queue keeps their order, and its length
/// is the engine's backlog (overload protection).
pub enum EngineInput {
    /// UDP datagrams one I/O thread read in a row (at most
    /// `sip_io::READ_BATCH`), framed: one hand-over, one wake-up of the
    /// engine for all of them.
    Datagrams(Vec<Datagram>),
    /// A message framed off a TCP/TLS stream, or why it could not be.
    Framed {
        /// The connection's flow.
        flow: Flow,
        /// The message or its rejection.
        framed: Result<Framed, Rejection>,
        /// The connection's turn: held until the engine has handled the
        /// message and its answers are in the connection's queue (at most
        /// `streams::IN_FLIGHT` per connection).
        turn: tokio::sync::OwnedSemaphorePermit,
    },
    /// A connection opened: its writer.
    ConnOpen {
        /// Connection number.
        conn: u64,
        /// Its writer.
        tx: mpsc::Sender<Vec<u8>>,
        /// Trunks (by name) whose client certificate the connection
        /// presented: sent before its first message, on the same channel,
        /// so the engine knows who speaks before it reads a word.
        trunks: Vec<String>,
    },
    /// A browser desktop's phone (the WebRTC gateway).
    Browser(crate::browser::BrowserIn),
    /// A supervisor joins, changes mode on or leaves an operator's call.
    Monitor(crate::monitor::MonitorIn),
    /// A connection closed.
    ConnClosed {
        /// Connection number.
        conn: u64,
    },
    /// Our TLS connection to a carrier could not be opened: what was
    /// queued on it is lost.
    ConnFailed {
        /// The carrier.
        remote: SocketAddr,
    },
    /// A new configuration (SIGHUP, the API).
    Reload(Box<Reload>),
    /// Callbacks the scheduler claimed, to be started.
    Callbacks(Vec<DueCallback>),
    /// The scheduler asks, just before it claims, how many callbacks each
    /// queue can take now (`Engine::callback_rooms`).
    CallbackRooms(tokio::sync::oneshot::Sender<Vec<(String, u32)>>),
    /// The campaigns running inside their windows now, with their
    /// definitions (every second).
    CampaignTick(
        Vec<(
            centralino_b2bua::CampaignRun,
            Arc<centralino_campaigns::spec::Spec>,
        )>,
    ),
    /// Another node offers one of its waiting calls to this node's
    /// operators (the national network).
    RemoteOffer {
        /// The request.
        req: Box<centralino_cluster::OfferRequest>,
        /// This node's SIP address for the hand-over.
        target: String,
        /// The asking node's published SIP address, if it is known.
        peer: Option<SocketAddr>,
        /// The grant or the refusal.
        reply: tokio::sync::oneshot::Sender<centralino_cluster::OfferReply>,
    },
    /// The other nodes' queues with operators free, and what they lend
    /// under agreements (each heartbeat).
    ClusterPeers {
        /// Queues with operators free.
        peers: Vec<centralino_cluster::PeerQueue>,
        /// (borrower, lender, calls) lent by the other nodes.
        lent_elsewhere: Vec<(String, String, u32)>,
    },
    /// Another node answered one of this node's offers.
    ClusterReply {
        /// The node.
        node: String,
        /// Its grant or refusal.
        reply: Box<centralino_cluster::OfferReply>,
    },
    /// Another node lets a grant go.
    RemoteRelease {
        /// The offer.
        id: String,
        /// The node that asked for it.
        from: String,
    },
    /// The running campaigns' numbers (caller IDs): (number, campaign
    /// id, its queue), when they change.
    CampaignNumbers(Vec<(String, String, String)>),
    /// The caller of a call to a campaign's number is one of its contacts.
    CallerKnown {
        /// The call.
        call: CallId,
        /// Its record id.
        record: String,
        /// The campaign's name.
        campaign: String,
        /// The contact's id.
        contact: i64,
        /// What the operator's desk shows of them.
        desk: Vec<(String, String)>,
    },
    /// Contacts claimed for a campaign's pacer (maybe none).
    CampaignContacts {
        /// Campaign id.
        campaign: String,
        /// The attempts to start.
        due: Vec<DueCallback>,
    },
    /// The staffing worker's answer to an Erlang A question.
    Staffing {
        /// The question.
        job: Box<centralino_b2bua::StaffingJob>,
        /// Its answer.
        needed: Option<u32>,
    },
    /// The store's answer to a virtual-hold request.
    CallbackStored {
        /// The caller's call.
        call: CallId,
        /// The request is stored.
        stored: bool,
    },
    /// The store's answer to a callback's "dialling" mark.
    CallbackDialing {
        /// The callback's call.
        call: CallId,
        /// The mark is stored: the citizen may be dialled.
        recorded: bool,
    },
    /// A callback's dial could not be fenced on the national work stream:
    /// not dialled, back to pending without counting the attempt.
    CallbackHeld {
        /// The callback's call.
        call: CallId,
    },
    /// A callback's dial was refused by the national work stream (another
    /// node owns it now): not dialled, nothing recorded of it here.
    CallbackGone {
        /// The callback's call.
        call: CallId,
    },
    /// Graceful shutdown: refuse new calls; say when none is left.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// End every call, flush the records, stop.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// An operator pauses or resumes from their desktop.
    Pause {
        /// The operator.
        agent: String,
        /// Pause (or resume).
        paused: bool,
        /// Why (`pausa_pranzo`).
        reason: Option<String>,
        /// Their state after it, or why not.
        reply:
            tokio::sync::oneshot::Sender<Result<&'static str, centralino_b2bua::AgentStateError>>,
    },
    /// An operator signs out of the service (their desk, a supervisor).
    SignOut {
        /// The operator.
        agent: String,
        /// Why (`fine_turno`).
        reason: Option<String>,
        /// `logged_out` or `logging_out` (after their call), or why not.
        reply:
            tokio::sync::oneshot::Sender<Result<&'static str, centralino_b2bua::AgentStateError>>,
    },
    /// A preview campaign's operator accepts or skips the contact on
    /// their desk.
    Preview {
        /// The operator.
        agent: String,
        /// The contact they answer for (the one their desk shows).
        contact: i64,
        /// Accept (dial) or skip.
        accept: bool,
        /// Done, or why not.
        reply: tokio::sync::oneshot::Sender<Result<(), centralino_b2bua::PreviewError>>,
    },
}

/// A new configuration for the engine, with its prompts already loaded.
pub struct Reload {
    /// Told whether the engine applied it.
    pub(crate) reply:
        Option<tokio::sync::oneshot::Sender<Result<(), centralino_b2bua::ReloadRefused>>>,
    pub(crate) config: Config,
    pub(crate) prompts: Arc<centralino_media::announce::Library>,
    pub(crate) music: Vec<Option<centralino_media::prompt::Prompt>>,
}

/// Why a configuration handed to the engine was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EngineReloadError {
    /// Loading the prompts it names failed (their task died).
    #[error("prompt loading failed")]
    Prompts,
    /// The engine task is gone.
    #[error("the engine is not running")]
    NotRunning,
    /// The engine dropped the request unanswered.
    #[error("the engine did not answer")]
    NoAnswer,
    /// The engine refused it and keeps its configuration.
    #[error(transparent)]
    Refused(centralino_b2bua::ReloadRefused),
}

/// The engine's side of its queue: what `SipServer::start` runs the
/// engine on.
pub struct EngineInbox {
    pub(crate) rx: mpsc::Receiver<EngineInput>,
    pub(crate) handle: EngineHandle,
}

/// How the rest of the node speaks to the engine (the API, signals,
/// `main`); clones share one queue and one draining flag.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) tx: mpsc::Sender<EngineInput>,
    /// Set once a drain starts: `/healthz` says draining, the callback
    /// scheduler stops claiming. The engine keeps its own state, told by
    /// the same drain.
    pub(crate) draining: Arc<AtomicBool>,
}

impl EngineHandle {
    /// A handle and the inbox the engine will read; the queue exists
    /// before the engine runs, so the API holds a handle from the start
    /// (what it sends waits in the queue).
    pub fn new() -> (Self, EngineInbox) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let handle = Self {
            tx,
            draining: Arc::new(AtomicBool::new(false)),
        };
        (handle.clone(), EngineInbox { rx, handle })
    }

    /// The draining flag, for `/healthz`.
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Loads the prompts the configuration names (off the engine task)
    /// and hands it over; the engine applies what can change live.
    pub async fn reload(&self, config: Config) -> Result<(), EngineReloadError> {
        let loaded = tokio::task::spawn_blocking(move || {
            let (prompts, music) = crate::prompts::load(&config);
            (config, prompts, music)
        })
        .await
        .map_err(|_| EngineReloadError::Prompts)?;
        let (config, prompts, music) = loaded;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::Reload(Box::new(Reload {
                reply: Some(reply),
                config,
                prompts,
                music,
            })))
            .await
            .map_err(|_| EngineReloadError::NotRunning)?;
        answer
            .await
            .map_err(|_| EngineReloadError::NoAnswer)?
            .map_err(EngineReloadError::Refused)
    }

    /// Starts draining (new calls get 503, no callback is started); the
    /// answer comes once no call is left.
    pub async fn drain(&self) -> tokio::sync::oneshot::Receiver<()> {
        self.draining.store(true, Ordering::Relaxed);
        let (idle, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(EngineInput::Drain(idle)).await;
        rx
    }

    /// Ends every call left, writes the call records out and stops the
    /// engine; returns once the store has them.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let (done, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(EngineInput::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Pauses (with an optional reason) or resumes an operator: the state
    /// they are in after it, or why not. `Err(None)`: the engine is gone.
    pub async fn set_paused(
        &self,
        agent: String,
        paused: bool,
        reason: Option<String>,
    ) -> Result<&'static str, Option<centralino_b2bua::AgentStateError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::Pause {
                agent,
                paused,
                reason,
                reply,
            })
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }

    /// Supervisor `supervisor` of firm `firm` (`None`: every firm's)
    /// joins operator `agent`'s conversation in `mode` from a browser
    /// offering `offer`. `Err(None)`: the engine is gone.
    pub async fn monitor_start(
        &self,
        agent: String,
        (supervisor, firm): (String, Option<String>),
        mode: centralino_media::monitor::MonitorMode,
        offer: String,
    ) -> Result<crate::monitor::Joined, Option<crate::monitor::MonitorRefused>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::Monitor(crate::monitor::MonitorIn::Start {
                agent,
                supervisor,
                firm,
                mode,
                offer,
                reply,
            }))
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }

    /// The supervisor on `agent`'s call changes mode (`Some`) or leaves
    /// (`None`): the call's record id. `Err(None)`: the engine is gone.
    pub async fn monitor_set(
        &self,
        agent: String,
        supervisor: String,
        mode: Option<centralino_media::monitor::MonitorMode>,
    ) -> Result<String, Option<crate::monitor::MonitorRefused>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::Monitor(crate::monitor::MonitorIn::Set {
                agent,
                supervisor,
                mode,
                reply,
            }))
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }

    /// Signs an operator out of the service: `logged_out`, or
    /// `logging_out` until their call ends. `Err(None)`: the engine is
    /// gone.
    pub async fn sign_out(
        &self,
        agent: String,
        reason: Option<String>,
    ) -> Result<&'static str, Option<centralino_b2bua::AgentStateError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::SignOut {
                agent,
                reason,
                reply,
            })
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }

    /// A preview's operator accepts or skips `contact`. `Err(None)`: the
    /// engine is gone.
    pub async fn preview(
        &self,
        agent: String,
        contact: i64,
        accept: bool,
    ) -> Result<(), Option<centralino_b2bua::PreviewError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(EngineInput::Preview {
                agent,
                contact,
                accept,
                reply,
            })
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }
}
