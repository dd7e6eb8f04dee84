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
                .with_label_values(&[&c.name, outcome.as_str()])
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
            if let Some((pacer, _, _)) = self.pacers.get_mut(&campaign) {
                pacer.resolved(now, outcome);
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
            if let Some((_, _, name)) = self.pacers.remove(&id) {
                let _ = self.metrics.campaign_lines.remove_label_values(&[&name]);
                let _ = self.metrics.campaign_pacing.remove_label_values(&[&name]);
            }
        }
        if self.draining || self.shutting_down {
            return;
        }
        // Every campaign's lines in one pass over the calls, not one pass
        // per campaign: the tick runs on the engine's thread.
        let mut lines_of: HashMap<&str, u32> = HashMap::new();
        for c in self.calls.values().filter(|c| c.connected.is_none()) {
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
                .with_label_values(&[&run.name])
                .set(i64::from(lines));
            let (pacer, claiming, _) = self
                .pacers
                .entry(run.id.clone())
                .or_insert_with(|| (Pacer::new(run.pacer), false, run.name.clone()));
            if *claiming {
                continue;
            }
            let d = pacer.decide(
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
                .with_label_values(&[&run.name])
                .set(f64::from(lines + d.dial) / f64::from(free.max(1)));
            *claiming = true;
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
            Some((_, claiming, _)) => {
                *claiming = false;
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
