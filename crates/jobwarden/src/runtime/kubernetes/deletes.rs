//! The deletes the actions share: a Job with a UID precondition, a pod with its own UID and a
//! grace, a pod's status set to Failed, a stuck pod force-removed, and the labelled objects of
//! a TTL-deleted Job. Each call is one audit row; see `actions.rs` for when each is made.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, Preconditions};
use serde_json::json;

use crate::model::{AuditAction, Timestamp};

use super::actions::{Actions, Report, Target, patch_params};
use super::calls::CallResult;
use crate::kubernetes::observe::{Ignored, pod_is_terminal, replacement_policy_failed};

impl Actions {
    /// After a successful TTL delete: the job's own PersistentVolumeClaims, Secrets and
    /// ConfigMaps (those of `[kubernetes] clean_kinds`) in the Job's namespace, found by the job-id label with the job's id, are
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
        let (t, mut report) = self.target(job)?;
        if self.dry_run {
            return Ok(report);
        }
        let selector = format!("{}={}", self.scope().job_id_label, t.id);
        let _ = self
            .delete_labelled_kind::<PersistentVolumeClaim>(&t, &selector, reason, now, &mut report)
            .await
            && self
                .delete_labelled_kind::<Secret>(&t, &selector, reason, now, &mut report)
                .await
            && self
                .delete_labelled_kind::<ConfigMap>(&t, &selector, reason, now, &mut report)
                .await;
        Ok(report)
    }

    /// One kind of [`Actions::delete_labelled`] (nothing when `clean_kinds` leaves it out);
    /// false when the action must stop.
    pub(super) async fn delete_labelled_kind<K>(
        &self,
        t: &Target<'_>,
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
        if !self.scope().cleans(&K::plural(&())) {
            return true;
        }
        let resource_type = K::kind(&()).to_ascii_lowercase();
        let resource_type = resource_type.as_str();
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
                || self.scope().admit(meta).ok().as_ref() != Some(&t.id)
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

    /// Each of `pods` that is ours and `picked`: deleted with grace 0 and, when the Job's
    /// `podReplacementPolicy: Failed` would otherwise keep the Job active until the kubelet
    /// confirms (a pod on an unreachable node), its phase set to Failed. Stops at the first
    /// call that must stop the action.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn remove_pods(
        &self,
        t: &Target<'_>,
        job: &Job,
        pods: &[Pod],
        picked: impl Fn(&Pod) -> bool,
        action: AuditAction,
        reason: &str,
        now: Timestamp,
        report: &mut Report,
    ) {
        let fail_phase = replacement_policy_failed(job);
        for pod in pods.iter().filter(|p| self.ours(t, p) && picked(p)) {
            let r = self
                .delete_pod(t, pod, 0, action, reason, now, report)
                .await;
            if !report.absorb(&r) {
                return;
            }
            if fail_phase && r != CallResult::NotFound && !pod_is_terminal(pod) {
                let r = self
                    .fail_pod_phase(t, pod, action, reason, now, report)
                    .await;
                if !report.absorb(&r) {
                    return;
                }
            }
        }
    }

    pub(super) async fn delete_job(
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
    pub(super) async fn delete_pod(
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

    pub(super) async fn fail_pod_phase(
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
