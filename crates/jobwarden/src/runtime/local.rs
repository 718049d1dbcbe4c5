//! The local runtime: jobs are process groups on this machine.
//!
//! Each job runs in its own process group (so SIGTERM/SIGKILL reach every process it
//! started), with cwd `<data-dir>/workspaces/<id>/`, stdout and stderr appended to
//! `<data-dir>/logs/<id>.log`, and the `FLOWFORGE_*` environment jobwarden-init reads.
//! The daemon reaps its own children and reports each exit on a channel. After a daemon
//! restart the processes are no longer its children: [`LocalRuntime::adopt`] watches them
//! through `/proc` (pid + start time, so a reused pid is never mistaken for the job) and
//! reports the exit once the process is gone or a zombie (there may be no init reaping
//! orphans on the host).
//!
//! Why a process group and not a new session: `setsid` must run between fork and exec,
//! which needs `unsafe` (`pre_exec`), and the workspace forbids unsafe code. The group is
//! what the ladder signals, and it also keeps the terminal's Ctrl-C away from jobs.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::Signal;
use tokio::sync::mpsc;

use crate::engine::plan::{
    CleanupPlan, FailPlan, HookEvent, Layout, RecoverPlan, StepPlan, job_row,
};
use crate::model::{AuditAction, JobId, JobRecord, Outcome, Stage, Step, Timestamp, fmt_ts};
use crate::runtime::proc::{self, ProcState, SignalResult};
use crate::runtime::{ActOutcome, Acted, Runtime};

/// A process exited (or vanished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    /// The job.
    pub job_id: JobId,
    /// The run that exited.
    pub run_id: String,
    /// Exit code, when it exited normally and the status is known.
    pub exit_code: Option<i32>,
    /// Signal that killed it, when known.
    pub signal: Option<i32>,
    /// False for re-adopted processes: the exit status of a non-child is unknowable.
    pub status_known: bool,
}

/// A started process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Process group leader.
    pub pid: i32,
    /// Its start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// What re-adoption found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Still running; its exit will be reported.
    Running,
    /// Gone (or the pid now belongs to another process).
    Vanished,
}

/// Errors starting a job.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The command is empty.
    #[error("command is empty")]
    EmptyCommand,
    /// Preparing the workspace or log failed.
    #[error("preparing {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// exec failed (not found, not executable…).
    #[error("starting {program:?}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the local runtime creates for a job in a directory it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// `<data-dir>/workspaces/<id>/`: a directory.
    Workspace,
    /// `<data-dir>/logs/<id>.log`: a regular file.
    Log,
}

impl LocalKind {
    /// The name in reports, audit rows and task kinds (`workspace`, `log`).
    pub fn as_str(self) -> &'static str {
        match self {
            LocalKind::Workspace => "workspace",
            LocalKind::Log => "log",
        }
    }

    /// The job id an entry named `name` of type `file_type` (not following symlinks) would
    /// belong to, if the local runtime could have created it; `None` for anything else.
    pub fn job_id(self, name: &std::ffi::OsStr, file_type: std::fs::FileType) -> Option<JobId> {
        let name = name.to_str()?;
        let (id, type_ok) = match self {
            LocalKind::Workspace => (name, file_type.is_dir()),
            LocalKind::Log => (name.strip_suffix(".log")?, file_type.is_file()),
        };
        if !type_ok || !crate::model::is_generated_id(id) {
            return None;
        }
        JobId::parse(id).ok()
    }
}

/// The local runtime.
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    layout: Layout,
    exits: mpsc::UnboundedSender<ExitEvent>,
    /// Extra environment for every job (heartbeat URL base, artifacts URL).
    heartbeat_base: Option<String>,
    artifacts_url: Option<String>,
}

impl LocalRuntime {
    /// A runtime rooted at `data_dir`; exits are sent on `exits`.
    pub fn new(
        data_dir: &Path,
        exits: mpsc::UnboundedSender<ExitEvent>,
        heartbeat_base: Option<String>,
        artifacts_url: Option<String>,
    ) -> Self {
        LocalRuntime {
            layout: Layout::new(data_dir),
            exits,
            heartbeat_base,
            artifacts_url,
        }
    }

