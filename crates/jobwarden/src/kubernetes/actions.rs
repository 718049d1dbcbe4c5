//! The Kubernetes API calls that carry out an escalation step or a TTL delete, and the audit
//! rows they produce. No decisions: the engine decided; this module only performs.
//!
//! | step | calls (KUBERNETES.md) |
//! | --- | --- |
//! | warn | POST events.k8s.io/v1 Event `TimeoutWarning` on the Job (§5) |
//! | soft_kill | merge PATCH the Job: our annotations + `spec.activeDeadlineSeconds: 1` (§1); Event; DELETE each running pod with `gracePeriodSeconds = G` when G is shorter than the pods' own grace |
//! | hard_kill | Event; DELETE pods still there with grace 0; for `podReplacementPolicy: Failed` also PATCH pods/status `phase: Failed` (§3) |
//! | force_delete | Event; DELETE the Job, Background, `preconditions.uid`; force-remove pods stuck terminating (§4) |
//! | mark_failed | merge PATCH the Job as for soft_kill, plus `termination-outcome: failed`; Warning Event `MarkedFailed` |
//! | recreate | DELETE the dead run's Job (Background, `preconditions.uid`) when still there; POST the stored Job with `recovery-attempt`; Event `Recreated` on the new Job |
//! | delete_labelled | after a TTL delete: LIST the job's PVCs, Secrets, ConfigMaps by the job-id label in its namespace; DELETE each (`preconditions.uid`) unless being deleted or another Job's |
//! | ttl_delete | DELETE the Job, Foreground, `preconditions.uid` (409: re-created, left alone); force-remove its pods stuck terminating, found by `batch.kubernetes.io/job-name` (§4) |
//!
//! Soft kill sets `activeDeadlineSeconds` to 1, not to the elapsed time: the Job controller
//! measures from the whole-second `status.startTime` with the API server's clock, so 1 is past
//! for any Job that has run a second, whatever our clock's skew (§1). Pod deletes carry the
//! pod's UID as a precondition so a replacement pod of the same name is never hit.
//!
//! Results: NotFound is done; a Job-delete 409 means re-created (left alone, audited); 429,
//! 5xx and transport errors are retryable after the server's `retryAfterSeconds` (the API
//! server puts Retry-After into the Status details; kube-rs keeps the Status, not the header)
//! or a default; anything else (403, 422) fails. Every call, successful or not, is one audit row.
//!
//! Dry-run sends nothing at all (not even `dryRun=All`, which would still need RBAC, a
//! reachable server and would post Events): each call that would have been made is an audit
//! row marked `dry_run`, naming the method, path and body.
//!
//! [`API_CALLS`] lists every (group, resource, verb) the code uses and which role grants it;
//! `deploy/rbac.yaml` must grant exactly these (tests/k8s_deploy.rs), and tests/k8s_requests.rs
//! and tests/k8s_leader.rs check every request the code sends against it via [`classify`].

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use crate::model::{AuditAction, AuditEntry, JobId, Timestamp};

use super::observe::{
    DEFAULT_POD_GRACE, Ignored, Scope, controlled_by, pod_is_stuck_terminating, pod_is_terminal,
};
use super::{JOB_NAME_LABEL, REPORTING_CONTROLLER, TERMINATED_BY_VALUE, to_jiff};

/// One kind of API call: what RBAC has to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource, with `/subresource` where there is one.
    pub resource: &'static str,
    /// RBAC verb.
    pub verb: &'static str,
    /// Which role grants it.
    pub grant: Grant,
}

/// Where RBAC grants a call (`deploy/rbac.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// The ClusterRole: Jobs, Pods and Events in every namespace jobwarden polices.
    Cluster,
    /// The Role in the Lease's namespace (leader election, `leader.rs`): nothing else there.
    LeaseNamespace,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
        grant: Grant::Cluster,
    }
}

const fn lease_call(verb: &'static str) -> ApiCall {
    ApiCall {
        group: "coordination.k8s.io",
        resource: "leases",
        verb,
        grant: Grant::LeaseNamespace,
    }
}

