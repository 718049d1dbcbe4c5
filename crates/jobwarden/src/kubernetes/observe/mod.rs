//! What a batch/v1 Job and its Pods say about a job, in the engine's terms. Pure: no I/O, no
//! clock (`now` is an argument).
//!
//! - [`Scope::admit`] decides whether a Job is ours at all: it must carry the job-id label with
//!   a valid job id, and must not live in a protected (or unwatched) namespace. Everything else
//!   is ignored, never touched (invariant 1).
//! - [`observe_job`] reads identity (job id, namespace/name, UID = run identity), settings
//!   (annotations, org/type from label or annotation, `spec.activeDeadlineSeconds` as a job
//!   override), start (`status.startTime`), outcome and finish (conditions, below) and a
//!   diagnosis of the pods (image pull, crash loop, unschedulable).
//!
//! A Job's outcome is *decided* at `FailureTarget` / `SuccessCriteriaMet` and the Job has
//! *ended* at `Failed` / `Complete`, which the Job controller sets only once no pod of the Job
//! is left terminating. On a node whose kubelet never confirms a deletion that is never: a
//! real 1.36 control plane kept such a Job at `FailureTarget` for as long as its pods stayed
//! Terminating. So a decided Job whose pods still exist is *ending*, not ended: the ladder goes
//! on (hard kill, force delete) until the Job has ended, by its conditions or because no pod of
//! it is left (neither among the pods we watch nor in the Job's `status.active` /
//! `status.terminating`).
//! - [`to_record`] merges that into the stored [`JobRecord`] with the resolved policy: steps
//!   survive only within the same run (UID), and once jobwarden has soft-killed a Job the
//!   `activeDeadlineSeconds` it patched never moves the recorded deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;

use crate::config::PolicyConfig;
use crate::engine::lifecycle::stage_after;
use crate::engine::recovery::Diagnosis;
use crate::model::{IdError, JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, Timestamp};
use crate::policy::{
    AnnotationKeys, JobSettings, SettingWarning, resolve, settings_from_annotations,
};

use super::CANCEL_REQUESTED;
use super::config::KubernetesConfig;
use super::{
    CONTROLLER_UID_LABEL, JOB_NAME_LABEL, RECOVERY_ATTEMPT, TERMINATED_BY, TERMINATED_BY_VALUE,
    TERMINATION_OUTCOME, TERMINATION_REASON, to_chrono,
};

/// Which objects are ours: the label, the namespaces, the annotation prefix.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The job-id label key.
    pub job_id_label: String,
    /// Namespaces never touched.
    pub protected: BTreeSet<String>,
    /// Namespaces watched; empty = all.
    pub namespaces: BTreeSet<String>,
    /// The labelled kinds besides pods that are listed and deleted (`[kubernetes]
    /// clean_kinds`, plural resource names).
    pub clean_kinds: BTreeSet<String>,
    /// Annotation names.
    pub keys: AnnotationKeys,
    /// `<prefix>terminated-by`.
    pub terminated_by: String,
    /// `<prefix>termination-reason`.
    pub termination_reason: String,
    /// `<prefix>termination-outcome`: `failed` on a Job jobwarden failed (dead-job recovery
    /// gave up, startup timeout); absent on a Job it ended for its timeout.
    pub termination_outcome: String,
    /// `<prefix>recovery-attempt`: on a Job jobwarden re-created, which attempt it is.
    pub recovery_attempt: String,
    /// `<prefix>cancel-requested`: when a cancel of the Job was requested.
    pub cancel_requested: String,
}

impl Scope {
    /// From `[kubernetes]` and the annotation prefix.
    pub fn new(k: &KubernetesConfig, annotation_prefix: &str) -> Self {
        Scope {
            job_id_label: k.job_id_label.clone(),
            protected: k.protected(),
            namespaces: k.namespaces.iter().cloned().collect(),
            clean_kinds: k.clean_kinds.iter().cloned().collect(),
            keys: AnnotationKeys::new(annotation_prefix),
            terminated_by: format!("{annotation_prefix}{TERMINATED_BY}"),
            termination_reason: format!("{annotation_prefix}{TERMINATION_REASON}"),
            termination_outcome: format!("{annotation_prefix}{TERMINATION_OUTCOME}"),
            recovery_attempt: format!("{annotation_prefix}{RECOVERY_ATTEMPT}"),
            cancel_requested: format!("{annotation_prefix}{CANCEL_REQUESTED}"),
        }
    }