    /// Where its jobs' files are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `<data-dir>/workspaces`.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.layout.workspaces_dir()
    }

    /// `<data-dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.layout.logs_dir()
    }

    /// `<data-dir>/workspaces/<id>`.
    pub fn workspace(&self, id: &JobId) -> PathBuf {
        self.layout.workspace(id)
    }

    /// `<data-dir>/logs/<id>.log`.
    pub fn log_path(&self, id: &JobId) -> PathBuf {
        self.layout.log(id)
    }

    /// Starts (or restarts) the job's command (`spec.command`): its run's start time and
    /// deadline, its process group, stage `running`.
    pub fn start(&self, job: &mut JobRecord, now: Timestamp) -> Result<(), SpawnError> {
        let command: Vec<String> = job
            .spec
            .get("command")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        job.started_at = Some(now);
        job.deadline = Some(crate::engine::plan::deadline(now, job.timeout));
        let started = self.spawn(job, &command)?;
        job.pid = Some(started.pid);
        job.pid_start_ticks = Some(started.start_ticks);
        job.stage = Stage::Running;
        tracing::info!(job = %job.id, pid = started.pid, deadline = %job.deadline.map(fmt_ts).unwrap_or_default(), "started");
        Ok(())
    }

    /// Starts `command` for `job` (its timeout, grace and deadline must be set).
    pub fn spawn(&self, job: &JobRecord, command: &[String]) -> Result<Started, SpawnError> {
        let (program, args) = command.split_first().ok_or(SpawnError::EmptyCommand)?;
        let ws = self.workspace(&job.id);
        let artifacts = ws.join("artifacts");
        let prep = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| SpawnError::Prepare {
                path: path.to_owned(),
                source,
            })
        };
        prep(&artifacts)?;
        prep(&self.logs_dir())?;
        let log_path = self.log_path(&job.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| SpawnError::Prepare {
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| SpawnError::Prepare {
            path: log_path.clone(),
            source,
        })?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .current_dir(&ws)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .env("FLOWFORGE_JOB_ID", job.id.as_str())
            .env("FLOWFORGE_TIMEOUT", job.timeout.as_secs().to_string())
            .env("FLOWFORGE_GRACE_PERIOD", job.grace.as_secs().to_string())
            .env("FLOWFORGE_ARTIFACTS_DIR", &artifacts)
            .env("FLOWFORGE_RUN_ID", &job.run_id);
        if let Some(d) = job.deadline {
            cmd.env("FLOWFORGE_DEADLINE", fmt_ts(d));
        }
        if let Some(base) = &self.heartbeat_base {
            cmd.env(
                "FLOWFORGE_HEARTBEAT_URL",
                format!("{base}/v1/jobs/{}/heartbeat", job.id),
            );
        }
        if let Some(url) = &self.artifacts_url {
            cmd.env("FLOWFORGE_ARTIFACTS_URL", url);
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SpawnError::Exec {
                program: program.clone(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_default();
        // The child cannot be reaped before we call wait(), so /proc still has it.
        let start_ticks = proc::start_ticks(pid).unwrap_or_default();
        let exits = self.exits.clone();
        let (job_id, run_id) = (job.id.clone(), job.run_id.clone());
        tokio::spawn(async move {
            let ev = match child.wait().await {
                Ok(status) => ExitEvent {
                    job_id,
                    run_id,
                    exit_code: status.code(),
                    signal: status.signal(),
                    status_known: true,
                },
                Err(_) => ExitEvent {
                    job_id,
                    run_id,
                    exit_code: None,
                    signal: None,
                    status_known: false,
                },
            };
            let _ = exits.send(ev);
        });
        Ok(Started { pid, start_ticks })
    }

    /// Re-adopts a job's process after a daemon restart.
    pub fn adopt(&self, job: &JobRecord) -> Adopted {
        let (Some(pid), Some(ticks)) = (job.pid, job.pid_start_ticks) else {
            return Adopted::Vanished;
        };
        if !proc::is_same_live_process(pid, ticks) {
            return Adopted::Vanished;
        }
        let exits = self.exits.clone();
        let (job_id, run_id) = (job.id.clone(), job.run_id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match proc::proc_state(pid) {
                    ProcState::Alive { start_ticks } if start_ticks == ticks => continue,
                    _ => break,
                }
            }
            let _ = exits.send(ExitEvent {
                job_id,
                run_id,
                exit_code: None,
                signal: None,
                status_known: false,
            });
        });
        Adopted::Running
    }

    /// Signals the job's process group, if its process is still the one we started.
    pub fn signal(
        &self,
        job: &JobRecord,
        signal: rustix::process::Signal,
    ) -> std::io::Result<SignalResult> {
        match (job.pid, job.pid_start_ticks) {
            (Some(pid), Some(ticks)) => proc::signal_group(pid, ticks, signal),
            _ => Ok(SignalResult::Gone),
        }
    }

    /// Whether the job's process still runs.
    pub fn is_alive(&self, job: &JobRecord) -> bool {
        match (job.pid, job.pid_start_ticks) {
            (Some(pid), Some(ticks)) => proc::is_same_live_process(pid, ticks),
            _ => false,
        }
    }
}

