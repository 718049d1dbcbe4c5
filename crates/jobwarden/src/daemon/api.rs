//! The HTTP API (the README's "HTTP API").
//!
//! Reads go to the store (the handlers of [`crate::api_read`], shared with the Kubernetes
//! runtime); writes go to the enforcer as commands. Bodies are parsed by hand
//! so that every error is a 400 with `{"error": "..."}` naming the field; the daemon keeps
//! serving whatever arrives. With a token configured, every route but `/healthz`,
//! `/readyz`, `/metrics` and heartbeats requires `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::api_read::{
    ReadState, audit, error, get_job, list_jobs, method_not_allowed, no_such_route, parse_id, plan,
    require_token, view,
};
use crate::api_types::SubmitRequest;
use crate::clock;
use crate::daemon::Shared;
use crate::daemon::enforcer::{Command, CommandError};
use crate::engine::decide::Policy;
use crate::runtime::local::LocalRuntime;
use crate::store::Store;

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

impl ReadState for ApiState {
    fn store(&self) -> &Store {
        &self.shared.store
    }
    fn policy(&self) -> &Policy {
        &self.shared.policy
    }
    fn token(&self) -> Option<&str> {
        self.shared.token.as_deref()
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/jobs", get(list_jobs::<ApiState>).post(submit))
        .route("/v1/jobs/{id}", get(get_job::<ApiState>))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/audit", get(audit::<ApiState>))
        .route("/v1/plan", get(plan::<ApiState>))
        .route("/v1/orphans", get(orphans))
        .route("/v1/orphans/clean", post(orphans_clean))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token::<ApiState>,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat))
        .merge(protected)
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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

/// A submit request that breaks a rule beyond its types: which field, and what is wrong.
/// The API answers 400 `field `<field>`: <problem>`; `jobwarden submit` names the flag
/// ([`SubmitError::flag`]) and exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct SubmitError {
    /// The body's field (`org`, `timeout`, `command[0]`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl SubmitError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        SubmitError {
            field,
            problem: problem.into(),
        }
    }

    /// The `jobwarden submit` flag the field comes from (`--org`, `--type`, …; the command
    /// after `--`).
    pub fn flag(&self) -> &'static str {
        match self.field {
            "org" => "--org",
            "type" => "--type",
            "name" => "--name",
            "timeout" => "--timeout",
            "grace" => "--grace",
            "ttl" => "--ttl",
            "heartbeat_timeout" => "--heartbeat-timeout",
            _ => "the command after `--`",
        }
    }
}

/// Validates a submit request beyond its types: one rule for every way a job arrives (the
/// HTTP API, `jobwarden submit` before it sends anything).
pub fn validate_submit(req: &SubmitRequest) -> Result<(), SubmitError> {
    if req.command.is_empty() {
        return Err(SubmitError::new(
            "command",
            "must name a program (a non-empty array of strings)",
        ));
    }
    if req.command[0].is_empty() {
        return Err(SubmitError::new(
            "command[0]",
            "the program must not be empty",
        ));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(SubmitError::new(
            "command",
            "arguments must not contain NUL bytes",
        ));
    }
    if let Some(t) = req.timeout
        && t.0.is_zero()
    {
        return Err(SubmitError::new("timeout", "must be greater than 0"));
    }
    if let Some(v) = &req.name
        && (v.is_empty() || v.len() > 253 || v.chars().any(char::is_control))
    {
        return Err(SubmitError::new(
            "name",
            "must be 1–253 characters without control characters",
        ));
    }
    // Organisations and job types are key segments, label values and config keys: one rule.
    for (field, what, v) in [
        ("org", "organisation", &req.org),
        ("type", "job type", &req.job_type),
    ] {
        if let Some(v) = v
            && let Err(e) = crate::model::check_name(what, v)
        {
            return Err(SubmitError::new(field, e.to_string()));
        }
    }
    if let Some(h) = req.heartbeat_timeout
        && h.0.is_zero()
    {
        return Err(SubmitError::new(
            "heartbeat_timeout",
            "must be greater than 0",
        ));
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
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let (tx, rx) = oneshot::channel();
    if st.commands.send(Command::Submit(req, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match rx.await {
        Ok(Ok(job)) => (
            StatusCode::CREATED,
            axum::Json(view(&st.shared.policy, &job)),
        )
            .into_response(),
        Ok(Err(e)) => from_command(&st, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
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
        Ok(Ok(job)) => axum::Json(view(&st.shared.policy, &job)).into_response(),
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
        st.shared.cleanup.artifacts.check_reachable(),
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
                    st.shared.cleanup.artifacts.location()
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
    if !st.shared.health.is_ok() {
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
        && let Some(fault) = st.shared.health.faults.live()
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
                .to_string()
                .contains("`command`")
        );
        let zero: SubmitRequest =
            parse_body(br#"{"command":["x"],"timeout":"0s"}"#).expect("parses");
        let e = validate_submit(&zero).expect_err("zero");
        assert_eq!((e.field, e.flag()), ("timeout", "--timeout"));
        assert!(e.to_string().contains("`timeout`"), "{e}");
    }

    #[test]
    fn org_and_type_follow_the_naming_rule() {
        for (body, field, flag) in [
            (r#"{"command":["x"],"org":"../../x"}"#, "org", "--org"),
            (r#"{"command":["x"],"org":"ünïcode-org"}"#, "org", "--org"),
            (r#"{"command":["x"],"org":"_"}"#, "org", "--org"),
            (r#"{"command":["x"],"type":".hidden"}"#, "type", "--type"),
        ] {
            let req: SubmitRequest = parse_body(body.as_bytes()).expect("parses");
            let e = validate_submit(&req).expect_err(body);
            assert_eq!((e.field, e.flag()), (field, flag), "{body}");
            assert!(
                e.to_string()
                    .starts_with(&format!("field `{field}`: invalid ")),
                "{e}"
            );
        }
        let ok: SubmitRequest =
            parse_body(br#"{"command":["x"],"org":"acme-1","type":"build.fast"}"#).expect("ok");
        assert_eq!(validate_submit(&ok), Ok(()));
    }
}
