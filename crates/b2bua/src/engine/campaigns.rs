//! Outbound campaigns: each second the scheduler hands the running
//! campaigns inside their windows; each campaign's pacer decides how many
//! citizens to dial from the queue's free operators and the campaign's
//! lines; the driver claims that many contacts (the claim is the attempt's
//! durable mark) and they start as outbound calls on the callback path —
//! agent first (progressive: an operator reserved, then one citizen
//! dialled) or customer first (predictive). How an attempt ends goes back
//! as [`Output::ContactState`]; the campaign's retry policy, in the
//! driver, decides what follows.

use centralino_campaigns::Outcome;
use centralino_campaigns::pacer::{Pacer, Snapshot};

use super::*;

/// A campaign as a supervisor sees it now (the running ones inside their
/// windows): its lines, its operators, and the abandon rate its pacer
/// measures over the sliding window.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignView {
    /// Campaign id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The queue whose operators work it.
    pub queue: String,
    /// The queue's tenant.
    pub tenant: String,
    /// `preview`, `progressive`, `predictive`.
    pub mode: &'static str,
    /// Citizens being dialled or waiting for an operator (no operator
    /// holds them).
    pub lines: u32,
    /// Operators reading one of its contacts (preview).
    pub previews: u32,
    /// Operators whose phone rings for one of its calls.
    pub ringing: u32,
    /// Its calls an operator answered (whisper, citizen ringing, talk).
    pub talking: u32,
    /// Answered and abandoned citizens over the pacer's window (24 h).
    pub answered: u32,
    /// See `answered`.
    pub abandoned: u32,
    /// `abandoned / answered` over the window (0 without answers).
    pub abandon_rate: f64,
}

/// A running campaign's pacer, as the engine keeps it.
pub(super) struct Paced {
    pub(super) pacer: Pacer,
    /// A claim of its contacts is out (one at a time).
    pub(super) claiming: bool,
    /// Its tenant and name (metric labels).
    pub(super) tenant: String,
    pub(super) name: String,
    /// Its queue.
    pub(super) queue: QueueId,
}

/// How long an answered citizen of a predictive campaign waits for an
/// operator before hearing the recorded message (the rule the abandon cap
/// counts by: Ofcom's 2 seconds).
pub(super) const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// What a citizen nobody could take hears (Italian prompts of Asterisk's
/// core sounds): "I'm sorry", "all our operators are busy". The campaign
/// calls again by its policy.
const ABANDON_PROMPTS: [&str; 2] = ["im-sorry", "tt-allbusy"];

/// How a callback-path outcome counts for a campaign.
fn campaign_outcome(state: &CallbackState) -> Option<Outcome> {
    match state {
        CallbackState::Done => Some(Outcome::Answered),
        CallbackState::Failed { outcome } | CallbackState::Retry { outcome, .. } => {
            Some(match outcome {
                CallbackOutcome::Busy => Outcome::Busy,
                CallbackOutcome::NoAnswer => Outcome::NoAnswer,
                CallbackOutcome::Abandoned | CallbackOutcome::NoOperator => Outcome::Abandoned,
                _ => Outcome::Failed,
            })
        }
        CallbackState::Dialing { .. } | CallbackState::Requeue { .. } => None,
    }
}

impl Engine {
    /// A campaign contact's attempt moved on: reported to the driver,
    /// counted, and (once the network answered) told to the pacer.
    pub(super) fn contact_state(
        &mut self,
        c: &CampaignCall,
        record: Option<String>,
        state: CallbackState,
    ) {
        if let Some(outcome) = campaign_outcome(&state) {
            self.metrics
                .campaign_attempts
                .with_label_values(&[&c.tenant, &c.name, outcome.as_str()])
                .inc();
            self.paced.push((c.campaign.clone(), outcome));
        }
        self.out.push_back(Output::ContactState {
            call: Box::new(c.clone()),
            record,
            state,
        });
    }

