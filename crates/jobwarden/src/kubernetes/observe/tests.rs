//! Observation of real-shaped Jobs and Pods (as a 1.36 API server serves them).

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
    assert!(!o.terminated_by_us && !o.suspended);
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
    stuck.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
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