    /// The namespaces every list and watch is made in: `None` for all (one cluster-wide call),
    /// else each watched namespace.
    pub fn list_namespaces(&self) -> Option<Vec<String>> {
        (!self.namespaces.is_empty()).then(|| self.namespaces.iter().cloned().collect())
    }

    /// Whether labelled objects of `resource` (plural) are listed and deleted: pods always,
    /// the others as `[kubernetes] clean_kinds` says.
    pub fn cleans(&self, resource: &str) -> bool {
        resource == "pods" || self.clean_kinds.contains(resource)
    }

    /// Whether objects in `namespace` may be touched at all.
    pub fn namespace_allowed(&self, namespace: &str) -> bool {
        !self.protected.contains(namespace)
            && (self.namespaces.is_empty() || self.namespaces.contains(namespace))
    }

    /// The job id of an object, if the object is ours: labelled with a valid id and in an
    /// allowed namespace.
    pub fn admit(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<JobId, Ignored> {
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        if namespace.is_empty() {
            return Err(Ignored::NoNamespace);
        }
        if !self.namespace_allowed(namespace) {
            return Err(Ignored::Namespace(namespace.to_owned()));
        }
        let value = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(&self.job_id_label))
            .ok_or(Ignored::NoLabel)?;
        JobId::parse(value).map_err(Ignored::BadLabel)
    }
}

/// Why an object is not ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// No job-id label.
    #[error("it has no job-id label")]
    NoLabel,
    /// The label's value is not a job id.
    #[error("its job-id label is not a job id: {0}")]
    BadLabel(IdError),
    /// Protected or unwatched namespace.
    #[error("namespace {0:?} is protected or not watched")]
    Namespace(String),
    /// No namespace (not a namespaced object as served by the API).
    #[error("it has no namespace")]
    NoNamespace,
    /// No name or UID (not an object as served by the API).
    #[error("it has no name or uid")]
    NoIdentity,
}

/// A Job as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedJob {
    /// The job-id label's value.
    pub id: JobId,
    /// Namespace.
    pub namespace: String,
    /// Job name.
    pub name: String,
    /// Job UID: the run identity (a re-created Job is a new run).
    pub uid: String,
    /// Settings from labels, annotations and `spec.activeDeadlineSeconds`.
    pub settings: JobSettings,
    /// Malformed annotations that were ignored.
    pub warnings: Vec<SettingWarning>,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<Timestamp>,
    /// `status.startTime` (null while suspended or not started).
    pub started_at: Option<Timestamp>,
    /// When its outcome was decided: the earliest of its `FailureTarget` / `Failed` (or
    /// `SuccessCriteriaMet` / `Complete`) conditions.
    pub finished_at: Option<Timestamp>,
    /// Its outcome, once decided (ending or ended).
    pub outcome: Option<Outcome>,
    /// The Job has ended: `Failed` / `Complete`, or its outcome is decided and no pod of it
    /// is left. False while it is ending (decided, pods still terminating) or running.
    pub ended: bool,
    /// The condition's reason and message, for humans.
    pub reason: Option<String>,
    /// jobwarden annotated it as ended by jobwarden.
    pub terminated_by_us: bool,
    /// `spec.suspend`.
    pub suspended: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The pod template's `terminationGracePeriodSeconds` ([`pod_grace`]).
    pub pod_grace: Duration,
    /// What the pods say.
    pub diagnosis: Diagnosis,
    /// The Job as it can be created again ([`job_template`]).
    pub template: serde_json::Value,
    /// When a cancel was requested (`<prefix>cancel-requested`), if it was.
    pub cancel_requested: Option<Timestamp>,
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_POD_GRACE: Duration = Duration::from_secs(30);

/// The pods' own grace: the template's `terminationGracePeriodSeconds`, else Kubernetes'
/// default.
pub fn pod_grace(job: &Job) -> Duration {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|t| t.termination_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_POD_GRACE, Duration::from_secs)
}