    /// The campaigns running now, inside their windows: each pacer asks
    /// for its contacts (one claim at a time per campaign). Campaigns no
    /// longer listed lose their pacer; their calls finish as they are.
    pub fn campaign_tick(&mut self, now: Instant, runs: &[CampaignRun]) {
        for (campaign, outcome) in std::mem::take(&mut self.paced) {
            if let Some(p) = self.pacers.get_mut(&campaign) {
                p.pacer.resolved(now, outcome);
            }
        }
        // Stopped campaigns lose their pacer and their series (names come
        // and go with campaigns: the label set must not grow forever).
        let gone: Vec<String> = self
            .pacers
            .keys()
            .filter(|id| !runs.iter().any(|r| &r.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(Paced { tenant, name, .. }) = self.pacers.remove(&id) {
                let labels = [tenant.as_str(), name.as_str()];
                let _ = self.metrics.campaign_lines.remove_label_values(&labels);
                let _ = self.metrics.campaign_pacing.remove_label_values(&labels);
            }
            // Its contacts nobody dialled yet go back to it (a preview on a
            // desk, an operator waited for or ringing): the calls already
            // dialled or answered finish as they are.
            let undialled: Vec<CallId> = self
                .calls
                .iter()
                .filter(|(_, c)| {
                    c.connected.is_none()
                        && c.outbound().is_some_and(|o| {
                            !o.dialled && o.campaign.as_ref().is_some_and(|k| k.campaign == id)
                        })
                })
                .map(|(&call, _)| call)
                .collect();
            for call in undialled {
                info!(%call, "campaign stopped: its contact goes back undialled");
                self.end_unanswered(now, call, 0, CallOutcome::CampaignStopped, true);
            }
        }
        if self.draining || self.shutting_down {
            return;
        }
        // Every campaign's lines in one pass over the calls, not one pass
        // per campaign: the tick runs on the engine's thread.
        let mut lines_of: HashMap<&str, u32> = HashMap::new();
        // An operator reserved for a call (a preview on their desk, their
        // phone ringing) is no longer free: counting the call too would
        // count it twice and leave an operator idle.
        for c in self
            .calls
            .values()
            .filter(|c| c.connected.is_none() && c.phase != Phase::Offering)
        {
            if let Some(k) = c.outbound().and_then(|o| o.campaign.as_ref()) {
                *lines_of.entry(k.campaign.as_str()).or_default() += 1;
            }
        }
        for run in runs {
            let Some(&queue) = self.queue_ids.get(&run.queue) else {
                continue;
            };
            let free = self.router.queue_agents(queue).available;
            // Its calls no operator has yet: ringing, waiting, or
            // (agent first) queued for an operator before dialling.
            let lines = lines_of.get(run.id.as_str()).copied().unwrap_or(0);
            self.metrics
                .campaign_lines
                .with_label_values(&[&run.tenant, &run.name])
                .set(i64::from(lines));
            let paced = self.pacers.entry(run.id.clone()).or_insert_with(|| Paced {
                pacer: Pacer::new(run.pacer),
                claiming: false,
                tenant: run.tenant.clone(),
                name: run.name.clone(),
                queue,
            });
            // A reload may move the queue's id.
            paced.queue = queue;
            if paced.claiming {
                continue;
            }
            let d = paced.pacer.decide(
                now,
                Snapshot {
                    free,
                    soon_free: 0,
                    lines,
                },
            );
            if d.dial == 0 {
                continue;
            }
            self.metrics
                .campaign_pacing
                .with_label_values(&[&run.tenant, &run.name])
                .set(f64::from(lines + d.dial) / f64::from(free.max(1)));
            paced.claiming = true;
            self.out.push_back(Output::WantContacts {
                campaign: run.id.clone(),
                count: d.dial,
            });
        }
    }

    /// A predictive campaign's citizen answered [`ANSWER_GRACE`] ago and no
    /// operator has them: out of the queue, the recorded message, then the
    /// call ends as abandoned (counted by the pacer and the campaign).
    pub(super) fn abandon_answered(&mut self, now: Instant, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        self.router.withdraw(now, call_id);
        let forks: Vec<BLeg> = call.forks.drain(..).collect();
        call.phase = Phase::Ivr;
        for b in forks {
            self.cancel_b(now, b);
        }
        warn!("predictive campaign: no operator within the grace, the citizen hears the message");
        let prompts: Vec<Prompt> = ABANDON_PROMPTS
            .iter()
            .filter_map(|n| self.prompts.get(n).cloned())
            .collect();
        // Without the prompts installed, a moment of silence, then goodbye.
        let duration: Duration =
            prompts.iter().map(Prompt::duration).sum::<Duration>() + Duration::from_millis(500);
        self.out.push_back(Output::Media(MediaCommand::Play {
            call: call_id,
            prompts,
            music: None,
        }));
        self.timers
            .push(Reverse((now + duration, call_id, CallTimer::AbandonDone)));
        self.pump(now);
    }

    /// The contacts claimed for `campaign` (maybe none): each starts now.
    pub fn campaign_contacts(&mut self, now: Instant, campaign: &str, due: Vec<DueCallback>) {
        // No pacer: the campaign stopped (or left its window) while the
        // claim was out; its contacts go back untouched.
        let running = match self.pacers.get_mut(campaign) {
            Some(p) => {
                p.claiming = false;
                true
            }
            None => false,
        };
        for cb in due {
            if !running || self.draining || self.shutting_down {
                // Claimed but never dialled: back to the campaign.
                if let Some(c) = &cb.campaign {
                    self.out.push_back(Output::ContactState {
                        call: c.clone(),
                        record: None,
                        state: CallbackState::Requeue {
                            outcome: CallbackOutcome::Ended(CallOutcome::Shutdown),
                        },
                    });
                }
                continue;
            }
            self.start_callback(now, cb);
        }
    }
}

impl Engine {
    /// The router picked `agent` for `call`: a preview campaign's contact
    /// goes on the operator's desk first (nothing rings and nobody is
    /// dialled until they accept); every other call rings their phones.
    pub(super) fn offer(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        // Another node's call: the operator is held, nothing rings here.
        if self.remote_reserved(now, call_id, agent) {
            return;
        }
        let Some(call) = self.calls.get(&call_id) else {
            // No such call (it ended in between): the router must not keep
            // offering it operator after operator.
            self.router.withdraw(now, call_id);
            return;
        };
        if let Some(wait) = call.outbound().and_then(|o| o.campaign.as_ref()?.preview) {
            // One operator at a time holds a preview (a ring-all queue
            // offers a call to several): the others are let go at once.
            if let Some(p) = call.preview
                && p.agent != agent
                && self.holds(p.agent, call_id)
            {
                self.offer_failed(now, call_id, agent, OfferOutcome::Withdrawn);
                return;
            }
            // Accepted by this operator already (their phone failed and
            // the call came back to them): it rings.
            if !call.preview.is_some_and(|p| p.accepted && p.agent == agent) {
                self.show_preview(now, call_id, agent, wait);
                return;
            }
        }
        self.invite_operator(now, call_id, agent);
    }

