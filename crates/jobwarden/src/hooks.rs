//! `[[hooks]]`: the one notification mechanism for both runtimes.
//!
//! A hook subscribes to an event (a stage name or an escalation step) and is either a
//! webhook (HTTP POST of a JSON body with the job and the event) or a command (the job's
//! fields in its environment). Each runs once per event with a timeout and bounded retries.
//! Hooks never block the ladder: the daemon runs them in the background and audits the
//! result. The exception is `pre_start`, whose command hooks may veto the start: a non-zero
//! exit fails the job with the hook's output as the reason. In the Kubernetes runtime the
//! same events fire for the same steps (from `kubernetes::reconcile`); `pre_start` never
//! fires there, since Kubernetes, not jobwarden, starts the Job.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use crate::config::HookConfig;
use crate::events::{Event, EventBus};
use crate::metrics::Metrics;
use crate::model::{AuditAction, AuditEntry, JobRecord, Timestamp, fmt_ts};
use crate::store::Store;

/// The JSON body a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct HookPayload {
    /// The event: a stage or an escalation step.
    pub event: String,
    /// When it happened (RFC 3339).
    pub at: String,
    /// Why, when there is a reason (timeout, cancel, exit status…).
    pub reason: Option<String>,
    /// The job as the API shows it.
    pub job: serde_json::Value,
}

impl HookPayload {
    /// A payload for `event` on `job`.
    pub fn new(event: &str, job: &JobRecord, reason: Option<String>, at: Timestamp) -> Self {
        HookPayload {
            event: event.to_owned(),
            at: fmt_ts(at),
            reason,
            job: serde_json::to_value(crate::api_types::JobView::from(job))
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// What happened when a hook ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// `webhook http://…` or `command /path/prog`.
    pub hook: String,
    /// Whether the last attempt succeeded.
    pub ok: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The error or the command's output when it failed.
    pub error: Option<String>,
}

impl HookOutcome {
    /// The audit row for this run of a hook on `event` for `job` (both runtimes).
    pub fn audit_row(&self, job: &JobRecord, event: &str, now: Timestamp) -> AuditEntry {
        AuditEntry {
            id: 0,
            timestamp: now,
            job_id: job.id.to_string(),
            resource_type: "hook".into(),
            resource_name: self.hook.clone(),
            action: AuditAction::Hook,
            reason: format!("hook on {event}"),
            initiated_by: "jobwarden".into(),
            success: self.ok,
            error_message: self.error.clone(),
            dry_run: false,
            details: Some(serde_json::json!({ "event": event, "attempts": self.attempts })),
        }
    }
}

/// Fires hooks in tasks of their own (a slow hook never delays the ladder), audits each
/// outcome, and counts the tasks still running ([`HookRunner::idle`]). One per process,
/// shared by whatever carries plans out. Every step and stage change of both runtimes passes
/// through [`HookRunner::fire`], so it also publishes them on the live event bus
/// ([`crate::events`]).
#[derive(Debug, Clone)]
pub struct HookRunner {
    hooks: std::sync::Arc<Hooks>,
    store: Store,
    metrics: std::sync::Arc<Metrics>,
    running: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
    events: EventBus,
}

impl HookRunner {
    /// Runs `hooks`, auditing into `store` and counting into `metrics`.
    pub fn new(hooks: Hooks, store: Store, metrics: std::sync::Arc<Metrics>) -> Self {
        HookRunner {
            hooks: std::sync::Arc::new(hooks),
            store,
            metrics,
            running: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            events: EventBus::new(),
        }
    }

    /// The live event bus every step and stage change is published on (`GET /v1/events`).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The hooks.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Publishes `event` (a step or a stage) on the live event bus, then fires the hooks for
    /// it on `job` in a task of their own.
    pub fn fire(&self, event: &str, job: &JobRecord, reason: Option<String>, now: Timestamp) {
        if let Some(e) = Event::for_hook(event, job.id.as_str(), reason.clone(), now) {
            self.events.publish(e);
        }
        if !self.hooks.has(event) {
            return;
        }
        let payload = HookPayload::new(event, job, reason, now);
        let runner = self.clone();
        let job = job.clone();
        self.running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let _running = Running(runner.running.clone());
            runner
                .hooks
                .fire_and_audit(&payload, &job, &runner.store, &runner.metrics)
                .await;
        });
    }

    /// Completes once no hook task is running, checked when awaited (so it may be created
    /// before the runner moves elsewhere).
    pub fn idle(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut running = self.running.subscribe();
        async move {
            let _ = running.wait_for(|n| *n == 0).await;
        }
    }
}

