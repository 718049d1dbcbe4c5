//! Admission-time enforcement: every batch/v1 Job (and CronJob `jobTemplate`) created in a
//! watched, unprotected namespace is born with its policy, by the same [`crate::policy::resolve`]
//! the controller uses. `[admission] mode = "enforce" | "warn"` starts it in
//! `run --runtime kubernetes`.
//!
//! - [`config`]: the `[admission]` section.
//! - [`review`]: the AdmissionReview v1 wire format and RFC 6902 patch operations.
//! - [`decide`]: what the mutating and validating webhooks answer (pure).
//! - [`server`]: the routes, the denial audit queue, the TLS accept loop.
//! - [`tls`]: the certificate, reloaded when its files change.
//! - [`webhook`]: `jobwarden manifest webhook` (the two webhook configurations).
//!
//! The webhook makes no API call: it only answers the API server (nothing to add to
//! [`crate::runtime::kubernetes::calls::API_CALLS`]).

pub mod config;
pub mod decide;
pub mod review;
pub mod server;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use config::{AdmissionConfig, Mode};
pub use decide::Admission;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// The webhook server as `run` starts it: what `cli::preflight` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// Certificate chain file.
    pub cert_file: PathBuf,
    /// Key file.
    pub key_file: PathBuf,
    /// `enforce` or `warn`.
    pub mode: Mode,
    /// How often the certificate files are checked for a change ([`tls::RELOAD_EVERY`]).
    pub reload_every: std::time::Duration,
}

/// The running webhook: its tasks, joined at shutdown.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    reloader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the server (once `stop` turned true), then for the audit writer to store
    /// what is queued (at most 5 s).
    pub async fn join(self) {
        let _ = self.server.await;
        let _ = self.reloader.await;
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.writer)
            .await
            .is_err()
        {
            tracing::warn!("admission: denial audit rows still queued at shutdown; not waiting");
        }
    }
}

/// Binds `plan.listen` and serves the webhooks until `stop` turns true. Errors are (exit
/// code, message), as `run` reports them.
pub async fn start(
    plan: &Plan,
    config: &Config,
    store: Store,
    metrics: Arc<Metrics>,
    dry_run: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Running, (u8, String)> {
    let resolver = tls::CertResolver::load(&plan.cert_file, &plan.key_file)
        .map_err(|e| (2, format!("admission: {e}")))?;
    let tls_config =
        tls::server_config(resolver.clone()).map_err(|e| (2, format!("admission: {e}")))?;
    let listener = tokio::net::TcpListener::bind(plan.listen)
        .await
        .map_err(|e| {
            (
                1,
                format!("cannot listen on {} (admission.listen): {e}", plan.listen),
            )
        })?;
    let addr = listener.local_addr().unwrap_or(plan.listen);
    let (audit_tx, audit_rx) = server::audit_queue();
    let writer = tokio::spawn(server::write_audit(store, audit_rx, metrics.clone()));
    let state = server::AdmissionState::new(
        Admission::new(config),
        metrics,
        Some(audit_tx),
        dry_run,
        crate::clock::now,
    );
    let app = server::router(state);
    let server = tokio::spawn(server::serve_tls(listener, tls_config, app, stop.clone()));
    let reloader = tokio::spawn(resolver.watch(plan.reload_every, stop));
    Ok(Running {
        addr,
        server,
        reloader,
        writer,
    })
}