    /// Whether `agent` is reserved for, or ringing for, `call`.
    fn holds(&self, agent: AgentId, call: CallId) -> bool {
        matches!(self.router.agent(agent).state,
            AgentState::Reserved(c) | AgentState::Ringing(c) if c == call)
    }

    /// Puts a preview contact on `agent`'s desk for `wait`: they stay
    /// reserved for it (the router's lease stretched to match) and
    /// accept or skip it with [`Engine::preview_decision`].
    fn show_preview(&mut self, now: Instant, call_id: CallId, agent: AgentId, wait: Duration) {
        let _span = self.call_span(call_id).entered();
        if !self.router.hold(now, agent, call_id, wait) {
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let attempt = call.attempt + 1;
        call.attempt = attempt;
        call.phase = Phase::Offering;
        call.preview = Some(Preview {
            agent,
            attempt,
            accepted: false,
        });
        let name = self.router.agent(agent).name.clone();
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let desk = self.desk(call, DeskState::Preview);
        self.preview_counted(call_id, "shown");
        self.out.push_back(Output::AgentCall {
            agent: name.clone(),
            info: Some(desk),
        });
        self.timers
            .push(Reverse((now + wait, call_id, CallTimer::Preview(attempt))));
        info!(agent = %name, "preview campaign: a contact on the operator's desk");
        self.queue_event(now, call_id, QueueEvent::Offer, Some(name));
    }

    /// `centralino_campaign_previews_total{tenant,campaign,outcome}`.
    fn preview_counted(&self, call_id: CallId, outcome: &str) {
        if let Some(c) = self
            .calls
            .get(&call_id)
            .and_then(|c| c.outbound()?.campaign.as_ref())
        {
            self.metrics
                .campaign_previews
                .with_label_values(&[&c.tenant, &c.name, outcome])
                .inc();
        }
    }

    /// The operator's answer to the preview on their desk: `accept` rings
    /// their phone, and once they answer the citizen is dialled (the
    /// progressive path); a skip ends the attempt with nobody dialled
    /// and the contact waits for a later one. `contact` must be the one
    /// on their desk: a desktop answering a preview it no longer shows
    /// is refused, never applied to the next.
    pub fn preview_decision(
        &mut self,
        now: Instant,
        agent: &str,
        contact: i64,
        accept: bool,
    ) -> Result<(), PreviewError> {
        let &id = self.agent_ids.get(agent).ok_or(PreviewError::Unknown)?;
        // The router knows which call the operator is reserved for: no
        // search through the calls on the engine's thread.
        let AgentState::Reserved(call_id) = self.router.agent(id).state else {
            return Err(PreviewError::NotShown);
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return Err(PreviewError::NotShown);
        };
        let shown = call
            .outbound()
            .and_then(|o| o.campaign.as_ref())
            .is_some_and(|c| c.contact == contact);
        let Some(p) = call
            .preview
            .filter(|p| shown && p.agent == id && !p.accepted)
        else {
            return Err(PreviewError::NotShown);
        };
        let _span = call.span.clone().entered();
        if accept {
            call.preview = Some(Preview {
                accepted: true,
                ..p
            });
            let ring = self.router.queue(call.queue).ring_timeout;
            self.router.hold(now, id, call_id, ring);
            self.preview_counted(call_id, "accepted");
            info!(%agent, "preview accepted: the operator's phone rings, then the citizen is dialled");
            // A new offer: the preview's timer is stale from here.
            self.invite_operator(now, call_id, id);
        } else {
            self.preview_counted(call_id, "skipped");
            info!(%agent, "preview skipped: nobody dialled");
            self.end_unanswered(now, call_id, 0, CallOutcome::Skipped, true);
        }
        self.pump(now);
        Ok(())
    }

    /// A preview's operator neither accepted nor skipped in time: the
    /// contact goes to another operator (or back to them later), and the
    /// miss counts as an unanswered offer (`max_no_answer` pauses them).
    pub(super) fn preview_expired(&mut self, now: Instant, call_id: CallId, attempt: u32) {
        let Some(p) = self
            .calls
            .get(&call_id)
            .and_then(|c| c.preview)
            .filter(|p| p.attempt == attempt && !p.accepted)
        else {
            return;
        };
        info!(agent = %self.router.agent(p.agent).name, "preview not answered in time: the contact goes to another operator");
        self.metrics
            .agent_offers
            .with_label_values(&["no_answer"])
            .inc();
        self.preview_counted(call_id, "expired");
        self.end_preview(now, call_id, p.agent, OfferOutcome::NoAnswer);
    }

    /// The preview `agent` holds for `call` (not yet accepted) leaves
    /// their desk: the call waits for another operator, the offer failed
    /// with `outcome`. Nothing when they hold none.
    pub(super) fn end_preview(
        &mut self,
        now: Instant,
        call_id: CallId,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if !call
            .preview
            .is_some_and(|p| p.agent == agent && !p.accepted)
        {
            return;
        }
        call.preview = None;
        call.phase = Phase::Queued;
        self.agent_released(agent);
        self.offer_failed(now, call_id, agent, outcome);
    }

    /// The router took `agent`'s reservation back while a preview was on
    /// their desk: it leaves the desk.
    pub(super) fn preview_reclaimed(&mut self, call_id: CallId, agent: AgentId) {
        if let Some(call) = self.calls.get_mut(&call_id)
            && call
                .preview
                .is_some_and(|p| p.agent == agent && !p.accepted)
        {
            call.preview = None;
            call.phase = Phase::Queued;
            self.agent_released(agent);
        }
    }
}

impl Engine {
    /// The running campaigns inside their windows as supervisors see
    /// them, by name: one pass over the calls for all of them.
    pub fn campaign_views(&mut self, now: Instant) -> Vec<CampaignView> {
        #[derive(Default)]
        struct Count {
            lines: u32,
            previews: u32,
            ringing: u32,
            talking: u32,
        }
        let mut counts: HashMap<&str, Count> = HashMap::new();
        for c in self.calls.values() {
            let Some(k) = c.outbound().and_then(|o| o.campaign.as_ref()) else {
                continue;
            };
            let n = counts.entry(k.campaign.as_str()).or_default();
            if c.connected.is_some() {
                n.talking += 1;
            } else if c.preview.is_some_and(|p| !p.accepted) {
                n.previews += 1;
            } else if c.phase == Phase::Offering {
                n.ringing += 1;
            } else {
                n.lines += 1;
            }
        }
        let mut views: Vec<CampaignView> = self
            .pacers
            .iter_mut()
            .map(|(id, p)| {
                let n = counts.remove(id.as_str()).unwrap_or_default();
                let (answered, abandoned) = p.pacer.window_counts(now);
                let queue = self.router.queue(p.queue).name.clone();
                let tenant = self
                    .queues
                    .get(p.queue.0 as usize)
                    .map(|q| q.tenant_name.clone())
                    .unwrap_or_default();
                CampaignView {
                    id: id.clone(),
                    name: p.name.clone(),
                    queue,
                    tenant,
                    mode: p.pacer.mode().as_str(),
                    lines: n.lines,
                    previews: n.previews,
                    ringing: n.ringing,
                    talking: n.talking,
                    answered: u32::try_from(answered).unwrap_or(u32::MAX),
                    abandoned: u32::try_from(abandoned).unwrap_or(u32::MAX),
                    abandon_rate: p.pacer.abandon_rate(now),
                }
            })
            .collect();
        // Names repeat across firms: a stable order all the same, or an
        // admin's view would change with the pacers' map alone.
        views.sort_by(|a, b| (&a.name, &a.tenant, &a.id).cmp(&(&b.name, &b.tenant, &b.id)));
        views
    }
}

impl Engine {
    /// The running campaigns' numbers (caller IDs), from the driver:
    /// (number, campaign id, its queue). A call to one of them has its
    /// caller looked up among the campaign's contacts.
    pub fn set_campaign_numbers(&mut self, numbers: Vec<(String, String, String)>) {
        let mut by_number: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (did, campaign, queue) in numbers {
            by_number.entry(did).or_default().push((campaign, queue));
        }
        info!(
            numbers = by_number.len(),
            "campaign numbers known: their callers are looked up"
        );
        self.campaign_numbers = by_number;
    }

