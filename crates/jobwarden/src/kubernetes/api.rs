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
//! - `POST /v1/jobs`: a batch/v1 Job created exactly as `jobwarden manifest job` renders it
//!   (the body's `image` required, its `namespace` defaulting to the one namespace jobwarden
//!   watches and refused outside the watched ones, heartbeats sent to `[kubernetes]
//!   api_url`); 201 with the job, stored at once so `job show` finds it before the leader's
//!   watch does. 400 names the body's field; 409 when a Job of that name exists; 502 when the
//!   API server refuses jobwarden (RBAC); 503 when it cannot be reached.
//! - `POST /v1/jobs/{id}/cancel`: the cancel requested on the Job
//!   ([`crate::runtime::kubernetes::requests`]): the leader takes the soft kill, the ladder
//!   goes on from it. 200 with the job once the soft kill is recorded (waiting at most
//!   [`CANCEL_WAIT`]), 202 with it before; 404 for an unknown job, 409 for one that ended or
//!   whose Job is gone.
//! - `GET /v1/orphans`, `POST /v1/orphans/clean`: one orphan pass
//!   ([`crate::kubernetes::orphans`]) on this replica, listing the Jobs too: the same
//!   fail-closed selection as the leader's; `clean` deletes at most `[safety] max_batch`
//!   within the shared per-minute limit, each DELETE with its UID precondition and audit row
//!   (idempotent: the leader's pass meeting the same object gets a 404).
//!
//! With a token configured every route but `/healthz`, `/readyz`, `/metrics` and heartbeats
//! requires `Authorization: Bearer <token>`, as in the local daemon.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;

use crate::api_types::SubmitRequest;
use crate::clock;
use crate::config::{Config, PolicyConfig};
use crate::engine::decide::Policy;
use crate::events::EventBus;
use crate::http::{ApiError, Backend, ReadState};
use crate::model::{JobId, JobRecord, RuntimeKind, Step};
use crate::runtime::kubernetes::Actions;
use crate::runtime::kubernetes::requests::{CancelRequest, SubmitFailure};
use crate::store::Store;

use super::manifest::{JobRequest, render_job};
use super::observe::{SUBMITTED, observe_job, to_record};
use super::orphans::OrphanPass;

/// How long a cancel waits for the leader to record the soft kill before it answers 202.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// State of the Kubernetes runtime's API handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: Policy,
    config: Config,
    actions: Actions,
    orphans: OrphanPass,
    token: Option<String>,
    events: EventBus,
}

impl ApiState {
    /// The API over `store` (the reconciler's) under `config`, making its cluster calls with
    /// `actions` and `orphans` (as the controller's, sharing their limiter), with `token`
    /// required on every route but heartbeats and the read-only console when given, and
    /// `events` (the reconciler's bus) for `GET /v1/events`.
    pub fn new(
        store: Store,
        config: Config,
        actions: Actions,
        orphans: OrphanPass,
        token: Option<String>,
        events: EventBus,
    ) -> Self {
        ApiState {
            inner: Arc::new(Inner {
                store,
                policy: Policy::from_config(&config),
                config,
                actions,
                orphans,
                token,
                events,
            }),
        }
    }

    /// The namespace a submitted Job goes to: the request's, or the one namespace watched.
    fn namespace(&self, asked: Option<&str>) -> Result<String, ApiError> {
        let k = &self.inner.config.kubernetes;
        let scope = self.inner.actions.scope();
        let ns = match (asked, k.namespaces.as_slice()) {
            (Some(ns), _) => ns.to_owned(),
            (None, [one]) => one.clone(),
            (None, []) => {
                return Err(bad_request(
                    "field `namespace`: required (jobwarden watches every namespace but the protected ones; name the Job's)",
                ));
            }
            (None, many) => {
                return Err(bad_request(format!(
                    "field `namespace`: required (jobwarden watches {}; name one)",
                    many.join(", ")
                )));
            }
        };
        if !scope.namespace_allowed(&ns) {
            return Err(bad_request(format!(
                "field `namespace`: {ns:?} is not a namespace jobwarden polices ([kubernetes] namespaces, protected_namespaces): a Job there would run without its timeout"
            )));
        }
        Ok(ns)
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
        &self.inner.config.policy
    }
    fn events(&self) -> &EventBus {
        &self.inner.events
    }
    fn runtime(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }
}

/// The job API routes (without `/healthz`, `/readyz` and `/metrics`; merge the health
/// router in). Unknown routes and wrong methods answer in the JSON error shape.
pub fn router(state: ApiState) -> Router {
    crate::http::api(state)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
}

