//! Which API calls jobwarden makes, as RBAC sees them, and how each call's answer is read.
//!
//! [`API_CALLS`] lists every (group, resource, verb) the code uses and which role grants it;
//! the roles in `deploy/` must grant exactly these (tests/k8s_deploy.rs), and
//! tests/k8s_requests.rs and tests/k8s_leader.rs check every request the code sends against it
//! via [`classify`]. [`CallResult`]: NotFound is done; a 409 is a conflict (a Job re-created
//! under the name); 429, 5xx and transport errors are retryable after the server's
//! `retryAfterSeconds` (the API server puts Retry-After into the Status details; kube-rs keeps
//! the Status, not the header) or a default; anything else (403, 422) fails.

use std::time::Duration;

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

/// Where RBAC grants a call (the roles in `deploy/overlays/*/rbac.yaml`).
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
/// missing here, the deploy test on a role that differs from it. The admission webhook
/// (`admission/`) makes none: it only answers the API server, so it needs no RBAC.
pub const API_CALLS: &[ApiCall] = &[
    // controller.rs: the Job and Pod reflectors (list, then watch).
    call("batch", "jobs", "list"),
    call("batch", "jobs", "watch"),
    call("", "pods", "watch"),
    // The actions below.
    call("events.k8s.io", "events", "create"),
    call("batch", "jobs", "patch"),
    call("batch", "jobs", "delete"),
    // Dead-job recovery: the stored Job created anew; `POST /v1/jobs` (requests.rs).
    call("batch", "jobs", "create"),
    // requests.rs: a cancel reads the Job (its label, its resourceVersion) before the PATCH.
    call("batch", "jobs", "get"),
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

    pub(super) fn from<T>(r: Result<T, kube::Error>) -> Self {
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

    pub(super) fn error(&self) -> Option<String> {
        match self {
            CallResult::Conflict(e) | CallResult::Failed(e) => Some(e.clone()),
            CallResult::Retry { error, .. } => Some(error.clone()),
            _ => None,
        }
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
}
