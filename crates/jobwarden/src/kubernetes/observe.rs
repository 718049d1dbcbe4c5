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
use crate::model::{IdError, JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, Timestamp, add};
use crate::policy::{
    AnnotationKeys, JobSettings, SettingWarning, resolve, settings_from_annotations,
};

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
}

impl Scope {
    /// From `[kubernetes]` and the annotation prefix.
    pub fn new(k: &KubernetesConfig, annotation_prefix: &str) -> Self {
        Scope {
            job_id_label: k.job_id_label.clone(),
            protected: k.protected(),
            namespaces: k.namespaces.iter().cloned().collect(),
            keys: AnnotationKeys::new(annotation_prefix),
            terminated_by: format!("{annotation_prefix}{TERMINATED_BY}"),
            termination_reason: format!("{annotation_prefix}{TERMINATION_REASON}"),
            termination_outcome: format!("{annotation_prefix}{TERMINATION_OUTCOME}"),
            recovery_attempt: format!("{annotation_prefix}{RECOVERY_ATTEMPT}"),
        }
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
    /// The pod template's `terminationGracePeriodSeconds` (Kubernetes' default: 30 s).
    pub pod_grace: Duration,
    /// Deleted pods stay until their status is Failed (`podReplacementPolicy: Failed`,
    /// forced by any `podFailurePolicy`).
    pub replacement_policy_failed: bool,
    /// What the pods say.
    pub diagnosis: Diagnosis,
    /// The Job as it can be created again ([`job_template`]).
    pub template: serde_json::Value,
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_POD_GRACE: Duration = Duration::from_secs(30);

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
    let (mut settings, warnings) =
        settings_from_annotations(&who, annotations, labels, &scope.keys);
    let spec = job.spec.as_ref();
    settings.active_deadline = spec
        .and_then(|s| s.active_deadline_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
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
    let template = spec.and_then(|s| s.template.spec.as_ref());
    let pod_grace = template
        .and_then(|t| t.termination_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_POD_GRACE, Duration::from_secs);
    let replacement_policy_failed = spec.is_some_and(|s| {
        s.pod_replacement_policy.as_deref() == Some("Failed") || s.pod_failure_policy.is_some()
    });
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
        replacement_policy_failed,
        diagnosis,
        template: job_template(job, scope),
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
    let deadline = frozen_deadline.or_else(|| obs.started_at.map(|s| add(s, timeout)));
    let stage = match (obs.outcome, same_run.map(|p| p.stage)) {
        (_, Some(s @ (Stage::Cleanup | Stage::Cleaned))) => s,
        (Some(o), _) if obs.ended => stage_after(o),
        _ if soft_killed => Stage::Terminating,
        // Decided by the Job controller, pods still terminating: ending, not ended.
        (Some(_), _) => Stage::Completing,
        (None, _) if obs.started_at.is_some() => Stage::Running,
        (None, _) => Stage::PreStart,
    };
    JobRecord {
        id: obs.id.clone(),
        run_id: obs.uid.clone(),
        attempt: previous.map_or(0, |p| p.attempt),
        runtime: RuntimeKind::Kubernetes,
        namespace: Some(obs.namespace.clone()),
        name: obs.name.clone(),
        org: obs.settings.org.clone(),
        job_type: obs.settings.job_type.clone(),
        stage,
        outcome: obs.outcome,
        reason: obs.reason.clone(),
        created_at: previous
            .map(|p| p.created_at)
            .or(obs.created_at)
            .unwrap_or(now),
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
        pid: None,
        pid_start_ticks: None,
        exit_code: None,
        signal: None,
        spec: run_spec(obs, previous, same_run),
        dry_run: previous.is_some_and(|p| p.dry_run),
    }
}

/// `JobRecord.spec` key of the Job to re-create a run from ([`job_template`]).
pub const JOB_TEMPLATE: &str = "job";
pub use crate::executor::{ACTING, MARKED_FAILED, RECOVERING};
/// `JobRecord.spec` key: since when the run's Job has had no pods (`reconcile.rs`).
pub const NO_PODS_SINCE: &str = "no_pods_since";
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
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "namespace": obs.namespace,
        "name": obs.name,
        "uid": obs.uid,
        JOB_TEMPLATE: obs.template,
    });
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
mod tests {
    use super::*;
    use crate::model::StepTaken;

