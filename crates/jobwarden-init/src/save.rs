//! The save steps run on SIGTERM and at the checkpoint: what runs, in what bounds, and how each
//! step is reported (one stderr line, one entry in the JSON summary).
//!
//! Both steps run concurrently, each bounded by `stop_at` and by cancellation. Dropping a
//! step's future is how it is stopped: `git` is killed with its process group, an unfinished
//! upload is never completed. Errors never leave this module: they become a failed step.

pub mod artifacts;
pub mod git;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::child::Reaper;
use crate::error::Result;
use crate::job_id::JobId;
use crate::supervise::machine::Trigger;

/// What the save steps need to know.
#[derive(Debug)]
pub struct SaveContext {
    pub job_id: JobId,
    pub repo: Option<PathBuf>,
    pub artifacts: Option<artifacts::Artifacts>,
    pub reaper: Arc<Reaper>,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Work was saved.
    Saved,
    /// There was nothing to save (clean repository, no files).
    Skipped,
    /// The step failed; `detail` says why.
    Failed,
    /// The save budget ran out first.
    TimedOut,
    /// Stopped early: SIGTERM took over from a checkpoint, or the command exited.
    Cancelled,
}

/// One entry of the summary's `steps`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: &'static str,
    pub trigger: Trigger,
    /// True when nothing was lost: saved, or nothing to save.
    pub ok: bool,
    pub outcome: Outcome,
    pub detail: String,
    pub millis: u64,
}

/// What a step reports when it completes.
#[derive(Debug)]
pub struct Done {
    pub outcome: Outcome,
    pub detail: String,
}

impl Done {
    pub fn saved(detail: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Saved,
            detail: detail.into(),
        }
    }

    pub fn skipped(detail: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Skipped,
            detail: detail.into(),
        }
    }
}

/// `1 file`, `3 files`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// What a step is doing right now, so that a timeout can say where it stopped.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<&'static str>>);

impl Progress {
    pub fn set(&self, what: &'static str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = what;
    }

    fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the configured steps concurrently until done, `stop_at`, or cancellation (a reason sent
/// on `cancel`). Always returns one report per configured step.
pub async fn run(
    ctx: Arc<SaveContext>,
    trigger: Trigger,
    stop_at: Instant,
    cancel: watch::Receiver<Option<&'static str>>,
) -> Vec<StepReport> {
    let git = async {
        let repo = ctx.repo.as_ref()?;
        let progress = Progress::default();
        let work = git::save(&ctx.reaper, repo, &ctx.job_id, trigger, progress.clone());
        Some(bounded("git", trigger, stop_at, cancel.clone(), progress, work).await)
    };
    let artifacts = async {
        let artifacts = ctx.artifacts.as_ref()?;
        let progress = Progress::default();
        let work = artifacts::save(artifacts, &ctx.job_id, stop_at, progress.clone());
        Some(
            bounded(
                "artifacts",
                trigger,
                stop_at,
                cancel.clone(),
                progress,
                work,
            )
            .await,
        )
    };
    let (git, artifacts) = tokio::join!(git, artifacts);
    git.into_iter().chain(artifacts).collect()
}

async fn bounded(
    step: &'static str,
    trigger: Trigger,
    stop_at: Instant,
    mut cancel: watch::Receiver<Option<&'static str>>,
    progress: Progress,
    work: impl Future<Output = Result<Done>>,
) -> StepReport {
    let started = Instant::now();
    let (outcome, detail) = tokio::select! {
        done = work => match done {
            Ok(done) => (done.outcome, done.detail),
            Err(err) => (Outcome::Failed, err.to_string()),
        },
        () = tokio::time::sleep_until(stop_at) => (
            Outcome::TimedOut,
            format!("stopped while {}: the save budget ran out", progress.get()),
        ),
        reason = cancelled(&mut cancel) => (
            Outcome::Cancelled,
            format!("stopped while {}: {reason}", progress.get()),
        ),
    };
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let prefix = match trigger {
        Trigger::Sigterm => "",
        Trigger::Checkpoint => "checkpoint: ",
    };
    eprintln!("jobwarden-init: {prefix}{step}: {detail} ({millis} ms)");
    StepReport {
        step,
        trigger,
        ok: matches!(outcome, Outcome::Saved | Outcome::Skipped),
        outcome,
        detail,
        millis,
    }
}

/// Resolves with the reason once one is sent; never resolves if the sender is dropped first.
async fn cancelled(cancel: &mut watch::Receiver<Option<&'static str>>) -> &'static str {
    let reason = match cancel.wait_for(Option::is_some).await {
        Ok(reason) => *reason,
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_naturally() {
        assert_eq!(count(1u64, "file"), "1 file");
        assert_eq!(count(0u64, "file"), "0 files");
        assert_eq!(count(4u64, "file"), "4 files");
    }
}
