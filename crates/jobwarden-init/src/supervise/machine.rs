//! What the supervisor does next: a state machine of `(state, event, now) -> actions`.
//!
//! It owns the rules for how SIGTERM, the checkpoint, the save steps, the grace budget and the
//! child's exit interact (STYLE.md §1). It performs no I/O and reads no clock: the executor in
//! `supervise.rs` feeds it events with the current monotonic time and carries out the actions.
//!
//! The rules:
//! - Every forwarded signal is forwarded, always, SIGTERM included.
//! - The first SIGTERM starts the termination: saving may run until `now + save budget`
//!   (`stop_at`). A checkpoint save still running is cancelled first and the SIGTERM save
//!   starts when it has wound down, so two saves never touch the repository at once.
//!   Later SIGTERMs are only forwarded.
//! - At `stop_at`, a save still running is cancelled and, if the child still runs, its process
//!   group is SIGKILLed (the runtime's SIGKILL would come a safety margin later anyway; this
//!   way the summary is still written).
//! - When the child exits: with no save running, exit at once; during a SIGTERM save, exit
//!   when the save ends; during a checkpoint save, cancel it (the job finished on its own,
//!   there is no work in progress to rescue) and exit when it has wound down.
//! - The checkpoint runs once, only if no SIGTERM came first; when its save completes the child
//!   (the process, not its group) gets SIGUSR1.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// The signals forwarded to the child's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
}

impl Sig {
    pub const ALL: [Sig; 6] = [
        Sig::Term,
        Sig::Int,
        Sig::Hup,
        Sig::Quit,
        Sig::Usr1,
        Sig::Usr2,
    ];

    pub fn raw(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            Sig::Term => Signal::TERM,
            Sig::Int => Signal::INT,
            Sig::Hup => Signal::HUP,
            Sig::Quit => Signal::QUIT,
            Sig::Usr1 => Signal::USR1,
            Sig::Usr2 => Signal::USR2,
        }
    }
}

/// Why a save runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The runtime is terminating the job.
    Sigterm,
    /// `--checkpoint-before` ahead of the deadline.
    Checkpoint,
}

/// Something that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Signal(Sig),
    ChildExited,
    CheckpointDue,
    SaveFinished { run: u32 },
    StopAtReached,
}

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the signal to the child's process group.
    Forward(Sig),
    /// Run the save steps, each bounded by `stop_at`; report `SaveFinished { run }`.
    StartSave {
        run: u32,
        trigger: Trigger,
        stop_at: Instant,
    },
    /// Ask save `run` to stop now; it still reports `SaveFinished`.
    CancelSave { run: u32, reason: &'static str },
    /// Report `StopAtReached` at this time.
    ArmStopTimer(Instant),
    /// The checkpoint save finished: tell the child (SIGUSR1 to the child process only).
    NotifyCheckpoint,
    /// SIGKILL the child's process group.
    KillChildGroup,
    /// Write the summary and exit with the child's status.
    Exit,
}

#[derive(Debug)]
struct Save {
    run: u32,
    trigger: Trigger,
    cancelled: bool,
}

/// The supervisor's state.
#[derive(Debug)]
pub struct Machine {
    save_budget: Duration,
    deadline: Option<Instant>,
    stop_at: Option<Instant>,
    child_exited: bool,
    save: Option<Save>,
    sigterm_save_pending: bool,
    next_run: u32,
}

impl Machine {
    /// `save_budget`: how long after SIGTERM saving may run. `deadline`: the job's deadline on
    /// the monotonic clock, if known (bounds a checkpoint save).
    pub fn new(save_budget: Duration, deadline: Option<Instant>) -> Machine {
        Machine {
            save_budget,
            deadline,
            stop_at: None,
            child_exited: false,
            save: None,
            sigterm_save_pending: false,
            next_run: 0,
        }
    }