/// Deleted pods of this Job stay until their status is Failed (`podReplacementPolicy:
/// Failed`, forced by any `podFailurePolicy`), so a kill must also set that phase.
pub fn replacement_policy_failed(job: &Job) -> bool {
    job.spec.as_ref().is_some_and(|s| {
        s.pod_replacement_policy.as_deref() == Some("Failed") || s.pod_failure_policy.is_some()
    })
}

/// A Job's settings as jobwarden reads them, from its annotations and labels
/// ([`settings_from_annotations`]) and its `spec.activeDeadlineSeconds` (a job override: the
/// smaller of it and the timeout annotation wins in [`crate::policy::resolve`]). The one
/// reading shared by the controller ([`observe_job`]) and admission
/// ([`super::admission`]), which reads a CronJob's `jobTemplate` the same way. `who` names the
/// Job in warnings.
pub fn job_settings(
    who: &str,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    active_deadline_seconds: Option<i64>,
    keys: &AnnotationKeys,
) -> (JobSettings, Vec<SettingWarning>) {
    let (mut settings, warnings) = settings_from_annotations(who, annotations, labels, keys);
    settings.active_deadline = active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    (settings, warnings)
}

/// Reads a Job and its pods. `pods` may include other Jobs' pods: only those controlled by
/// this Job's UID are looked at.
pub fn observe_job(job: &Job, pods: &[Pod], scope: &Scope) -> Result<ObservedJob, Ignored> {
    let meta = &job.metadata;
    let id = scope.admit(meta)?;
    let (Some(name), Some(uid)) = (meta.name.clone(), meta.uid.clone()) else {
        return Err(Ignored::NoIdentity);
    };
    let namespace = meta.namespace.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let who = format!("{id} ({namespace}/{name})");
    let spec = job.spec.as_ref();
    let (settings, mut warnings) = job_settings(
        &who,
        annotations,
        labels,
        spec.and_then(|s| s.active_deadline_seconds),
        &scope.keys,
    );
    let cancel_requested = annotations.get(&scope.cancel_requested).and_then(|v| {
        let at = v.parse::<Timestamp>().ok();
        if at.is_none() {
            warnings.push(SettingWarning {
                job: who.clone(),
                key: scope.cancel_requested.clone(),
                value: v.clone(),
                problem: "not an RFC 3339 time (e.g. 2026-12-07T10:00:00Z)".to_owned(),
                fallback: "no cancel requested".to_owned(),
            });
        }
        at
    });
    let terminated_by_us =
        annotations.get(&scope.terminated_by).map(String::as_str) == Some(TERMINATED_BY_VALUE);
    let status = job.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let (outcome, finished_at, reason) = match finish(conditions) {
        Some(Finish {
            succeeded,
            at,
            reason,
            ..
        }) => {
            let failed_by_us = terminated_by_us
                && annotations
                    .get(&scope.termination_outcome)
                    .map(String::as_str)
                    == Some(Outcome::Failed.as_str());
            let outcome = if succeeded {
                Outcome::Succeeded
            } else if failed_by_us {
                Outcome::Failed
            } else if terminated_by_us {
                Outcome::Terminated
            } else {
                Outcome::Failed
            };
            let at = at.or_else(|| {
                status
                    .and_then(|s| s.completion_time.clone())
                    .map(|t| to_chrono(t.0))
            });
            let reason = if terminated_by_us {
                annotations
                    .get(&scope.termination_reason)
                    .cloned()
                    .or(reason)
            } else {
                reason
            };
            (Some(outcome), at, reason)
        }
        None => (None, None, None),
    };
    let pod_grace = pod_grace(job);
    let own: Vec<&Pod> = pods.iter().filter(|p| controlled_by(p, &uid)).collect();
    let ended = match finish(conditions) {
        Some(f) if f.terminal => true,
        // Decided: ended once no pod is left, by our pods and by the Job controller's counts
        // (which see pods whose template lacks our label).
        Some(_) => {
            let counted = status.map_or(0, |s| {
                s.active.unwrap_or(0).max(0) + s.terminating.unwrap_or(0).max(0)
            });
            counted == 0 && own.iter().all(|p| pod_is_terminal(p))
        }
        None => false,
    };
    let started_at = status
        .and_then(|s| s.start_time.clone())
        .map(|t| to_chrono(t.0));
    // "No pods" only when the Job controller agrees (`status.active` is 0): a Job whose pod
    // template lacks the job-id label has pods we do not watch, and is not recreated for it.
    let none_active = status.and_then(|s| s.active).unwrap_or(0) == 0;
    let diagnosis = if outcome.is_none() {
        diagnose(&own, started_at.is_some() && none_active)
    } else {
        Diagnosis::Healthy
    };
    Ok(ObservedJob {
        id,
        namespace,
        name,
        uid,
        settings,
        warnings,
        created_at: meta.creation_timestamp.clone().map(|t| to_chrono(t.0)),
        started_at,
        finished_at,
        outcome,
        reason,
        ended,
        terminated_by_us,
        suspended: spec.and_then(|s| s.suspend).unwrap_or(false),
        deleting: meta.deletion_timestamp.is_some(),
        pod_grace,
        diagnosis,
        template: job_template(job, scope),
        cancel_requested,
    })
}

