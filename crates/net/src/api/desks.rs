//! Operator desks as the API keeps them: each operator's current call and
//! events, the board and the supervisors' queue views, fed by the engine.

use super::reports::rome_midnight;
use super::*;
use std::time::{Duration, Instant};

/// What each operator's desktop shows, kept by the engine task. Desktops
/// follow it over a WebSocket; each operator's desk is a `watch` channel:
/// the latest state wins, so a slow desktop sees the current call, never a
/// backlog of stale ones, and the engine task never waits for a browser.
#[derive(Clone, Default)]
pub struct Desks {
    /// By configured operator name (the faster hash: see `OwnKeys`).
    pub(super) desks: Arc<std::sync::Mutex<HashMap<String, Desk, centralino_sip::OwnKeys>>>,
    /// (reader, call) pairs already in the audit log (bounded).
    pub(super) read: Arc<std::sync::Mutex<HashSet<(String, String)>>>,
    /// The queues as supervisors see them, published by the engine task.
    pub(super) queues: Arc<tokio::sync::watch::Sender<Arc<Vec<QueueView>>>>,
    /// The operators' state words (read lock-free) and each one's slot.
    pub(super) board: Arc<std::sync::RwLock<Option<BoardView>>>,
    /// The running campaigns as the engine publishes them with the queues.
    pub(super) campaigns: Arc<tokio::sync::watch::Sender<Arc<Vec<CampaignView>>>>,
    /// Each running campaign's contacts by status (the store's count, by
    /// campaign id, refreshed every 10 s by the campaigns' scheduler).
    pub(super) progress: Arc<std::sync::Mutex<Progress>>,
    /// The national network as this node sees it (`None`: alone).
    pub(super) cluster: Arc<std::sync::Mutex<Option<crate::cluster::Picture>>>,
    /// What this node lends under agreements now (borrower, lender,
    /// calls), as the engine last said.
    pub(super) lent: Arc<std::sync::Mutex<Vec<(String, String, u32)>>>,
    /// Operators signed out of the service (their phones may be
    /// registered), as the engine last said.
    pub(super) signed_out: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Each running campaign's contacts by status, by campaign id.
pub(crate) type Progress = HashMap<String, Vec<(&'static str, u64)>>;

/// The routing board and each operator's slot on it.
pub(super) type BoardView = (
    Arc<centralino_routing::board::Board>,
    HashMap<String, usize>,
);

pub(super) struct Desk {
    /// The latest changes, oldest first, each with its number on this
    /// desk: a desktop a little behind still gets every transition
    /// (offered, connected, idle) in order. Bounded: one further behind
    /// gets the current state and how many it missed.
    /// Shared, not copied: every desktop reading a change gets the same
    /// call, and a kept change costs 16 bytes besides its call.
    pub(super) events: std::collections::VecDeque<(u64, Option<Arc<AgentCall>>)>,
    /// The newest event's number, for desktops to wait on.
    pub(super) seq: tokio::sync::watch::Sender<u64>,
    /// The last call shown (an operator finishes the script after it).
    pub(super) last_call: Option<String>,
    /// That call's script, which the operator may still read.
    pub(super) last_script: Option<String>,
    /// What that call was: a campaign's (its contact's outcome) or not,
    /// and whether it was a consultation (no outcome at all).
    pub(super) last_kind: CallKind,
    /// The operator's own calls today, for their desktop.
    pub(super) today: Today,
    /// Calls of the firm the operator had before a reload moved them
    /// (those on the desk then): none of them becomes the last call
    /// again, and their scripts are not read from here.
    pub(super) barred: Vec<String>,
}

/// An operator's calls answered and talk time since midnight in Rome, as
/// this node saw them (counted from the desk's news: a restart starts
/// again from zero; the store's reports are the record). A call counts
/// for the day it was answered.
#[derive(Clone, Debug, Default)]
pub(super) struct Today {
    /// The day they count for (Unix seconds of its midnight in Rome).
    pub(super) day: i64,
    pub(super) calls: u32,
    pub(super) talk: Duration,
    /// The call they talk on now, since when, and the day it was answered.
    pub(super) talking: Option<(String, Instant, i64)>,
}

impl Today {
    /// Takes the desk's news: a call answered starts counting, anything
    /// else ends the talk counted so far.
    pub(super) fn news(&mut self, info: Option<&AgentCall>, day: i64, now: Instant) {
        if self.day != day {
            self.day = day;
            self.calls = 0;
            self.talk = Duration::ZERO;
        }
        // A colleague's consultation is no citizen's call of theirs.
        let connected = info.filter(|i| i.state == DeskState::Connected && !i.consultation);
        if let (Some((call, _, _)), Some(c)) = (&self.talking, connected)
            && *call == c.call
        {
            return;
        }
        if let Some((_, since, answered)) = self.talking.take()
            && answered == day
        {
            self.talk += now.saturating_duration_since(since);
        }
        if let Some(c) = connected {
            self.calls += 1;
            self.talking = Some((c.call.clone(), now, day));
        }
    }

    /// Calls and talk time on `day` (the current call's so far included).
    pub(super) fn at(&self, day: i64, now: Instant) -> (u32, Duration) {
        if self.day != day {
            return (0, Duration::ZERO);
        }
        let talking = match &self.talking {
            Some((_, since, answered)) if *answered == day => now.saturating_duration_since(*since),
            _ => Duration::ZERO,
        };
        (self.calls, self.talk + talking)
    }
}

/// What an answered call was, for its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallKind {
    /// A citizen who called (or a callback): an inbound outcome.
    Citizen,
    /// A campaign's contact (or one calling back): the campaign's codes.
    Campaign,
    /// A colleague's consultation: no outcome.
    Consultation,
}

/// Changes kept per desk for desktops that fall behind: four calls of
/// three changes (offered, connected, over; a preview campaign's call has
/// four). A desktop follows its desk as each change is made; only one
/// more than that behind (a frozen or stalled page) gets just the current
/// state and how many changes it missed, and with it no disposition form
/// for a call it never saw connected. Every operator's desk keeps this
/// many after their calls, whatever their shift: at 64 (200 bytes each,
/// in a buffer grown to 128, each with its own copy of the call's view:
/// IVR answers, a campaign contact's data) a desk held ≈ 27 KB after a few
/// dozen calls (measured: 22 MiB over 800 operators), ≈ 1.1 GB for 40,000;
/// now 12 × 16 bytes and at most eight views (a call's offered and
/// connected changes are two), each shared by every desktop reading it.
pub(super) const DESK_EVENTS: usize = 12;

impl Desk {
    pub(super) fn new() -> Self {
        Self {
            events: {
                // Full size at once: a desk's changes never move to a
                // larger buffer while its operator takes calls.
                let mut e = std::collections::VecDeque::with_capacity(DESK_EVENTS);
                e.push_back((0, None));
                e
            },
            seq: tokio::sync::watch::Sender::new(0),
            last_call: None,
            last_script: None,
            last_kind: CallKind::Citizen,
            today: Today::default(),
            barred: Vec::new(),
        }
    }

