//! What the job API asks of the cluster in Kubernetes mode, on whichever replica took the
//! request (only the leader acts on Jobs; these calls start something the leader then does):
//!
//! | request | calls |
//! | --- | --- |
//! | `POST /v1/jobs` | POST batch/v1 jobs: the Job as `manifest job` renders it |
//! | `POST /v1/jobs/{id}/cancel` | GET the Job; merge PATCH `<prefix>cancel-requested: <now>` with its `resourceVersion` (a 409 reads it again, at most [`CANCEL_TRIES`] times) |
//!
//! A cancel is a request written on the Job, not a kill: the leader sees the annotation on
//! its watch and takes the soft kill (recorded, then carried out, as any step), and the rest
//! of the ladder counts from it. An annotation already there is kept (the first request's
//! time counts). The `resourceVersion` precondition means the PATCH lands on the Job that
//! was read and checked (its job-id label), never on another Job that took the name since.
//!
//! Both are the user's requests, not jobwarden's decisions: they are made in dry-run too.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PostParams};
use serde_json::json;

use crate::model::{AuditAction, AuditEntry, JobId, Timestamp, fmt_ts};

use super::actions::{Actions, Target, patch_params};
use super::calls::CallResult;

/// How many times a cancel reads the Job and PATCHes it when another writer (the Job
/// controller's status updates) changed it in between.
pub const CANCEL_TRIES: usize = 3;

/// How a cancel request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRequest {
    /// The annotation is on the Job (now, or by an earlier request).
    Requested,
    /// No Job of that name carries this job id any more.
    Gone,
    /// The API server refused (403, 422): `why`.
    Refused(String),
    /// 429, 5xx, transport, or a Job changing faster than [`CANCEL_TRIES`] reads: try again.
    Unavailable(String),
}

impl Actions {
    /// Creates `job` (rendered by `manifest::render_job`; refused unless it is ours).
    pub async fn submit(&self, job: &Job) -> Result<Job, SubmitFailure> {
        if self.scope().admit(&job.metadata).is_err() {
            return Err(SubmitFailure::NotOurs);
        }
        let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), job)
            .await
            .map_err(SubmitFailure::Api)
    }

    /// Asks the leader to cancel job `id`, whose run is the Job `namespace/name`: the
    /// `cancel-requested` annotation (see the module docs). One audit row per PATCH sent
    /// (`cancel`, initiated by `user`), one for a request already on the Job.
    pub async fn request_cancel(
        &self,
        namespace: &str,
        name: &str,
        id: &JobId,
        now: Timestamp,
    ) -> (CancelRequest, Vec<AuditEntry>) {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let key = self.scope().cancel_requested.clone();
        let mut rows = Vec::new();
        let mut last = String::new();
        for _ in 0..CANCEL_TRIES {
            let job = match api.get(name).await.map_err(|e| CallResult::from_error(&e)) {
                Ok(j) => j,
                Err(r) => return (read_failure(r), rows),
            };
            if self.scope().admit(&job.metadata).ok().as_ref() != Some(id) {
                return (CancelRequest::Gone, rows);
            }
            let t = Target {
                id: id.clone(),
                namespace,
                name,
                uid: job.metadata.uid.as_deref().unwrap_or_default(),
            };
            let reason = "cancel requested through the API";
            if let Some(at) = job.metadata.annotations.as_ref().and_then(|a| a.get(&key)) {
                let details = json!({"alreadyRequested": at});
                rows.push(self.user_row(&t, now, reason, &CallResult::Ok, details));
                return (CancelRequest::Requested, rows);
            }
            let body = json!({"metadata": {
                "resourceVersion": job.metadata.resource_version,
                "annotations": {&key: fmt_ts(now)},
            }});
            let result = CallResult::from(
                api.patch(name, &patch_params(), &Patch::Merge(&body))
                    .await
                    .map(|_| ()),
            );
            let details = json!({"call": "PATCH batch/v1 jobs (merge)", "body": body});
            rows.push(self.user_row(&t, now, reason, &result, details));
            match result {
                CallResult::Ok => return (CancelRequest::Requested, rows),
                // Changed since the read (its resourceVersion): read it again.
                CallResult::Conflict(e) => last = e,
                other => return (read_failure(other), rows),
            }
        }
        (
            CancelRequest::Unavailable(format!(
                "the Job kept changing ({CANCEL_TRIES} tries): {last}"
            )),
            rows,
        )
    }

    fn user_row(
        &self,
        t: &Target<'_>,
        now: Timestamp,
        reason: &str,
        result: &CallResult,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            initiated_by: "user".to_owned(),
            // A request, made in dry-run too: not a dry-run row.
            dry_run: false,
            ..self.row(
                t,
                now,
                "job",
                t.name,
                AuditAction::Cancel,
                reason,
                result,
                details,
            )
        }
    }
}

fn read_failure(r: CallResult) -> CancelRequest {
    match r {
        CallResult::NotFound => CancelRequest::Gone,
        CallResult::Retry { error, .. } => CancelRequest::Unavailable(error),
        CallResult::Conflict(e) | CallResult::Failed(e) => CancelRequest::Refused(e),
        CallResult::Ok | CallResult::DryRun => CancelRequest::Requested,
    }
}

/// Why a Job could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SubmitFailure {
    /// The rendered Job is not one jobwarden polices (its namespace is not watched, or
    /// protected).
    #[error("the Job would not be policed by jobwarden (namespace not watched, or protected)")]
    NotOurs,
    /// The API server's answer.
    #[error("{0}")]
    Api(kube::Error),
}
