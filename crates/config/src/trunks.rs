//! `[[trunks]]`: one trunk's peers, DIDs, outbound side and identity,
//! validated against the names every section shares and the queues.

use super::*;

/// One `[[trunks]]` entry (the `i`th), every problem added to `p`. `tls`:
/// the node listens for TLS.
pub(crate) fn trunk(
    names: &Names<'_>,
    queues: &[Queue],
    flow_names: &[String],
    tls: bool,
    p: &mut Problems,
    i: usize,
    t: &RawTrunk,
) -> Trunk {
    let path = format!("trunks[{i}]");
    if !valid_name(&t.name) {
        p.add(format!("{path}.name"), "must be 1-64 of [A-Za-z0-9_-]");
    }
    let tenant = names.tenant_of(p, format!("{path}.tenant"), &t.tenant);
    let mut peers = Vec::new();
    for (j, a) in t.peers.iter().enumerate() {
        match a.parse::<IpAddr>() {
            Ok(ip) => peers.push(ip),
            Err(_) => p.add(
                format!("{path}.peers[{j}]"),
                format!("not an IP address: {a:?}"),
            ),
        }
    }
    if peers.is_empty() {
        p.add(format!("{path}.peers"), "needs at least one address");
    }
    let mut dids = HashMap::new();
    for (did, target) in &t.dids {
        let dp = format!("{path}.dids.{did:?}");
        if did.is_empty() || !did.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
            p.add(dp.clone(), "a DID is digits, optionally with a leading +");
        }
        let (queue, spec) = match target {
            RawDid::Queue(q) => (Some(q), CallSpec::default()),
            RawDid::Full(f) => {
                if !(-100..=100).contains(&f.priority) {
                    p.add(format!("{dp}.priority"), "must be in -100..=100");
                }
                let requirement = f
                    .requirements
                    .as_ref()
                    .and_then(|r| names.requirement(p, format!("{dp}.requirements"), r));
                match (&f.queue, &f.flow) {
                    (Some(_), Some(_)) | (None, None) => {
                        p.add(dp.clone(), "needs exactly one of queue, flow");
                    }
                    (None, Some(name)) => {
                        match flow_names.iter().position(|n| n == name) {
                            Some(fi) => {
                                dids.insert(
                                    did.clone(),
                                    Did {
                                        target: DidTarget::Flow(fi),
                                        spec: CallSpec {
                                            priority: f.priority,
                                            requirement: requirement.clone(),
                                            fragile: f.fragile,
                                            waited: Duration::ZERO,
                                        },
                                    },
                                );
                            }
                            None => p.add(format!("{dp}.flow"), format!("unknown flow {name:?}")),
                        }
                        continue;
                    }
                    (Some(_), None) => {}
                }
                (
                    f.queue.as_ref(),
                    CallSpec {
                        priority: f.priority,
                        requirement,
                        fragile: f.fragile,
                        waited: Duration::ZERO,
                    },
                )
            }
        };
        let Some(queue) = queue else { continue };
        // (A retired queue's place has no name: nothing reaches it.)
        match names
            .queue_names
            .iter()
            .position(|q| !q.is_empty() && q == queue)
        {
            Some(qi) if queues[qi].tenant == tenant => {
                dids.insert(
                    did.clone(),
                    Did {
                        target: DidTarget::Queue(qi),
                        spec,
                    },
                );
            }
            Some(_) => p.add(dp, format!("queue {queue:?} belongs to another tenant")),
            None => p.add(dp, format!("unknown queue {queue:?}")),
        }
    }
    let outbound = t.outbound.as_ref().and_then(|o| match o.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(
                format!("{path}.outbound"),
                format!("not an ADDR:PORT: {o:?}"),
            );
            None
        }
    });
    let caller_id = t.caller_id.clone().unwrap_or_else(|| "centralino".into());
    if caller_id.is_empty()
        || caller_id.len() > 32
        || !caller_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        p.add(format!("{path}.caller_id"), "digits (and +), at most 32");
    }
    if t.options_seconds != 0 {
        if !(5..=3600).contains(&t.options_seconds) {
            p.add(
                format!("{path}.options_seconds"),
                "must be 0 (off) or in 5..=3600",
            );
        } else if t.outbound.is_none() {
            p.add(
                format!("{path}.options_seconds"),
                "only for a trunk with outbound",
            );
        }
    }
    let client_cert = trunk_client_cert(p, &path, t, tls);
    let outbound_tls = trunk_outbound_tls(p, &path, t, tls);
    let auth = match (&t.auth_username, &t.auth_password) {
        (None, None) => None,
        (Some(u), Some(pw)) => {
            // Both travel inside a quoted string of a header line.
            let clean = |v: &str| {
                !v.is_empty()
                    && v.len() <= 256
                    && !v.chars().any(|c| c.is_control() || c == '"' || c == '\\')
            };
            if !clean(u) {
                p.add(
                    format!("{path}.auth_username"),
                    "1-256 characters, no quotes, backslashes or control characters",
                );
            }
            if !clean(pw) {
                p.add(
                    format!("{path}.auth_password"),
                    "1-256 characters, no quotes, backslashes or control characters",
                );
            }
            if t.outbound.is_none() {
                p.add(
                    format!("{path}.auth_username"),
                    "only for a trunk with outbound",
                );
            }
            Some(TrunkAuth {
                username: u.clone(),
                password: pw.clone(),
            })
        }
        (Some(_), None) => {
            p.add(
                format!("{path}.auth_password"),
                "required with auth_username",
            );
            None
        }
        (None, Some(_)) => {
            p.add(
                format!("{path}.auth_username"),
                "required with auth_password",
            );
            None
        }
    };
    Trunk {
        name: t.name.clone(),
        tenant,
        peers,
        dids,
        outbound,
        caller_id,
        options: (t.options_seconds > 0).then(|| Duration::from_secs(t.options_seconds)),
        client_cert,
        outbound_tls,
        auth,
        asserted_identity: t.asserted_identity,
    }
}

