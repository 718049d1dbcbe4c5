//! The job API's read routes and the pieces every route shares, one implementation for both
//! runtimes: the local daemon (`daemon::api`) and `run --runtime kubernetes`
//! (`kubernetes::api`).
//!
//! `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/audit` and `GET /v1/plan` read the store
//! only; a runtime's router wires these handlers to its own state through [`ReadState`]. Every
//! error is `{"error": "..."}` naming what was wrong; [`require_token`] is the bearer-token
//! check a router layers over its protected routes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api_types::{ErrorBody, JobView, NextStepView, PlanEntry};
use crate::clock;
use crate::engine::decide::{Decision, Policy, decide};
use crate::engine::ladder;
use crate::engine::recovery::Diagnosis;
use crate::engine::retention::{self, Expiry};
use crate::model::{AuditAction, JobId, JobRecord, Stage, sub};
use crate::store::{AuditQuery, JobFilter, Store};

/// What the read routes need from a router's state: the store, the policy (next steps and the
/// plan) and the bearer token, if one is required.
pub trait ReadState: Clone + Send + Sync + 'static {
    /// The store the jobs and the audit log are read from.
    fn store(&self) -> &Store;
    /// The decision-ready policy.
    fn policy(&self) -> &Policy;
    /// The token protected routes require (`Authorization: Bearer <token>`), if any.
    fn token(&self) -> Option<&str>;
    /// The `[policy]` section jobs are resolved with (the console's Policy page).
    fn policy_config(&self) -> &crate::config::PolicyConfig;
    /// The live event bus `GET /v1/events` streams.
    fn events(&self) -> &crate::events::EventBus;
    /// Which runtime serves (the console says so, and offers only what it can do).
    fn runtime(&self) -> crate::model::RuntimeKind;
}

/// An error answer: `status` with `{"error": message}`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorBody { error: message })).into_response()
}

/// The answer to an unknown route: 404 in the JSON error shape.
pub async fn no_such_route() -> Response {
    error(StatusCode::NOT_FOUND, "no such route".into())
}

/// The answer to the wrong method on a known route (e.g. `POST /v1/jobs/{id}`): 405 in the
/// same JSON shape as every other error, not with an empty body.
pub async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

/// Middleware: with a token configured, answers 401 unless the request carries
/// `Authorization: Bearer <token>`.
pub async fn require_token<S: ReadState>(
    State(st): State<S>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = st.token() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (set JOBWARDEN_TOKEN for the CLI)".into(),
            );
        }
    }
    next.run(req).await
}

/// The job id of a `/v1/jobs/{id}…` route: 400 when the path does not decode, 404 when it is
/// not a valid job id (no job can have it).
#[allow(
    clippy::result_large_err,
    reason = "the error is the handler's early 400/404 response, built once per bad request"
)]
pub fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, Response> {
    // A path that does not even decode (bad percent-escape, not UTF-8) is a 400 in the same
    // JSON shape as every other error, not axum's plain-text rejection.
    let Path(id) = path.map_err(|r| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the job id in the URL: {}", r.body_text()),
        )
    })?;
    JobId::parse(&id).map_err(|e| error(StatusCode::NOT_FOUND, e.to_string()))
}

/// A job as the API shows it, with its next escalation step under `policy`, or when a finished
/// one is cleaned up.
pub fn view(policy: &Policy, job: &JobRecord) -> JobView {
    let mut v = JobView::from(job);
    v.next_step = ladder::next_step(job, &policy.warn_before).map(|s| NextStepView {
        step: s.step,
        due_at: s.due_at,
    });
    if matches!(job.stage, Stage::Completed | Stage::Failed)
        && let Expiry::At { at, .. } = retention::job_expiry(job, &policy.retention, clock::now())
    {
        v.cleanup_at = Some(at);
    }
    v
}

/// `GET /v1/jobs`: every job in the store.
pub async fn list_jobs<S: ReadState>(State(st): State<S>) -> Response {
    match st.store().list_jobs(&JobFilter::default()).await {
        Ok(jobs) => axum::Json(
            jobs.iter()
                .map(|j| view(st.policy(), j))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// `GET /v1/jobs/{id}`: one job, 404 if the store has none with that id.
pub async fn get_job<S: ReadState>(
    State(st): State<S>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match st.store().get_job(&id).await {
        Ok(Some(job)) => axum::Json(view(st.policy(), &job)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job with id {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    job: Option<String>,
    action: Option<String>,
    since: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/audit?job=&action=&since=&limit=`: audit rows; a bad parameter is a 400 naming it.
pub async fn audit<S: ReadState>(
    State(st): State<S>,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Response {
    let Query(p) = match query {
        Ok(q) => q,
        Err(r) => return error(r.status(), format!("query: {}", r.body_text())),
    };
    let action = match p
        .action
        .as_deref()
        .map(str::parse::<AuditAction>)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("parameter `action`: {e}")),
    };
    let since = match p.since.as_deref().map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("parameter `since`: {e}")),
    };
    let q = AuditQuery {
        job_id: p.job,
        action,
        since,
        limit: p.limit,
        ..AuditQuery::default()
    };
    match st.store().query_audit(&q).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// `since` is a duration back from now (`1h`) or an RFC 3339 time.
pub(crate) fn parse_since(s: &str) -> crate::Result<crate::model::Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    crate::duration::parse_duration(s)
        .map(|d| sub(clock::now(), d))
        .map_err(|e| crate::Error::invalid(format!("{s:?}"), format!("{e}; or an RFC 3339 time")))
}

/// `GET /v1/plan`: what the engine would do now for each stored job, and the next steps.
pub async fn plan<S: ReadState>(State(st): State<S>) -> Response {
    let jobs = match st.store().list_jobs(&JobFilter::default()).await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    };
    let policy = st.policy();
    let now = clock::now();
    let mut out = Vec::new();
    for job in &jobs {
        let (decision, wake) = decide(job, &Diagnosis::Healthy, policy, now);
        let (action, due_at, due_now, detail) = match decision {
            Decision::Nothing => match ladder::next_step(job, &policy.warn_before) {
                Some(s) => (s.step.as_str().to_owned(), Some(s.due_at), false, None),
                None => match wake {
                    Some(w) if !job.stage.is_active() => {
                        ("ttl_cleanup".to_owned(), Some(w), false, None)
                    }
                    Some(w) => (
                        "check".to_owned(),
                        Some(w),
                        false,
                        Some("heartbeat / startup check".to_owned()),
                    ),
                    None => continue,
                },
            },
            Decision::Step { step, due_at } => (step.as_str().to_owned(), Some(due_at), true, None),
            Decision::Cleanup { due_at, .. } => {
                ("ttl_cleanup".to_owned(), Some(due_at), true, None)
            }
            Decision::Recover { attempt, reason } => (
                "recover".to_owned(),
                None,
                true,
                Some(format!("attempt {attempt}: {reason}")),
            ),
            Decision::MarkFailed { reason } => ("mark_failed".to_owned(), None, true, Some(reason)),
        };
        out.push(PlanEntry {
            job_id: job.id.to_string(),
            name: job.name.clone(),
            stage: job.stage,
            action,
            due_at,
            due_now,
            detail,
        });
    }
    out.sort_by(|a, b| b.due_now.cmp(&a.due_now).then(a.due_at.cmp(&b.due_at)));
    axum::Json(out).into_response()
}
