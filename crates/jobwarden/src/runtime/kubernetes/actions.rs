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
//! Results ([`calls`](super::calls)): NotFound is done; a Job-delete 409 means re-created
//! (left alone, audited); 429, 5xx and transport errors are retried; 403 and 422 fail. Every
//! call, successful or not, is one audit row. The shared deletes are in `deletes.rs`, the
//! Events in [`events`](super::events).
//!
//! Dry-run sends nothing at all (not even `dryRun=All`, which would still need RBAC, a
//! reachable server and would post Events): each call that would have been made is an audit
//! row marked `dry_run`, naming the method, path and body.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::model::{AuditAction, AuditEntry, JobId, Timestamp};

pub use super::calls::{
    API_CALLS, ApiCall, CallResult, DEFAULT_SERVER_ERROR_WAIT, DEFAULT_THROTTLE_WAIT, Grant,
    classify,
};
use super::events::action_name;
pub use super::events::{event_for, event_name};

use crate::kubernetes::observe::{
    Ignored, Scope, controlled_by, pod_grace, pod_is_stuck_terminating, pod_is_terminal,
};
use crate::kubernetes::{JOB_NAME_LABEL, TERMINATED_BY_VALUE};

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
    pub(super) fn new(job_id: JobId) -> Self {
        Report {
            job_id,
            audit: Vec::new(),
            outcome: Outcome::Done,
        }
    }

    /// Folds a call's result into the outcome; returns false when the action must stop.
    pub(super) fn absorb(&mut self, r: &CallResult) -> bool {
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
    pub(super) client: Client,
    scope: Scope,
    pub(super) dry_run: bool,
    reporting_instance: String,
    initiated_by: String,
    /// The `resourceVersion` each of our Job PATCHes returned, by `(namespace, name)`: the
    /// watch event carrying exactly that version is the echo of our own change.
    echoes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), String>>>,
    /// Posts the Events that accompany a step's calls in the background (None: each is
    /// posted in the step, its row in the step's report).
    poster: Option<super::poster::EventPoster>,
}

/// Echoes remembered at most (a watch that re-listed never delivers some of them; past this
/// the oldest knowledge is dropped, which only costs a reconcile).
const MAX_ECHOES: usize = 100_000;

