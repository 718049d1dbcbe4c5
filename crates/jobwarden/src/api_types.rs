//! The HTTP API's request and response bodies, shared by the daemon and the CLI client.

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::model::{AuditEntry, JobRecord, Outcome, Stage, Step, StepTaken, Timestamp};

/// `POST /v1/jobs`. Unknown fields are rejected (400 naming the field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Human name (default: the program's file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Job type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// Timeout (capped by policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<Dur>,
    /// TTL after finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    /// Heartbeat threshold (opt-in dead-job detection and recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<Dur>,
    /// Container image: required by a Kubernetes-mode daemon (it must hold jobwarden-init at
    /// `[kubernetes] init_path`); the local daemon refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Namespace of the Job (Kubernetes mode; default: the one namespace jobwarden watches);
    /// the local daemon refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A step as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepView {
    /// Which step.
    pub step: Step,
    /// When it was due.
    pub due_at: Timestamp,
    /// When it was carried out.
    pub at: Timestamp,
}

/// The next ladder step with its due time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NextStepView {
    /// Which step.
    pub step: Step,
    /// When it is due.
    pub due_at: Timestamp,
}

/// A job as `GET /v1/jobs/{id}` and `jobwarden job show --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Organisation.
    pub org: Option<String>,
    /// Job type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Lifecycle stage.
    pub stage: Stage,
    /// Outcome once finished.
    pub outcome: Option<Outcome>,
    /// Why it ended.
    pub reason: Option<String>,
    /// Process group leader (local runtime).
    pub pid: Option<i32>,
    /// Run identity.
    pub run_id: String,
    /// Attempt (0 = first run).
    pub attempt: u32,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When the current run started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Effective timeout in seconds.
    pub effective_timeout_seconds: u64,
    /// Effective grace in seconds.
    pub grace_period_seconds: u64,
    /// TTL override in seconds.
    pub ttl_seconds: Option<u64>,
    /// Heartbeat threshold in seconds.
    pub heartbeat_timeout_seconds: Option<u64>,
    /// Last heartbeat.
    pub last_heartbeat: Option<Timestamp>,
    /// started_at + timeout.
    pub deadline: Option<Timestamp>,
    /// Steps taken in this run.
    pub steps: Vec<StepView>,
    /// Exit status.
    pub exit_code: Option<i32>,
    /// Terminating signal.
    pub signal: Option<i32>,
    /// Recovery attempts.
    pub recovery_attempts: u32,
    /// Next ladder step (filled by the daemon).
    #[serde(default)]
    pub next_step: Option<NextStepView>,
    /// When a finished job's TTL expires and its resources are removed (filled by the daemon;
    /// absent while it runs and once cleanup started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_at: Option<Timestamp>,
    /// Decisions recorded but not carried out.
    pub dry_run: bool,
    /// Kubernetes namespace (absent for local jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl From<&JobRecord> for JobView {
    fn from(j: &JobRecord) -> Self {
        JobView {
            id: j.id.to_string(),
            name: j.name.clone(),
            org: j.org.clone(),
            job_type: j.job_type.clone(),
            stage: j.stage,
            outcome: j.outcome,
            reason: j.reason.clone(),
            pid: j.pid,
            run_id: j.run_id.clone(),
            attempt: j.attempt,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            effective_timeout_seconds: j.timeout.as_secs(),
            grace_period_seconds: j.grace.as_secs(),
            ttl_seconds: j.ttl.map(|d| d.as_secs()),
            heartbeat_timeout_seconds: j.heartbeat_timeout.map(|d| d.as_secs()),
            last_heartbeat: j.last_heartbeat,
            deadline: j.deadline,
            steps: j
                .steps
                .iter()
                .map(|s: &StepTaken| StepView {
                    step: s.step,
                    due_at: s.due_at,
                    at: s.at,
                })
                .collect(),
            exit_code: j.exit_code,
            signal: j.signal,
            recovery_attempts: j.recovery_attempts,
            next_step: None,
            cleanup_at: None,
            dry_run: j.dry_run,
            namespace: j.namespace.clone(),
        }
    }
}

/// An error body: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
}

/// One line of `GET /v1/plan`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanEntry {
    /// Job id.
    pub job_id: String,
    /// Job name.
    pub name: String,
    /// Stage.
    pub stage: Stage,
    /// `warn`, `soft_kill`, …, `ttl_cleanup`, `recover`, `mark_failed`.
    pub action: String,
    /// When it is (or was) due.
    pub due_at: Option<Timestamp>,
    /// Whether it is due now.
    pub due_now: bool,
    /// Details.
    pub detail: Option<String>,
}

/// `GET /v1/audit` rows are [`AuditEntry`]s.
pub type AuditRow = AuditEntry;

/// One orphan in `GET /v1/orphans`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanView {
    /// `workspace`, `log`, `object_prefix`; in Kubernetes mode `pod`,
    /// `persistentvolumeclaim`, `secret`, `configmap`.
    pub kind: String,
    /// The job id it is labelled with.
    pub job_id: String,
    /// Path or key prefix; in Kubernetes mode `namespace/name`.
    pub name: String,
    /// Size in bytes (0 for Kubernetes objects).
    pub bytes: u64,
    /// Age in seconds.
    pub age_seconds: u64,
    /// Why it is an orphan (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// `GET /v1/orphans` and `POST /v1/orphans/clean`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct OrphanReport {
    /// Orphans found.
    pub orphans: Vec<OrphanView>,
    /// Kinds skipped this pass (fail closed), with the reason.
    pub skipped: Vec<String>,
    /// Cleanup tasks queued (only for `clean`; the local daemon queues its orphans).
    pub queued: usize,
    /// Deleted at once (only for `clean`; Kubernetes mode deletes objects in the request,
    /// each with its UID as precondition and one audit row).
    #[serde(default)]
    pub deleted: usize,
    /// Left for a later pass: beyond `[safety] max_batch`, or the per-minute limit on
    /// destructive calls (then `stopped` says so); in a report without `clean`, all of them.
    #[serde(default)]
    pub deferred: usize,
    /// Why a clean stopped early (a retryable error, the rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Objects refused with a reason worth a look (a label value that is not a job id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