    pub(super) fn newest(&self) -> (u64, Option<Arc<AgentCall>>) {
        self.events.back().cloned().unwrap_or((0, None))
    }

    /// The newest change's number (without copying its call).
    pub(super) fn newest_seq(&self) -> u64 {
        self.events.back().map_or(0, |e| e.0)
    }
}

/// What a desktop that has seen a desk up to some number gets next.
#[derive(Debug, PartialEq)]
pub(super) enum Since {
    /// Every change after it, in order, and the newest number.
    Events(Vec<Option<Arc<AgentCall>>>, u64),
    /// Too far behind: the current state, how many changes before it were
    /// not delivered one by one, and the newest number.
    Gap(Option<Arc<AgentCall>>, u64, u64),
}

impl Desks {
    /// The engine's latest queue views.
    pub fn set_queues(&self, views: Vec<QueueView>) {
        self.queues.send_replace(Arc::new(views));
    }

    /// The engine's latest campaign views.
    pub fn set_campaigns(&self, views: Vec<CampaignView>) {
        self.campaigns.send_if_modified(|now| {
            let changed = **now != views;
            if changed {
                *now = Arc::new(views);
            }
            changed
        });
    }

    /// What this node lends now under agreements.
    pub(crate) fn set_lent(&self, lent: Vec<(String, String, u32)>) {
        *self.lent.lock().unwrap_or_else(|e| e.into_inner()) = lent;
    }

