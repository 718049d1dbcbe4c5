//! The executor: starts the command, turns signals, timers, the child's exit and finished
//! saves into events for the [`machine`], and carries out the actions it returns.
//!
//! Decisions live in `machine.rs`; this file only does I/O. It runs on a current-thread
//! runtime, so every process is started from the main thread (see `child.rs`).
//!
//! When the command exits, jobwarden-init exits with its status without signalling what is
//! left of the command's process group (as tini does without `-g`): as a container's PID 1 its
//! exit ends every process in the container anyway, and as an ordinary process it does not
//! kill what the job deliberately left running. Only at the end of the grace period, with the
//! command still running, is the whole group SIGKILLed.

pub mod machine;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::child::{self, ExitStatus, Reaper};
use crate::cli::Config;
use crate::error::{Error, Result};
use crate::save::{self, SaveContext, StepReport};
use crate::supervise::machine::{Action, Event, Machine, Sig};
use crate::{clock, heartbeat, timing};

/// The JSON summary written to stdout at exit.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub job_id: String,
    pub exit_code: i32,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
    /// Whether jobwarden-init received SIGTERM.
    pub terminated_by_sigterm: bool,
    pub steps: Vec<StepReport>,
}

/// What the tasks report to the executor loop.
enum Msg {
    Event(Event),
    ChildExited(ExitStatus),
    SaveFinished { run: u32, reports: Vec<StepReport> },
}

/// Supervises `config.command` until it has exited and any save has ended.
pub async fn run(config: Config) -> Result<Summary> {
    if let Err(err) = child::become_subreaper() {
        eprintln!(
            "jobwarden-init: warning: cannot become a child subreaper ({err}); orphaned \
             grandchildren will be reaped by the system's init instead"
        );
    }
    let (events, mut inbox) = mpsc::unbounded_channel::<Msg>();

    // Handlers go in before the child starts, so no signal sent meanwhile is lost.
    for sig in Sig::ALL {
        let mut stream =
            signal(SignalKind::from_raw(sig.raw().as_raw())).map_err(|source| Error::Setup {
                what: "installing a signal handler",
                source,
            })?;
        let events = events.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if events.send(Msg::Event(Event::Signal(sig))).is_err() {
                    break;
                }
            }
        });
    }
    let mut sigchld = signal(SignalKind::child()).map_err(|source| Error::Setup {
        what: "installing the SIGCHLD handler",
        source,
    })?;

    let reaper = Arc::new(Reaper::default());
    let mut command = Command::new(&config.command[0]);
    command.args(&config.command[1..]);
    let started = reaper.spawn(&mut command).map_err(|source| Error::Spawn {
        program: config.command[0].to_string_lossy().into_owned(),
        source,
    })?;
    let pid = started.pid;
    drop(started.child); // stdio is inherited; the status comes through the reaper

    {
        let reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                reaper.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
    }
    {
        let events = events.clone();
        let exit = started.exit;
        tokio::spawn(async move {
            if let Ok(status) = exit.await {
                let _ = events.send(Msg::ChildExited(status));
            }
        });
    }
    let heartbeat = config
        .heartbeat
        .clone()
        .map(|hb| tokio::spawn(heartbeat::run(hb.url, config.job_id.clone(), hb.every)));

    let (now_wall, now) = (clock::now(), Instant::now());
    let deadline = config
        .deadline
        .map(|d| timing::to_instant(d, now_wall, now));
    if let Some(at) = timing::checkpoint_at(config.deadline, config.checkpoint_before) {
        arm_timer(
            &events,
            timing::to_instant(at, now_wall, now),
            Event::CheckpointDue,
        );
    }

    let mut machine = Machine::new(timing::save_budget(config.grace), deadline);
    let ctx = Arc::new(SaveContext {
        job_id: config.job_id.clone(),
        repo: config.repo.clone(),
        artifacts: config.artifacts.clone(),
        reaper: reaper.clone(),
    });
    let mut cancels: HashMap<u32, watch::Sender<Option<&'static str>>> = HashMap::new();
    let mut steps = Vec::new();
    let mut status = None;
    let mut terminated_by_sigterm = false;

    'run: while let Some(msg) = inbox.recv().await {
        let event = match msg {
            Msg::Event(event) => event,
            Msg::ChildExited(exit) => {
                status = Some(exit);
                Event::ChildExited
            }
            Msg::SaveFinished { run, reports } => {
                cancels.remove(&run);
                steps.extend(reports);
                Event::SaveFinished { run }
            }
        };
        if event == Event::Signal(Sig::Term) {
            terminated_by_sigterm = true;
        }
        for action in machine.handle(event, Instant::now()) {
            match action {
                Action::Forward(sig) => {
                    let sent = reaper.signal_group(pid, sig.raw());
                    if sig == Sig::Term && sent {
                        eprintln!(
                            "jobwarden-init: SIGTERM: forwarded to the command's process group {}",
                            pid.as_raw_pid()
                        );
                    }
                }
                Action::StartSave {
                    run,
                    trigger,
                    stop_at,
                } => {
                    let (cancel, cancelled) = watch::channel(None);
                    cancels.insert(run, cancel);
                    let ctx = ctx.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        let reports = save::run(ctx, trigger, stop_at, cancelled).await;
                        let _ = events.send(Msg::SaveFinished { run, reports });
                    });
                }
                Action::CancelSave { run, reason } => {
                    if let Some(cancel) = cancels.get(&run) {
                        let _ = cancel.send(Some(reason));
                    }
                }
                Action::ArmStopTimer(at) => arm_timer(&events, at, Event::StopAtReached),
                Action::NotifyCheckpoint => {
                    // The command alone, not its group: SIGUSR1 kills processes that do not
                    // handle it, and the job's helpers (compilers, sleeps) should not die of
                    // a checkpoint.
                    reaper.signal_process(pid, Sig::Usr1.raw());
                }
                Action::KillChildGroup => {
                    eprintln!(
                        "jobwarden-init: the grace period is used up and the command still runs: \
                         killing its process group {}",
                        pid.as_raw_pid()
                    );
                    reaper.signal_group(pid, rustix::process::Signal::KILL);
                }
                Action::Exit => break 'run,
            }
        }
    }

    if let Some(heartbeat) = heartbeat {
        heartbeat.abort();
    }
    reaper.reap();
    // The machine exits only after the child's exit was seen.
    let status = status.unwrap_or(ExitStatus::Code(255));
    Ok(Summary {
        job_id: config.job_id.to_string(),
        exit_code: status.exit_code(),
        signal: status.signal(),
        terminated_by_sigterm,
        steps,
    })
}

fn arm_timer(events: &mpsc::UnboundedSender<Msg>, at: Instant, event: Event) {
    let events = events.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let _ = events.send(Msg::Event(event));
    });
}