/// The name the logs use for a signal.
pub fn sig_name(s: Signal) -> &'static str {
    if s == Signal::TERM {
        "SIGTERM"
    } else if s == Signal::KILL {
        "SIGKILL"
    } else {
        "signal"
    }
}

/// A new run id: a lowercase ULID.
pub fn new_run_id(now: Timestamp) -> String {
    ulid::Ulid::from_parts(
        u64::try_from(now.timestamp_millis()).unwrap_or(0),
        rand::random::<u128>(),
    )
    .to_string()
    .to_ascii_lowercase()
}

/// What each plan does to a process group (`super` has the table and the order).
#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    type Target<'a> = ();

    /// A signal cannot fail in a way a retry fixes; a step recorded but not sent before a
    /// crash is re-sent when the daemon re-adopts the process.
    const MARKS_PENDING: bool = false;

    async fn step(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Acted {
        let step = plan.step();
        if plan.dry_run {
            tracing::info!(job = %job.id, step = %step, "dry-run: decided, not carried out");
            return Acted::done(Vec::new());
        }
        let signal = match step {
            Step::Warn => return Acted::done(Vec::new()),
            Step::SoftKill => Signal::TERM,
            Step::HardKill | Step::ForceDelete => Signal::KILL,
        };
        let mut failure = None;
        match self.signal(job, signal) {
            Ok(SignalResult::Sent) => {
                let delay_ms = (now - plan.taken.due_at).num_milliseconds();
                tracing::info!(job = %job.id, step = %step, delay_ms, "sent {}", sig_name(signal));
            }
            Ok(SignalResult::Gone) => {
                tracing::info!(job = %job.id, step = %step, "process already gone");
            }
            Err(e) => failure = Some(format!("{} failed: {e}", sig_name(signal))),
        }
        let mut settled = None;
        if step == Step::ForceDelete {
            let ws = self.workspace(&job.id);
            if let Err(e) = remove_tree(&ws) {
                failure = Some(format!("removing {}: {e}", ws.display()));
            }
            settled = Some((
                Outcome::Terminated,
                "force deleted: the process did not exit after SIGKILL".to_owned(),
            ));
        }
        let (audit, outcome) = match failure {
            Some(error) => {
                let mut row = job_row(job, now, step.into(), "step failed");
                row.success = false;
                row.error_message = Some(error.clone());
                (vec![row], ActOutcome::Failed { error })
            }
            None => (Vec::new(), ActOutcome::Done),
        };
        Acted {
            audit,
            outcome,
            settled,
            hooks: Vec::new(),
        }
    }

    /// The process group's average CPU rate since the run started (CPU-seconds from `/proc`
    /// over the wall time) and its resident memory now; the bound is the uncapped timeout's
    /// end or, for a cancel (a soft kill before the deadline), the deadline.
    fn usage(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
    ) -> Option<crate::reclaimed::Usage> {
        if plan.step() != Step::SoftKill || plan.dry_run {
            return None;
        }
        let cancelled = crate::reclaimed::cancelled(job, plan);
        let (otherwise_until, bound) = crate::reclaimed::bound(job, cancelled, None);
        let group = match (job.pid, job.pid_start_ticks) {
            (Some(pid), Some(ticks)) => proc::group_usage(pid, ticks),
            _ => None,
        };
        let elapsed = job
            .started_at
            .map(|s| crate::model::since(plan.taken.at, s).as_secs_f64())
            .filter(|e| *e > 0.0);
        Some(crate::reclaimed::Usage {
            basis: crate::reclaimed::Basis::ProcessGroup,
            cpu_cores: group.zip(elapsed).map(|(g, e)| g.cpu_seconds / e),
            memory_bytes: group.map(|g| g.rss_bytes),
            otherwise_until,
            bound,
        })
    }

    /// Nothing now: the workspace, the log and the artifacts are queued. A dry-run says what
    /// would be removed.
    async fn cleanup(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        plan: &CleanupPlan,
        now: Timestamp,
    ) -> Acted {
        if !plan.dry_run {
            return Acted::done(Vec::new());
        }
        let mut row = job_row(
            job,
            now,
            AuditAction::TtlCleanup,
            &format!(
                "TTL {} expired at {}; would remove workspace and logs",
                crate::duration::format_duration(plan.ttl),
                fmt_ts(plan.due_at)
            ),
        );
        row.dry_run = true;
        row.resource_type = "workspace".into();
        row.resource_name = self.workspace(&job.id).display().to_string();
        Acted::done(vec![row])
    }

    /// SIGKILL to the process group; the run settles `failed`. The decision's row is the
    /// audit row.
    async fn mark_failed(
        &self,
        _: &Self::Target<'_>,
        job: &JobRecord,
        plan: &FailPlan,
        _: Timestamp,
    ) -> Acted {
        if plan.dry_run {
            return Acted::done(vec![plan.row.clone()]);
        }
        let _ = self.signal(job, Signal::KILL);
        Acted {
            settled: Some((Outcome::Failed, plan.reason.clone())),
            ..Acted::done(vec![plan.row.clone()])
        }
    }

    /// SIGKILL to whatever is left of the old run; the command starts again as a new run.
    async fn recover(
        &self,
        _: &Self::Target<'_>,
        job: &mut JobRecord,
        plan: &RecoverPlan,
        now: Timestamp,
    ) -> Acted {
        if plan.dry_run {
            return Acted::done(Vec::new());
        }
        let _ = self.signal(job, Signal::KILL);
        job.run_id = new_run_id(now);
        job.steps.clear();
        job.last_heartbeat = None;
        job.finished_at = None;
        job.outcome = None;
        job.exit_code = None;
        job.signal = None;
        job.reason = Some(format!(
            "recovered (attempt {}): {}",
            plan.attempt, plan.reason
        ));
        match self.start(job, now) {
            Ok(()) => Acted {
                hooks: vec![HookEvent {
                    event: "running",
                    reason: None,
                }],
                ..Acted::done(Vec::new())
            },
            Err(e) => {
                tracing::warn!(job = %job.id, "start failed: {e}");
                Acted {
                    settled: Some((Outcome::Failed, format!("could not start: {e}"))),
                    ..Acted::done(Vec::new())
                }
            }
        }
    }
}

/// Removes a directory tree; a missing one is success. Returns bytes removed (best effort).
pub fn remove_tree(path: &Path) -> std::io::Result<u64> {
    let bytes = tree_size(path);
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Removes a file; a missing one is success. Returns bytes removed.
pub fn remove_file(path: &Path) -> std::io::Result<u64> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Total size of regular files under `path` (0 if missing).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| tree_size(&e.path())).sum()
}
