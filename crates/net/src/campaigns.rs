//! The campaigns' driver: the scheduler that hands the engine the running
//! campaigns inside their windows each second, the claims of contacts the
//! engine's pacers ask for, and the end of each attempt written with the
//! campaign's retry policy. The engine paces; the store keeps every
//! attempt; this module moves between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use centralino_b2bua::{CallbackState, CampaignCall, CampaignRun, DueCallback};
use centralino_campaigns::pacer::PacerConfig;
use centralino_campaigns::spec::{RawSpec, Spec, validate};
use centralino_campaigns::{Next, Outcome};
use centralino_config::Config;
use centralino_flows::calendar::rome_offset;
use centralino_store::service::{StoreHandle, unix_now};
use centralino_store::{AttemptEnd, Claim, ContactStatus, DialCheck};
use centralino_types::outcome::{CallOutcome, CallbackOutcome};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::handle::EngineInput;

/// How long a contact a preview's operator skipped waits before it is
/// offered again (to whichever operator is free then): not at once, or
/// the same operator would see it again.
const SKIP_DELAY: i64 = 30 * 60;

/// The campaigns running now, by id, as last handed to the engine.
pub(crate) type Running = HashMap<String, Arc<Spec>>;

/// Today's number and the next midnight (Unix), Europe/Rome.
pub(crate) fn rome_day(now: i64) -> (i64, i64) {
    let day = (now + rome_offset(now)).div_euclid(86_400);
    let midnight = (day + 1) * 86_400;
    (day, midnight - rome_offset(midnight - 3600))
}

/// Each second: the running campaigns whose definition still holds
/// against this node's configuration and whose window is open, to the
/// engine (an empty list too: pacers of stopped campaigns go).
pub(crate) async fn scheduler(
    store: StoreHandle,
    tx: mpsc::Sender<EngineInput>,
    draining: Arc<AtomicBool>,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    metrics: crate::metrics::NetMetrics,
    desks: Option<crate::api::Desks>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Campaigns already reported unusable (logged once, not every second).
    let mut broken: HashMap<String, String> = HashMap::new();
    // Names with contact gauges now (a stopped campaign's go).
    let mut gauged: Vec<(String, String)> = Vec::new();
    let mut turn: u64 = 0;
    // The campaigns' numbers the engine has.
    let mut sent_numbers: Vec<(String, String, String)> = Vec::new();
    loop {
        tick.tick().await;
        turn += 1;
        if draining.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(list) = store.with(|s| s.running_campaigns()).await else {
            continue;
        };
        // The configuration running now (a reload replaces it).
        let config = config.borrow().clone();
        let names = centralino_config::campaigns::Names {
            tenants: &config.tenants,
            queues: &config.queues,
            trunks: &config.trunks,
            scripts: &config.scripts,
        };
        let now = unix_now();
        let mut runs = Vec::new();
        // Numbers of running campaigns (inside their window or not: a
        // citizen calls back in the evening), with each campaign and its
        // queue (whose tenant the call's trunk must share).
        let mut numbers: Vec<(String, String, String)> = Vec::new();
        for c in list {
            let spec = serde_json::from_str::<RawSpec>(&c.spec)
                .map_err(|e| e.to_string())
                .and_then(|raw| {
                    validate("", &raw, &names).map_err(|p| cannot_dial(&p, &raw, &config.scripts))
                })
                // Its queue moved to another firm (a restart with a new
                // configuration): that firm's do-not-call list, operators
                // and same-named campaign are not this campaign's.
                .and_then(|spec| {
                    if spec.tenant == c.tenant {
                        Ok(spec)
                    } else {
                        Err(format!(
                            "queue: {:?} now belongs to another tenant",
                            spec.queue
                        ))
                    }
                });
            let spec = match spec {
                Ok(s) => {
                    broken.remove(&c.id);
                    s
                }
                Err(why) => {
                    if broken.insert(c.id.clone(), why.clone()).as_ref() != Some(&why) {
                        warn!(campaign = %c.name, tenant = %c.tenant, reason = %why, "running campaign cannot dial on this node");
                    }
                    continue;
                }
            };
            if let Some(did) = &spec.caller_id {
                numbers.push((did.clone(), c.id.clone(), spec.queue.clone()));
            }
            if !spec.window.open(now) {
                continue;
            }
            let mut pacer = PacerConfig::new(spec.mode);
            pacer.abandon_cap = spec.abandon_cap;
            runs.push((
                CampaignRun {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    tenant: c.tenant.clone(),
                    queue: spec.queue.clone(),
                    pacer,
                },
                Arc::new(spec),
            ));
        }
        if turn % 10 == 1 {
            gauged = contact_gauges(&store, &metrics, desks.as_ref(), &runs, gauged).await;
        }
        numbers.sort();
        if numbers != sent_numbers {
            sent_numbers = numbers.clone();
            if tx
                .send(EngineInput::CampaignNumbers(numbers))
                .await
                .is_err()
            {
                return;
            }
        }
        if tx.send(EngineInput::CampaignTick(runs)).await.is_err() {
            return;
        }
    }
}

