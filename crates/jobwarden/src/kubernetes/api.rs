//! The job API of `run --runtime kubernetes`, next to the health server's `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! The routes are [`crate::http`]'s, the local daemon's; this is the Kubernetes runtime's
//! [`Backend`] behind them.
//!
//! - `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/audit`, `GET /v1/plan`: the shared
//!   read handlers ([`crate::http::read`]) over the store the reconciler writes, so the answers
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
use axum::http::StatusCode;

use crate::api_types::SubmitRequest;
use crate::clock;
use crate::config::{Config, PolicyConfig};
use crate::engine::decide::Policy;
use crate::events::EventBus;
use crate::http::{ApiError, Backend, ReadState};
use crate::model::{JobId, JobRecord, RuntimeKind};
use crate::store::Store;

/// State of the Kubernetes runtime's API handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: Policy,
    policy_config: PolicyConfig,
    token: Option<String>,
    events: EventBus,
}

impl ApiState {
    /// The API over `store` (the reconciler's), with `config`'s policy for next steps, the
    /// plan and the console's Policy page, `token` required on every route but heartbeats and
    /// the read-only console when given, and `events` (the reconciler's bus) for
    /// `GET /v1/events`.
    pub fn new(store: Store, config: &Config, token: Option<String>, events: EventBus) -> Self {
        ApiState {
            inner: Arc::new(Inner {
                store,
                policy: Policy::from_config(config),
                policy_config: config.policy.clone(),
                token,
                events,
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
    fn policy_config(&self) -> &PolicyConfig {
        &self.inner.policy_config
    }
    fn events(&self) -> &EventBus {
        &self.inner.events
    }
    fn runtime(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }
}

/// The status of the routes this mode does not serve: the server deliberately does not
/// support the request here (it is no missing id or wrong method: the local daemon serves it).
pub const NOT_IN_KUBERNETES: StatusCode = StatusCode::NOT_IMPLEMENTED;

/// The job API routes (without `/healthz`, `/readyz` and `/metrics`; merge the health
/// router in). Unknown routes and wrong methods answer in the JSON error shape.
pub fn router(state: ApiState) -> Router {
    crate::http::api(state)
}

fn not_here(message: &str) -> ApiError {
    ApiError::new(NOT_IN_KUBERNETES, message)
}

#[async_trait::async_trait]
impl Backend for ApiState {
    async fn submit(&self, _: SubmitRequest) -> Result<JobRecord, ApiError> {
        Err(not_here(
            "jobwarden runs in Kubernetes mode: jobs are batch/v1 Jobs carrying the job-id label, created with kubectl (`jobwarden manifest job ... | kubectl apply -f -`), not submitted here",
        ))
    }

    async fn cancel(&self, _: JobId) -> Result<JobRecord, ApiError> {
        Err(not_here(
            "jobwarden runs in Kubernetes mode: end a job with `kubectl delete job <name>` (or let the policy's timeout end it), not with cancel",
        ))
    }

    /// As in the local daemon: any stored job's heartbeat is recorded, active or not (a late
    /// heartbeat of a finished job changes no decision).
    async fn heartbeat(&self, id: JobId) -> Result<(), ApiError> {
        match self.store().record_heartbeat(&id, clock::now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no job with id {id}"),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store: {e}"),
            )),
        }
    }

    async fn orphans(&self) -> Result<serde_json::Value, ApiError> {
        Err(not_here(ORPHANS))
    }

    async fn clean_orphans(&self) -> Result<serde_json::Value, ApiError> {
        Err(not_here(ORPHANS))
    }
}

const ORPHANS: &str = "jobwarden runs in Kubernetes mode: orphaned Pods, PVCs, Secrets and ConfigMaps are found by the leader's orphan pass every [orphans] scan_interval (deleted only with [orphans] clean = true); see `jobwarden audit --action orphan_cleanup`";