/// What the Job's conditions say about its end.
struct Finish {
    /// `Complete` / `SuccessCriteriaMet` rather than `Failed` / `FailureTarget`.
    succeeded: bool,
    /// `Failed` / `Complete`: the Job has ended. Otherwise only its outcome is decided.
    terminal: bool,
    /// The earliest of the matching conditions' transition times.
    at: Option<Timestamp>,
    /// "Reason: message" of that condition.
    reason: Option<String>,
}

/// The Job's end from its conditions, once its outcome is decided. `FailureTarget` /
/// `SuccessCriteriaMet` decide it (and date it: the Job controller's `Failed` / `Complete`
/// wait for every pod to go); only `Failed` / `Complete` are terminal.
fn finish(conditions: &[JobCondition]) -> Option<Finish> {
    let find = |types: &[&str]| {
        conditions
            .iter()
            .filter(|c| c.status == "True" && types.contains(&c.type_.as_str()))
            .min_by_key(|c| c.last_transition_time.clone())
    };
    let (succeeded, c) = if let Some(c) = find(&["FailureTarget", "Failed"]) {
        (false, c)
    } else {
        (true, find(&["SuccessCriteriaMet", "Complete"])?)
    };
    let reason = match (c.reason.as_deref(), c.message.as_deref()) {
        (Some(r), Some(m)) if !m.is_empty() => Some(format!("{r}: {m}")),
        (Some(r), _) => Some(r.to_owned()),
        (None, Some(m)) => Some(m.to_owned()),
        (None, None) => None,
    };
    let terminal_type = if succeeded { "Complete" } else { "Failed" };
    Some(Finish {
        succeeded,
        terminal: find(&[terminal_type]).is_some(),
        at: c.last_transition_time.clone().map(|t| to_chrono(t.0)),
        reason,
    })
}

/// Whether `pod` is controlled by the Job with this UID.
pub fn controlled_by(pod: &Pod, job_uid: &str) -> bool {
    pod.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.kind == "Job" && r.uid == job_uid)
    })
}

/// Whether a pod has finished (its phase is terminal).
pub fn pod_is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod whose deletion is due (its `deletionTimestamp`, i.e. deletion time + grace, has
/// passed) but which is still there: no kubelet is finishing it.
pub fn pod_is_stuck_terminating(pod: &Pod, now: Timestamp) -> bool {
    pod.metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|t| to_chrono(t.0) <= now)
}