/// Sets `centralino_campaign_contacts{tenant,campaign,status}` for the
/// running campaigns and removes the series of those no longer running;
/// returns the (tenant, name) pairs now gauged.
async fn contact_gauges(
    store: &StoreHandle,
    metrics: &crate::metrics::NetMetrics,
    desks: Option<&crate::api::Desks>,
    runs: &[(CampaignRun, Arc<Spec>)],
    before: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut now = Vec::with_capacity(runs.len());
    let mut progress = HashMap::with_capacity(runs.len());
    for (run, _) in runs {
        let id = run.id.clone();
        if let Ok(p) = store.with(move |s| s.progress(&id)).await {
            let mut counts = Vec::with_capacity(ContactStatus::ALL.len());
            for (status, n) in ContactStatus::ALL.iter().zip(p.contacts) {
                metrics
                    .campaign_contacts
                    .with_label_values(&[&run.tenant, &run.name, status.as_str()])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                counts.push((status.as_str(), n));
            }
            progress.insert(run.id.clone(), counts);
            now.push((run.tenant.clone(), run.name.clone()));
        }
    }
    // The supervisors' campaign lines show the same counts.
    if let Some(d) = desks {
        d.set_campaign_progress(progress);
    }
    for (tenant, name) in before.iter().filter(|n| !now.contains(n)) {
        for status in ContactStatus::ALL {
            let _ = metrics
                .campaign_contacts
                .remove_label_values(&[tenant, name, status.as_str()]);
        }
    }
    now
}

/// Claims `count` contacts of `campaign` for the engine; the claim makes
/// each attempt durable before anyone is dialled. Always answers (with
/// none on any failure), so the pacer asks again.
pub(crate) fn claim(
    store: StoreHandle,
    tx: mpsc::Sender<EngineInput>,
    campaign: String,
    spec: Option<Arc<Spec>>,
    count: u32,
    max_per_day: u32,
) {
    tokio::spawn(async move {
        let due = match &spec {
            None => Vec::new(),
            Some(spec) => {
                let now = unix_now();
                let (day, tomorrow) = rome_day(now);
                let (id, tenant) = (campaign.clone(), spec.tenant.clone());
                let claimed = store
                    .with(move |s| {
                        s.claim_contacts(Claim {
                            campaign: &id,
                            tenant: &tenant,
                            limit: count as usize,
                            now,
                            day,
                            max_per_day,
                            tomorrow,
                        })
                    })
                    .await;
                match claimed {
                    Ok(c) => {
                        if c.dnc > 0 || c.capped > 0 {
                            info!(campaign = %spec.name, tenant = %spec.tenant, dnc = c.dnc, capped = c.capped, "contacts held back by a do-not-call list or the daily cap");
                        }
                        c.contacts
                            .into_iter()
                            .map(|k| DueCallback {
                                id: format!("contact:{}", k.id),
                                queue: spec.queue.clone(),
                                number: k.number.clone(),
                                requirements: None,
                                priority: spec.priority.saturating_add(k.priority),
                                created_unix: now,
                                promised_unix: None,
                                attempt: k.attempts,
                                campaign: Some(Box::new(CampaignCall {
                                    campaign: campaign.clone(),
                                    name: spec.name.clone(),
                                    tenant: spec.tenant.clone(),
                                    contact: k.id,
                                    attempt: k.attempts,
                                    dialled: k.dialled,
                                    caller_id: spec.caller_id.clone(),
                                    trunk: spec.trunk.clone(),
                                    customer_first: spec.mode
                                        == centralino_campaigns::Mode::Predictive,
                                    desk: desk_of(&k),
                                    preview: (spec.mode == centralino_campaigns::Mode::Preview)
                                        .then_some(spec.preview),
                                    script: spec.script.clone(),
                                })),
                            })
                            .collect()
                    }
                    Err(e) => {
                        warn!(campaign = %spec.name, tenant = %spec.tenant, error = %e, "cannot claim campaign contacts");
                        Vec::new()
                    }
                }
            }
        };
        let _ = tx
            .send(EngineInput::CampaignContacts { campaign, due })
            .await;
    });
}