    /// See [`Self::set_lent`].
    pub(crate) fn lent(&self) -> Vec<(String, String, u32)> {
        self.lent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The national network as this node sees it now.
    pub(crate) fn set_cluster(&self, picture: crate::cluster::Picture) {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(picture);
    }

    /// The running campaigns' contacts by status (replacing the last
    /// count: campaigns no longer listed are gone).
    pub fn set_campaign_progress(&self, progress: Progress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = progress;
    }

    /// The latest queue views (one `Arc` per publication: the same one
    /// until the engine publishes again).
    pub fn queues(&self) -> Arc<Vec<QueueView>> {
        self.queues.borrow().clone()
    }

    /// Where desktops read their operator's state (available, paused...).
    pub fn set_board(
        &self,
        board: Arc<centralino_routing::board::Board>,
        slots: HashMap<String, usize>,
    ) {
        *self.board.write().unwrap_or_else(|e| e.into_inner()) = Some((board, slots));
    }

    /// The engine signed `agent` out of the service (`out`) or back in.
    pub fn set_signed_out(&self, agent: String, out: bool) {
        let mut set = self
            .signed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if out {
            set.insert(agent);
        } else {
            set.remove(&agent);
        }
    }

    /// The operator's state now: its label and, paused, why (logged out:
    /// `signed_out` when they left the service, whatever their phones).
    pub(super) fn agent_state(&self, agent: &str) -> Option<(&'static str, Option<&'static str>)> {
        let view = self.board.read().unwrap_or_else(|e| e.into_inner());
        let (board, slots) = view.as_ref()?;
        let slot = board.load(*slots.get(agent)?);
        let why = match slot.code {
            centralino_routing::Code::Paused => {
                Some(centralino_routing::PauseReason::from_aux(slot.aux).label())
            }
            centralino_routing::Code::LoggedOut
                if self
                    .signed_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(agent) =>
            {
                Some("signed_out")
            }
            _ => None,
        };
        Some((slot.code.label(), why))
    }

    /// Seconds since the operator's state or reason last changed.
    pub(super) fn seconds_in_state(&self, agent: &str) -> Option<u32> {
        let view = self.board.read().unwrap_or_else(|e| e.into_inner());
        let (board, slots) = view.as_ref()?;
        board.seconds_in_state(*slots.get(agent)?, unix_now())
    }

    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Desk, centralino_sip::OwnKeys>> {
        self.desks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The engine's news for `agent`'s desk: a call offered or connected,
    /// or `None` once it is over for them.
    pub fn set(&self, agent: String, info: Option<AgentCall>) {
        let mut desks = self.lock();
        let desk = desks.entry(agent).or_insert_with(Desk::new);
        // Only a call they answered: a ringing phone gives no right to
        // the call's record.
        if let Some(i) = info
            .as_ref()
            .filter(|i| i.state == DeskState::Connected && !desk.barred.contains(&i.call))
        {
            desk.last_call = Some(i.call.clone());
            desk.last_script.clone_from(&i.script);
            desk.last_kind = if i.consultation {
                CallKind::Consultation
            } else if i.campaign.is_some() {
                CallKind::Campaign
            } else {
                CallKind::Citizen
            };
        }
        let day = rome_midnight(unix_now());
        desk.today.news(info.as_ref(), day, Instant::now());
        let seq = desk.newest_seq() + 1;
        while desk.events.len() >= DESK_EVENTS {
            desk.events.pop_front();
        }
        desk.events.push_back((seq, info.map(Arc::new)));
        desk.seq.send_replace(seq);
    }

    /// The operator's calls answered and talk time today (see [`Today`]).
    pub(super) fn today(&self, agent: &str) -> (u32, Duration) {
        let day = rome_midnight(unix_now());
        self.lock()
            .get(agent)
            .map_or((0, Duration::ZERO), |d| d.today.at(day, Instant::now()))
    }

    pub(super) fn current(&self, agent: &str) -> Option<Arc<AgentCall>> {
        self.lock().get(agent).and_then(|d| d.newest().1)
    }

    /// Follows `agent`'s desk (a configured operator: the caller checks):
    /// the newest change's number moves on each change.
    pub(super) fn watch(&self, agent: &str) -> tokio::sync::watch::Receiver<u64> {
        self.lock()
            .entry(agent.to_owned())
            .or_insert_with(Desk::new)
            .seq
            .subscribe()
    }

    /// The newest change's number and the state it left, together.
    pub(super) fn snapshot(&self, agent: &str) -> (u64, Option<Arc<AgentCall>>) {
        self.lock().get(agent).map_or((0, None), Desk::newest)
    }

    /// What follows change number `seen` on `agent`'s desk.
    pub(super) fn since(&self, agent: &str, seen: u64) -> Since {
        let desks = self.lock();
        let Some(desk) = desks.get(agent) else {
            return Since::Events(Vec::new(), seen);
        };
        let newest = desk.newest_seq();
        let oldest = desk.events.front().map_or(0, |e| e.0);
        if seen + 1 < oldest {
            return Since::Gap(desk.newest().1, newest - seen - 1, newest);
        }
        let events = desk
            .events
            .iter()
            .filter(|(n, _)| *n > seen)
            .map(|(_, e)| e.clone())
            .collect();
        Since::Events(events, newest.max(seen))
    }

    /// Whether `reader` reads `call` for the first time (recently: the set
    /// is forgotten past 10,000 pairs, at worst auditing a read twice).
    pub(super) fn first_read(&self, reader: &str, call: &str) -> bool {
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read.len() >= 10_000 {
            read.clear();
        }
        read.insert((reader.to_owned(), call.to_owned()))
    }

    /// Whether `agent`'s desk may show script `name`: the script of a call
    /// among its recent changes (offered or talked on), or of the call
    /// they last talked on. The calls that reached the desk say which
    /// scripts it needs (a national script serves every firm's queues;
    /// a call lent under an agreement rings the lender's operator on the
    /// lender's own same-named queue, with that queue's script). The
    /// handler also checks a firm's own script against the operator's
    /// firm, as the configuration stands now.
    pub(super) fn may_read_script(&self, agent: &str, name: &str) -> bool {
        self.lock().get(agent).is_some_and(|d| {
            d.last_script.as_deref() == Some(name)
                || d.events.iter().any(|(_, e)| {
                    e.as_ref()
                        .filter(|c| !d.barred.contains(&c.call))
                        .and_then(|c| c.script.as_deref())
                        == Some(name)
                })
        })
    }

    /// Each of `agents` with their desk's newest change number now (0:
    /// no desk yet).
    pub(super) fn marks(&self, agents: &[String]) -> Vec<(String, u64)> {
        let desks = self.lock();
        agents
            .iter()
            .map(|a| (a.clone(), desks.get(a).map_or(0, Desk::newest_seq)))
            .collect()
    }

    /// Forgets the last call of each operator of `marks` (their firm
    /// changed, or they were removed, by a reload; the mark: their desk's
    /// newest change before it): the name's desk under its new firm has
    /// no right to the old firm's call, its answers, its disposition or
    /// its script (TEST-MATRIX D12). The calls on the desk up to the mark
    /// (one still ringing, answered after this, included) are barred from
    /// becoming its last call again; a call offered after it is the new
    /// firm's.
    pub(super) fn forget_last_calls(&self, marks: &[(String, u64)]) {
        let mut desks = self.lock();
        for (a, mark) in marks {
            let Some(d) = desks.get_mut(a) else {
                continue;
            };
            let calls = |after: bool| {
                d.events
                    .iter()
                    .filter(move |(seq, _)| (seq > mark) == after)
                    .filter_map(|(_, e)| e.as_ref())
                    .map(|c| c.call.clone())
                    .collect::<Vec<String>>()
            };
            let (mut barred, later) = (calls(false), calls(true));
            // The last call answered before the mark (or so long before
            // that its events are gone) is the old firm's.
            if let Some(l) = d.last_call.as_ref().filter(|l| !later.contains(l)) {
                barred.push(l.clone());
            }
            if d.last_call.as_ref().is_some_and(|l| barred.contains(l)) {
                d.last_call = None;
                d.last_script = None;
            }
            barred.dedup();
            d.barred = barred;
        }
    }

    /// Whether `call` is the call `agent` talks on or last talked on.
    pub(super) fn had_call(&self, agent: &str, call: &str) -> bool {
        self.lock()
            .get(agent)
            .is_some_and(|d| d.last_call.as_deref() == Some(call))
    }

    /// What `call` was for the desk that answered it last: `agent`'s, or
    /// (an admin asking) any desk's. `None` when no desk has it now.
    pub(super) fn call_kind(&self, agent: Option<&str>, call: &str) -> Option<CallKind> {
        let desks = self.lock();
        let mine = |d: &Desk| (d.last_call.as_deref() == Some(call)).then_some(d.last_kind);
        match agent {
            Some(a) => desks.get(a).and_then(mine),
            None => desks.values().find_map(mine),
        }
    }
}
