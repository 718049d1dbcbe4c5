//! Lifecycle stages, their transitions, and the events hooks fire on.
//!
//! pre_start → running → (terminating →) completed | failed → cleanup → cleaned; on
//! Kubernetes a Job whose outcome the Job controller decided but whose pods still terminate is
//! `completing` in between. Every stage transition and every escalation step is an event;
//! `[[hooks]]` subscribe by name. The stage after a run ends says how its process ended
//! (`completed`: exit 0; `failed`: anything else), the outcome who ended it.

use crate::model::{Outcome, Stage, Step};

/// Whether `name` is something a hook can subscribe to: a stage or an escalation step.
pub fn is_hook_event(name: &str) -> bool {
    name.parse::<Stage>().is_ok() || name.parse::<Step>().is_ok()
}

/// The stage a finished run settles in.
pub fn stage_after(outcome: Outcome) -> Stage {
    match outcome {
        Outcome::Succeeded => Stage::Completed,
        Outcome::Failed | Outcome::Terminated | Outcome::Lost => Stage::Failed,
    }
}

/// Whether a job may move from `from` to `to`. Used to refuse stale or replayed updates
/// (a late exit report must not resurrect a cleaned job).
pub fn can_transition(from: Stage, to: Stage) -> bool {
    use Stage::*;
    if from == to {
        return true;
    }
    match from {
        PreStart => matches!(to, Running | Completing | Completed | Failed | Terminating),
        Running => matches!(to, Terminating | Completing | Completed | Failed),
        Terminating => matches!(to, Completing | Completed | Failed),
        // An ending Kubernetes Job whose pods outlive its deadline gets the ladder.
        Completing => matches!(to, Completed | Failed | Terminating),
        // A finished job may be restarted by recovery (new run) or cleaned up.
        Completed | Failed => matches!(to, Cleanup | Running | PreStart),
        Cleanup => matches!(to, Cleaned),
        Cleaned => false,
    }
}

/// A stage change the lifecycle does not allow (a stale or replayed update).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job}: stage {from} cannot move to {to}")]
pub struct StageError {
    /// The job.
    pub job: String,
    /// Its stage.
    pub from: Stage,
    /// The stage refused.
    pub to: Stage,
}

/// The stage a local run settles in, from how its process ended: `completed` for exit
/// status 0 — also when jobwarden asked it to stop and it saved its work and exited 0 inside
/// its grace (outcome `terminated`) — and [`stage_after`] the outcome otherwise (a non-zero
/// exit, a signal, SIGKILL after the grace, lost, force deleted: `failed`).
pub fn stage_after_exit(outcome: Outcome, exit_code: Option<i32>, signal: Option<i32>) -> Stage {
    match (outcome, exit_code, signal) {
        (Outcome::Succeeded | Outcome::Terminated, Some(0), None) => Stage::Completed,
        _ => stage_after(outcome),
    }
}

/// How an exit status maps to an outcome: jobwarden ending the job wins over the status.
pub fn outcome_of_exit(
    exit_code: Option<i32>,
    signal: Option<i32>,
    terminated_by_jobwarden: bool,
) -> Outcome {
    if terminated_by_jobwarden {
        Outcome::Terminated
    } else if exit_code == Some(0) && signal.is_none() {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_events_are_stages_and_steps() {
        for ok in [
            "pre_start",
            "terminating",
            "cleaned",
            "warn",
            "force_delete",
        ] {
            assert!(is_hook_event(ok), "{ok}");
        }
        for bad in ["", "Terminating", "kill", "done"] {
            assert!(!is_hook_event(bad), "{bad}");
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome_of_exit(Some(0), None, false), Outcome::Succeeded);
        assert_eq!(outcome_of_exit(Some(1), None, false), Outcome::Failed);
        assert_eq!(outcome_of_exit(None, Some(9), false), Outcome::Failed);
        // Exit 0 after our SIGTERM is still "terminated".
        assert_eq!(outcome_of_exit(Some(0), None, true), Outcome::Terminated);
        assert_eq!(stage_after(Outcome::Terminated), Stage::Failed);
        assert_eq!(stage_after(Outcome::Succeeded), Stage::Completed);
    }

    #[test]
    fn a_run_that_exited_0_when_asked_to_stop_completed() {
        // Saved its work and exited 0 inside its grace: completed, terminated.
        assert_eq!(
            stage_after_exit(Outcome::Terminated, Some(0), None),
            Stage::Completed
        );
        assert_eq!(
            stage_after_exit(Outcome::Succeeded, Some(0), None),
            Stage::Completed
        );
        // SIGKILLed after the grace, exited non-zero, vanished: failed.
        assert_eq!(
            stage_after_exit(Outcome::Terminated, None, Some(9)),
            Stage::Failed
        );
        assert_eq!(
            stage_after_exit(Outcome::Terminated, Some(143), None),
            Stage::Failed
        );
        assert_eq!(
            stage_after_exit(Outcome::Terminated, None, None),
            Stage::Failed
        );
        assert_eq!(stage_after_exit(Outcome::Lost, None, None), Stage::Failed);
        assert_eq!(
            stage_after_exit(Outcome::Failed, Some(3), None),
            Stage::Failed
        );
    }

    #[test]
    fn transitions() {
        assert!(can_transition(Stage::Running, Stage::Terminating));
        assert!(can_transition(Stage::Completed, Stage::Cleanup));
        assert!(!can_transition(Stage::Cleaned, Stage::Running));
        assert!(!can_transition(Stage::Cleanup, Stage::Running));
        assert!(!can_transition(Stage::Terminating, Stage::Running));
    }
}
