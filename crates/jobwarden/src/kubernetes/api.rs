//! The job API of `run --runtime kubernetes`, next to the health server's `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! - `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/audit`, `GET /v1/plan`: the local daemon's
//!   read handlers ([`crate::api_read`]) over the store the reconciler writes, so the answers
//!   have the same shapes and errors and the CLI's `jobs`, `job show`, `audit` and `plan` work
//!   against either runtime.
//! - `POST /v1/jobs/{id}/heartbeat`: jobwarden-init's heartbeat (`FLOWFORGE_HEARTBEAT_URL`),
//!   recorded with [`Store::record_heartbeat`] (only `last_heartbeat` moves, never backwards):
//!   204, or 404 for an unknown job. Any replica takes it; they share the store.
//! - `POST /v1/jobs`, `POST /v1/jobs/{id}/cancel`, `GET /v1/orphans`, `POST /v1/orphans/clean`:
//!   501 with an error saying what to do instead. In this mode a job is a batch/v1 Job: it is
//!   created with kubectl, ended with `kubectl delete job` or by the policy, and orphans are
//!   found (and, with `[orphans] clean = true`, deleted) by the leader's orphan pass. These
//!   requests write nothing.
//!
//! With a token configured every route but `/healthz`, `/readyz`, `/metrics` and heartbeats
//! requires `Authorization: Bearer <token>`, as in the local daemon.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api_read::{
    ReadState, audit, error, get_job, list_jobs, method_not_allowed, no_such_route, parse_id, plan,
    require_token,
};
use crate::clock;
use crate::engine::decide::Policy;
use crate::store::Store;

/// State of the Kubernetes runtime's API handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: Policy,
    token: Option<String>,
}

impl ApiState {
    /// The API over `store` (the reconciler's), with `policy` for next steps and the plan, and
    /// `token` required on every route but heartbeats when given.
    pub fn new(store: Store, policy: Policy, token: Option<String>) -> Self {
        ApiState {
            inner: Arc::new(Inner {
                store,
                policy,
                token,
            }),
        }
    }
}

impl ReadState for ApiState {
    fn store(&self) -> &Store {
        &self.inner.store
    }
    fn policy(&self) -> &Policy {
        &self.inner.policy
    }
    fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }
}

/// The status of the routes this mode does not serve: the server deliberately does not
/// support the request here (it is no missing id or wrong method: the local daemon serves it).
pub const NOT_IN_KUBERNETES: StatusCode = StatusCode::NOT_IMPLEMENTED;

/// The job API routes (without `/healthz`, `/readyz` and `/metrics`; merge the health
/// router in). Unknown routes and wrong methods answer in the JSON error shape.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/jobs", get(list_jobs::<ApiState>).post(submit))
        .route("/v1/jobs/{id}", get(get_job::<ApiState>))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/audit", get(audit::<ApiState>))
        .route("/v1/plan", get(plan::<ApiState>))
        .route("/v1/orphans", get(orphans))
        .route("/v1/orphans/clean", post(orphans))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token::<ApiState>,
        ));
    Router::new()
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat))
        .merge(protected)
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn submit() -> Response {
    error(
        NOT_IN_KUBERNETES,
        "jobwarden runs in Kubernetes mode: jobs are batch/v1 Jobs carrying the job-id label, created with kubectl (`jobwarden manifest job ... | kubectl apply -f -`), not submitted here".into(),
    )
}

async fn cancel() -> Response {
    error(
        NOT_IN_KUBERNETES,
        "jobwarden runs in Kubernetes mode: end a job with `kubectl delete job <name>` (or let the policy's timeout end it), not with cancel".into(),
    )
}

async fn orphans() -> Response {
    error(
        NOT_IN_KUBERNETES,
        "jobwarden runs in Kubernetes mode: orphaned Pods, PVCs, Secrets and ConfigMaps are found by the leader's orphan pass every [orphans] scan_interval (deleted only with [orphans] clean = true); see `jobwarden audit --action orphan_cleanup`".into(),
    )
}

async fn heartbeat(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    // As in the local daemon: any stored job's heartbeat is recorded, active or not (a late
    // heartbeat of a finished job changes no decision).
    match st.store().record_heartbeat(&id, clock::now()).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no job with id {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}