    /// A Job as a 1.36 API server serves it while running (from `kubectl get job -o json`).
    const RUNNING: &str = r#"{
      "apiVersion": "batch/v1", "kind": "Job",
      "metadata": {
        "name": "build-42", "namespace": "flowforge", "uid": "6f1c1d0e-5b8e-4a4e-9a51-0d0c2b1e7a10",
        "resourceVersion": "4711", "generation": 1, "creationTimestamp": "2026-11-28T10:00:00Z",
        "labels": {"job-id": "j-42", "flowforge.io/organization-id": "acme"},
        "annotations": {"flowforge.io/timeout-seconds": "2h", "flowforge.io/job-type": "build",
                        "flowforge.io/grace-period-seconds": "45", "flowforge.io/ttl-seconds-after-finished": "oops"}
      },
      "spec": {
        "parallelism": 1, "completions": 1, "activeDeadlineSeconds": 3600, "backoffLimit": 0,
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "6f1c1d0e-5b8e-4a4e-9a51-0d0c2b1e7a10"}},
        "manualSelector": false, "podReplacementPolicy": "TerminatingOrFailed", "completionMode": "NonIndexed", "suspend": false,
        "template": {
          "metadata": {"labels": {"job-id": "j-42", "batch.kubernetes.io/job-name": "build-42"}},
          "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 120,
                   "containers": [{"name": "main", "image": "ghcr.io/flowforge/runner:1", "resources": {}}]}
        }
      },
      "status": {"startTime": "2026-11-28T10:00:01Z", "active": 1, "ready": 1, "terminating": 0,
                 "uncountedTerminatedPods": {}}
    }"#;

    fn job(text: &str) -> Job {
        serde_json::from_str(text).expect("job json")
    }

    fn with(text: &str, f: impl FnOnce(&mut serde_json::Value)) -> Job {
        let mut v: serde_json::Value = serde_json::from_str(text).expect("json");
        f(&mut v);
        serde_json::from_value(v).expect("job json")
    }

    fn scope() -> Scope {
        Scope::new(&KubernetesConfig::default(), "flowforge.io/")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn pod(status: serde_json::Value, owner: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "build-42-x7k2p", "namespace": "flowforge", "uid": "p-1",
                "labels": {"job-id": "j-42", "batch.kubernetes.io/job-name": "build-42",
                           "batch.kubernetes.io/controller-uid": owner},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "build-42",
                    "uid": owner, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "main", "image": "ghcr.io/flowforge/runner:1"}]},
            "status": status
        }))
        .expect("pod json")
    }

    const UID: &str = "6f1c1d0e-5b8e-4a4e-9a51-0d0c2b1e7a10";

    #[test]
    fn a_running_job_maps_identity_settings_and_start() {
        let o = observe_job(&job(RUNNING), &[], &scope()).expect("ours");
        assert_eq!(o.id.as_str(), "j-42");
        assert_eq!(
            (o.namespace.as_str(), o.name.as_str(), o.uid.as_str()),
            ("flowforge", "build-42", UID)
        );
        assert_eq!(
            o.settings.org.as_deref(),
            Some("acme"),
            "org from the label"
        );
        assert_eq!(
            o.settings.job_type.as_deref(),
            Some("build"),
            "type from the annotation"
        );
        assert_eq!(o.settings.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(o.settings.active_deadline, Some(Duration::from_secs(3600)));
        assert_eq!(o.settings.grace, Some(Duration::from_secs(45)));
        assert_eq!(o.settings.ttl, None, "malformed ttl dropped");
        assert_eq!(o.warnings.len(), 1);
        assert!(
            o.warnings[0]
                .to_string()
                .contains("flowforge.io/ttl-seconds-after-finished")
        );
        assert!(o.warnings[0].to_string().contains("\"oops\""));
        assert_eq!(o.started_at, Some(ts("2026-11-28T10:00:01Z")));
        assert_eq!(o.pod_grace, Duration::from_secs(120));
        assert_eq!((o.outcome, o.finished_at), (None, None));
        assert!(!o.replacement_policy_failed && !o.terminated_by_us && !o.suspended);
        // The Job controller counts an active pod that is not among those listed (a
        // template without the job-id label): not "no pods", never re-created for it.
        assert_eq!(o.diagnosis, Diagnosis::Healthy);
        // The Job controller counts none either: no pods.
        let none = with(RUNNING, |v| v["status"]["active"] = 0.into());
        let o = observe_job(&none, &[], &scope()).expect("ours");
        assert_eq!(o.diagnosis, Diagnosis::NoPods);
    }

    #[test]
    fn unlabelled_protected_and_unwatched_jobs_are_ignored() {
        let s = scope();
        let unlabelled = with(RUNNING, |v| {
            v["metadata"]["labels"] = serde_json::json!({"app": "x"})
        });
        assert_eq!(observe_job(&unlabelled, &[], &s), Err(Ignored::NoLabel));
        let bad = with(RUNNING, |v| {
            v["metadata"]["labels"]["job-id"] = "a/../b".into()
        });
        assert!(matches!(
            observe_job(&bad, &[], &s),
            Err(Ignored::BadLabel(_))
        ));
        for ns in ["kube-system", "kube-public", "kube-node-lease"] {
            let j = with(RUNNING, |v| v["metadata"]["namespace"] = ns.into());
            assert_eq!(observe_job(&j, &[], &s), Err(Ignored::Namespace(ns.into())));
        }
        let cfg = KubernetesConfig {
            namespaces: vec!["other".into()],
            ..KubernetesConfig::default()
        };
        let only_other = Scope::new(&cfg, "flowforge.io/");
        assert!(matches!(
            observe_job(&job(RUNNING), &[], &only_other),
            Err(Ignored::Namespace(_))
        ));
        let custom = {
            let c = KubernetesConfig {
                job_id_label: "flowforge.io/job-id".into(),
                ..KubernetesConfig::default()
            };
            Scope::new(&c, "flowforge.io/")
        };
        assert_eq!(
            observe_job(&job(RUNNING), &[], &custom),
            Err(Ignored::NoLabel)
        );
    }

    #[test]
    fn conditions_give_outcome_and_finish_time() {
        let s = scope();
        // The Job controller's view right after the deadline: FailureTarget first, Failed later.
        let failure_target = with(RUNNING, |v| {
            v["status"]["conditions"] = serde_json::json!([{
                "type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
                "lastProbeTime": "2026-11-28T11:00:01Z", "lastTransitionTime": "2026-11-28T11:00:01Z"}]);
        });
        let o = observe_job(&failure_target, &[], &s).expect("ours");
        assert_eq!(o.outcome, Some(Outcome::Failed));
        assert_eq!(o.finished_at, Some(ts("2026-11-28T11:00:01Z")));
        assert_eq!(
            o.reason.as_deref(),
            Some("DeadlineExceeded: Job was active longer than specified deadline")
        );
        assert_eq!(
            o.diagnosis,
            Diagnosis::Healthy,
            "finished jobs are not diagnosed"
        );

        let failed_later = with(RUNNING, |v| {
            v["status"]["conditions"] = serde_json::json!([
                {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "message": "m",
                 "lastProbeTime": "2026-11-28T11:00:01Z", "lastTransitionTime": "2026-11-28T11:00:01Z"},
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "m",
                 "lastProbeTime": "2026-11-28T11:00:41Z", "lastTransitionTime": "2026-11-28T11:00:41Z"}]);
            v["status"]["failed"] = 1.into();
        });
        let o = observe_job(&failed_later, &[], &s).expect("ours");
        assert_eq!(
            o.finished_at,
            Some(ts("2026-11-28T11:00:01Z")),
            "the earlier FailureTarget counts"
        );

        let complete = with(RUNNING, |v| {
            v["status"]["conditions"] = serde_json::json!([
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": "2026-11-28T10:30:00Z", "lastTransitionTime": "2026-11-28T10:30:00Z"},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": "2026-11-28T10:30:01Z", "lastTransitionTime": "2026-11-28T10:30:01Z"}]);
            v["status"]["completionTime"] = "2026-11-28T10:30:01Z".into();
            v["status"]["succeeded"] = 1.into();
        });
        let o = observe_job(&complete, &[], &s).expect("ours");
        assert_eq!(o.outcome, Some(Outcome::Succeeded));
        assert_eq!(o.finished_at, Some(ts("2026-11-28T10:30:00Z")));

        let suspended = with(RUNNING, |v| {
            v["spec"]["suspend"] = true.into();
            v["status"]["startTime"] = serde_json::Value::Null;
            v["status"]["conditions"] = serde_json::json!([{"type": "Suspended", "status": "True",
                "reason": "JobSuspended", "message": "Job suspended",
                "lastProbeTime": "2026-11-28T10:10:00Z", "lastTransitionTime": "2026-11-28T10:10:00Z"}]);
        });
        let o = observe_job(&suspended, &[], &s).expect("ours");
        assert!(o.suspended);
        assert_eq!((o.started_at, o.outcome), (None, None));
        let false_condition = with(RUNNING, |v| {
            v["status"]["conditions"] = serde_json::json!([{"type": "Failed", "status": "False",
                "lastProbeTime": "2026-11-28T10:10:00Z", "lastTransitionTime": "2026-11-28T10:10:00Z"}]);
        });
        assert_eq!(
            observe_job(&false_condition, &[], &s)
                .expect("ours")
                .outcome,
            None
        );
    }

    /// KUBERNETES.md §1: `FailureTarget` at once, `Failed` only once no pod is terminating; a
    /// pod on a node whose kubelet is gone stays Terminating for ever.
    #[test]
    fn failure_target_with_pods_left_is_ending_not_ended() {
        let s = scope();
        let target = serde_json::json!([{"type": "FailureTarget", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline",
            "lastProbeTime": "2026-11-28T11:00:01Z", "lastTransitionTime": "2026-11-28T11:00:01Z"}]);
        let ours = |v: &mut serde_json::Value| {
            v["metadata"]["annotations"]["flowforge.io/terminated-by"] = "jobwarden".into();
            v["spec"]["activeDeadlineSeconds"] = 1.into();
        };
        // Decided, its pod deleted but still there (the Job controller counts it terminating).
        let ending = with(RUNNING, |v| {
            ours(v);
            v["status"]["conditions"] = target.clone();
            v["status"]["active"] = 0.into();
            v["status"]["terminating"] = 1.into();
        });
        let mut stuck = pod(serde_json::json!({"phase": "Running"}), UID);
        stuck.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                super::super::to_jiff(ts("2026-11-28T11:00:31Z")),
            ));
        let o = observe_job(&ending, std::slice::from_ref(&stuck), &s).expect("ours");
        assert_eq!(o.outcome, Some(Outcome::Terminated), "decided");
        assert!(!o.ended, "its pod is still terminating");
        let policy = PolicyConfig::default();
        let now = ts("2026-11-28T11:01:00Z");
        let r = to_record(&o, None, &policy, now);
        assert_eq!((r.stage, r.finished_at), (Stage::Terminating, None));
        assert_eq!(r.outcome, Some(Outcome::Terminated));
        // Our pods say none is left, but the Job controller still counts one (a pod whose
        // template lacks our label): still ending.
        let o = observe_job(&ending, &[], &s).expect("ours");
        assert!(!o.ended);
        // No pod left by either count: ended, finished when the outcome was decided.
        let gone = with(RUNNING, |v| {
            ours(v);
            v["status"]["conditions"] = target.clone();
            v["status"]
                .as_object_mut()
                .expect("status")
                .remove("active");
            v["status"]["terminating"] = 0.into();
        });
        let o = observe_job(&gone, &[], &s).expect("ours");
        assert!(o.ended);
        let r = to_record(&o, None, &policy, now);
        assert_eq!(
            (r.stage, r.finished_at),
            (Stage::Failed, Some(ts("2026-11-28T11:00:01Z")))
        );
        // A terminal pod is not left.
        let mut done = stuck.clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(observe_job(&gone, &[done], &s).expect("ours").ended);
        // `Failed` is the end whatever the pods.
        let failed = with(RUNNING, |v| {
            ours(v);
            let mut cs = target.clone();
            cs.as_array_mut().expect("array").push(serde_json::json!({"type": "Failed",
                "status": "True", "reason": "DeadlineExceeded", "message": "m",
                "lastProbeTime": "2026-11-28T11:00:40Z", "lastTransitionTime": "2026-11-28T11:00:40Z"}));
            v["status"]["conditions"] = cs;
        });
        assert!(
            observe_job(&failed, &[stuck.clone()], &s)
                .expect("ours")
                .ended
        );

        // Failing on its own (not ours), pods still terminating: completing, active.
        let own_failure = with(RUNNING, |v| {
            v["status"]["conditions"] = serde_json::json!([{"type": "FailureTarget",
                "status": "True", "reason": "BackoffLimitExceeded", "message": "m",
                "lastProbeTime": "2026-11-28T10:40:00Z", "lastTransitionTime": "2026-11-28T10:40:00Z"}]);
            v["status"]["active"] = 0.into();
            v["status"]["terminating"] = 1.into();
        });
        let o = observe_job(&own_failure, &[stuck], &s).expect("ours");
        let r = to_record(&o, None, &policy, now);
        assert_eq!(
            (r.stage, r.outcome, r.finished_at),
            (Stage::Completing, Some(Outcome::Failed), None)
        );
        assert!(r.stage.is_active());
    }

    #[test]
    fn our_annotation_makes_a_failure_terminated() {
        let j = with(RUNNING, |v| {
            v["metadata"]["annotations"]["flowforge.io/terminated-by"] = "jobwarden".into();
            v["metadata"]["annotations"]["flowforge.io/termination-reason"] =
                "timeout 2h exceeded".into();
            v["spec"]["activeDeadlineSeconds"] = 1.into();
            v["status"]["conditions"] = serde_json::json!([{"type": "FailureTarget", "status": "True",
                "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline",
                "lastProbeTime": "2026-11-28T11:00:01Z", "lastTransitionTime": "2026-11-28T11:00:01Z"}]);
        });
        let o = observe_job(&j, &[], &scope()).expect("ours");
        assert!(o.terminated_by_us);
        assert_eq!(o.outcome, Some(Outcome::Terminated));
        assert_eq!(o.reason.as_deref(), Some("timeout 2h exceeded"));
    }

    #[test]
    fn pods_are_diagnosed_and_other_jobs_pods_ignored() {
        let s = scope();
        let image = pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "main", "image": "ghcr.io/flowforge/runner:nope", "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/flowforge/runner:nope\""}}}]}),
            UID,
        );
        let o = observe_job(&job(RUNNING), std::slice::from_ref(&image), &s).expect("ours");
        assert!(
            matches!(&o.diagnosis, Diagnosis::ImagePull { image, .. } if image == "ghcr.io/flowforge/runner:nope")
        );
        let foreign = pod(
            image
                .status
                .clone()
                .map(|s| serde_json::to_value(s).expect("v"))
                .unwrap_or_default(),
            "other-uid",
        );
        let none_active = with(RUNNING, |v| v["status"]["active"] = 0.into());
        let o = observe_job(&none_active, &[foreign], &s).expect("ours");
        assert_eq!(
            o.diagnosis,
            Diagnosis::NoPods,
            "another Job's pod is not ours"
        );

        let crash = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "main", "image": "ghcr.io/flowforge/runner:1", "imageID": "x", "ready": false,
            "restartCount": 6, "started": false,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "startedAt": "2026-11-28T10:20:00Z", "finishedAt": "2026-11-28T10:20:01Z"}}}]}),
            UID,
        );
        let o = observe_job(&job(RUNNING), &[crash], &s).expect("ours");
        assert_eq!(o.diagnosis, Diagnosis::CrashLoop { restarts: 6 });

        let pending = pod(
            serde_json::json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu.",
            "lastProbeTime": null, "lastTransitionTime": "2026-11-28T10:00:02Z"}]}),
            UID,
        );
        let o = observe_job(&job(RUNNING), &[pending], &s).expect("ours");
        assert_eq!(
            o.diagnosis,
            Diagnosis::Unschedulable {
                message: "0/3 nodes are available: 3 Insufficient cpu.".into()
            }
        );

        let fine = pod(serde_json::json!({"phase": "Running"}), UID);
        assert_eq!(
            observe_job(&job(RUNNING), &[fine], &s)
                .expect("ours")
                .diagnosis,
            Diagnosis::Healthy
        );
    }

    #[test]
    fn stuck_terminating_means_deletion_time_passed() {
        let mut p = pod(serde_json::json!({"phase": "Running"}), UID);
        let now = ts("2026-11-28T11:00:00Z");
        assert!(!pod_is_stuck_terminating(&p, now));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            super::super::to_jiff(ts("2026-11-28T11:00:30Z")),
        ));
        assert!(!pod_is_stuck_terminating(&p, now), "still within its grace");
        assert!(pod_is_stuck_terminating(&p, ts("2026-11-28T11:00:30Z")));
    }

    #[test]
    fn records_resolve_policy_and_keep_steps_within_a_run() {
        let mut policy = PolicyConfig::default();
        policy
            .organization_max
            .insert("acme".into(), crate::duration::Dur::secs(1800));
        let now = ts("2026-11-28T10:05:00Z");
        let o = observe_job(&job(RUNNING), &[], &scope()).expect("ours");
        let r = to_record(&o, None, &policy, now);
        // min(annotation 2h, activeDeadlineSeconds 1h) = 1h, capped by acme's 30m.
        assert_eq!(r.timeout, Duration::from_secs(1800));
        assert_eq!(r.deadline, Some(ts("2026-11-28T10:30:01Z")));
        assert_eq!(r.grace, Duration::from_secs(45));
        assert_eq!(
            (r.stage, r.runtime, r.run_id.as_str()),
            (Stage::Running, RuntimeKind::Kubernetes, UID)
        );
        assert_eq!(r.created_at, ts("2026-11-28T10:00:00Z"));

        // jobwarden soft-killed it: ads is now 1 and the annotation is set; deadline frozen.
        let mut prev = r.clone();
        prev.steps.push(StepTaken {
            step: Step::SoftKill,
            due_at: ts("2026-11-28T10:30:01Z"),
            at: ts("2026-11-28T10:30:01Z"),
        });
        let killed = with(RUNNING, |v| {
            v["metadata"]["annotations"]["flowforge.io/terminated-by"] = "jobwarden".into();
            v["spec"]["activeDeadlineSeconds"] = 1.into();
        });
        let o2 = observe_job(&killed, &[], &scope()).expect("ours");
        let r2 = to_record(&o2, Some(&prev), &policy, now);
        assert_eq!(r2.deadline, prev.deadline);
        assert_eq!(r2.stage, Stage::Terminating);
        assert_eq!(r2.steps.len(), 1);

        // Re-created under the same job id: a new run, no steps, deadline from its own start.
        let recreated = with(RUNNING, |v| {
            v["metadata"]["uid"] = "new-uid".into();
            v["status"]["startTime"] = "2026-11-28T12:00:00Z".into();
        });
        let o3 = observe_job(&recreated, &[], &scope()).expect("ours");
        let r3 = to_record(&o3, Some(&r2), &policy, now);
        assert!(r3.steps.is_empty());
        assert_eq!(r3.deadline, Some(ts("2026-11-28T12:30:00Z")));
        assert_eq!(r3.created_at, r.created_at, "first seen stays");

        // Not started yet: pre_start, no deadline.
        let pending = with(RUNNING, |v| v["status"] = serde_json::json!({}));
        let r4 = to_record(
            &observe_job(&pending, &[], &scope()).expect("ours"),
            None,
            &policy,
            now,
        );
        assert_eq!((r4.stage, r4.deadline), (Stage::PreStart, None));
    }
}
