//! The HTTP API (`../shared/DESIGN.md` §3).
//!
//! Reads go to the store; writes go to the enforcer as commands. Bodies are parsed by hand
//! so that every error is a 400 with `{"error": "..."}` naming the field; the daemon keeps
//! serving whatever arrives. With a token configured, every route but `/healthz`,
//! `/readyz`, `/metrics` and heartbeats requires `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::api_types::{ErrorBody, JobView, NextStepView, PlanEntry, SubmitRequest};
use crate::clock;
use crate::daemon::Shared;
use crate::daemon::enforcer::{Command, CommandError};
use crate::engine::decide::{Decision, decide};
use crate::engine::ladder;
use crate::engine::recovery::Diagnosis;
use crate::model::{AuditAction, JobId, JobRecord, sub};
use crate::runtime::local::LocalRuntime;
use crate::store::{AuditQuery, JobFilter};

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Shared daemon state.
    pub shared: Arc<Shared>,
    /// The enforcer's command channel.
    pub commands: mpsc::Sender<Command>,
    /// The local runtime (paths for orphan scans).
    pub runtime: LocalRuntime,
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/jobs", get(list_jobs).post(submit))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/audit", get(audit))
        .route("/v1/plan", get(plan))
        .route("/v1/orphans", get(orphans))
        .route("/v1/orphans/clean", post(orphans_clean))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        // The wrong method on a known route (e.g. POST /v1/jobs/{id}) answers in the same JSON
        // shape as every other error, not with an empty body.
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorBody { error: message })).into_response()
}

fn from_command(st: &ApiState, e: CommandError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The driver's "disk I/O error" does not say why; the daemon's diagnosis does.
    let message = match st.shared.write_fault() {
        Some(fault) if status == StatusCode::SERVICE_UNAVAILABLE => {
            format!("{}; {fault}", e.message)
        }
        _ => e.message,
    };
    error(status, message)
}

async fn require_token(
    State(st): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &st.shared.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (set JOBWARDEN_TOKEN for the CLI)".into(),
            );
        }
    }
    next.run(req).await
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the handler's early 400/404 response, built once per bad request"
)]
fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, Response> {
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

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            format!("invalid request body: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        }
    })
}

/// Validates a submit request beyond its types.
pub fn validate_submit(req: &SubmitRequest) -> Result<(), String> {
    if req.command.is_empty() {
        return Err("field `command`: must name a program (a non-empty array of strings)".into());
    }
    if req.command[0].is_empty() {
        return Err("field `command[0]`: the program must not be empty".into());
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err("field `command`: arguments must not contain NUL bytes".into());
    }
    if let Some(t) = req.timeout
        && t.0.is_zero()
    {
        return Err("field `timeout`: must be greater than 0".into());
    }
    for (field, v) in [
        ("name", &req.name),
        ("org", &req.org),
        ("type", &req.job_type),
    ] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 253 || v.chars().any(char::is_control))
        {
            return Err(format!(
                "field `{field}`: must be 1–253 characters without control characters"
            ));
        }
    }
    if let Some(h) = req.heartbeat_timeout
        && h.0.is_zero()
    {
        return Err("field `heartbeat_timeout`: must be greater than 0".into());
    }
    Ok(())
}