/// Who calls a campaign's number: when the caller is one of the
/// campaign's contacts, the call is linked to them (an operator's
/// disposition on it applies to the contact) and the engine puts them on
/// the operator's desk. Nobody found: nothing changes for the call.
pub(crate) fn caller_lookup(
    store: StoreHandle,
    tx: mpsc::Sender<EngineInput>,
    call: centralino_types::CallId,
    record: String,
    campaigns: Vec<String>,
    number: String,
) {
    tokio::spawn(async move {
        let found = match store
            .with(move |s| s.caller_contact(&campaigns, &number))
            .await
        {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot look up a caller among the campaign's contacts");
                return;
            }
        };
        let (campaign, contact) = found;
        let (link, id) = (record.clone(), contact.id);
        store.spawn_job("campaign caller", move |s| {
            s.link_caller(&link, id, unix_now())
        });
        let _ = tx
            .send(EngineInput::CallerKnown {
                call,
                record,
                campaign,
                contact: contact.id,
                desk: desk_of(&contact),
            })
            .await;
    });
}

/// What the operator's desk shows of a contact: its name, language and
/// attempt, its number masked (Centralino dials it; the operator needs
/// only to recognise it), how its last attempt went and the notes, and
/// the data imported with it (text values, at most 20).
fn desk_of(k: &centralino_store::Contact) -> Vec<(String, String)> {
    let mut v = vec![
        ("attempt".to_owned(), k.attempts.to_string()),
        ("number".to_owned(), centralino_types::masked(&k.number)),
    ];
    for (key, value) in [
        ("last_outcome", &k.last_outcome),
        ("disposition", &k.disposition),
        ("note", &k.note),
    ] {
        if let Some(value) = value {
            v.push((key.into(), value.clone()));
        }
    }
    if let Some(n) = &k.name {
        v.push(("contact".into(), n.clone()));
    }
    if let Some(l) = &k.language {
        v.push(("language".into(), l.clone()));
    }
    if let Some(serde_json::Value::Object(data)) =
        k.data.as_deref().and_then(|d| serde_json::from_str(d).ok())
    {
        for (key, value) in data.into_iter().take(20) {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            v.push((key, text));
        }
    }
    v
}

/// How a callback-path outcome is written for a campaign.
fn outcome_of(outcome: CallbackOutcome) -> Outcome {
    match outcome {
        CallbackOutcome::Busy => Outcome::Busy,
        CallbackOutcome::NoAnswer => Outcome::NoAnswer,
        CallbackOutcome::Abandoned | CallbackOutcome::NoOperator => Outcome::Abandoned,
        _ => Outcome::Failed,
    }
}

