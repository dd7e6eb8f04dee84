//! The process's descriptor table, grown once at start-up.
//!
//! Linux grows a process's table of open descriptors by doubling it when a
//! new descriptor does not fit, and in a process with more than one thread
//! each growth waits for an RCU grace period (`expand_fdtable` calls
//! `synchronize_rcu`) with the table's lock held: every thread opening a
//! socket meanwhile waits too. A node taking its first rush after a start
//! opens thousands of RTP sockets within a second (four per call, and the
//! pairs kept after calls), so the table doubled seven or eight times
//! under load: `perf` on a 2-core VM at 2,000 calls/s saw seven such
//! waits in the first seconds, 3–13 ms each, 62 ms in all, on the engine's
//! thread (a pair bound at the call) and the RTP binding thread. Grown to
//! its working size before the load, it never grows again (Linux does not
//! shrink it); the cost is 8 bytes and two bits per slot, ~0.5 MB for the
//! default `sip.max_calls`.

use std::os::fd::AsFd;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{debug, warn};

/// Slots asked for beyond the calls' sockets: the RTP pairs held after
/// calls and bound ahead (up to 16,384 descriptors per address), SIP and
/// HTTP connections, the store's files.
const SPARE: usize = 2 * 8192 + 1024;

/// Most slots asked for, whatever the limit: ~8.6 MB of table.
const MOST: usize = 1 << 20;

/// Makes room for a node with `max_calls` anchored calls before its
/// threads start: the open-file limit raised to the hard limit (the usual
/// soft limit of 1,024 would cap a node at ~250 calls, four sockets each),
/// then the table grown to its working size. Each step that cannot be
/// taken is logged and the node goes on.
pub fn prepare(max_calls: usize) {
    let open = raise_open_file_limit();
    if open < 4 * max_calls as u64 {
        warn!(
            limit = open,
            max_calls, "open-file limit too low for sip.max_calls anchored calls (4 sockets each)"
        );
    } else {
        debug!(limit = open, "open-file limit");
    }
    let slots = table_size(max_calls, open);
    if let Err(e) = grow_table(slots) {
        warn!(slots, error = %e, "cannot grow the descriptor table ahead: it grows under load");
    }
}

/// Raises this process's open-file limit to its hard limit, if it can
/// (logged if not); the limit now (`u64::MAX`: unlimited).
pub fn raise_open_file_limit() -> u64 {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    // `None`: unlimited.
    limit.current.unwrap_or(u64::MAX)
}

/// The table size a node with `max_calls` anchored calls (four sockets
/// each) wants, within the open-file limit `limit`.
pub fn table_size(max_calls: usize, limit: u64) -> usize {
    let want = max_calls.saturating_mul(4).saturating_add(SPARE).min(MOST);
    usize::try_from(limit).map_or(want, |l| want.min(l))
}

/// Grows this process's descriptor table to at least `slots` (a
/// descriptor numbered `slots - 1` is opened and closed at once). Does
/// nothing for a table already that large.
pub fn grow_table(slots: usize) -> std::io::Result<()> {
    let Some(last) = slots.checked_sub(1).filter(|&l| l > 2) else {
        return Ok(());
    };
    let last =
        i32::try_from(last).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // A descriptor of our own to copy (not stderr, which may be closed or
    // reused: closing a copy of a file would drop the process's record
    // locks on it). The lowest free slot at or above `last` takes the
    // copy: the table grows to hold it, and stays grown when both close
    // (dropped here).
    let null = std::fs::File::open("/dev/null")?;
    drop(rustix::io::fcntl_dupfd_cloexec(null.as_fd(), last)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's size as the kernel reports it.
    fn fd_size() -> usize {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize")
    }

    #[test]
    fn the_table_is_grown_once_to_hold_the_calls_sockets() {
        assert_eq!(table_size(2_000, 1 << 20), 8_000 + SPARE);
        // Four times what this process has now, within its own limit
        // (beyond it the kernel refuses), so the growth is this call's.
        let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let before = fd_size();
        let slots = table_size(before, limit);
        assert!(
            slots > before,
            "a limit of {limit} leaves no room to grow a table of {before}"
        );
        grow_table(slots).expect("grown");
        assert!(fd_size() >= slots, "FDSize {} < {slots}", fd_size());
        // No descriptor is left open in the slots asked for.
        assert!(
            !std::path::Path::new(&format!("/proc/self/fd/{}", slots - 1)).exists(),
            "the descriptor that grew the table is closed"
        );
    }

    #[test]
    fn the_size_stays_within_the_limit_and_the_cap() {
        assert_eq!(table_size(10_000, 4096), 4096);
        assert_eq!(table_size(usize::MAX, u64::MAX), MOST);
        assert_eq!(table_size(0, u64::MAX), SPARE);
        // Three slots or fewer (the standard three) ask for nothing, not
        // even /dev/null.
        grow_table(3).expect("nothing to do");
        grow_table(0).expect("nothing to do");
    }
}
