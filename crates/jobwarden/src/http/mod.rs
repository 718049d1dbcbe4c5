//! The HTTP API both runtimes serve: one list of routes, one handler per route, the same JSON
//! shapes, errors and token rule. What differs between the runtimes is behind two traits:
//! [`Backend`] (submit, cancel, heartbeat, orphans: the local daemon's enforcer and process
//! groups; the Kubernetes runtime's Jobs) and [`Health`] (what "ready" means, and the metrics).
//!
//! - [`read`]: `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/audit`, `GET /v1/plan` read the
//!   store only; the bearer-token check; the JSON error shape.
//! - [`submit`]: the submit body's parser and rules.
//! - [`admin`]: the reclaimed report and the dead letters (store reads and writes).
//! - [`events`]: `GET /v1/events`, the live event bus as Server-Sent Events.
//! - [`console`]: the web console's pages at `/` (HTML; reading needs no token, its buttons
//!   do: see its docs).
//!
//! Routes ([`api`]): `GET|POST /v1/jobs`, `GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/cancel`,
//! `POST /v1/jobs/{id}/heartbeat` (no token: jobwarden-init sends it), `GET /v1/audit`,
//! `GET /v1/plan`, `GET /v1/orphans`, `POST /v1/orphans/clean`, `GET /v1/report`,
//! `GET /v1/dead-letters`, `POST /v1/dead-letters/{id}/requeue`, `GET /v1/events` (no token:
//! read-only, what the console shows), the console's pages; and ([`health`]) `/healthz`,
//! `/readyz`, `/metrics` (no token). With a token configured every other `/v1` route requires
//! `Authorization: Bearer <token>`. Unknown routes (404) and wrong methods (405) answer in the
//! JSON error shape.

pub mod admin;
pub mod console;
pub mod events;
pub mod read;
pub mod submit;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api_types::SubmitRequest;
use crate::model::{JobId, JobRecord};

pub use read::{ReadState, error};
use read::{audit, get_job, list_jobs, method_not_allowed, no_such_route, parse_id, plan, view};
use submit::{parse_body, validate_submit};

/// An error answer: an HTTP status and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message (`{"error": message}`).
    pub message: String,
}

impl ApiError {
    /// `status` saying `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// What a runtime does for the routes that are not reads of the store.
#[async_trait::async_trait]
pub trait Backend: ReadState {
    /// Starts a job (201 with it).
    async fn submit(&self, req: SubmitRequest) -> Result<JobRecord, ApiError>;
    /// Starts the ladder now: the soft kill, then the normal grace. 200 with the job once the
    /// soft kill is recorded; 202 when it was requested of another part (the Kubernetes
    /// leader) and is not recorded yet.
    async fn cancel(&self, id: JobId) -> Result<(StatusCode, JobRecord), ApiError>;
    /// A heartbeat from the job (204); never moves a deadline.
    async fn heartbeat(&self, id: JobId) -> Result<(), ApiError>;
    /// What is orphaned now, and why.
    async fn orphans(&self) -> Result<serde_json::Value, ApiError>;
    /// Removes (queues the removal of) what is orphaned now, within the safety limits.
    async fn clean_orphans(&self) -> Result<serde_json::Value, ApiError>;
}

/// What `/readyz` and `/metrics` answer.
#[async_trait::async_trait]
pub trait Health: Clone + Send + Sync + 'static {
    /// 200 when ready to serve, else 503 saying why.
    async fn ready(&self) -> Response;
    /// The Prometheus text.
    fn metrics(&self) -> String;
}

/// The job API's routes over `backend`.
pub fn api<B: Backend>(backend: B) -> Router {
    let protected = Router::new()
        .route("/v1/jobs", get(list_jobs::<B>).post(submit_job::<B>))
        .route("/v1/jobs/{id}", get(get_job::<B>))
        .route("/v1/jobs/{id}/cancel", post(cancel::<B>))
        .route("/v1/audit", get(audit::<B>))
        .route("/v1/plan", get(plan::<B>))
        .route("/v1/orphans", get(orphans::<B>))
        .route("/v1/orphans/clean", post(clean_orphans::<B>))
        .route("/v1/report", get(admin::report::<B>))
        .route("/v1/dead-letters", get(admin::dead_letters::<B>))
        .route(
            "/v1/dead-letters/{id}/requeue",
            post(admin::requeue_dead::<B>),
        )
        .route_layer(middleware::from_fn_with_state(
            backend.clone(),
            read::require_token::<B>,
        ));
    Router::new()
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat::<B>))
        .route("/v1/events", get(events::events::<B>))
        .merge(protected)
        .merge(console::routes::<B>())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend)
}

/// `/healthz`, `/readyz` and `/metrics` over `health`.
pub fn health<H: Health>(health: H) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<H>| async move { h.ready().await }),
        )
        .route(
            "/metrics",
            get(|State(h): State<H>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    h.metrics(),
                )
            }),
        )
        .with_state(health)
}

async fn submit_job<B: Backend>(
    State(b): State<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Too large (413) or unreadable: the same JSON error shape as every other answer.
        Err(r) => return error(r.status(), format!("request body: {}", r.body_text())),
    };
    let req: SubmitRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Err(e) = validate_submit(&req) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match b.submit(req).await {
        Ok(job) => (StatusCode::CREATED, axum::Json(view(b.policy(), &job))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel<B: Backend>(
    State(b): State<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match b.cancel(id).await {
        Ok((status, job)) => (status, axum::Json(view(b.policy(), &job))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn heartbeat<B: Backend>(
    State(b): State<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match b.heartbeat(id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn orphans<B: Backend>(State(b): State<B>) -> Response {
    match b.orphans().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn clean_orphans<B: Backend>(State(b): State<B>) -> Response {
    match b.clean_orphans().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
