//! The Kubernetes controller: batch/v1 Jobs carrying the job-id label, policed through kube-rs.
//!
//! - [`config`]: the `[kubernetes]` section (namespaces, label, lease, orphan ages, limits).
//! - [`observe`]: pure mapping of a Job and its Pods to the engine's job record and diagnosis.
//!   No I/O; which Jobs are ours (the job-id label, no protected namespace) is decided here.
//! - [`manifest`]: renders a FlowForge Job whose fields agree with the policy.
//! - [`reconcile`]: one Job through observe → store → plan → executor.
//! - The API calls that carry the plans out are the Kubernetes runtime,
//!   [`crate::runtime::kubernetes`] (actions, calls, events).
//! - [`cleanup`]: the cleanup workers that delete a TTL-deleted Job's artifacts and logs in
//!   object storage (the local runtime's durable queue).
//! - [`orphans`]: labelled Pods, PVCs, Secrets and ConfigMaps whose Job is gone (pure
//!   selection, and the leader's periodic pass that deletes them).
//! - [`leader`]: leader election on one coordination.k8s.io/v1 Lease; only the leader acts.
//! - [`watch`]: the reflectors, cluster-wide or one per watched namespace, as one cache.
//! - [`controller`]: the watch loop (Job and Pod reflectors, the deadline scheduler), acting
//!   only while [`leader`] says this replica leads.
//! - [`api`]: the job API in this mode (the shared routes over Jobs: submit creates one,
//!   cancel requests the soft kill, orphans run a pass).
//! - [`admission`]: the mutating and validating admission webhooks (`[admission]`): every Job
//!   in scope is born with its policy.
//! - [`cli`]: `jobwarden manifest job|webhook` and `jobwarden run --runtime kubernetes`.
//!
//! Times from the API server are `jiff` timestamps (k8s-openapi); the engine uses `chrono`.
//! [`to_chrono`] / [`to_jiff`] convert, never reading the clock.

pub mod admission;
pub mod api;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod controller;
pub mod leader;
pub mod manifest;
pub mod observe;
pub mod orphans;
pub mod reconcile;
pub mod watch;

use crate::model::Timestamp;

/// The annotation jobwarden sets on a Job it ended (value [`TERMINATED_BY_VALUE`]).
pub const TERMINATED_BY: &str = "terminated-by";
/// The value of `<prefix>terminated-by` on Jobs jobwarden ended.
pub const TERMINATED_BY_VALUE: &str = "jobwarden";
/// The annotation holding why jobwarden ended a Job.
pub const TERMINATION_REASON: &str = "termination-reason";
/// The annotation saying how a Job jobwarden ended should count (`failed`: recovery gave up).
pub const TERMINATION_OUTCOME: &str = "termination-outcome";
/// The annotation on a Job jobwarden re-created from the stored spec: the attempt number.
pub const RECOVERY_ATTEMPT: &str = "recovery-attempt";
/// Annotation suffix: an RFC 3339 time at which a cancel of the Job was requested (set by
/// `POST /v1/jobs/{id}/cancel` on any replica, or by hand with `kubectl annotate`); the
/// leader answers it with the soft kill.
pub const CANCEL_REQUESTED: &str = "cancel-requested";
/// Label the Job controller puts on its pods: the Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Label the Job controller puts on its pods: the Job's UID.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// `reportingController` of the Events jobwarden posts.
pub const REPORTING_CONTROLLER: &str = "flowforge.io/jobwarden";

/// An API-server timestamp as the engine's timestamp (exact to the nanosecond).
pub fn to_chrono(t: k8s_openapi::jiff::Timestamp) -> Timestamp {
    let nanos = u32::try_from(t.subsec_nanosecond()).unwrap_or(0);
    chrono::DateTime::from_timestamp(t.as_second(), nanos)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// The engine's timestamp as an API-server timestamp (saturating outside jiff's range).
pub fn to_jiff(t: Timestamp) -> k8s_openapi::jiff::Timestamp {
    let nanos = i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::new(t.timestamp(), nanos).unwrap_or(if t.timestamp() < 0 {
        k8s_openapi::jiff::Timestamp::MIN
    } else {
        k8s_openapi::jiff::Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_both_ways_exactly() {
        let c = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("ts");
        let j = to_jiff(c);
        assert_eq!(j.as_second(), 1_800_000_000);
        assert_eq!(j.subsec_nanosecond(), 123_456_789);
        assert_eq!(to_chrono(j), c);
    }
}