/// Writes an attempt's end, trying again while the store refuses it (a
/// full or failing disk): a lost end would leave the contact
/// `in_progress` until the next start. Bounded: an hour of tries, then it
/// is logged and the next start closes it as interrupted.
fn write_end(store: &StoreHandle, e: AttemptEnd, now: i64) {
    let store = store.clone();
    tokio::spawn(async move {
        for _ in 0..3600 {
            let end = e.clone();
            match store.with(move |s| s.end_attempt(&end, now)).await {
                Ok(_) => return,
                Err(err) => {
                    warn!(error = %err, "campaign attempt end not written: trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::error!(
            contact = e.contact,
            "campaign attempt end never written: the next start closes it"
        );
    });
}

/// A claimed attempt is about to dial: allowed only while its campaign
/// still runs inside its window and its number is on no do-not-call list
/// (a claim may have waited minutes for an operator), and, on a national
/// network with durable work, once the work stream says this node still
/// owns the contact (`fence`). Otherwise the attempt ends here — back to
/// pending, or `dnc` — and the engine is told not to dial.
fn check_and_dial(
    store: &StoreHandle,
    tx: &mpsc::Sender<EngineInput>,
    running: &Running,
    call: &CampaignCall,
    engine_call: centralino_types::CallId,
    fence: Option<&mpsc::Sender<crate::work::Fence>>,
) {
    let now = unix_now();
    let spec = running
        .get(&call.campaign)
        .filter(|s| s.window.open(now))
        .cloned();
    let (store, tx, c, fence) = (store.clone(), tx.clone(), call.clone(), fence.cloned());
    tokio::spawn(async move {
        let mut check = match &spec {
            None => Ok(DialCheck::Stopped),
            Some(spec) => {
                let (contact, tenant) = (c.contact, spec.tenant.clone());
                store.with(move |s| s.may_dial(contact, &tenant)).await
            }
        };
        if let (Ok(DialCheck::Go), Some(fence)) = (&check, &fence) {
            check = Ok(
                match crate::work::fence_contact(fence, c.contact, c.attempt).await {
                    crate::work::Fenced::Go(_) => DialCheck::Go,
                    // Another node owns it now (moved here), or the stream
                    // cannot say: not dialled, given back uncounted.
                    crate::work::Fenced::Gone => DialCheck::Settled,
                    crate::work::Fenced::Unavailable => DialCheck::Stopped,
                },
            );
        }
        let recorded = match check {
            Ok(DialCheck::Go) => true,
            Ok(verdict) => {
                let (outcome, status) = match verdict {
                    DialCheck::DoNotCall => ("dnc", ContactStatus::Dnc),
                    // The contact keeps the status a disposition gave it.
                    DialCheck::Settled => ("settled", ContactStatus::Pending),
                    _ => ("withheld", ContactStatus::Pending),
                };
                info!(campaign = %c.name, tenant = %c.tenant, outcome, "campaign attempt withheld before dialling");
                let e = AttemptEnd {
                    contact: c.contact,
                    attempt: c.attempt,
                    outcome: outcome.to_owned(),
                    status,
                    next_at: (status == ContactStatus::Pending).then_some(now),
                    disposition: None,
                    uncount: true,
                };
                write_end(&store, e, now);
                false
            }
            Err(e) => {
                warn!(campaign = %c.name, tenant = %c.tenant, error = %e, "cannot check a campaign attempt: not dialling");
                false
            }
        };
        let _ = tx
            .send(EngineInput::CallbackDialing {
                call: engine_call,
                recorded,
            })
            .await;
    });
}

/// An attempt moved on. `Dialing` is checked (`check_and_dial`); the
/// others are written with the campaign's policy.
pub(crate) fn contact_state(
    store: &StoreHandle,
    tx: &mpsc::Sender<EngineInput>,
    running: &Running,
    call: &CampaignCall,
    record: Option<String>,
    state: CallbackState,
    fence: Option<&mpsc::Sender<crate::work::Fence>>,
) {
    let now = unix_now();
    if let Some(record) = record {
        // Written before anything else of the attempt: the operator's
        // disposition finds it by this id.
        let (contact, attempt) = (call.contact, call.attempt);
        store.spawn_job("campaign call record", move |s| {
            s.attempt_call(contact, attempt, &record)
        });
    }
    let mut uncount = false;
    let end = match state {
        CallbackState::Dialing { call: engine_call } => {
            check_and_dial(store, tx, running, call, engine_call, fence);
            return;
        }
        CallbackState::Done => (Outcome::Answered.as_str(), ContactStatus::Done, None),
        // Nobody was dialled: the attempt does not count against the
        // citizen's daily cap.
        CallbackState::Requeue { outcome } => {
            uncount = true;
            match outcome {
                CallbackOutcome::Ended(CallOutcome::Skipped) => {
                    ("skipped", ContactStatus::Pending, Some(now + SKIP_DELAY))
                }
                // No operator free in the queue's time: the pacer claims
                // again once one is.
                CallbackOutcome::Ended(CallOutcome::MaxWait) => {
                    ("no_operator", ContactStatus::Pending, Some(now))
                }
                CallbackOutcome::Ended(CallOutcome::CampaignStopped) => {
                    ("campaign_stopped", ContactStatus::Pending, Some(now))
                }
                _ => ("operator_left", ContactStatus::Pending, Some(now)),
            }
        }
        // The number the dial plan refuses (changed since the import):
        // no retry would change that.
        CallbackState::Failed {
            outcome: CallbackOutcome::DialPlan,
        } => ("dial_plan", ContactStatus::Failed, None),
        // Its queue is another firm's (the engine's backstop; the
        // scheduler hands over no campaign whose queue's firm differs):
        // nobody was dialled, and a person looks.
        CallbackState::Failed {
            outcome: CallbackOutcome::OtherTenant,
        } => {
            uncount = true;
            ("other_tenant", ContactStatus::Failed, None)
        }
        CallbackState::Failed { outcome } | CallbackState::Retry { outcome, .. } => {
            let o = outcome_of(outcome);
            // Without its definition (stopped meanwhile) the contact
            // simply waits: a restart of the campaign takes it again.
            let next = running
                .get(&call.campaign)
                .map_or(Next::Retry { at: now }, |spec| {
                    // Only attempts that reached the network count.
                    spec.retries
                        .next(o, call.dialled + 1, now, None, &spec.window)
                });
            match next {
                Next::Done => (o.as_str(), ContactStatus::Done, None),
                Next::Retry { at } => (o.as_str(), ContactStatus::Pending, Some(at)),
                Next::Exhausted => (o.as_str(), ContactStatus::Failed, None),
            }
        }
    };
    let (outcome, status, next_at) = end;
    let e = AttemptEnd {
        contact: call.contact,
        attempt: call.attempt,
        outcome: outcome.to_owned(),
        status,
        next_at,
        disposition: None,
        uncount,
    };
    write_end(store, e, now);
}

/// Why a running campaign cannot dial, for the log (an admin's, not the
/// API's 422): its first problem, and a script that exists but is now
/// another firm's (a reload) named as such rather than as unknown.
fn cannot_dial(
    problems: &[(String, String)],
    raw: &RawSpec,
    scripts: &[centralino_config::Script],
) -> String {
    let owner = raw
        .script()
        .and_then(|n| scripts.iter().find(|s| s.name == n))
        .and_then(|s| s.tenant.as_ref());
    match (problems.first(), owner) {
        (Some((k, _)), Some(owner)) if k == "script" => {
            format!("script: belongs to tenant {owner:?}")
        }
        (Some((k, m)), _) => format!("{k}: {m}"),
        (None, _) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_now_of_another_firm_is_named_so_in_the_log() {
        let raw: RawSpec = serde_json::from_str(
            r#"{"name": "c", "queue": "q", "mode": "preview", "script": "consenso"}"#,
        )
        .unwrap();
        let script = |tenant: Option<&str>| centralino_config::Script {
            name: "consenso".into(),
            tenant: tenant.map(Into::into),
            start: "a".into(),
            questions: Default::default(),
        };
        let problem = [(
            "script".to_owned(),
            "no script named \"consenso\"".to_owned(),
        )];
        assert_eq!(
            cannot_dial(&problem, &raw, &[script(Some("altra"))]),
            "script: belongs to tenant \"altra\""
        );
        assert_eq!(
            cannot_dial(&problem, &raw, &[]),
            "script: no script named \"consenso\""
        );
        let queue = [("queue".to_owned(), "no queue named \"q\"".to_owned())];
        assert_eq!(
            cannot_dial(&queue, &raw, &[script(Some("altra"))]),
            "queue: no queue named \"q\""
        );
    }

    #[test]
    fn the_rome_day_turns_at_local_midnight() {
        // 2026-12-04 22:59:59 UTC is 23:59:59 in Rome: still the 4th.
        let t = centralino_types::time::parse_rfc3339("2026-12-04T22:59:59Z").unwrap();
        let (day, tomorrow) = rome_day(t);
        assert_eq!(rome_day(t + 1).0, day + 1);
        assert_eq!(tomorrow, t + 1);
    }
}
