//! The administrator's API routes, the same for both runtimes (they read and write the store
//! only), under the API's token rule:
//!
//! - `GET /v1/report?since=&org=`: what jobwarden reclaimed ([`crate::reclaimed::Report`]);
//!   `since` is a duration back from now (`7d`) or an RFC 3339 time, default all.
//! - `GET /v1/dead-letters`: the dead-lettered cleanup tasks, with their last error.
//! - `POST /v1/dead-letters/{id}/requeue`: puts one back in the queue (200 with
//!   `{"id", "requeued": true}`; 404 when no dead task has that id; 409 when an unfinished
//!   task for the same resource exists).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::clock;
use crate::model::Timestamp;
use crate::reclaimed::{Report, ReportQuery};
use crate::store::{RequeueOutcome, Store};

use super::{ApiError, ReadState, error};

/// The query of `GET /v1/report`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    since: Option<String>,
    org: Option<String>,
}

/// The report over `store` since `since`, for `org`.
pub async fn report_for(
    store: &Store,
    since: Option<Timestamp>,
    org: Option<String>,
) -> Result<Report, crate::store::Error> {
    let query = ReportQuery {
        since,
        until: None,
        org,
    };
    let rows = store.reclaimed_rows(&query).await?;
    Ok(crate::reclaimed::report(&rows, &query))
}

/// `GET /v1/report`.
pub async fn report<S: ReadState>(
    State(st): State<S>,
    query: Result<Query<ReportParams>, QueryRejection>,
) -> Response {
    let Query(p) = match query {
        Ok(q) => q,
        Err(r) => return error(r.status(), format!("query: {}", r.body_text())),
    };
    let since = match p
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(super::read::parse_since)
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("parameter `since`: {e}")),
    };
    let org = p.org.filter(|o| !o.is_empty());
    if let Some(o) = &org
        && let Err(e) = crate::model::check_name("organisation", o)
    {
        return error(StatusCode::BAD_REQUEST, format!("parameter `org`: {e}"));
    }
    match report_for(st.store(), since, org).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// `GET /v1/dead-letters`.
pub async fn dead_letters<S: ReadState>(State(st): State<S>) -> Response {
    match st.store().dead_letters().await {
        Ok(tasks) => axum::Json(tasks).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// A task id in a path: 400 when it is not a positive number.
#[allow(
    clippy::result_large_err,
    reason = "the error is the handler's early 400 response, built once per bad request"
)]
pub fn parse_task_id(path: Result<Path<String>, PathRejection>) -> Result<i64, Response> {
    let Path(raw) = path.map_err(|r| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the task id in the URL: {}", r.body_text()),
        )
    })?;
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the task id in the URL: {raw:?} is not a task id (a positive number)"),
        )
    })
}

/// Requeues dead task `id`: the error is the answer (404 no such dead task, 409 an unfinished
/// task for the same resource, 503 the store).
pub async fn requeue(store: &Store, id: i64) -> Result<(), ApiError> {
    match store.requeue_dead(id, clock::now()).await {
        Ok(RequeueOutcome::Requeued) => Ok(()),
        Ok(RequeueOutcome::NotDead) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead-lettered task with id {id}"),
        )),
        Ok(RequeueOutcome::ActiveDuplicate(other)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "task {id} stays dead: task {other} for the same resource is pending or running"
            ),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}"),
        )),
    }
}

/// `POST /v1/dead-letters/{id}/requeue`.
pub async fn requeue_dead<S: ReadState>(
    State(st): State<S>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_task_id(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match requeue(st.store(), id).await {
        Ok(()) => axum::Json(serde_json::json!({ "id": id, "requeued": true })).into_response(),
        Err(e) => e.into_response(),
    }
}