#[async_trait::async_trait]
impl Backend for ApiState {
    async fn submit(&self, mut req: SubmitRequest) -> Result<JobRecord, ApiError> {
        let inner = &self.inner;
        req.namespace = Some(self.namespace(req.namespace.as_deref())?);
        let now = clock::now();
        let job_id = JobId::generate(now);
        let asked = JobRequest::from_submit(req, job_id, &inner.config.kubernetes.api_url);
        let rendered = render_job(&asked, &inner.config).map_err(|e| {
            let e = e.in_request();
            bad_request(format!("field `{}`: {}", e.field, e.problem))
        })?;
        let created = inner.actions.submit(&rendered.job).await.map_err(|e| {
            let name = rendered.job.metadata.name.as_deref().unwrap_or_default();
            let ns = asked.namespace.as_deref().unwrap_or_default();
            submit_error(&e, name, ns)
        })?;
        // Stored now, as the leader's reconciler would store it (it merges its own sighting
        // into this record, and still treats it as a new run).
        let scope = inner.actions.scope();
        let observed = observe_job(&created, &[], scope).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the created Job is not one jobwarden polices: {e}"),
            )
        })?;
        let mut record = to_record(&observed, None, &inner.config.policy, now);
        record.dry_run = inner.actions.dry_run();
        record.spec[SUBMITTED] = serde_json::json!(true);
        match inner.store.insert_job(&record).await {
            Ok(()) => Ok(record),
            // The leader saw the Job first.
            Err(crate::store::Error::JobExists(_)) => inner
                .store
                .get_job(&record.id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| store_error("the job vanished while it was stored")),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn cancel(&self, id: JobId) -> Result<(StatusCode, JobRecord), ApiError> {
        let inner = &self.inner;
        let job = inner
            .store
            .get_job(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job with id {id}")))?;
        let not_running = |job: &JobRecord| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("job {id} is not running (stage {})", job.stage),
            )
        };
        if !job.stage.is_active() {
            return Err(not_running(&job));
        }
        if job.has_step(Step::SoftKill) {
            return Ok((StatusCode::OK, job));
        }
        let namespace = job.namespace.clone().unwrap_or_default();
        let name = job
            .spec
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or(&job.name)
            .to_owned();
        let (asked, rows) = inner
            .actions
            .request_cancel(&namespace, &name, &id, clock::now())
            .await;
        if !rows.is_empty() {
            inner.store.append_audit(&rows).await.map_err(store_error)?;
        }
        match asked {
            CancelRequest::Requested => {}
            CancelRequest::Gone => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "job {id}: its Job {namespace}/{name} is gone (its record is settled once the leader notices)"
                    ),
                ));
            }
            CancelRequest::Refused(why) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the API server refused the cancel: {why}"),
                ));
            }
            CancelRequest::Unavailable(why) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the API server: {why}; try again"),
                ));
            }
        }
        // The leader takes the soft kill: wait a moment for it, so the answer usually shows it.
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let now_job = inner
                .store
                .get_job(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| not_running(&job))?;
            if now_job.has_step(Step::SoftKill) || !now_job.stage.is_active() {
                return Ok((StatusCode::OK, now_job));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((StatusCode::ACCEPTED, now_job));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            Err(e) => Err(store_error(e)),
        }
    }

    async fn orphans(&self) -> Result<serde_json::Value, ApiError> {
        let report = self.inner.orphans.run_requested(false, clock::now()).await;
        Ok(serde_json::to_value(report.to_api()).unwrap_or_default())
    }

    async fn clean_orphans(&self) -> Result<serde_json::Value, ApiError> {
        let report = self.inner.orphans.run_requested(true, clock::now()).await;
        Ok(serde_json::to_value(report.to_api()).unwrap_or_default())
    }
}

/// The answer to a Job the API server did not create.
fn submit_error(e: &SubmitFailure, name: &str, namespace: &str) -> ApiError {
    let kube_error = match e {
        SubmitFailure::NotOurs => return bad_request(format!("field `namespace`: {e}")),
        SubmitFailure::Api(k) => k,
    };
    let code = match kube_error {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    };
    match code {
        Some(409) => ApiError::new(
            StatusCode::CONFLICT,
            format!("a Job named {name} already exists in namespace {namespace}: {kube_error}"),
        ),
        Some(400 | 422) => bad_request(format!("the API server refused the Job: {kube_error}")),
        Some(404) => bad_request(format!(
            "field `namespace`: the API server has no namespace {namespace}: {kube_error}"
        )),
        Some(401 | 403) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "the API server refused jobwarden (RBAC: create on batch jobs in {namespace}): {kube_error}"
            ),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the API server: {kube_error}; try again"),
        ),
    }
}
