//! Firms lend operators to each other only under an agreement with a
//! capacity: at most `max_concurrent` of the borrower's calls at once on
//! the lender's operators, and/or at most `share` of the lender's
//! logged-in operators busy with them. Counted nationally: each node
//! counts the calls it has lent and publishes the count in its summary,
//! and a node deciding adds what the others report.

use std::collections::HashMap;

use crate::offer::Refusal;

/// One agreement: `to` lends operators to `from`'s calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// The firm whose calls are served (the borrower).
    pub from: String,
    /// The firm whose operators serve them (the lender).
    pub to: String,
    /// The queues it covers (empty: every queue of the same name on both
    /// sides).
    pub queues: Vec<String>,
    /// Most of `from`'s calls on `to`'s operators at once, nationally.
    pub max_concurrent: Option<u32>,
    /// Most of `to`'s logged-in operators busy with `from`'s calls, as a
    /// fraction (0..=1).
    pub share: Option<f64>,
}

/// Agreements and the calls lent under them on this node.
#[derive(Debug, Default)]
pub struct Lending {
    agreements: Vec<Agreement>,
    lent: HashMap<(String, String), u32>,
}

impl Lending {
    /// The network's agreements.
    pub fn new(agreements: Vec<Agreement>) -> Self {
        Self {
            agreements,
            lent: HashMap::new(),
        }
    }

    /// Whether an agreement lets firm `to` serve firm `from`'s calls in
    /// `queue` at all (capacity aside): where the asking node offers.
    pub fn covers(&self, from: &str, to: &str, queue: &str) -> bool {
        from == to
            || self.agreements.iter().any(|a| {
                a.from == from
                    && a.to == to
                    && (a.queues.is_empty() || a.queues.iter().any(|q| q == queue))
            })
    }

    /// May a call of firm `from` in `queue` go to an operator of firm
    /// `to`? `logged_in` is `to`'s logged-in operators of that queue on
    /// the deciding node, `elsewhere` the calls other nodes report lent
    /// from `from` to `to`. The same firm needs no agreement.
    pub fn may_lend(
        &self,
        from: &str,
        to: &str,
        queue: &str,
        logged_in: u32,
        elsewhere: u32,
    ) -> Result<(), Refusal> {
        if from == to {
            return Ok(());
        }
        let a = self
            .agreements
            .iter()
            .find(|a| {
                a.from == from
                    && a.to == to
                    && (a.queues.is_empty() || a.queues.iter().any(|q| q == queue))
            })
            .ok_or(Refusal::NoAgreement)?;
        let here = self.lent(from, to);
        if a.max_concurrent
            .is_some_and(|m| here.saturating_add(elsewhere) >= m)
        {
            return Err(Refusal::Capacity);
        }
        // The share is each lending node's own: its operators, the calls
        // it lent (a node knows its own logged-in operators exactly, the
        // others' only a second late).
        if a.share
            .is_some_and(|s| f64::from(here.saturating_add(1)) > s * f64::from(logged_in))
        {
            return Err(Refusal::Capacity);
        }
        Ok(())
    }

    /// A call of `from` went to an operator of `to` here.
    pub fn start(&mut self, from: &str, to: &str) {
        if from != to {
            *self
                .lent
                .entry((from.to_owned(), to.to_owned()))
                .or_default() += 1;
        }
    }

    /// That call ended.
    pub fn end(&mut self, from: &str, to: &str) {
        if let Some(n) = self.lent.get_mut(&(from.to_owned(), to.to_owned())) {
            *n = n.saturating_sub(1);
        }
    }

    /// Calls of `from` on `to`'s operators here now.
    pub fn lent(&self, from: &str, to: &str) -> u32 {
        self.lent
            .get(&(from.to_owned(), to.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every (borrower, lender, calls) with calls here now: what each
    /// firm's supervisors see they lend and borrow, and what the summary
    /// carries.
    pub fn current(&self) -> Vec<(String, String, u32)> {
        let mut v: Vec<(String, String, u32)> = self
            .lent
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((f, t), n)| (f.clone(), t.clone(), *n))
            .collect();
        v.sort();
        v
    }
}