    /// The running campaigns presenting `did` whose queue belongs to
    /// `tenant` (the tenant of the trunk the call came in on): another
    /// tenant's campaign presenting the same number is none of its.
    pub(super) fn campaigns_presenting(&self, did: &str, tenant: TenantId) -> Vec<String> {
        self.campaign_numbers
            .get(did)
            .into_iter()
            .flatten()
            .filter(|(_, queue)| {
                self.queue_ids
                    .get(queue)
                    .is_some_and(|&q| self.queue_tenant(q) == tenant)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The caller of `call` is `contact` of `campaign`: their details go
    /// on the operator's desk (now, if an operator already has the call).
    pub fn caller_known(
        &mut self,
        call_id: CallId,
        record: &str,
        campaign: String,
        contact: i64,
        desk: Vec<(String, String)>,
    ) {
        let Some(call) = self
            .calls
            .get_mut(&call_id)
            .filter(|c| c.record_id == record)
        else {
            return;
        };
        let _span = call.span.clone().entered();
        info!(%campaign, "a campaign's contact called its number");
        // The campaigns looked up were those of the call's tenant
        // (`campaigns_presenting`).
        let tenant = self
            .tenant_names
            .get(call.tenant.index())
            .map_or("", String::as_str);
        self.metrics
            .campaign_callers
            .with_label_values(&[tenant, &campaign])
            .inc();
        call.known = Some(Box::new(KnownCaller {
            campaign,
            contact,
            desk,
        }));
        // Operators already ringing or talking see whose call it is now.
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let shown: Vec<(AgentId, DeskState)> = match &call.b {
            Some(b) => b
                .agent()
                .map(|a| (a, DeskState::Connected))
                .into_iter()
                .collect(),
            None => call
                .forks
                .iter()
                .filter_map(|f| Some((f.agent()?, DeskState::Offered)))
                .collect(),
        };
        for (agent, state) in shown {
            let info = self.desk(call, state);
            self.out.push_back(Output::AgentCall {
                agent: self.router.agent(agent).name.clone(),
                info: Some(info),
            });
        }
    }
}