/// Every API call jobwarden makes (the actions here, the watches of `controller.rs`, the
/// orphan pass of `orphans.rs`, the Lease calls of `leader.rs`). Keep it in step with the code: the request tests fail on a call
/// missing here, the deploy test on a role that differs from it.
pub const API_CALLS: &[ApiCall] = &[
    // controller.rs: the Job and Pod reflectors (list, then watch).
    call("batch", "jobs", "list"),
    call("batch", "jobs", "watch"),
    call("", "pods", "watch"),
    // The actions below.
    call("events.k8s.io", "events", "create"),
    call("batch", "jobs", "patch"),
    call("batch", "jobs", "delete"),
    // Dead-job recovery: the stored Job created anew.
    call("batch", "jobs", "create"),
    call("", "pods", "delete"),
    call("", "pods", "list"),
    call("", "pods/status", "patch"),
    // orphans.rs: one paginated LIST per kind per pass (pods list is above), and DELETE with a
    // UID precondition.
    call("", "persistentvolumeclaims", "list"),
    call("", "persistentvolumeclaims", "delete"),
    call("", "secrets", "list"),
    call("", "secrets", "delete"),
    call("", "configmaps", "list"),
    call("", "configmaps", "delete"),
    // leader.rs: read the Lease, create it when missing, take it over / renew / release it
    // (PUT with its resourceVersion).
    lease_call("get"),
    lease_call("create"),
    lease_call("update"),
];

/// The RBAC view of a request: which (group, resource, verb) it needs. None for paths that are
/// not namespaced or cluster resource URLs.
pub fn classify(method: &str, path_and_query: &str) -> Option<(String, String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_owned(), resource, verb.to_owned()))
}

/// How one API call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// It worked.
    Ok,
    /// 404: the object is gone, which is what we wanted.
    NotFound,
    /// 409: precondition failed (re-created) or conflict.
    Conflict(String),
    /// 429, 5xx or transport: try again after this long.
    Retry {
        /// How long to wait.
        after: Duration,
        /// The error.
        error: String,
    },
    /// Anything else (403, 422, …): retrying will not help.
    Failed(String),
    /// Dry-run: not sent.
    DryRun,
}

/// Wait after a 429 without a retry hint.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);
/// Wait after a 5xx or a transport error without a retry hint.
pub const DEFAULT_SERVER_ERROR_WAIT: Duration = Duration::from_secs(5);

impl CallResult {
    /// Classifies a kube-rs error.
    pub fn from_error(e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => {
                let hint = status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s)));
                let text = format!("{} {}: {}", status.code, status.reason, status.message);
                match status.code {
                    404 => CallResult::NotFound,
                    409 => CallResult::Conflict(text),
                    429 => CallResult::Retry {
                        after: hint.unwrap_or(DEFAULT_THROTTLE_WAIT),
                        error: text,
                    },
                    500..=599 => CallResult::Retry {
                        after: hint.unwrap_or(DEFAULT_SERVER_ERROR_WAIT),
                        error: text,
                    },
                    _ => CallResult::Failed(text),
                }
            }
            other => CallResult::Retry {
                after: DEFAULT_SERVER_ERROR_WAIT,
                error: other.to_string(),
            },
        }
    }

    fn from<T>(r: Result<T, kube::Error>) -> Self {
        match r {
            Ok(_) => CallResult::Ok,
            Err(e) => CallResult::from_error(&e),
        }
    }

    /// The call achieved its purpose (or would have, in dry-run).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            CallResult::Ok | CallResult::NotFound | CallResult::DryRun
        )
    }

    fn error(&self) -> Option<String> {
        match self {
            CallResult::Conflict(e) | CallResult::Failed(e) => Some(e.clone()),
            CallResult::Retry { error, .. } => Some(error.clone()),
            _ => None,
        }
    }
}

/// How an action as a whole ended: the runtime's act outcome.
pub use crate::runtime::ActOutcome as Outcome;

/// What an action did: the audit rows to write (one per call) and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The job.
    pub job_id: JobId,
    /// One row per call made (or that would have been made, in dry-run).
    pub audit: Vec<AuditEntry>,
    /// How it ended.
    pub outcome: Outcome,
}

impl From<Report> for crate::runtime::Acted {
    fn from(r: Report) -> Self {
        crate::runtime::Acted {
            outcome: r.outcome,
            ..crate::runtime::Acted::done(r.audit)
        }
    }
}

impl Report {
    fn new(job_id: JobId) -> Self {
        Report {
            job_id,
            audit: Vec::new(),
            outcome: Outcome::Done,
        }
    }

    /// Folds a call's result into the outcome; returns false when the action must stop.
    fn absorb(&mut self, r: &CallResult) -> bool {
        match r {
            CallResult::Ok | CallResult::NotFound | CallResult::DryRun => true,
            CallResult::Retry { after, error } => {
                self.outcome = Outcome::Retry {
                    after: *after,
                    error: error.clone(),
                };
                false
            }
            CallResult::Conflict(e) => {
                self.outcome = Outcome::Retry {
                    after: DEFAULT_THROTTLE_WAIT,
                    error: e.clone(),
                };
                false
            }
            CallResult::Failed(e) => {
                self.outcome = Outcome::Failed { error: e.clone() };
                false
            }
        }
    }
}

