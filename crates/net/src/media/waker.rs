//! A media thread's wake-up: an eventfd in its epoll set.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Wakes a media thread when commands are queued (an eventfd in its epoll
/// set). The plane queues an engine turn's commands and wakes each thread
/// once, at the end of the turn ([`super::MediaPlane::flush`]); `pending` spares
/// the write while the thread has not taken the previous wake-up yet. One
/// write per command cost the engine thread ~9 % of its time at 2,000
/// calls/s (perf), and each woke the media thread for one command.
pub(super) struct Waker {
    pub(super) fd: OwnedFd,
    pub(super) pending: AtomicBool,
}

impl Waker {
    pub(super) fn wake(&self) -> std::io::Result<()> {
        // After the command is queued: either the thread's `taken` comes
        // later and sees it, or this swap comes later, reads `false` and
        // writes.
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        rustix::io::write(&self.fd, &1u64.to_ne_bytes())?;
        Ok(())
    }

    /// The thread's side, before it takes the queued commands: resets the
    /// eventfd, and lets the next command wake it again.
    pub(super) fn taken(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b);
        // A swap, not a store: it reads a sender's `true` and so sees the
        // command queued before it.
        self.pending.swap(false, Ordering::AcqRel);
    }
}
