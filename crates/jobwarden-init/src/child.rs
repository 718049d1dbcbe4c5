//! Child processes: starting them, waiting for them, signalling their process groups, and
//! reaping every zombie that ends up with us.
//!
//! jobwarden-init is a child subreaper (or PID 1), so orphaned grandchildren are re-parented to
//! it and must be reaped, which means calling `waitpid(-1)`. That call would steal the exit
//! status of any child someone else waits for, so this module is the *only* place that waits:
//! every process the binary starts (the command, and `git` during a save) is started through
//! [`Reaper::spawn`] and its status is delivered on a channel. Nothing else may call
//! `std::process::Child::wait`/`output`/`status`, and `tokio::process` is not used.
//!
//! A process is started from the main thread only (the runtime is current-thread): the
//! parent-death signal fires when the *thread* that forked exits, not the process.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status jobwarden-init exits with: the child's code, or 128+N for signal N, as shells
    /// report it. Never 0 unless the child exited 0.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(sig) => 128 + sig,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Code(_) => None,
            ExitStatus::Signal(sig) => Some(sig),
        }
    }

    fn from_wait(status: rustix::process::WaitStatus) -> ExitStatus {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            // Stopped/continued are not reported without WUNTRACED/WCONTINUED; treat anything
            // unexpected as a failure rather than success.
            (None, None) => ExitStatus::Code(255),
        }
    }
}

/// A started child: its pid (also its process group id) and where its status arrives.
#[derive(Debug)]
pub struct Started {
    pub pid: Pid,
    pub child: std::process::Child,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Owns waiting for children. See the module docs.
#[derive(Debug, Default)]
pub struct Reaper {
    /// Children started by us and not yet reaped. The lock is held across `spawn` + insert and
    /// across `waitpid` + remove, so a pid in this map is always a live process or a zombie:
    /// it cannot have been reused, and signalling its group is safe.
    waiting: Mutex<HashMap<Pid, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, oneshot::Sender<ExitStatus>>> {
        // The map stays consistent even if a holder panicked; keep reaping.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `cmd` as the leader of a new process group, with SIGKILL as its parent-death
    /// signal, so it never outlives jobwarden-init.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Started> {
        cmd.process_group(0);
        let parent = rustix::process::getpid();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe operations are allowed. It makes two raw syscalls through rustix
        // (prctl(PR_SET_PDEATHSIG) and getppid), captures only a `Pid` (Copy), allocates
        // nothing (an `io::Error` from a raw errno is not boxed), takes no locks and touches
        // no state shared with the parent. The getppid check closes the race where the parent
        // died between fork and prctl, in which case the signal would never come.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                if rustix::process::getppid() != Some(parent) {
                    return Err(Errno::SRCH.into());
                }
                Ok(())
            });
        }
        let mut waiting = self.lock();
        let child = cmd.spawn()?;
        let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
            return Err(io::Error::other("the kernel returned an invalid pid"));
        };
        let (tx, exit) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok(Started { pid, child, exit })
    }

    /// Reaps every child that has exited (ours and adopted orphans) and delivers the statuses
    /// of ours. Returns how many adopted orphans were reaped.
    pub fn reap(&self) -> usize {
        let mut waiting = self.lock();
        let mut orphans = 0;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => match waiting.remove(&pid) {
                    // The receiver may be gone (a cancelled git); nothing to deliver then.
                    Some(tx) => drop(tx.send(ExitStatus::from_wait(status))),
                    None => orphans += 1,
                },
                Err(Errno::INTR) => continue,
                // Ok(None): children remain but none has exited; ECHILD: no children at all.
                Ok(None) | Err(_) => break,
            }
        }
        orphans
    }

    /// Sends `sig` to the process group led by `pid`, if `pid` has not been reaped yet.
    /// Returns whether the signal was sent.
    pub fn signal_group(&self, pid: Pid, sig: Signal) -> bool {
        let waiting = self.lock();
        waiting.contains_key(&pid) && rustix::process::kill_process_group(pid, sig).is_ok()
    }

    /// Sends `sig` to `pid` alone, if it has not been reaped yet.
    pub fn signal_process(&self, pid: Pid, sig: Signal) -> bool {
        let waiting = self.lock();
        waiting.contains_key(&pid) && rustix::process::kill_process(pid, sig).is_ok()
    }
}

/// Makes this process a child subreaper, so orphaned descendants are re-parented to it and
/// reaped here (as PID 1 this is already so).
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_maps_signals_to_128_plus_n() {
        assert_eq!(ExitStatus::Code(0).exit_code(), 0);
        assert_eq!(ExitStatus::Code(42).exit_code(), 42);
        assert_eq!(ExitStatus::Signal(9).exit_code(), 137);
        assert_eq!(ExitStatus::Signal(15).exit_code(), 143);
        assert_eq!(ExitStatus::Signal(15).signal(), Some(15));
        assert_eq!(ExitStatus::Code(1).signal(), None);
    }
}