/// What holds across trunks: no DID two trunks behind one address could
/// both own, IVR transfers within the dial plan of each tenant whose
/// trunk reaches the flow, and flows queueing a trunk's callers only in
/// its tenant's queues. `flows` is `None` when a flow failed to compile:
/// a DID's flow index counts every flow of the file, and `flows` then
/// lacks one, so following DIDs into it would check the wrong flows (the
/// configuration is refused for the flow's own problems anyway).
pub(crate) fn check_trunks(
    trunks: &[Trunk],
    flows: Option<&[std::sync::Arc<centralino_flows::Flow>]>,
    queues: &[Queue],
    queue_names: &[String],
    dial_plans: &[DialPlan],
    tenants: &[String],
    p: &mut Problems,
) {
    // A call is told to its trunk by (source address, DID): two trunks
    // behind one carrier SBC (one per tenant) are fine, as long as no
    // DID could belong to both.
    for (i, t) in trunks.iter().enumerate() {
        for (j, other) in trunks.iter().enumerate().skip(i + 1) {
            let shared = t.peers.iter().any(|a| other.peers.contains(a));
            let mut both: Vec<&String> = t
                .dids
                .keys()
                .filter(|d| other.dids.contains_key(*d))
                .collect();
            both.sort();
            if let (true, Some(did)) = (shared, both.first()) {
                p.add(
                    format!("trunks[{j}].dids.{did:?}"),
                    format!(
                        "trunks {:?} and {:?} share a peer address and this DID: its calls could belong to either",
                        t.name, other.name
                    ),
                );
            }
        }
    }
    let Some(flows) = flows else {
        return;
    };
    // Each flow a tenant's trunk reaches, once per tenant: its transfers
    // within the tenant's dial plan, and its queues the tenant's own. A
    // flow queues a trunk's callers, takes their callbacks and reads
    // queue figures only in that tenant's queues, as a DID naming a
    // queue does: another firm's queue would show this firm's callers,
    // their numbers and their answers, to that firm's operators and
    // supervisors (TEST-MATRIX D12). Help between firms goes through a
    // queue's overflow `tenants` or `[[agreements]]`, which say so.
    let mut checked = HashSet::new();
    for t in trunks {
        for did in t.dids.values() {
            let DidTarget::Flow(fi) = did.target else {
                continue;
            };
            // Each flow once per tenant, however many DIDs reach it.
            let Some(flow) = flows.get(fi).filter(|_| checked.insert((fi, t.tenant))) else {
                continue;
            };
            for (k, node) in flow.nodes.iter().enumerate() {
                use centralino_flows::{Node, Test};
                // An IVR transfer leaves through the trunk's tenant's
                // outbound trunk: its number must pass that tenant's
                // dial plan.
                if let Node::Transfer { number, .. } = node
                    && let Some(plan) = dial_plans.get(t.tenant.index())
                    && let Err(why) = plan.check(number)
                {
                    p.add(
                        format!("flows.{}.nodes.{}.number", flow.name, flow.names[k]),
                        format!(
                            "tenant {:?}'s dial plan refuses it: {why}",
                            tenants[t.tenant.index()]
                        ),
                    );
                }
                // A condition on a queue's figures too: one firm's
                // callers are not steered by another firm's live state.
                let (Node::Enqueue { queue, .. }
                | Node::Callback { queue, .. }
                | Node::Condition {
                    test: Test::Staffed(queue, _) | Test::Wait(queue, _) | Test::Waiting(queue, _),
                    ..
                }) = node
                else {
                    continue;
                };
                let Some(qi) = queue_names.iter().position(|q| !q.is_empty() && q == queue) else {
                    continue;
                };
                if queues[qi].tenant != t.tenant {
                    p.add(
                        format!("flows.{}.nodes.{}.queue", flow.name, flow.names[k]),
                        format!(
                            "queue {queue:?} belongs to tenant {:?}, and trunk {:?} of tenant {:?} reaches this flow",
                            tenants[queues[qi].tenant.index()],
                            t.name,
                            tenants[t.tenant.index()]
                        ),
                    );
                }
            }
        }
    }
}
