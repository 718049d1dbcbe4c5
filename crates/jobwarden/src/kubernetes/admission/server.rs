//! The webhook's HTTPS server: `POST /admission/mutate`, `POST /admission/validate`,
//! `GET /healthz`, over TLS (tokio-rustls) with HTTP/1.1 (hyper), one task per connection.
//!
//! A request is answered from the in-memory [`Admission`] alone. A denial's audit row goes to
//! a bounded queue that one writer task drains into the store, so a slow or unreachable store
//! never delays an answer (the API server gives the webhook `timeoutSeconds`); when the queue
//! is full the row is dropped, logged and counted (`jobwarden_errors_total{kind="admission_audit"}`).
//! Dry-run requests write no row. Bodies that are not an AdmissionReview get 400 with
//! `{"error": …}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::metrics::{AdmissionWebhook, Metrics};
use crate::model::{AuditEntry, Timestamp};
use crate::store::Store;

use super::decide::Admission;
use super::review::{Answer, parse_review, response};

/// Largest request body: an AdmissionReview carries the object (etcd keeps at most 1.5 MiB)
/// and, on UPDATE, the old one.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Denial rows waiting for the store; beyond this they are dropped (and counted).
pub const AUDIT_QUEUE: usize = 1024;

/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug)]
pub struct AdmissionState {
    admission: Admission,
    metrics: Arc<Metrics>,
    audit: Option<mpsc::Sender<AuditEntry>>,
    dry_run: bool,
    clock: fn() -> Timestamp,
}

impl AdmissionState {
    /// `audit`: where denial rows go ([`audit_queue`]; `None`: nowhere). `dry_run`: jobwarden
    /// runs with `--dry-run`: every Job is admitted unchanged, and the denials it would have
    /// made are audited as dry-run rows. `clock`: [`crate::clock::now`] outside tests.
    pub fn new(
        admission: Admission,
        metrics: Arc<Metrics>,
        audit: Option<mpsc::Sender<AuditEntry>>,
        dry_run: bool,
        clock: fn() -> Timestamp,
    ) -> Self {
        metrics.admission_enabled();
        AdmissionState {
            admission,
            metrics,
            audit,
            dry_run,
            clock,
        }
    }

    fn audit(&self, row: AuditEntry) {
        let Some(tx) = &self.audit else { return };
        if let Err(e) = tx.try_send(row) {
            self.metrics.error("admission_audit");
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the queue to the store is full",
                mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
            };
            tracing::warn!("admission: a denial's audit row was dropped: {why}");
        }
    }
}

/// The webhook's routes.
pub fn router(state: AdmissionState) -> Router {
    Router::new()
        .route("/admission/mutate", post(mutate))
        .route("/admission/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(state))
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn answered(uid: &str, answer: &Answer) -> Response {
    (StatusCode::OK, axum::Json(response(uid, answer))).into_response()
}

async fn mutate(State(s): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let webhook = AdmissionWebhook::Mutate;
    let decided = parse_review(&body).and_then(|req| {
        let answer = s.admission.mutate(&req, (s.clock)())?;
        Ok((req.uid, answer))
    });
    let (result, reply) = match decided {
        Err(e) => ("bad_request", bad_request(e.to_string())),
        Ok((uid, answer)) => {
            let answer = if s.dry_run { Answer::allow() } else { answer };
            let result = if answer.patch.is_empty() {
                "allowed"
            } else {
                "patched"
            };
            (result, answered(&uid, &answer))
        }
    };
    s.metrics
        .admission_request(webhook, result, started.elapsed().as_secs_f64());
    reply
}

async fn validate(State(s): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let webhook = AdmissionWebhook::Validate;
    let decided = parse_review(&body).and_then(|req| {
        let verdict = s.admission.validate(&req, (s.clock)())?;
        Ok((req, verdict))
    });
    let (result, reply) = match decided {
        Err(e) => ("bad_request", bad_request(e.to_string())),
        Ok((req, verdict)) => {
            let verdict = if s.dry_run {
                verdict.admitted_in_dry_run()
            } else {
                verdict
            };
            // A dry-run request has no side effects: no audit row.
            if let Some(row) = verdict.audit.clone()
                && !req.is_dry_run()
            {
                s.audit(row);
            }
            let a = &verdict.answer;
            let result = if !a.allowed {
                "denied"
            } else if !a.warnings.is_empty() {
                "warned"
            } else {
                "allowed"
            };
            (result, answered(&req.uid, a))
        }
    };
    s.metrics
        .admission_request(webhook, result, started.elapsed().as_secs_f64());
    reply
}

/// The queue denial rows go through: the sender for [`AdmissionState::new`], the receiver for
/// [`write_audit`].
pub fn audit_queue() -> (mpsc::Sender<AuditEntry>, mpsc::Receiver<AuditEntry>) {
    mpsc::channel(AUDIT_QUEUE)
}

/// Writes queued denial rows to the store (up to 100 per insert) until every sender is gone.
pub async fn write_audit(
    store: Store,
    mut rows: mpsc::Receiver<AuditEntry>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rows.recv().await {
        let mut batch = vec![first];
        while batch.len() < 100 {
            match rows.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        match store.append_audit(&batch).await {
            Ok(()) => metrics.audit_written(batch.len() as u64),
            Err(e) => {
                metrics.error("store");
                tracing::warn!(
                    "admission: {} denial audit row(s) not written: {e}",
                    batch.len()
                );
            }
        }
    }
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` over TLS on `listener` until `stop` turns true; then stops accepting, lets
/// each connection finish its request, and returns.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!("admission: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("admission: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}