async fn submit(State(st): State<ApiState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        // Too large (413) or unreadable: the same JSON error shape as every other answer.
        Err(r) => return error(r.status(), format!("request body: {}", r.body_text())),
    };
    let req: SubmitRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = validate_submit(&req) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let (tx, rx) = oneshot::channel();
    if st.commands.send(Command::Submit(req, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match rx.await {
        Ok(Ok(job)) => (StatusCode::CREATED, axum::Json(view(&st, &job))).into_response(),
        Ok(Err(e)) => from_command(&st, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
    }
}

fn view(st: &ApiState, job: &JobRecord) -> JobView {
    let mut v = JobView::from(job);
    v.next_step = ladder::next_step(job, &st.shared.policy.warn_before).map(|s| NextStepView {
        step: s.step,
        due_at: s.due_at,
    });
    v
}

async fn list_jobs(State(st): State<ApiState>) -> Response {
    match st.shared.store.list_jobs(&JobFilter::default()).await {
        Ok(jobs) => {
            axum::Json(jobs.iter().map(|j| view(&st, j)).collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

async fn get_job(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match st.shared.store.get_job(&id).await {
        Ok(Some(job)) => axum::Json(view(&st, &job)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job with id {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

async fn cancel(State(st): State<ApiState>, path: Result<Path<String>, PathRejection>) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (tx, rx) = oneshot::channel();
    if st.commands.send(Command::Cancel(id, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match rx.await {
        Ok(Ok(job)) => axum::Json(view(&st, &job)).into_response(),
        Ok(Err(e)) => from_command(&st, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
    }
}

async fn heartbeat(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id(path) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (tx, rx) = oneshot::channel();
    if st.commands.send(Command::Heartbeat(id, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match rx.await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => from_command(&st, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    job: Option<String>,
    action: Option<String>,
    since: Option<String>,
    limit: Option<u32>,
}

async fn audit(
    State(st): State<ApiState>,
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
        until: None,
        limit: p.limit,
    };
    match st.shared.store.query_audit(&q).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// `since` is a duration back from now (`1h`) or an RFC 3339 time.
fn parse_since(s: &str) -> Result<crate::model::Timestamp, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    crate::duration::parse_duration(s)
        .map(|d| sub(clock::now(), d))
        .map_err(|e| format!("{e}; or an RFC 3339 time"))
}

async fn plan(State(st): State<ApiState>) -> Response {
    let jobs = match st.shared.store.list_jobs(&JobFilter::default()).await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    };
    let now = clock::now();
    let mut out = Vec::new();
    for job in &jobs {
        let (decision, wake) = decide(job, &Diagnosis::Healthy, &st.shared.policy, now);
        let (action, due_at, due_now, detail) = match decision {
            Decision::Nothing => match ladder::next_step(job, &st.shared.policy.warn_before) {
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

async fn orphans(State(st): State<ApiState>) -> Response {
    let (report, _, _) =
        crate::daemon::orphans::scan_all(&st.shared, &st.runtime, clock::now()).await;
    axum::Json(report).into_response()
}

async fn orphans_clean(State(st): State<ApiState>) -> Response {
    match crate::daemon::orphans::clean(&st.shared, &st.runtime, clock::now()).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn readyz(State(st): State<ApiState>) -> Response {
    if !st.shared.loaded.load(std::sync::atomic::Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading jobs from the store and re-adopting their processes".into(),
        );
    }
    let artifacts = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        st.shared.artifacts.check_reachable(),
    )
    .await;
    match artifacts {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("artifacts unreachable: {e}"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "artifacts unreachable: {} did not answer within 5s",
                    st.shared.artifacts.location()
                ),
            );
        }
    }
    let ping = tokio::time::timeout(STORE_PING_TIMEOUT, st.shared.store.ping()).await;
    match ping {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            st.shared.set_store_ok(false);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unreachable: {e}"),
            );
        }
        Err(_) => {
            st.shared.set_store_ok(false);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "store unreachable: no answer within {}s",
                    STORE_PING_TIMEOUT.as_secs()
                ),
            );
        }
    }
    // The store answers a read. If a store call failed since the last successful write, check
    // that writes work again (a write transaction that changes nothing: there is no dead task
    // -1) before saying ready: a connection left unusable by a failed write must not look
    // healthy.
    if !st.shared.store_ok.load(std::sync::atomic::Ordering::SeqCst) {
        let probe = tokio::time::timeout(
            STORE_PING_TIMEOUT,
            st.shared.store.requeue_dead(-1, clock::now()),
        )
        .await;
        let failed = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {}s",
                STORE_PING_TIMEOUT.as_secs()
            )),
        };
        if let Some(e) = failed {
            st.shared.set_store_ok(false);
            let why = st.shared.write_fault().unwrap_or(e);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store cannot write: {why}"),
            );
        }
    }
    // A write that failed for want of space (or at the file-size limit) keeps the daemon
    // not-ready for as long as the condition holds.
    if st.shared.write_fault().is_some()
        && let Some(fault) = st.shared.faults.live()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store cannot write: {fault}"),
        );
    }
    st.shared.set_store_ok(true);
    (StatusCode::OK, "ready\n").into_response()
}

/// How long `/readyz` waits for the store (a probe must answer, not hang).
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.shared.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<SubmitRequest>(br#"{"command":["x"],"timout":"1h"}"#)
            .expect_err("unknown");
        assert!(e.contains("timout"), "{e}");
        let e = parse_body::<SubmitRequest>(br#"{"command":"x"}"#).expect_err("type");
        assert!(e.contains("`command`"), "{e}");
        let e =
            parse_body::<SubmitRequest>(br#"{"command":["x"],"timeout":"2x"}"#).expect_err("dur");
        assert!(e.contains("`timeout`") && e.contains("2x"), "{e}");
        let e = parse_body::<SubmitRequest>(br#"{"command":["x"],"grace":-1}"#).expect_err("neg");
        assert!(e.contains("`grace`"), "{e}");
        let e = parse_body::<SubmitRequest>(b"not json").expect_err("syntax");
        assert!(e.contains("invalid request body"), "{e}");
        let ok: SubmitRequest =
            parse_body(br#"{"command":["sleep","1"],"timeout":30,"ttl":"1h"}"#).expect("ok");
        assert_eq!(ok.timeout.map(|d| d.as_secs()), Some(30));
        assert!(validate_submit(&ok).is_ok());
        let empty: SubmitRequest = parse_body(br#"{"command":[]}"#).expect("parses");
        assert!(
            validate_submit(&empty)
                .expect_err("empty")
                .contains("`command`")
        );
        let zero: SubmitRequest =
            parse_body(br#"{"command":["x"],"timeout":"0s"}"#).expect("parses");
        assert!(
            validate_submit(&zero)
                .expect_err("zero")
                .contains("`timeout`")
        );
    }
}