/// Counts one running hook task while it lives (dropped at its end, panics included).
struct Running(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The configured hooks.
#[derive(Debug, Clone)]
pub struct Hooks {
    entries: Vec<HookConfig>,
    http: reqwest::Client,
}

impl Hooks {
    /// Hooks from the config.
    pub fn new(entries: Vec<HookConfig>) -> Self {
        Hooks {
            entries,
            http: reqwest::Client::new(),
        }
    }

    /// Whether any hook listens to `event`.
    pub fn has(&self, event: &str) -> bool {
        self.entries.iter().any(|h| h.on == event)
    }

    /// Runs every hook for `payload.event`, sequentially, each with its timeout and retries.
    pub async fn fire(&self, payload: &HookPayload) -> Vec<HookOutcome> {
        let mut out = Vec::new();
        for h in self.entries.iter().filter(|h| h.on == payload.event) {
            out.push(self.run(h, payload).await);
        }
        out
    }

    /// Runs the hooks for `payload.event` (see [`Hooks::fire`]), then writes one audit row per
    /// outcome and counts failed hooks as `hook` errors. Both runtimes call it from a task of
    /// its own, so hooks never block the ladder.
    pub async fn fire_and_audit(
        &self,
        payload: &HookPayload,
        job: &JobRecord,
        store: &Store,
        metrics: &Metrics,
    ) {
        let outcomes = self.fire(payload).await;
        let rows: Vec<AuditEntry> = outcomes
            .iter()
            .map(|o| o.audit_row(job, &payload.event, crate::clock::now()))
            .collect();
        for o in outcomes.iter().filter(|o| !o.ok) {
            metrics.error("hook");
            tracing::warn!(job = %job.id, hook = %o.hook, "hook failed: {}", o.error.clone().unwrap_or_default());
        }
        match store.append_audit(&rows).await {
            Ok(()) => metrics.audit_written(rows.len() as u64),
            Err(e) => {
                metrics.error("store");
                tracing::error!(job = %job.id, "writing hook audit rows: {e}");
            }
        }
    }

    async fn run(&self, hook: &HookConfig, payload: &HookPayload) -> HookOutcome {
        let name = describe(hook);
        let mut last_err = None;
        let attempts = hook.retries.saturating_add(1);
        for attempt in 1..=attempts {
            let result = tokio::time::timeout(hook.timeout.0, self.once(hook, payload)).await;
            match result {
                Ok(Ok(())) => {
                    return HookOutcome {
                        hook: name,
                        ok: true,
                        attempts: attempt,
                        error: None,
                    };
                }
                Ok(Err(e)) => last_err = Some(e.to_string()),
                Err(_) => last_err = Some(format!("timed out after {}", hook.timeout)),
            }
            if attempt < attempts {
                // Short, bounded backoff between retries: 200 ms, 400 ms, … (max 2 s).
                let ms = 200u64.saturating_mul(1 << (attempt - 1).min(3));
                tokio::time::sleep(Duration::from_millis(ms.min(2000))).await;
            }
        }
        HookOutcome {
            hook: name,
            ok: false,
            attempts,
            error: last_err,
        }
    }

    async fn once(&self, hook: &HookConfig, payload: &HookPayload) -> crate::Result<()> {
        if let Some(url) = &hook.webhook {
            let resp = self
                .http
                .post(url)
                .json(payload)
                .send()
                .await
                .map_err(|e| crate::Error::Hook(format!("POST {url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(crate::Error::Hook(format!(
                    "POST {url}: HTTP {}",
                    resp.status()
                )));
            }
            return Ok(());
        }
        let Some((prog, args)) = hook.command.as_ref().and_then(|c| c.split_first()) else {
            return Err(crate::Error::Hook(
                "hook has neither webhook nor command".into(),
            ));
        };
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env_for(payload) {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| crate::Error::Hook(format!("running {prog}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if text.is_empty() {
                text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            text.truncate(1000);
            Err(crate::Error::Hook(format!(
                "{prog} {}{}",
                describe_exit(out.status),
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )))
        }
    }
}

/// How a hook's process ended, in words: `exited with status 3`, `was killed by signal 9`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended without a status".to_owned(),
    }
}

fn describe(h: &HookConfig) -> String {
    match (&h.webhook, &h.command) {
        (Some(u), _) => format!("webhook {u}"),
        (None, Some(c)) => format!("command {}", c.first().map(String::as_str).unwrap_or("")),
        (None, None) => "hook".into(),
    }
}

/// The environment a command hook receives.
fn env_for(p: &HookPayload) -> Vec<(String, String)> {
    let field = |k: &str| {
        p.job
            .get(k)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    vec![
        ("JOBWARDEN_EVENT".into(), p.event.clone()),
        ("JOBWARDEN_EVENT_AT".into(), p.at.clone()),
        (
            "JOBWARDEN_REASON".into(),
            p.reason.clone().unwrap_or_default(),
        ),
        ("JOBWARDEN_JOB_ID".into(), field("id")),
        ("JOBWARDEN_JOB_NAME".into(), field("name")),
        ("JOBWARDEN_JOB_ORG".into(), field("org")),
        ("JOBWARDEN_JOB_TYPE".into(), field("type")),
        ("JOBWARDEN_JOB_STAGE".into(), field("stage")),
        ("JOBWARDEN_JOB_OUTCOME".into(), field("outcome")),
        ("JOBWARDEN_JOB_DEADLINE".into(), field("deadline")),
        // Empty for local jobs.
        ("JOBWARDEN_JOB_NAMESPACE".into(), field("namespace")),
        ("JOBWARDEN_JOB_JSON".into(), p.job.to_string()),
    ]
}