/// Job name and namespace, checked to be ours.
pub(super) struct Target<'a> {
    pub(super) id: JobId,
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) uid: &'a str,
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
            echoes: std::sync::Arc::default(),
            poster: None,
        }
    }

    /// Posts the Events that accompany a kill step's calls (soft kill, hard kill, force
    /// delete, mark_failed) through `poster`, off the step's critical path
    /// ([`super::poster`]); their audit rows are written by the poster. Dry-run keeps
    /// auditing them in the step (nothing is posted).
    pub fn with_event_poster(mut self, poster: super::poster::EventPoster) -> Self {
        self.poster = Some(poster);
        self
    }

    /// The background Event poster, when there is one.
    pub fn event_poster(&self) -> Option<&super::poster::EventPoster> {
        self.poster.as_ref()
    }

    /// An Event that accompanies a step's calls: queued to the poster when there is one
    /// (None: its row comes from the poster), else posted now and its row returned.
    async fn side_event(
        &self,
        t: &Target<'_>,
        action: AuditAction,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Option<AuditEntry> {
        let Some(poster) = self.poster.as_ref().filter(|_| !self.dry_run) else {
            return Some(self.event(t, action, reason, note, now).await);
        };
        let event = self.job_event(t, action, reason, note, now);
        // Its outcome is filled in by the poster once the POST answers.
        let row = self.event_row(t, &event, action, reason, note, now, &CallResult::Ok);
        poster.offer(super::poster::Posting {
            api: Api::namespaced(self.client.clone(), t.namespace),
            event,
            job_name: t.name.to_owned(),
            row,
        });
        None
    }

    /// Whether `job` is exactly the Job one of our PATCHes left (its `resourceVersion` is the
    /// one the PATCH returned): the watch's echo of a change jobwarden made itself, which the
    /// reconcile that made it has already accounted for. A match is forgotten (one echo per
    /// PATCH); any other version (someone else changed the Job since, or before the echo) is
    /// not an echo and is reconciled.
    pub fn is_own_echo(&self, job: &Job) -> bool {
        let (Some(ns), Some(name), Some(rv)) = (
            job.metadata.namespace.as_deref(),
            job.metadata.name.as_deref(),
            job.metadata.resource_version.as_deref(),
        ) else {
            return false;
        };
        let mut echoes = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_owned(), name.to_owned());
        match echoes.get(&key) {
            Some(ours) if ours == rv => {
                echoes.remove(&key);
                true
            }
            // A later version than ours went by: ours will never be seen.
            Some(_) => {
                echoes.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers the version our PATCH of `t` left.
    fn patched(&self, t: &Target<'_>, rv: Option<String>) {
        let mut echoes = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (t.namespace.to_owned(), t.name.to_owned());
        match rv {
            Some(rv) => {
                if echoes.len() >= MAX_ECHOES {
                    echoes.clear();
                }
                echoes.insert(key, rv);
            }
            None => {
                echoes.remove(&key);
            }
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

    /// The Job's identity, admitted by the scope (the last guard before any call), and an
    /// empty report for what is done to it.
    pub(super) fn target<'a>(&self, job: &'a Job) -> Result<(Target<'a>, Report), Ignored> {
        let id = self.scope.admit(&job.metadata)?;
        let (Some(name), Some(uid), Some(namespace)) = (
            job.metadata.name.as_deref(),
            job.metadata.uid.as_deref(),
            job.metadata.namespace.as_deref(),
        ) else {
            return Err(Ignored::NoIdentity);
        };
        let report = Report::new(id.clone());
        let target = Target {
            id,
            namespace,
            name,
            uid,
        };
        Ok((target, report))
    }

    /// Whether a pod is one this Job's actions may touch: controlled by the Job (its UID, so
    /// never a re-created Job's pods) *and* carrying the job-id label with the Job's id in an
    /// allowed namespace (safety invariant 1: nothing without our label is touched, even a
    /// pod of a labelled Job whose template lacks the label).
    pub(super) fn ours(&self, t: &Target<'_>, pod: &Pod) -> bool {
        controlled_by(pod, t.uid) && self.scope.admit(&pod.metadata).is_ok_and(|id| id == t.id)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn row(
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
        let mut ev = self.job_event(t, action, reason, note, now);
        let result = if self.dry_run {
            CallResult::DryRun
        } else {
            let api: Api<Event> = Api::namespaced(self.client.clone(), t.namespace);
            super::events::create_event(&api, &mut ev, t.name, now).await
        };
        self.event_row(t, &ev, action, reason, note, now, &result)
    }

    /// The Event `reason` on the Job of `t`, for `action`.
    fn job_event(
        &self,
        t: &Target<'_>,
        action: AuditAction,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Event {
        event_for(
            t.namespace,
            t.name,
            t.uid,
            reason,
            action_name(action),
            note,
            &self.reporting_instance,
            now,
        )
    }

    /// The audit row of posting `ev` (its `reason`, for `action`) with `result`.
    #[allow(clippy::too_many_arguments)]
    fn event_row(
        &self,
        t: &Target<'_>,
        ev: &Event,
        action: AuditAction,
        reason: &str,
        note: &str,
        now: Timestamp,
        result: &CallResult,
    ) -> AuditEntry {
        self.row(
            t,
            now,
            "event",
            ev.metadata.name.as_deref().unwrap_or_default(),
            action,
            note,
            result,
            json!({"call": "POST events.k8s.io/v1 events", "eventReason": reason}),
        )
    }

    /// warn: an Event `TimeoutWarning` on the Job.
    pub async fn warn(&self, job: &Job, note: &str, now: Timestamp) -> Result<Report, Ignored> {
        self.post_event(job, AuditAction::Warn, "TimeoutWarning", note, now)
            .await
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
        let note = format!(
            "the pods' terminationGracePeriodSeconds ({}) is shorter than the grace period ({}): the kubelet will SIGKILL before work is saved; set it to at least {}",
            pod_grace.as_secs(),
            grace.as_secs(),
            grace.as_secs()
        );
        self.post_event(
            job,
            AuditAction::ConfigWarning,
            "GracePeriodTooShort",
            &note,
            now,
        )
        .await
    }

    /// An Event on the Job, and nothing else.
    async fn post_event(
        &self,
        job: &Job,
        action: AuditAction,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<Report, Ignored> {
        let (t, mut report) = self.target(job)?;
        let row = self.event(&t, action, reason, note, now).await;
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
        let (t, mut report) = self.target(job)?;
        let ended = self
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
        if !ended {
            return Ok(report);
        }
        let pod_grace = pod_grace(job);
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

    /// The merge PATCH that makes the Job controller end the Job now (our annotations: why;
    /// `termination-outcome` when it is to count as `outcome` rather than terminated; and
    /// `spec.activeDeadlineSeconds` already passed), then its Event (`TimeoutSoftKill`, or
    /// `MarkedFailed` for a failure). One audit row each. False when the action must stop (the
    /// Job is gone, or the PATCH failed: `report` says how).
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
    ) -> bool {
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
            let answer = api
                .patch(t.name, &patch_params(), &Patch::Merge(&body))
                .await;
            self.patched(
                t,
                answer
                    .as_ref()
                    .ok()
                    .and_then(|j| j.metadata.resource_version.clone()),
            );
            CallResult::from(answer)
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
        if result == CallResult::NotFound || !report.absorb(&result) {
            return false;
        }
        let event = if outcome.is_some() {
            "MarkedFailed"
        } else {
            "TimeoutSoftKill"
        };
        report
            .audit
            .extend(self.side_event(t, action, event, reason, now).await);
        true
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
        let (t, mut report) = self.target(job)?;
        let failed = Some(crate::model::Outcome::Failed);
        self.end_job(
            &t,
            job,
            failed,
            AuditAction::MarkFailed,
            reason,
            now,
            &mut report,
        )
        .await;
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
            let (t, mut report) = self.target(job)?;
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
        let (t, mut report) = self.target(job)?;
        report.audit.extend(
            self.side_event(&t, AuditAction::HardKill, "TimeoutHardKill", reason, now)
                .await,
        );
        let running = |p: &Pod| !pod_is_terminal(p);
        self.remove_pods(
            &t,
            job,
            pods,
            running,
            AuditAction::HardKill,
            reason,
            now,
            &mut report,
        )
        .await;
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
        let (t, mut report) = self.target(job)?;
        report.audit.extend(
            self.side_event(
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
        let stuck = |p: &Pod| pod_is_stuck_terminating(p, now);
        self.remove_pods(
            &t,
            job,
            pods,
            stuck,
            AuditAction::ForceDelete,
            reason,
            now,
            &mut report,
        )
        .await;
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
        let (t, mut report) = self.target(job)?;
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
        let stuck = |p: &Pod| pod_is_stuck_terminating(p, now);
        self.remove_pods(
            &t,
            job,
            &pods,
            stuck,
            AuditAction::TtlCleanup,
            reason,
            now,
            &mut report,
        )
        .await;
        Ok(report)
    }
}

pub(super) fn patch_params() -> PatchParams {
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
