//! The Kubernetes runtime: the [`Runtime`] the executor drives, carried out by [`Actions`]
//! (the API calls) on the Job and the pods the reconciler last saw. What each act sends is in
//! `actions.rs`; the order of record and act, and why it is safe, in [`crate::runtime`].
//!
//! - [`actions`]: the API calls that carry out a step (patches, deletes: `deletes.rs`) and the
//!   audit rows they produce; [`events`]: the Events they post.
//! - [`calls`]: the one list of calls the code makes, [`calls::API_CALLS`], which the RBAC test
//!   checks `deploy/` against, and how an answer is read.
//! - [`poster`]: the bounded background poster of the Events that accompany a step's calls.
//! - [`requests`]: what the job API asks of the cluster (a Job created, a cancel requested).

pub mod actions;
pub mod calls;
mod deletes;
pub mod events;
pub mod poster;
pub mod requests;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use crate::engine::plan::{CleanupPlan, FailPlan, RecoverPlan, StepPlan};
use crate::model::{JobRecord, Step, Timestamp};
use crate::runtime::{ActOutcome, Acted, Runtime};

use crate::kubernetes::TERMINATED_BY_VALUE;
use crate::kubernetes::observe::{JOB_TEMPLATE, SUPERSEDED};

pub use actions::Actions;

/// What an act needs besides the record: the Job as last seen (None once it is gone: only a
/// recovery acts then) and its pods.
#[derive(Debug, Clone, Copy)]
pub struct KubeTarget<'a> {
    /// The Job.
    pub job: Option<&'a Job>,
    /// Its pods (others are ignored).
    pub pods: &'a [Pod],
}

/// The sum of the `cpu` and `memory` requests of the containers of `pods` that have not ended
/// (phase neither Succeeded nor Failed); each None when a container requests none of it (a
/// sum without it would be less than the truth) or a quantity does not parse.
pub fn pod_requests(pods: &[Pod]) -> (Option<f64>, Option<f64>) {
    let mut cpu = Some(0.0);
    let mut memory = Some(0.0);
    let live = pods.iter().filter(|p| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    });
    for pod in live {
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        for c in containers {
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let get = |name: &str| {
                requests
                    .and_then(|r| r.get(name))
                    .and_then(|q| crate::reclaimed::parse_quantity(&q.0))
            };
            cpu = cpu.zip(get("cpu")).map(|(a, b)| a + b);
            memory = memory.zip(get("memory")).map(|(a, b)| a + b);
        }
    }
    (cpu, memory)
}

/// The observation admitted the Job, so the actions (which check the same scope) cannot
/// refuse it; reported as a failed act rather than a panic.
fn out_of_scope() -> Acted {
    Acted {
        outcome: ActOutcome::Failed {
            error: "the Job was admitted by observation but refused by the actions".into(),
        },
        ..Acted::done(Vec::new())
    }
}

#[async_trait::async_trait]
impl Runtime for Actions {
    type Target<'a> = KubeTarget<'a>;

    /// API calls fail with 429, 5xx and 403 and are retried: a step recorded but not carried
    /// out is marked until its calls went through.
    const MARKS_PENDING: bool = true;

    async fn step(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
        now: Timestamp,
    ) -> Acted {
        let Some(k) = target.job else {
            return out_of_scope();
        };
        let reason = plan.reason.as_str();
        let report = match plan.step() {
            Step::Warn => self.warn(k, reason, now).await,
            Step::SoftKill => self.soft_kill(k, target.pods, job.grace, reason, now).await,
            Step::HardKill => self.hard_kill(k, target.pods, reason, now).await,
            Step::ForceDelete => self.force_delete(k, target.pods, reason, now).await,
        };
        report.map_or_else(|_| out_of_scope(), Acted::from)
    }