    /// Whether a SIGTERM has started the termination.
    #[cfg(test)]
    pub fn terminating(&self) -> bool {
        self.stop_at.is_some()
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Signal(Sig::Term) => {
                out.push(Action::Forward(Sig::Term));
                if self.stop_at.is_none() {
                    let stop_at = now.checked_add(self.save_budget).unwrap_or(now);
                    self.stop_at = Some(stop_at);
                    out.push(Action::ArmStopTimer(stop_at));
                    if self.save.is_some() {
                        self.cancel_save("SIGTERM arrived", &mut out);
                        self.sigterm_save_pending = true;
                    } else {
                        self.start_save(Trigger::Sigterm, stop_at, now, &mut out);
                    }
                }
            }
            Event::Signal(sig) => out.push(Action::Forward(sig)),
            Event::CheckpointDue => {
                if self.stop_at.is_none() && self.save.is_none() && !self.child_exited {
                    // Until the deadline, or a full grace budget if that is later (a deadline
                    // already passed must not leave the checkpoint with no time at all).
                    let budget_end = now.checked_add(self.save_budget).unwrap_or(now);
                    let stop_at = self.deadline.map_or(budget_end, |d| d.max(budget_end));
                    self.start_save(Trigger::Checkpoint, stop_at, now, &mut out);
                }
            }
            Event::SaveFinished { run } => {
                let Some(save) = self.save.take_if(|s| s.run == run) else {
                    return out;
                };
                if save.trigger == Trigger::Checkpoint && !save.cancelled && !self.child_exited {
                    out.push(Action::NotifyCheckpoint);
                }
                if std::mem::take(&mut self.sigterm_save_pending)
                    && let Some(stop_at) = self.stop_at
                {
                    self.start_save(Trigger::Sigterm, stop_at, now, &mut out);
                }
                if self.save.is_none() && self.child_exited {
                    out.push(Action::Exit);
                }
            }
            Event::ChildExited => {
                self.child_exited = true;
                match &self.save {
                    None => out.push(Action::Exit),
                    Some(save) if save.trigger == Trigger::Checkpoint => {
                        self.cancel_save("the command exited", &mut out);
                    }
                    Some(_) => {}
                }
            }
            Event::StopAtReached => {
                self.sigterm_save_pending = false;
                if self.save.is_some() {
                    self.cancel_save("the grace period is used up", &mut out);
                }
                if !self.child_exited {
                    out.push(Action::KillChildGroup);
                } else if self.save.is_none() {
                    out.push(Action::Exit);
                }
            }
        }
        out
    }

    fn start_save(
        &mut self,
        trigger: Trigger,
        stop_at: Instant,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if stop_at <= now {
            return; // no time to save anything (a grace period of 0)
        }
        let run = self.next_run;
        self.next_run += 1;
        self.save = Some(Save {
            run,
            trigger,
            cancelled: false,
        });
        out.push(Action::StartSave {
            run,
            trigger,
            stop_at,
        });
    }

    fn cancel_save(&mut self, reason: &'static str, out: &mut Vec<Action>) {
        if let Some(save) = &mut self.save
            && !save.cancelled
        {
            save.cancelled = true;
            out.push(Action::CancelSave {
                run: save.run,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(27);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn child_exit_without_signals_exits_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        assert_eq!(m.handle(Event::ChildExited, t0), vec![Action::Exit]);
    }

    #[test]
    fn non_term_signals_are_only_forwarded() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        for sig in [Sig::Int, Sig::Hup, Sig::Quit, Sig::Usr1, Sig::Usr2] {
            assert_eq!(m.handle(Event::Signal(sig), t0), vec![Action::Forward(sig)]);
        }
        assert!(!m.terminating());
    }

    #[test]
    fn sigterm_forwards_saves_within_budget_and_waits_for_both() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        let stop_at = t0 + BUDGET;
        assert_eq!(
            m.handle(Event::Signal(Sig::Term), t0),
            vec![
                Action::Forward(Sig::Term),
                Action::ArmStopTimer(stop_at),
                Action::StartSave {
                    run: 0,
                    trigger: Trigger::Sigterm,
                    stop_at
                },
            ]
        );
        // The child exiting first does not end the save...
        assert_eq!(m.handle(Event::ChildExited, t0 + secs(1)), vec![]);
        // ...the end of the save ends the supervisor.
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + secs(2)),
            vec![Action::Exit]
        );
    }

    #[test]
    fn save_done_before_child_waits_for_child_then_kills_it_at_stop_at() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + secs(1)),
            vec![]
        );
        assert_eq!(
            m.handle(Event::StopAtReached, t0 + BUDGET),
            vec![Action::KillChildGroup]
        );
        assert_eq!(
            m.handle(Event::ChildExited, t0 + BUDGET),
            vec![Action::Exit]
        );
    }

    #[test]
    fn a_second_sigterm_is_forwarded_without_restarting_anything() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(
            m.handle(Event::Signal(Sig::Term), t0 + secs(5)),
            vec![Action::Forward(Sig::Term)]
        );
    }

    #[test]
    fn stop_at_cancels_a_save_still_running_and_kills_the_group() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(
            m.handle(Event::StopAtReached, t0 + BUDGET),
            vec![
                Action::CancelSave {
                    run: 0,
                    reason: "the grace period is used up"
                },
                Action::KillChildGroup,
            ]
        );
        assert_eq!(m.handle(Event::ChildExited, t0 + BUDGET), vec![]);
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + BUDGET),
            vec![Action::Exit]
        );
    }

    #[test]
    fn zero_grace_saves_nothing_and_kills_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(Duration::ZERO, None);
        assert_eq!(
            m.handle(Event::Signal(Sig::Term), t0),
            vec![Action::Forward(Sig::Term), Action::ArmStopTimer(t0)]
        );
        assert_eq!(
            m.handle(Event::StopAtReached, t0),
            vec![Action::KillChildGroup]
        );
        assert_eq!(m.handle(Event::ChildExited, t0), vec![Action::Exit]);
    }

    #[test]
    fn checkpoint_saves_until_the_deadline_then_notifies_the_child() {
        let t0 = Instant::now();
        let deadline = t0 + secs(600);
        let mut m = Machine::new(BUDGET, Some(deadline));
        assert_eq!(
            m.handle(Event::CheckpointDue, t0),
            vec![Action::StartSave {
                run: 0,
                trigger: Trigger::Checkpoint,
                stop_at: deadline
            }]
        );
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + secs(3)),
            vec![Action::NotifyCheckpoint]
        );
        assert!(!m.terminating());
        // The job carries on and exits normally later.
        assert_eq!(
            m.handle(Event::ChildExited, t0 + secs(60)),
            vec![Action::Exit]
        );
    }

    #[test]
    fn checkpoint_past_the_deadline_still_gets_a_grace_budget() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, Some(t0));
        assert_eq!(
            m.handle(Event::CheckpointDue, t0 + secs(5)),
            vec![Action::StartSave {
                run: 0,
                trigger: Trigger::Checkpoint,
                stop_at: t0 + secs(5) + BUDGET,
            }]
        );
    }

    #[test]
    fn sigterm_during_checkpoint_cancels_it_then_saves_again() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, Some(t0 + secs(600)));
        m.handle(Event::CheckpointDue, t0);
        let stop_at = t0 + secs(1) + BUDGET;
        assert_eq!(
            m.handle(Event::Signal(Sig::Term), t0 + secs(1)),
            vec![
                Action::Forward(Sig::Term),
                Action::ArmStopTimer(stop_at),
                Action::CancelSave {
                    run: 0,
                    reason: "SIGTERM arrived"
                },
            ]
        );
        // The cancelled checkpoint winds down: no SIGUSR1, the SIGTERM save starts with the
        // SIGTERM's own stop time.
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + secs(2)),
            vec![Action::StartSave {
                run: 1,
                trigger: Trigger::Sigterm,
                stop_at
            }]
        );
        assert_eq!(m.handle(Event::ChildExited, t0 + secs(3)), vec![]);
        assert_eq!(
            m.handle(Event::SaveFinished { run: 1 }, t0 + secs(4)),
            vec![Action::Exit]
        );
    }

    #[test]
    fn child_exit_during_checkpoint_cancels_it_and_exits() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, Some(t0 + secs(600)));
        m.handle(Event::CheckpointDue, t0);
        assert_eq!(
            m.handle(Event::ChildExited, t0 + secs(1)),
            vec![Action::CancelSave {
                run: 0,
                reason: "the command exited"
            }]
        );
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0 + secs(1)),
            vec![Action::Exit]
        );
    }

    #[test]
    fn checkpoint_after_sigterm_or_exit_does_nothing() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, Some(t0));
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(m.handle(Event::CheckpointDue, t0), vec![]);

        let mut m = Machine::new(BUDGET, Some(t0));
        m.handle(Event::ChildExited, t0);
        assert_eq!(m.handle(Event::CheckpointDue, t0), vec![]);
    }

    #[test]
    fn stale_save_reports_are_ignored() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, None);
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(m.handle(Event::SaveFinished { run: 7 }, t0), vec![]);
        assert_eq!(m.handle(Event::ChildExited, t0), vec![]);
    }

    #[test]
    fn sigterm_while_checkpoint_winds_down_after_child_exit_still_saves() {
        let t0 = Instant::now();
        let mut m = Machine::new(BUDGET, Some(t0 + secs(600)));
        m.handle(Event::CheckpointDue, t0);
        m.handle(Event::Signal(Sig::Term), t0);
        assert_eq!(m.handle(Event::ChildExited, t0), vec![]);
        assert_eq!(
            m.handle(Event::SaveFinished { run: 0 }, t0),
            vec![Action::StartSave {
                run: 1,
                trigger: Trigger::Sigterm,
                stop_at: t0 + BUDGET
            }]
        );
        assert_eq!(
            m.handle(Event::SaveFinished { run: 1 }, t0),
            vec![Action::Exit]
        );
    }
}
