//! The local daemon's side of the HTTP API ([`crate::http`]): submit, cancel and heartbeats go
//! to the enforcer as commands (it owns the jobs and the process groups); orphans are the local
//! scan of workspaces, logs and object prefixes; `/readyz` says whether the jobs are loaded and
//! the store and the artifact store answer (and can be written).

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use crate::api_types::SubmitRequest;
use crate::clock;
use crate::daemon::Shared;
use crate::daemon::enforcer::{Command, CommandError};
use crate::engine::decide::Policy;
use crate::http::{ApiError, Backend, Health, ReadState, error};
use crate::model::{JobId, JobRecord};
use crate::runtime::local::LocalRuntime;
use crate::store::Store;

pub use crate::http::submit::{BodyError, SubmitError, parse_body, validate_submit};

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
    fn policy_config(&self) -> &crate::config::PolicyConfig {
        &self.shared.config.policy
    }
    fn events(&self) -> &crate::events::EventBus {
        self.shared.hooks.events()
    }
    fn runtime(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Local
    }
}

/// The router: the job API and the health routes.
pub fn router(state: ApiState) -> Router {
    crate::http::api(state.clone()).merge(crate::http::health(state))
}

impl ApiState {
    /// Sends `command` to the enforcer and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        self.commands.send(command(tx)).await.map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| self.command_error(e))
    }

    fn command_error(&self, e: CommandError) -> ApiError {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The driver's "disk I/O error" does not say why; the daemon's diagnosis does.
        let message = match self.shared.write_fault() {
            Some(fault) if status == StatusCode::SERVICE_UNAVAILABLE => {
                format!("{}; {fault}", e.message)
            }
            _ => e.message,
        };
        ApiError::new(status, message)
    }
}

#[async_trait::async_trait]
impl Backend for ApiState {
    async fn submit(&self, req: SubmitRequest) -> Result<JobRecord, ApiError> {
        // A Job's settings: accepted by a Kubernetes-mode daemon only. Refused rather than
        // ignored, so a job meant for a cluster never runs as a local process.
        for (field, set) in [
            ("image", req.image.is_some()),
            ("namespace", req.namespace.is_some()),
        ] {
            if set {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "field `{field}`: this daemon runs local processes; `{field}` is for a daemon started with `run --runtime kubernetes`"
                    ),
                ));
            }
        }
        self.ask(|tx| Command::Submit(req, tx)).await
    }

    async fn cancel(&self, id: JobId) -> Result<(StatusCode, JobRecord), ApiError> {
        let job = self.ask(|tx| Command::Cancel(id, tx)).await?;
        Ok((StatusCode::OK, job))
    }

    async fn heartbeat(&self, id: JobId) -> Result<(), ApiError> {
        self.ask(|tx| Command::Heartbeat(id, tx)).await
    }

    async fn orphans(&self) -> Result<serde_json::Value, ApiError> {
        let (report, _, _) =
            crate::daemon::orphans::scan_all(&self.shared, &self.runtime, clock::now()).await;
        Ok(serde_json::to_value(report).unwrap_or_default())
    }

    async fn clean_orphans(&self) -> Result<serde_json::Value, ApiError> {
        match crate::daemon::orphans::clean(&self.shared, &self.runtime, clock::now()).await {
            Ok(r) => Ok(serde_json::to_value(r).unwrap_or_default()),
            Err(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("queueing orphan cleanup: {e}"),
            )),
        }
    }
}

#[async_trait::async_trait]
impl Health for ApiState {
    async fn ready(&self) -> Response {
        readyz(self).await
    }

    fn metrics(&self) -> String {
        self.shared.metrics.render()
    }
}

async fn readyz(st: &ApiState) -> Response {
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