    /// The resource requests of the Job's pods that have not ended (a resource is unknown
    /// when a container of them requests none); the bound is the earliest of the uncapped
    /// timeout's end, the deadline for a cancel, and the Job's own `activeDeadlineSeconds`
    /// (from the Job as first seen, never jobwarden's patch). A Job carrying
    /// `<prefix>timeout-source` was given its `activeDeadlineSeconds` by jobwarden (`manifest
    /// job`, the API's submit, the admission webhook: a backstop after the ladder, or the
    /// Job's own kept only when smaller), so it bounds nothing here: counted as unknown
    /// rather than as time saved against jobwarden's own backstop.
    fn usage(
        &self,
        target: &Self::Target<'_>,
        job: &JobRecord,
        plan: &StepPlan,
    ) -> Option<crate::reclaimed::Usage> {
        if plan.step() != Step::SoftKill || plan.dry_run {
            return None;
        }
        let template = job.spec.get(JOB_TEMPLATE);
        let backstop = template
            .and_then(|t| t.pointer("/metadata/annotations"))
            .and_then(|a| a.get(&self.scope().keys.timeout_source))
            .is_some();
        let ads = template
            .filter(|_| !backstop)
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("activeDeadlineSeconds"))
            .and_then(serde_json::Value::as_u64)
            .map(std::time::Duration::from_secs);
        let cancelled = crate::reclaimed::cancelled(job, plan);
        let (otherwise_until, bound) = crate::reclaimed::bound(job, cancelled, ads);
        let (cpu_cores, memory_bytes) = pod_requests(target.pods);
        Some(crate::reclaimed::Usage {
            basis: crate::reclaimed::Basis::PodRequests,
            cpu_cores,
            memory_bytes: memory_bytes.map(|b| b as u64),
            otherwise_until,
            bound,
        })
    }

    /// A soft kill whose patch the Job shows went out before (a crash came after it).
    fn shows(&self, target: &Self::Target<'_>, plan: &StepPlan) -> bool {
        plan.step() == Step::SoftKill
            && target.job.is_some_and(|k| {
                k.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&self.scope().terminated_by))
                    .is_some_and(|v| v == TERMINATED_BY_VALUE)
            })
    }

    /// The Job deleted (Foreground, UID precondition), then its labelled PVCs, Secrets and
    /// ConfigMaps (a failure of either retries the whole cleanup; a re-created Job is left
    /// alone and nothing of it is deleted).
    async fn cleanup(
        &self,
        target: &Self::Target<'_>,
        _: &JobRecord,
        plan: &CleanupPlan,
        now: Timestamp,
    ) -> Acted {
        let Some(k) = target.job else {
            return out_of_scope();
        };
        let Ok(report) = self.ttl_delete(k, &plan.reason, now).await else {
            return out_of_scope();
        };
        if report.outcome != ActOutcome::Done || plan.dry_run {
            return report.into();
        }
        let Ok(labelled) = self.delete_labelled(k, &plan.reason, now).await else {
            return out_of_scope();
        };
        let mut audit = report.audit;
        audit.extend(labelled.audit);
        Acted {
            outcome: labelled.outcome,
            ..Acted::done(audit)
        }
    }

    async fn mark_failed(
        &self,
        target: &Self::Target<'_>,
        _: &JobRecord,
        plan: &FailPlan,
        now: Timestamp,
    ) -> Acted {
        let Some(k) = target.job else {
            return out_of_scope();
        };
        self.mark_failed(k, &plan.reason, now)
            .await
            .map_or_else(|_| out_of_scope(), Acted::from)
    }

    /// The dead run's Job deleted (when still there) and the stored one created anew; the
    /// old run's UID is kept as superseded, so a late copy of it is never taken for a new run.
    async fn recover(
        &self,
        target: &Self::Target<'_>,
        job: &mut JobRecord,
        plan: &RecoverPlan,
        now: Timestamp,
    ) -> Acted {
        let template = job.spec.get(JOB_TEMPLATE).cloned().unwrap_or_default();
        let old = job.run_id.clone();
        if let Some(spec) = job.spec.as_object_mut() {
            let list = spec
                .entry(SUPERSEDED)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut()
                && !list.iter().any(|u| u.as_str() == Some(old.as_str()))
            {
                list.push(old.into());
            }
        }
        match self
            .recreate(target.job, &template, plan.attempt, &plan.reason, now)
            .await
        {
            Ok((report, uid)) => {
                if let Some(uid) = uid {
                    tracing::info!(job = %job.id, attempt = plan.attempt, %uid, "re-created the Job");
                }
                report.into()
            }
            Err(_) => out_of_scope(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pod_requests;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(phase: &str, requests: &[(&str, &str)]) -> Pod {
        let requests: serde_json::Map<String, serde_json::Value> = requests
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    #[test]
    fn requests_of_the_pods_that_have_not_ended_are_summed() {
        let pods = [
            pod("Running", &[("cpu", "500m"), ("memory", "1Gi")]),
            pod("Pending", &[("cpu", "1"), ("memory", "512Mi")]),
            pod("Succeeded", &[("cpu", "8"), ("memory", "8Gi")]),
        ];
        let (cpu, memory) = pod_requests(&pods);
        assert_eq!(cpu, Some(1.5));
        assert_eq!(memory, Some(1.5 * 1024.0 * 1024.0 * 1024.0));
        // A container without a memory request: memory is unknown, not a smaller sum.
        let (cpu, memory) = pod_requests(&[pod("Running", &[("cpu", "2")])]);
        assert_eq!((cpu, memory), (Some(2.0), None));
        // No pod left: nothing is reserved.
        assert_eq!(pod_requests(&[]), (Some(0.0), Some(0.0)));
    }
}