/// What the pods of an unfinished Job say. Image errors win over crash loops, which win over
/// scheduling problems; a started Job without pods is `NoPods`.
pub fn diagnose(pods: &[&Pod], started: bool) -> Diagnosis {
    let mut crash: Option<u32> = None;
    let mut unschedulable: Option<String> = None;
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for cs in statuses {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            match waiting.and_then(|w| w.reason.as_deref()) {
                Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName") => {
                    return Diagnosis::ImagePull {
                        image: cs.image.clone(),
                        message: waiting.and_then(|w| w.message.clone()).unwrap_or_default(),
                    };
                }
                Some("CrashLoopBackOff") => {
                    let r = u32::try_from(cs.restart_count).unwrap_or(0);
                    crash = Some(crash.map_or(r, |c| c.max(r)));
                }
                _ => {}
            }
        }
        if let Some(c) = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        }) {
            unschedulable.get_or_insert_with(|| c.message.clone().unwrap_or_default());
        }
    }
    if let Some(restarts) = crash {
        Diagnosis::CrashLoop { restarts }
    } else if let Some(message) = unschedulable {
        Diagnosis::Unschedulable { message }
    } else if started && pods.is_empty() {
        Diagnosis::NoPods
    } else {
        Diagnosis::Healthy
    }
}

/// The stored record for an observed Job: `previous` (the store's row for this job id, if
/// any) merged with what the cluster shows, the policy resolved anew.
///
/// Within one run (same UID) the steps taken, heartbeats and recovery attempts are kept; a
/// different UID is a new run and starts with no steps. Once soft_kill was taken (or the Job
/// carries our terminated-by annotation) the timeout and deadline are frozen: the
/// `activeDeadlineSeconds` jobwarden patched in is not a new job override.
///
/// A Job whose outcome is decided but which has not ended keeps that outcome with no finish
/// time, in stage `terminating` (jobwarden ended it) or `completing` (it ended on its own):
/// both active, so the ladder goes on until no pod is left.
pub fn to_record(
    obs: &ObservedJob,
    previous: Option<&JobRecord>,
    policy: &PolicyConfig,
    now: Timestamp,
) -> JobRecord {
    let resolved = resolve(&obs.settings, policy);
    let same_run = previous.filter(|p| p.run_id == obs.uid);
    let steps = same_run.map(|p| p.steps.clone()).unwrap_or_default();
    // Ending by our hand: soft-killed, patched, or marked failed (recorded before the patch).
    let soft_killed = steps.iter().any(|s| s.step == Step::SoftKill)
        || obs.terminated_by_us
        || same_run.is_some_and(|p| !p.dry_run && p.spec.get(MARKED_FAILED).is_some());
    let (timeout, frozen_deadline) = match same_run {
        Some(p) if soft_killed => (p.timeout, p.deadline),
        _ => (resolved.timeout, None),
    };
    let deadline = frozen_deadline.or_else(|| {
        obs.started_at
            .map(|s| crate::engine::plan::deadline(s, timeout))
    });
    let stage = match (obs.outcome, same_run.map(|p| p.stage)) {
        (_, Some(s @ (Stage::Cleanup | Stage::Cleaned))) => s,
        (Some(o), _) if obs.ended => stage_after(o),
        _ if soft_killed => Stage::Terminating,
        // Decided by the Job controller, pods still terminating: ending, not ended.
        (Some(_), _) => Stage::Completing,
        (None, _) if obs.started_at.is_some() => Stage::Running,
        (None, _) => Stage::PreStart,
    };
    let created_at = previous
        .map(|p| p.created_at)
        .or(obs.created_at)
        .unwrap_or(now);
    JobRecord {
        attempt: previous.map_or(0, |p| p.attempt),
        namespace: Some(obs.namespace.clone()),
        org: obs.settings.org.clone(),
        job_type: obs.settings.job_type.clone(),
        stage,
        outcome: obs.outcome,
        reason: obs.reason.clone(),
        started_at: obs.started_at,
        // Finished only once ended: while its pods terminate the ladder goes on.
        finished_at: obs.finished_at.filter(|_| obs.ended),
        timeout,
        grace: resolved.grace,
        ttl: resolved.ttl,
        deadline,
        steps,
        heartbeat_timeout: resolved.heartbeat_timeout,
        last_heartbeat: same_run.and_then(|p| p.last_heartbeat),
        recovery_attempts: previous.map_or(0, |p| p.recovery_attempts),
        spec: run_spec(obs, previous, same_run, &resolved, soft_killed),
        dry_run: previous.is_some_and(|p| p.dry_run),
        ..JobRecord::new(
            obs.id.clone(),
            obs.uid.clone(),
            RuntimeKind::Kubernetes,
            obs.name.clone(),
            created_at,
        )
    }
}

