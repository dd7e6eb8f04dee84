//! `[[campaigns]]` and `[outbound]`: outbound campaigns checked against
//! the node's queues, outbound trunks and scripts, with the same rules and
//! messages as `POST /api/v1/campaigns`.

use super::*;
use centralino_campaigns::spec::{Known, RawSpec, Spec, validate};

/// The names a campaign resolves against, from a validated configuration.
pub struct Names<'a> {
    /// Tenant names by index.
    pub tenants: &'a [String],
    /// Queues.
    pub queues: &'a [Queue],
    /// Trunks.
    pub trunks: &'a [Trunk],
    /// Scripts.
    pub scripts: &'a [Script],
}

impl Known for Names<'_> {
    fn queue_tenant(&self, name: &str) -> Option<String> {
        self.queues
            .iter()
            .find(|q| q.routing.name == name && !q.retired)
            .and_then(|q| self.tenants.get(q.tenant.index()).cloned())
    }

    fn outbound_trunk_tenant(&self, name: &str) -> Option<String> {
        self.trunks
            .iter()
            .find(|t| t.name == name && t.outbound.is_some())
            .and_then(|t| self.tenants.get(t.tenant.index()).cloned())
    }

    fn script(&self, tenant: &str, name: &str) -> bool {
        self.scripts
            .iter()
            .any(|s| s.name == name && s.serves(tenant))
    }

    fn presentable(&self, tenant: &str, number: &str) -> bool {
        self.trunks.iter().any(|t| {
            self.tenants
                .get(t.tenant.index())
                .is_some_and(|n| n == tenant)
                && (t.caller_id == number || t.dids.contains_key(number))
        })
    }
}

pub(super) fn campaigns(raw: &[RawSpec], names: &Names<'_>, p: &mut Problems) -> Vec<Spec> {
    let mut out: Vec<Spec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("campaigns[{i}].");
        match validate(&path, r, names) {
            Ok(spec) => {
                // Names are per tenant: another firm may name its own
                // campaign the same.
                if out
                    .iter()
                    .any(|o| o.name == spec.name && o.tenant == spec.tenant)
                {
                    p.add(
                        format!("{path}name"),
                        format!("duplicate campaign {:?} for its tenant", spec.name),
                    );
                }
                out.push(spec);
            }
            Err(problems) => {
                for (k, m) in problems {
                    p.add(k, m);
                }
            }
        }
    }
    out
}

/// `[outbound]`: limits across every campaign of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// A citizen is dialled at most this often a day (Europe/Rome) by all
    /// campaigns together; callbacks they asked for do not count.
    pub max_attempts_per_citizen_per_day: u32,
}

pub(super) fn outbound(raw: &RawOutbound, p: &mut Problems) -> OutboundLimits {
    if !(1..=20).contains(&raw.max_attempts_per_citizen_per_day) {
        p.add(
            "outbound.max_attempts_per_citizen_per_day",
            "must be in 1..=20",
        );
    }
    OutboundLimits {
        max_attempts_per_citizen_per_day: raw.max_attempts_per_citizen_per_day,
    }
}
