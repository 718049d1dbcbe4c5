//! Runtimes carry out what the engine planned, on real jobs: [`local`] on OS process groups
//! on this machine, [`kubernetes`] on batch/v1 Jobs through the API server. The
//! [`Runtime`] trait is the boundary the executor (`crate::executor`) drives; the engine never
//! sees it.
//!
//! What each plan does on each runtime, and when it is recorded relative to the act:
//!
//! | plan | local | Kubernetes | recorded |
//! | --- | --- | --- | --- |
//! | warn | nothing (hooks, the row) | an Event `TimeoutWarning` | before |
//! | soft kill | SIGTERM to the process group | merge PATCH `activeDeadlineSeconds: 1` + annotations; Event; pods with a longer own grace deleted with the grace | before |
//! | hard kill | SIGKILL to the process group | Event; pods deleted with grace 0 | before |
//! | force delete | SIGKILL; the workspace removed; the job settled `terminated` | Event; the Job deleted (Background, UID); stuck pods grace 0 | before |
//! | TTL cleanup | nothing now: the workspace, log and artifacts are queued | the Job deleted (Foreground, UID) and its labelled PVCs, Secrets, ConfigMaps; artifacts queued | after |
//! | mark_failed | SIGKILL; the job settled `failed` | merge PATCH as for the soft kill, `termination-outcome: failed`; Event | before |
//! | recover | SIGKILL to the old run; a new run spawned | the old Job deleted; the stored Job created anew | before |
//!
//! In `jobwarden run` the Events of the kill steps and mark_failed (not the warning's, which
//! is its act) are queued to a bounded background poster (`kubernetes::poster`) after the
//! step's own calls, with their own audit rows: a burst of due steps waits for its real calls
//! only. A full queue drops the Event (counted as the error `event_dropped`); a graceful
//! shutdown posts what is queued; a crash loses what is queued, never a step or its row.
//!
//! Before a soft kill is recorded, the runtime reads what the run uses ([`Runtime::usage`]:
//! `/proc`, or the pods it last saw) for the reclaimed report; the figures go in the step's
//! own row. The read changes nothing, so it adds no case to the crash argument.
//!
//! The crash argument for each order:
//! - **Steps, mark_failed and recover are recorded before they act**, so nothing is ever done
//!   without its row, and one decision is never carried out as two (a recovery attempt is
//!   counted once). A crash between the record and the act leaves the record saying what is
//!   still to be done: the Kubernetes runtime marks it (`acting` in the record's spec, see
//!   [`Runtime::MARKS_PENDING`]) and the next pass (after a restart, or on the next leader)
//!   carries it out before deciding anything else; its calls are idempotent (the same merge
//!   patch, deletes with UID preconditions answered 404 once done). The local runtime re-sends
//!   the strongest kill step recorded when it re-adopts a running process after a restart
//!   (`daemon::enforcer`), and a signal is harmless to repeat.
//! - **A TTL cleanup acts first, then moves the job to `cleanup`, then queues**: the act is
//!   idempotent (a delete answered 404), so a crash before the stage write repeats it
//!   harmlessly; the stage comes before the tasks because the workspace task marks the job
//!   `cleaned` only once it is in `cleanup`. A crash between the stage write and the queueing
//!   is covered by the local daemon re-queueing the tasks of every `cleanup` job when it
//!   starts (merged by their dedupe keys).

pub mod kubernetes;
pub mod local;
pub mod proc;

use std::time::Duration;

use crate::engine::plan::{CleanupPlan, FailPlan, HookEvent, RecoverPlan, StepPlan};
use crate::model::{AuditEntry, JobRecord, Outcome as JobOutcome, Timestamp};

/// How an act ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActOutcome {
    /// It achieved its purpose (or there was nothing left to do).
    Done,
    /// A Job delete found another Job (UID) under the name: left alone.
    Recreated,
    /// Try again after `after` (the act is idempotent).
    Retry {
        /// How long to wait.
        after: Duration,
        /// The error.
        error: String,
    },
    /// It failed in a way retrying soon will not fix (RBAC, validation, a signal refused).
    Failed {
        /// The error.
        error: String,
    },
}

impl ActOutcome {
    /// Whether the act achieved its purpose (a re-created Job counts: it is not ours to act on).
    pub fn is_done(&self) -> bool {
        matches!(self, ActOutcome::Done | ActOutcome::Recreated)
    }
}

/// What an act did: its audit rows (one per call, failures included) and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Acted {
    /// Rows to write.
    pub audit: Vec<AuditEntry>,
    /// How it ended.
    pub outcome: ActOutcome,
    /// The run ended with it (a local force delete or mark_failed: the process is gone).
    pub settled: Option<(JobOutcome, String)>,
    /// Hook events the act brought about (a recovered local job's new run: `running`).
    pub hooks: Vec<HookEvent>,
}

impl Acted {
    /// Done, with these rows.
    pub fn done(audit: Vec<AuditEntry>) -> Self {
        Acted {
            audit,
            outcome: ActOutcome::Done,
            settled: None,
            hooks: Vec::new(),
        }
    }
}

/// A runtime: how each planned act is carried out on its jobs.
///
/// `Target` is what an act needs besides the record: the Kubernetes runtime acts on the Job
/// and the pods it last saw; the local runtime's record holds the process group it signals.
/// An act never writes the store; it returns its audit rows and outcome, and edits the record
/// only where the table above says the act changes the job (a new run, a settled run).
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// What an act needs besides the record.
    type Target<'a>: Sync
    where
        Self: 'a;

    /// The runtime's acts can fail and be retried, so a step recorded but not yet carried out
    /// is marked in the record until its calls went through (see the module docs).
    const MARKS_PENDING: bool;

    /// Carries out a recorded step.
    async fn step(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Acted;

    /// What the run uses (or reserves) just before `plan` kills it, and the latest it could
    /// otherwise have run until ([`crate::reclaimed`]): read-only, called by the executor for
    /// a soft kill before it is recorded, so the figures are written with the step's audit row
    /// (`details.reclaimed`). None for any other step and in dry-run.
    fn usage(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
    ) -> Option<crate::reclaimed::Usage>;

    /// Whether `target` already shows the recorded step carried out (so it happened at its
    /// recorded time, however late this pass finishes it).
    fn shows(&self, _target: &Self::Target<'_>, _plan: &StepPlan) -> bool {
        false
    }

    /// The part of a TTL cleanup that is not queued.
    async fn cleanup(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &CleanupPlan,
        now: Timestamp,
    ) -> Acted;

    /// Fails a job.
    async fn mark_failed(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &FailPlan,
        now: Timestamp,
    ) -> Acted;

    /// Recovers a dead job; on success `job` is the new run (local) or says the re-creation
    /// is done (Kubernetes).
    async fn recover(
        &self,
        target: &Self::Target<'_>,
        job: &mut JobRecord,
        plan: &RecoverPlan,
        now: Timestamp,
    ) -> Acted;
}