/// `JobRecord.spec` key of the Job to re-create a run from ([`job_template`]).
pub const JOB_TEMPLATE: &str = "job";
pub use crate::executor::{ACTING, MARKED_FAILED, RECOVERING};
/// `JobRecord.spec` key: since when the run's Job has had no pods (`reconcile.rs`).
pub const NO_PODS_SINCE: &str = "no_pods_since";
pub use crate::engine::plan::CANCEL_REQUESTED as CANCEL_REQUESTED_SPEC;
/// `JobRecord.spec` key on the record `POST /v1/jobs` stored for a Job it created, until the
/// reconciler's first sighting replaces it (which treats the run as new: its warnings).
pub const SUBMITTED: &str = "submitted";
/// `JobRecord.spec` key of the UIDs of runs dead-job recovery replaced.
pub const SUPERSEDED: &str = "superseded";

/// `JobRecord.spec` of a Kubernetes job: where the current run lives (`namespace`, `name`,
/// `uid`); the Job to re-create it from (`job`: kept from the run's first sighting, so our own
/// patches never enter it); the reconciler's markers for the run (`recovering`,
/// `marked_failed`, `no_pods_since`, `acting`: kept within the run; see `reconcile.rs`); and the UIDs
/// of runs dead-job recovery replaced (`superseded`: kept across runs, so a late copy of an
/// old Job is never taken for a new run).
fn run_spec(
    obs: &ObservedJob,
    previous: Option<&JobRecord>,
    same_run: Option<&JobRecord>,
    resolved: &crate::policy::Resolved,
    soft_killed: bool,
) -> serde_json::Value {
    use crate::policy::Resolution;
    let mut spec = serde_json::json!({
        "namespace": obs.namespace,
        "name": obs.name,
        "uid": obs.uid,
        JOB_TEMPLATE: obs.template,
        Resolution::KEY: Resolution::of(resolved).to_json(),
    });
    // Frozen with the timeout once jobwarden ended the run: the activeDeadlineSeconds it
    // patched in is no job override.
    if soft_killed && let Some(v) = same_run.and_then(|p| p.spec.get(Resolution::KEY)) {
        spec[Resolution::KEY] = v.clone();
    }
    if let Some(p) = same_run {
        for key in [
            JOB_TEMPLATE,
            RECOVERING,
            MARKED_FAILED,
            NO_PODS_SINCE,
            ACTING,
        ] {
            if let Some(v) = p.spec.get(key) {
                spec[key] = v.clone();
            }
        }
    }
    if let Some(v) = previous.and_then(|p| p.spec.get(SUPERSEDED)) {
        spec[SUPERSEDED] = v.clone();
    }
    if let Some(at) = obs.cancel_requested {
        spec[CANCEL_REQUESTED_SPEC] = serde_json::json!(crate::model::fmt_ts(at));
    }
    spec
}

/// Labels the Job controller adds to a Job's selector and pod template; a new Job gets its own.
const CONTROLLER_LABELS: [&str; 4] = [
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    "controller-uid",
    "job-name",
];

/// The Job as it can be created again: apiVersion, kind, name, namespace, labels,
/// annotations and spec, without what the API server and the Job controller filled in
/// (uid, resourceVersion, status, the generated selector and its template labels) and
/// without jobwarden's own annotations. Null when the Job does not serialize (never, for a
/// Job the API server served).
pub fn job_template(job: &Job, scope: &Scope) -> serde_json::Value {
    let meta = &job.metadata;
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    for key in [
        &scope.terminated_by,
        &scope.termination_reason,
        &scope.termination_outcome,
        &scope.recovery_attempt,
        &scope.cancel_requested,
    ] {
        annotations.remove(key);
    }
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let mut spec = job.spec.clone().unwrap_or_default();
    if spec.manual_selector != Some(true) {
        spec.selector = None;
        if let Some(labels) = spec
            .template
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
        {
            for l in CONTROLLER_LABELS {
                labels.remove(l);
            }
        }
    }
    let template = Job {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    serde_json::to_value(&template).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
