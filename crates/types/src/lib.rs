//! Shared vocabulary of Centralino: identifiers and the [`Masked`] wrapper.
//!
//! Owns: small value types every other crate names. Never does: I/O, parsing of
//! protocol messages, or anything with a clock.
#![warn(missing_docs)]

#[cfg(feature = "count-alloc")]
pub mod alloc_count;
pub mod dialplan;
pub mod outcome;
pub mod record;
pub mod time;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static UNMASK: AtomicBool = AtomicBool::new(false);

/// Turns masking of phone numbers off for the whole process
/// (`logging.unmask_numbers = true`). Off by default: numbers are health-adjacent
/// personal data and must not reach logs unless an operator explicitly asks.
pub fn set_unmask_numbers(unmask: bool) {
    UNMASK.store(unmask, Ordering::Relaxed);
}

/// A phone number, SIP user part or similar identifier that prints masked:
/// every character but the last three becomes `*`.
///
/// `Masked` is the only way numbers reach `Display`/`Debug` in logs.
#[derive(Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if UNMASK.load(Ordering::Relaxed) {
            return f.write_str(self.0);
        }
        write_masked(f, self.0)
    }
}

/// `s` masked whatever `logging.unmask_numbers` says: for what people
/// read (API answers, desks), where that logging switch must not reach
/// (an outside review found it unmasked supervisors' contact lists).
pub fn masked(s: &str) -> String {
    struct Always<'a>(&'a str);
    impl fmt::Display for Always<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_masked(f, self.0)
        }
    }
    Always(s).to_string()
}

/// Every character of `s` but the last three as `*`.
fn write_masked(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let n = s.chars().count();
    for (i, c) in s.chars().enumerate() {
        if i + 3 < n {
            f.write_str("*")?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            /// The position it names, as a table index.
            pub fn index(self) -> usize {
                self.0 as usize
            }

            /// The id of position `i` (tables are far below 2³² rows).
            pub fn at(i: usize) -> Self {
                Self(u32::try_from(i).unwrap_or(u32::MAX))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id!(
    /// Index of an operator (agent) in the routing tables.
    AgentId
);
id!(
    /// Index of a queue in the routing tables.
    QueueId
);
id!(
    /// Index of a tenant (firm) in the configuration.
    TenantId
);
id!(
    /// Index of a trunk in the configuration (and in the engine's trunk
    /// table, rebuilt at each reload).
    TrunkId
);

/// Process-local identifier of a call (both legs), never a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_last_three() {
        assert_eq!(Masked("+393331234567").to_string(), "**********567");
        assert_eq!(Masked("12").to_string(), "12");
        assert_eq!(Masked("").to_string(), "");
        assert_eq!(format!("{:?}", Masked("0612345")), "\"****345\"");
        // Unmasked logs leave what people read masked (one test: the
        // switch is the process's).
        set_unmask_numbers(true);
        let (logged, shown) = (Masked("+393331234567").to_string(), masked("+393331234567"));
        set_unmask_numbers(false);
        assert_eq!(logged, "+393331234567");
        assert_eq!(shown, "**********567");
        assert_eq!(masked("12"), "12");
    }
}