/// The Kubernetes side of the escalation ladder and TTL deletes.
#[derive(Clone)]
pub struct Actions {
    client: Client,
    scope: Scope,
    dry_run: bool,
    reporting_instance: String,
    initiated_by: String,
}

/// Job name and namespace, checked to be ours.
struct Target<'a> {
    id: JobId,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

impl Actions {
    /// `reporting_instance` names this replica in Events (its pod name).
    pub fn new(client: Client, scope: Scope, dry_run: bool, reporting_instance: &str) -> Self {
        let mut instance = reporting_instance.to_owned();
        instance.truncate(128);
        Actions {
            client,
            scope,
            dry_run,
            reporting_instance: instance,
            initiated_by: "jobwarden".to_owned(),
        }
    }

    /// Whether calls are only audited, not sent.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Which objects are ours.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    fn target<'a>(&self, job: &'a Job) -> Result<Target<'a>, Ignored> {
        let id = self.scope.admit(&job.metadata)?;
        let (Some(name), Some(uid), Some(namespace)) = (
            job.metadata.name.as_deref(),
            job.metadata.uid.as_deref(),
            job.metadata.namespace.as_deref(),
        ) else {
            return Err(Ignored::NoIdentity);
        };
        Ok(Target {
            id,
            namespace,
            name,
            uid,
        })
    }

    /// Whether a pod is one this Job's actions may touch: controlled by the Job (its UID, so
    /// never a re-created Job's pods) *and* carrying the job-id label with the Job's id in an
    /// allowed namespace (safety invariant 1: nothing without our label is touched, even a
    /// pod of a labelled Job whose template lacks the label).
    fn ours(&self, t: &Target<'_>, pod: &Pod) -> bool {
        controlled_by(pod, t.uid) && self.scope.admit(&pod.metadata).is_ok_and(|id| id == t.id)
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        t: &Target<'_>,
        now: Timestamp,
        resource_type: &str,
        resource_name: &str,
        action: AuditAction,
        reason: &str,
        result: &CallResult,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            id: 0,
            timestamp: now,
            job_id: t.id.to_string(),
            resource_type: resource_type.to_owned(),
            resource_name: format!("{}/{}", t.namespace, resource_name),
            action,
            reason: reason.to_owned(),
            initiated_by: self.initiated_by.clone(),
            success: result.is_done(),
            error_message: result.error(),
            dry_run: matches!(result, CallResult::DryRun),
            details: Some(details),
        }
    }

    /// Posts an events.k8s.io/v1 Event on the Job. Never fails the action: the result goes
    /// into an audit row.
    async fn event(
        &self,
        t: &Target<'_>,
        action: AuditAction,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> AuditEntry {
        let mut ev = event_for(
            t.namespace,
            t.name,
            t.uid,
            reason,
            action_name(action),
            note,
            &self.reporting_instance,
            now,
        );
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Event> = Api::namespaced(self.client.clone(), t.namespace);
            let mut result = CallResult::from(api.create(&PostParams::default(), &ev).await);
            if matches!(result, CallResult::Conflict(_)) {
                // AlreadyExists: the name was taken (names are unique per namespace, and a
                // second Event under one name is refused, not merged). Once more, renamed.
                ev.metadata.name = Some(event_name(t.name, now));
                result = CallResult::from(api.create(&PostParams::default(), &ev).await);
            }
            result
        };
        self.row(
            t,
            now,
            "event",
            ev.metadata.name.as_deref().unwrap_or_default(),
            action,
            note,
            &result,
            json!({"call": "POST events.k8s.io/v1 events", "eventReason": reason}),
        )
    }

    /// warn: an Event `TimeoutWarning` on the Job.
    pub async fn warn(&self, job: &Job, note: &str, now: Timestamp) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        let row = self
            .event(&t, AuditAction::Warn, "TimeoutWarning", note, now)
            .await;
        report.audit.push(row);
        Ok(report)
    }

    /// A Job whose pods' own `terminationGracePeriodSeconds` is shorter than the policy's
    /// grace: the kubelet's SIGKILL would cut work-saving short. A Warning Event
    /// `GracePeriodTooShort` on the Job (the caller posts it once per run).
    pub async fn grace_too_short(
        &self,
        job: &Job,
        pod_grace: Duration,
        grace: Duration,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        let note = format!(
            "the pods' terminationGracePeriodSeconds ({}) is shorter than the grace period ({}): the kubelet will SIGKILL before work is saved; set it to at least {}",
            pod_grace.as_secs(),
            grace.as_secs(),
            grace.as_secs()
        );
        let row = self
            .event(
                &t,
                AuditAction::ConfigWarning,
                "GracePeriodTooShort",
                &note,
                now,
            )
            .await;
        report.audit.push(row);
        Ok(report)
    }

    /// soft_kill: the Job controller ends the Job (activeDeadlineSeconds), our annotations say
    /// why; pods whose own grace exceeds `grace` get a DELETE with `grace`.
    pub async fn soft_kill(
        &self,
        job: &Job,
        pods: &[Pod],
        grace: Duration,
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        let result = self
            .end_job(
                &t,
                job,
                None,
                AuditAction::SoftKill,
                reason,
                now,
                &mut report,
            )
            .await;
        if result == CallResult::NotFound || !report.absorb(&result) {
            return Ok(report);
        }
        report.audit.push(
            self.event(&t, AuditAction::SoftKill, "TimeoutSoftKill", reason, now)
                .await,
        );
        let pod_grace = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.termination_grace_period_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_POD_GRACE, Duration::from_secs);
        if grace < pod_grace {
            let secs = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
            for pod in live_pods(pods, secs).filter(|p| self.ours(&t, p)) {
                let r = self
                    .delete_pod(
                        &t,
                        pod,
                        secs,
                        AuditAction::SoftKill,
                        reason,
                        now,
                        &mut report,
                    )
                    .await;
                if !report.absorb(&r) {
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    /// The merge PATCH that makes the Job controller end the Job now: our annotations (why;
    /// `termination-outcome` when it is to count as `outcome` rather than terminated) and
    /// `spec.activeDeadlineSeconds` already passed. One audit row.
    #[allow(clippy::too_many_arguments)]
    async fn end_job(
        &self,
        t: &Target<'_>,
        job: &Job,
        outcome: Option<crate::model::Outcome>,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> CallResult {
        let deadline = job
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map_or(1, |d| d.clamp(0, 1));
        let mut annotations = serde_json::Map::new();
        annotations.insert(self.scope.terminated_by.clone(), TERMINATED_BY_VALUE.into());
        annotations.insert(self.scope.termination_reason.clone(), reason.into());
        if let Some(o) = outcome {
            annotations.insert(self.scope.termination_outcome.clone(), o.as_str().into());
        }
        let body = json!({
            "metadata": {"annotations": annotations},
            "spec": {"activeDeadlineSeconds": deadline},
        });
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Job> = Api::namespaced(self.client.clone(), t.namespace);
            CallResult::from(
                api.patch(t.name, &patch_params(), &Patch::Merge(&body))
                    .await,
            )
        };
        report.audit.push(self.row(
            t,
            now,
            "job",
            t.name,
            action,
            reason,
            &result,
            json!({"call": "PATCH batch/v1 jobs (merge)", "body": body}),
        ));
        result
    }

    /// mark_failed (dead-job recovery gave up, image cannot be pulled, crash loop, pending
    /// past the startup timeout): the Job controller ends the Job as for a soft kill, and our
    /// annotations make it count as failed; a Warning Event `MarkedFailed` says why. The pods
    /// keep their own grace period.
    pub async fn mark_failed(
        &self,
        job: &Job,
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        let result = self
            .end_job(
                &t,
                job,
                Some(crate::model::Outcome::Failed),
                AuditAction::MarkFailed,
                reason,
                now,
                &mut report,
            )
            .await;
        if result == CallResult::NotFound || !report.absorb(&result) {
            return Ok(report);
        }
        report.audit.push(
            self.event(&t, AuditAction::MarkFailed, "MarkedFailed", reason, now)
                .await,
        );
        Ok(report)
    }

    /// Dead-job recovery: `current` (the dead run's Job, when still there) is deleted with its
    /// UID as precondition and Background propagation (its pods go with it, each with its own
    /// grace period), then `template` (the stored Job, `observe::job_template`) is created
    /// anew carrying `<prefix>recovery-attempt: attempt`; an Event `Recreated` on the new Job
    /// says why. The template must be ours (job-id label, allowed namespace), like any Job we
    /// touch.
    ///
    /// - A 409 on the delete: the name holds another Job (someone re-created it): left alone,
    ///   nothing created, `Outcome::Recreated`.
    /// - A 409 on the create: a Job of that name still exists (ours still being deleted, or
    ///   someone else's): `Outcome::Retry`; the caller decides again with what it then sees.
    pub async fn recreate(
        &self,
        current: Option<&Job>,
        template: &serde_json::Value,
        attempt: u32,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Report, Option<String>), Ignored> {
        // The stored Job must be creatable, and ours, before anything is deleted.
        let mut new_job: Job =
            serde_json::from_value(template.clone()).map_err(|_| Ignored::NoIdentity)?;
        self.prepare_job(&mut new_job, attempt)?;
        if let Some(job) = current {
            let t = self.target(job)?;
            let mut report = Report::new(t.id.clone());
            let r = self
                .delete_job(
                    &t,
                    DeleteParams::background(),
                    AuditAction::Recover,
                    reason,
                    now,
                    &mut report,
                )
                .await;
            if let CallResult::Conflict(_) = r {
                report.outcome = Outcome::Recreated;
                return Ok((report, None));
            }
            if !report.absorb(&r) {
                return Ok((report, None));
            }
            let (more, uid) = self.create_job(&mut new_job, attempt, reason, now).await?;
            report.audit.extend(more.audit);
            report.outcome = more.outcome;
            return Ok((report, uid));
        }
        self.create_job(&mut new_job, attempt, reason, now).await
    }

    /// The stored Job as it is to be created: without server-set fields, with
    /// `recovery-attempt`; refused unless it is ours (label, namespace) and named.
    fn prepare_job(&self, job: &mut Job, attempt: u32) -> Result<(), Ignored> {
        job.metadata.uid = None;
        job.metadata.resource_version = None;
        job.metadata.creation_timestamp = None;
        job.metadata.deletion_timestamp = None;
        job.status = None;
        job.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(self.scope.recovery_attempt.clone(), attempt.to_string());
        self.scope.admit(&job.metadata)?;
        if job.metadata.name.is_none() || job.metadata.namespace.is_none() {
            return Err(Ignored::NoIdentity);
        }
        Ok(())
    }

    /// POSTs a Job [`Actions::prepare_job`] accepted.
    async fn create_job(
        &self,
        job: &mut Job,
        attempt: u32,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Report, Option<String>), Ignored> {
        let id = self.scope.admit(&job.metadata)?;
        let (Some(name), Some(namespace)) =
            (job.metadata.name.clone(), job.metadata.namespace.clone())
        else {
            return Err(Ignored::NoIdentity);
        };
        let mut report = Report::new(id.clone());
        let (result, uid) = if self.dry_run {
            (CallResult::DryRun, None)
        } else {
            let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
            match api.create(&PostParams::default(), job).await {
                Ok(created) => (CallResult::Ok, created.metadata.uid),
                Err(e) => (CallResult::from_error(&e), None),
            }
        };
        let t = Target {
            id,
            namespace: &namespace,
            name: &name,
            uid: uid.as_deref().unwrap_or_default(),
        };
        report.audit.push(self.row(
            &t,
            now,
            "job",
            &name,
            AuditAction::Recover,
            reason,
            &result,
            json!({"call": "POST batch/v1 jobs", "recovery_attempt": attempt, "uid": uid}),
        ));
        if !report.absorb(&result) {
            return Ok((report, None));
        }
        if uid.is_some() {
            let note = format!("re-created by jobwarden (recovery attempt {attempt}): {reason}");
            report.audit.push(
                self.event(&t, AuditAction::Recover, "Recreated", &note, now)
                    .await,
            );
        }
        Ok((report, uid))
    }

    /// hard_kill: pods still there are deleted with grace 0; with `podReplacementPolicy:
    /// Failed` their status phase is also set to Failed so the Job controller lets them go.
    pub async fn hard_kill(
        &self,
        job: &Job,
        pods: &[Pod],
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        report.audit.push(
            self.event(&t, AuditAction::HardKill, "TimeoutHardKill", reason, now)
                .await,
        );
        let fail_phase = replacement_policy_failed(job);
        let remaining: Vec<&Pod> = pods
            .iter()
            .filter(|p| self.ours(&t, p) && !pod_is_terminal(p))
            .collect();
        for pod in remaining {
            let r = self
                .delete_pod(&t, pod, 0, AuditAction::HardKill, reason, now, &mut report)
                .await;
            if !report.absorb(&r) {
                return Ok(report);
            }
            if fail_phase && r != CallResult::NotFound {
                let r = self
                    .fail_pod_phase(&t, pod, AuditAction::HardKill, reason, now, &mut report)
                    .await;
                if !report.absorb(&r) {
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    /// force_delete: the Job goes (Background propagation, UID precondition); pods stuck
    /// terminating are removed with grace 0.
    pub async fn force_delete(
        &self,
        job: &Job,
        pods: &[Pod],
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        report.audit.push(
            self.event(
                &t,
                AuditAction::ForceDelete,
                "TimeoutForceDelete",
                reason,
                now,
            )
            .await,
        );
        let r = self
            .delete_job(
                &t,
                DeleteParams::background(),
                AuditAction::ForceDelete,
                reason,
                now,
                &mut report,
            )
            .await;
        if let CallResult::Conflict(_) = r {
            report.outcome = Outcome::Recreated;
            return Ok(report);
        }
        if !report.absorb(&r) {
            return Ok(report);
        }
        let fail_phase = replacement_policy_failed(job);
        let stuck: Vec<&Pod> = pods
            .iter()
            .filter(|p| self.ours(&t, p) && pod_is_stuck_terminating(p, now))
            .collect();
        for pod in stuck {
            if !self
                .force_remove(
                    &t,
                    pod,
                    fail_phase,
                    AuditAction::ForceDelete,
                    reason,
                    now,
                    &mut report,
                )
                .await
            {
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// TTL after finish: the Job goes with Foreground propagation and a UID precondition (a
    /// 409 means a new Job took the name: left alone). Its pods stuck terminating, which block
    /// a Foreground delete, are listed by `batch.kubernetes.io/job-name` and force-removed.
    /// Safe to call again while the Job is still being deleted.
    pub async fn ttl_delete(
        &self,
        job: &Job,
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        if job.metadata.deletion_timestamp.is_none() {
            let r = self
                .delete_job(
                    &t,
                    DeleteParams::foreground(),
                    AuditAction::TtlCleanup,
                    reason,
                    now,
                    &mut report,
                )
                .await;
            match r {
                CallResult::Conflict(_) => {
                    report.outcome = Outcome::Recreated;
                    return Ok(report);
                }
                CallResult::NotFound => return Ok(report),
                _ if !report.absorb(&r) => return Ok(report),
                _ => {}
            }
        }
        let selector = format!("{JOB_NAME_LABEL}={}", t.name);
        let listed = if self.dry_run {
            // A read changes nothing, but dry-run sends no call at all: nothing is known to
            // be stuck, nothing would be removed.
            Ok(Vec::new())
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), t.namespace);
            api.list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items)
        };
        let pods = match listed {
            Ok(p) => p,
            Err(e) => {
                let r = CallResult::from_error(&e);
                report.audit.push(self.row(
                    &t,
                    now,
                    "pod",
                    &format!("{selector} (list)"),
                    AuditAction::TtlCleanup,
                    reason,
                    &r,
                    json!({"call": "LIST v1 pods", "labelSelector": selector}),
                ));
                report.absorb(&r);
                return Ok(report);
            }
        };
        let fail_phase = replacement_policy_failed(job);
        for pod in pods
            .iter()
            .filter(|p| self.ours(&t, p) && pod_is_stuck_terminating(p, now))
        {
            if !self
                .force_remove(
                    &t,
                    pod,
                    fail_phase,
                    AuditAction::TtlCleanup,
                    reason,
                    now,
                    &mut report,
                )
                .await
            {
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// After a successful TTL delete: the job's own PersistentVolumeClaims, Secrets and
    /// ConfigMaps in the Job's namespace, found by the job-id label with the job's id, are
    /// deleted with their UID as precondition. Left alone: objects already being deleted, and
    /// objects a *different* Job controls or owns (a re-created Job's). A PVC still mounted by
    /// a terminating pod goes once the pod is gone (`kubernetes.io/pvc-protection`). One audit
    /// row per list and per DELETE. Dry-run sends nothing (not even the lists).
    pub async fn delete_labelled(
        &self,
        job: &Job,
        reason: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let t = self.target(job)?;
        let mut report = Report::new(t.id.clone());
        if self.dry_run {
            return Ok(report);
        }
        let selector = format!("{}={}", self.scope.job_id_label, t.id);
        if !self
            .delete_labelled_kind::<PersistentVolumeClaim>(
                &t,
                "persistentvolumeclaim",
                &selector,
                reason,
                now,
                &mut report,
            )
            .await
            || !self
                .delete_labelled_kind::<Secret>(&t, "secret", &selector, reason, now, &mut report)
                .await
        {
            return Ok(report);
        }
        self.delete_labelled_kind::<ConfigMap>(
            &t,
            "configmap",
            &selector,
            reason,
            now,
            &mut report,
        )
        .await;
        Ok(report)
    }

    /// One kind of [`Actions::delete_labelled`]; false when the action must stop.
    async fn delete_labelled_kind<K>(
        &self,
        t: &Target<'_>,
        resource_type: &str,
        selector: &str,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> bool
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), t.namespace);
        let listed = match api
            .list_metadata(&ListParams::default().labels(selector))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                let r = CallResult::from_error(&e);
                report.audit.push(self.row(
                    t,
                    now,
                    resource_type,
                    &format!("{selector} (list)"),
                    AuditAction::TtlCleanup,
                    reason,
                    &r,
                    json!({"call": format!("LIST {}", K::plural(&())), "labelSelector": selector}),
                ));
                return report.absorb(&r);
            }
        };
        for item in listed {
            let meta = &item.metadata;
            let another_jobs =
                meta.owner_references.iter().flatten().any(|r| {
                    r.kind == "Job" && r.api_version.starts_with("batch/") && r.uid != t.uid
                });
            if meta.deletion_timestamp.is_some()
                || another_jobs
                || self.scope.admit(meta).ok().as_ref() != Some(&t.id)
            {
                continue;
            }
            let (Some(name), Some(uid)) = (meta.name.as_deref(), meta.uid.as_deref()) else {
                continue;
            };
            let params = DeleteParams::default().preconditions(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
            let result = match CallResult::from(api.delete(name, &params).await) {
                // Another object took the name since the list: not this job's any more.
                CallResult::Conflict(_) => CallResult::NotFound,
                other => other,
            };
            report.audit.push(self.row(
                t,
                now,
                resource_type,
                name,
                AuditAction::TtlCleanup,
                reason,
                &result,
                json!({"call": format!("DELETE v1 {}", K::plural(&())), "deleteOptions": serde_json::to_value(&params).unwrap_or_default()}),
            ));
            if !report.absorb(&result) {
                return false;
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    async fn force_remove(
        &self,
        t: &Target<'_>,
        pod: &Pod,
        fail_phase: bool,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> bool {
        let r = self
            .delete_pod(t, pod, 0, action, reason, now, report)
            .await;
        if !report.absorb(&r) {
            return false;
        }
        if fail_phase && r != CallResult::NotFound && !pod_is_terminal(pod) {
            let r = self
                .fail_pod_phase(t, pod, action, reason, now, report)
                .await;
            return report.absorb(&r);
        }
        true
    }

    async fn delete_job(
        &self,
        t: &Target<'_>,
        params: DeleteParams,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> CallResult {
        let params = params.preconditions(Preconditions {
            uid: Some(t.uid.to_owned()),
            resource_version: None,
        });
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Job> = Api::namespaced(self.client.clone(), t.namespace);
            CallResult::from(api.delete(t.name, &params).await)
        };
        let details = json!({
            "call": "DELETE batch/v1 jobs",
            "deleteOptions": serde_json::to_value(&params).unwrap_or_default(),
            "conflict": matches!(result, CallResult::Conflict(_))
                .then_some("the Job was re-created under this name (another uid): left alone"),
        });
        report
            .audit
            .push(self.row(t, now, "job", t.name, action, reason, &result, details));
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn delete_pod(
        &self,
        t: &Target<'_>,
        pod: &Pod,
        grace_seconds: u32,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> CallResult {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut params = DeleteParams::default().grace_period(grace_seconds);
        if let Some(uid) = &pod.metadata.uid {
            params = params.preconditions(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            });
        }
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), t.namespace);
            match CallResult::from(api.delete(name, &params).await) {
                // The pod we saw is gone (a new one took its name): done for this one.
                CallResult::Conflict(_) => CallResult::NotFound,
                other => other,
            }
        };
        report.audit.push(self.row(
            t,
            now,
            "pod",
            name,
            action,
            reason,
            &result,
            json!({"call": "DELETE v1 pods", "deleteOptions": serde_json::to_value(&params).unwrap_or_default()}),
        ));
        result
    }

    async fn fail_pod_phase(
        &self,
        t: &Target<'_>,
        pod: &Pod,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) -> CallResult {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let body = json!({"status": {"phase": "Failed"}});
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), t.namespace);
            CallResult::from(
                api.patch_status(name, &patch_params(), &Patch::Merge(&body))
                    .await,
            )
        };
        report.audit.push(self.row(
            t,
            now,
            "pod",
            name,
            action,
            reason,
            &result,
            json!({"call": "PATCH v1 pods/status (merge)", "body": body}),
        ));
        result
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some("jobwarden".to_owned()),
        ..PatchParams::default()
    }
}

/// Pods that still run: not terminal, not already being deleted with a grace no
/// longer than ours would be (the API server only ever shortens a pending deletion).
fn live_pods(pods: &[Pod], grace_secs: u32) -> impl Iterator<Item = &Pod> {
    pods.iter().filter(move |p| {
        let pending_grace = p.metadata.deletion_grace_period_seconds;
        !pod_is_terminal(p) && pending_grace.is_none_or(|g| g > i64::from(grace_secs))
    })
}

fn replacement_policy_failed(job: &Job) -> bool {
    job.spec.as_ref().is_some_and(|s| {
        s.pod_replacement_policy.as_deref() == Some("Failed") || s.pod_failure_policy.is_some()
    })
}

fn action_name(a: AuditAction) -> &'static str {
    match a {
        AuditAction::Warn => "Warn",
        AuditAction::SoftKill => "SoftKill",
        AuditAction::HardKill => "HardKill",
        AuditAction::ForceDelete => "ForceDelete",
        AuditAction::TtlCleanup => "TTLDelete",
        AuditAction::OrphanCleanup => "OrphanCleanup",
        AuditAction::Recover => "Recover",
        AuditAction::MarkFailed => "MarkFailed",
        AuditAction::Cancel => "Cancel",
        AuditAction::ConfigWarning => "Check",
        AuditAction::Hook => "Hook",
    }
}

/// A unique Event name for the Job: `<job>.<time in µs, hex><64 random bits, hex>`, as
/// client-go's recorder names them. Two Events in one pass share their time, and a name
/// derived from the object and the time alone collides (the API server refuses the second
/// with 409 AlreadyExists and it is lost). At most 63 + 1 + 14 + 16 characters: a valid name.
pub fn event_name(job_name: &str, now: Timestamp) -> String {
    format!(
        "{job_name}.{:x}{:016x}",
        now.timestamp_micros(),
        rand::random::<u64>()
    )
}

/// An events.k8s.io/v1 Event on a Job: every field the API server requires (KUBERNETES.md
/// §5), a unique name ([`event_name`]), `eventTime` with microseconds, `note` cut to 1024 bytes.
#[allow(clippy::too_many_arguments)]
pub fn event_for(
    namespace: &str,
    job_name: &str,
    job_uid: &str,
    reason: &str,
    action: &str,
    note: &str,
    reporting_instance: &str,
    now: Timestamp,
) -> Event {
    let micros = now.timestamp_micros();
    let mut note = note.to_owned();
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    // Truncated to whole microseconds, as eventTime must be.
    let at = chrono::DateTime::from_timestamp_micros(micros).unwrap_or(now);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(job_name, now)),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(to_jiff(at))),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(reporting_instance.to_owned()),
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        type_: Some("Warning".to_owned()),
        note: Some(note),
        regarding: Some(ObjectReference {
            api_version: Some("batch/v1".to_owned()),
            kind: Some("Job".to_owned()),
            name: Some(job_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(job_uid.to_owned()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_classify_to_rbac_terms() {
        let c = |m, p| classify(m, p).map(|(g, r, v)| format!("{g}|{r}|{v}"));
        assert_eq!(
            c("DELETE", "/apis/batch/v1/namespaces/ns/jobs/j").as_deref(),
            Some("batch|jobs|delete")
        );
        assert_eq!(
            c(
                "PATCH",
                "/api/v1/namespaces/ns/pods/p/status?fieldManager=jobwarden"
            )
            .as_deref(),
            Some("|pods/status|patch")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/ns/pods?labelSelector=x").as_deref(),
            Some("|pods|list")
        );
        assert_eq!(
            c("GET", "/apis/batch/v1/jobs?watch=true&labelSelector=job-id").as_deref(),
            Some("batch|jobs|watch")
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/ns/events").as_deref(),
            Some("events.k8s.io|events|create")
        );
        assert_eq!(c("GET", "/version"), None);
    }

    #[test]
    fn events_carry_every_required_field_with_microseconds() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("ts");
        let ev = event_for(
            "ns",
            "build-42",
            "uid-1",
            "TimeoutWarning",
            "Warn",
            &"x".repeat(2000),
            "jobwarden-0",
            now,
        );
        let v = serde_json::to_value(&ev).expect("json");
        assert_eq!(v["eventTime"], "2027-01-15T08:00:00.123456Z");
        for k in [
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "type",
            "note",
        ] {
            assert!(v[k].is_string(), "{k} missing: {v}");
        }
        assert_eq!(v["regarding"]["uid"], "uid-1");
        assert_eq!(v["note"].as_str().map(str::len), Some(1024));
        assert!(
            v["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("build-42."))
        );
    }

    #[test]
    fn two_events_at_the_same_instant_get_different_valid_names() {
        let now: Timestamp = "2027-01-15T08:00:00.123456789Z".parse().expect("ts");
        let long = "j".repeat(63);
        let a = event_name(&long, now);
        let b = event_name(&long, now);
        assert_ne!(
            a, b,
            "the second Event would be refused with 409 AlreadyExists"
        );
        for n in [&a, &b] {
            assert!(n.len() <= 253, "{n}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.'),
                "{n}"
            );
        }
    }
}
