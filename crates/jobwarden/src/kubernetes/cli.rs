//! `jobwarden manifest …`: the clap arguments and the handler (no cluster needed).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::JobFlags;
use crate::config::Config;
use crate::model::{JobId, Timestamp};

use super::manifest::{JobRequest, render_job, to_json_value, to_yaml};

/// `manifest …`
#[derive(Debug, Subcommand)]
pub enum ManifestCmd {
    /// Print a FlowForge batch/v1 Job whose timeout, grace, deadline and TTL agree with the
    /// policy, with jobwarden-init as its entrypoint.
    Job(JobArgs),
    /// Print the MutatingWebhookConfiguration and ValidatingWebhookConfiguration that send
    /// Job and CronJob creations to jobwarden's admission webhook (`[admission]`).
    Webhook(WebhookArgs),
}

/// `manifest webhook`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("endpoint").required(true).args(["url", "service"])))]
#[command(group(clap::ArgGroup::new("ca").required(true).args(["ca_file", "inject_ca_from"])))]
pub struct WebhookArgs {
    /// jobwarden's webhook as an https:// URL (the paths /admission/mutate and
    /// /admission/validate are appended).
    #[arg(long)]
    pub url: Option<String>,
    /// jobwarden's webhook as a Service, NAMESPACE/NAME or NAMESPACE/NAME:PORT (port 443 by
    /// default), e.g.
    /// jobwarden/jobwarden for deploy/.
    #[arg(long)]
    pub service: Option<String>,
    /// The PEM CA that signed the webhook's certificate (becomes caBundle).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Let cert-manager's CA injector fill caBundle from this Certificate,
    /// NAMESPACE/CERTIFICATE (deploy/components/cert-manager).
    #[arg(long)]
    pub inject_ca_from: Option<String>,
    /// failurePolicy: Fail (no Job is created while jobwarden cannot answer) instead of
    /// Ignore.
    #[arg(long)]
    pub fail_closed: bool,
    /// The TOML config whose `kubernetes.namespaces` and `kubernetes.protected_namespaces`
    /// the namespaceSelector follows (default: the built-in defaults).
    #[arg(long, env = "JOBWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    pub output: Format,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// YAML (for `kubectl apply -f -`).
    Yaml,
    /// JSON.
    Json,
}

/// `manifest job`.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub job: JobFlags,
    /// Job id (the job-id label) [default: a fresh one].
    #[arg(long)]
    pub job_id: Option<String>,
    /// The TOML config whose policy applies [default: built-in defaults].
    #[arg(long, env = "JOBWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// jobwarden's API as the Job's pods reach it, for --heartbeat-timeout
    /// [default: the config's `[kubernetes] api_url`].
    #[arg(long, requires = "heartbeat_timeout")]
    pub heartbeat_server: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    pub output: Format,
}

/// Runs `manifest …`: the text for stdout, or (exit code, message).
pub fn manifest(cmd: ManifestCmd, now: Timestamp) -> Result<String, (u8, String)> {
    match cmd {
        ManifestCmd::Job(a) => manifest_job(a, now),
        ManifestCmd::Webhook(a) => manifest_webhook(a),
    }
}

/// `manifest webhook`: both configurations, as two YAML documents or a JSON `v1` List.
fn manifest_webhook(a: WebhookArgs) -> Result<String, (u8, String)> {
    use super::admission::webhook;
    let config = match &a.config {
        Some(p) => Config::load(p).map_err(|e| (2, e.to_string()))?,
        None => Config::default(),
    };
    let usage = |e: webhook::WebhookError| (2, e.to_string());
    let endpoint = match (&a.url, &a.service) {
        (Some(url), _) => webhook::parse_url(url).map_err(usage)?,
        (None, Some(service)) => webhook::parse_service(service).map_err(usage)?,
        (None, None) => return Err((2, "give --url or --service".to_owned())),
    };
    let ca = match (&a.ca_file, &a.inject_ca_from) {
        (Some(file), _) => webhook::read_ca(file).map_err(usage)?,
        (None, Some(cert)) => webhook::parse_inject(cert).map_err(usage)?,
        (None, None) => return Err((2, "give --ca-file or --inject-ca-from".to_owned())),
    };
    let req = webhook::WebhookRequest {
        endpoint,
        ca,
        fail_closed: a.fail_closed,
    };
    let (mutating, validating) = webhook::render(&req, &config.kubernetes);
    let values = [
        serde_json::to_value(&mutating).map_err(|e| (1, e.to_string()))?,
        serde_json::to_value(&validating).map_err(|e| (1, e.to_string()))?,
    ];
    match a.output {
        Format::Yaml => {
            let mut out = String::new();
            for v in &values {
                out.push_str("---\n");
                out.push_str(
                    &serde_saphyr::to_string(v)
                        .map_err(|e| (1, format!("cannot render YAML: {e}")))?,
                );
            }
            Ok(out)
        }
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values});
            serde_json::to_string_pretty(&list)
                .map(|s| s + "\n")
                .map_err(|e| (1, e.to_string()))
        }
    }
}

fn manifest_job(a: JobArgs, now: Timestamp) -> Result<String, (u8, String)> {
    let config = match &a.config {
        Some(p) => Config::load(p).map_err(|e| (2, e.to_string()))?,
        None => Config::default(),
    };
    let job_id = match &a.job_id {
        Some(s) => JobId::parse(s).map_err(|e| (2, format!("--job-id: {e}")))?,
        None => JobId::generate(now),
    };
    let server = a
        .heartbeat_server
        .unwrap_or_else(|| config.kubernetes.api_url.clone());
    let submitted = a.job.request();
    crate::http::submit::validate_submit(&submitted)
        .map_err(|e| (2, format!("{}: {}", e.flag(), e.problem)))?;
    let req = JobRequest::from_submit(submitted, job_id, &server);
    let rendered = render_job(&req, &config).map_err(|e| (2, e.to_string()))?;
    match a.output {
        Format::Yaml => to_yaml(&rendered.job).map_err(|e| (1, e.to_string())),
        Format::Json => to_json_value(&rendered.job)
            .and_then(|v| {
                serde_json::to_string_pretty(&v)
                    .map_err(|e| crate::Error::invalid("the Job as JSON", e.to_string()))
            })
            .map(|s| s + "\n")
            .map_err(|e| (1, e.to_string())),
    }
}

/// What `jobwarden run --runtime kubernetes` was given.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--store` (else `[store] url`, else SQLite in `data_dir`).
    pub store: Option<String>,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--artifacts` (else `[artifacts] url`, else `file://<data-dir>/artifacts`): where the
    /// cleanup workers delete TTL-deleted Jobs' artifacts and logs.
    pub artifacts: Option<String>,
    /// `--listen` (else `[server] listen`): `/healthz`, `/readyz`, `/metrics` and the job API
    /// ([`super::api`]).
    pub listen: Option<std::net::SocketAddr>,
    /// `--dry-run`.
    pub dry_run: bool,
}

/// How long shutdown waits for running hooks (a pod gets 30 s by default in all).
const HOOKS_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a graceful shutdown waits for the Events queued to the background poster.
const EVENTS_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// `/healthz`, `/readyz` (200 once both watches listed, saying whether this replica leads)
/// and `/metrics` (with `jobwarden_leader`) of `run --runtime kubernetes`.
pub fn health_router(
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    leading: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    crate::http::health(KubeHealth {
        ready,
        metrics,
        leading,
    })
}

/// What `/readyz` and `/metrics` read in Kubernetes mode.
#[derive(Clone)]
struct KubeHealth {
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    leading: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl crate::http::Health for KubeHealth {
    async fn ready(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let role = if *self.leading.borrow() {
            "leading"
        } else {
            "standby (another replica leads)"
        };
        if self.ready.load(std::sync::atomic::Ordering::Relaxed) {
            (
                axum::http::StatusCode::OK,
                format!("ready: Jobs and Pods listed; {role}\n"),
            )
                .into_response()
        } else {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: waiting for the first listing of Jobs and Pods; {role}\n"),
            )
                .into_response()
        }
    }

    fn metrics(&self) -> String {
        self.metrics.set_leader(*self.leading.borrow());
        self.metrics.render()
    }
}

/// Runs the Kubernetes controller until `shutdown` completes. Errors are (exit code, message).
pub async fn run(
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), (u8, String)> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let (config, source) = match &opts.config {
        Some(p) => (
            Config::load(p).map_err(|e| (2, e.to_string()))?,
            p.display().to_string(),
        ),
        None => (Config::default(), "<built-in defaults>".to_owned()),
    };
    // The checks of the local `run` and `config check` (one path): the listen address, the
    // job API's token (required off loopback), the store and artifacts URLs.
    let checked = crate::cli::preflight(
        &config,
        &source,
        &opts.data_dir,
        &crate::cli::Overrides {
            listen: opts.listen,
            store: opts.store.as_deref(),
            artifacts: opts.artifacts.as_deref(),
        },
    )
    .map_err(|f| (f.code, f.message))?;
    let (listen, token, store_url, artifacts_url, admission_plan) = (
        checked.listen,
        checked.token,
        checked.store_url,
        checked.artifacts_url,
        checked.admission,
    );
    // The cluster first: without one, nothing is opened or created (no empty store file).
    let client = kube::Client::try_default().await.map_err(|e| {
        (
            1,
            format!("no Kubernetes API server: {e} (in a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config)"),
        )
    })?;
    // (A file:// artifact store is a directory, created on opening: after the cluster too.)
    let artifacts = if opts.dry_run {
        None
    } else {
        Some(
            super::cleanup::open_artifacts(&artifacts_url, &config)
                .map_err(|e| (2, format!("artifacts: {e}")))?,
        )
    };
    let store = crate::store::Store::open(&store_url)
        .await
        .map_err(|e| (1, e.to_string()))?;
    let pod_name = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty());
    let instance = pod_name.clone().unwrap_or_else(|| "jobwarden".to_owned());
    // The Lease holder must be unique among live replicas: the pod name is; without one, a
    // random suffix keeps two processes from both believing they hold the Lease.
    let identity = pod_name.unwrap_or_else(|| format!("jobwarden-{:08x}", rand::random::<u32>()));
    let lease = super::leader::LeaseSettings::new(
        &config.kubernetes,
        &identity,
        std::env::var("POD_NAMESPACE").ok().as_deref(),
        std::fs::read_to_string(super::leader::SERVICE_ACCOUNT_NAMESPACE_FILE)
            .ok()
            .as_deref(),
    );
    let scope = super::observe::Scope::new(&config.kubernetes, &config.annotations.prefix);
    let actions =
        crate::runtime::kubernetes::Actions::new(client.clone(), scope, opts.dry_run, &instance);
    let label = config.kubernetes.job_id_label.clone();
    // One budget of destructive calls for TTL deletes and orphan deletes together.
    let limiter = Arc::new(crate::ratelimit::RateLimiter::per_minute(
        config.kubernetes.destructive_calls_per_minute,
    ));
    let orphans = super::orphans::OrphanPass::from_config(
        client.clone(),
        &config,
        store.clone(),
        opts.dry_run,
    )
    .with_limiter(limiter.clone());
    let cleanup_config = config.clone();
    let admission_config = config.clone();
    let admission_store = store.clone();
    let api_config = config.clone();
    let api_actions = actions.clone();
    let reconciler = super::reconcile::Reconciler::new(config, store.clone(), actions)
        .with_limiter(limiter)
        .with_background_events();
    let events = reconciler.events();
    let api = super::api::ApiState::new(
        store.clone(),
        api_config,
        api_actions,
        orphans.clone(),
        token,
        events.clone(),
    );
    let hooks_idle = reconciler.hooks_idle();
    let events_posted = reconciler.events_posted();
    let ready = Arc::new(AtomicBool::new(false));
    // Every replica watches; only the leader acts (dry-run acts without a Lease).
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(opts.dry_run);

    let app = health_router(ready.clone(), reconciler.metrics(), leading_rx.clone())
        .merge(super::api::router(api));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| (1, format!("cannot listen on {listen}: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The admission webhook before anything else runs: a port taken or a certificate gone
    // since the preflight stops `run` with nothing started.
    let admission = match &admission_plan {
        Some(plan) => Some(
            super::admission::start(
                plan,
                &admission_config,
                admission_store,
                reconciler.metrics(),
                opts.dry_run,
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let admission_note = match (&admission, &admission_plan) {
        (Some(running), Some(plan)) => format!(
            "; admission webhook ({}) on https://{}",
            plan.mode.as_str(),
            running.addr
        ),
        _ => String::new(),
    };
    // The reclaimed figures of /metrics, from the store (every replica: they share it).
    let refresher = tokio::spawn(crate::reclaimed::refresh_metrics(
        store.clone(),
        reconciler.metrics(),
        stop_rx.clone(),
    ));
    // Every replica works the cleanup queue (task leases keep a task to one worker); dry-run
    // queues nothing and works nothing (see `cleanup`).
    let workers = match artifacts {
        Some(artifacts) => {
            let probe = artifacts.clone();
            tokio::spawn(async move {
                let check = tokio::time::timeout(
                    std::time::Duration::from_secs(15),
                    probe.check_reachable(),
                );
                match check.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "artifacts: {e}; TTL cleanup of artifacts and logs fails and is retried until it answers"
                    ),
                    Err(_) => tracing::warn!(
                        "artifacts: {} did not answer within 15s; TTL cleanup of artifacts and logs is retried until it does",
                        probe.location()
                    ),
                }
            });
            super::cleanup::start(
                &cleanup_config,
                store,
                artifacts,
                &opts.data_dir,
                &store_url,
                &identity,
                events.clone(),
                &stop_rx,
            )
        }
        None => Vec::new(),
    };
    let mut http_stop = stop_rx.clone();
    let http_events = events.clone();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
                // Open event streams end, or the graceful shutdown would wait for them.
                http_events.close();
            })
            .await;
    });
    let election = if opts.dry_run {
        // Dry-run writes nothing, the Lease included (a dry-run replica holding it would keep
        // the real one from acting); it sends no action either, so it needs no leadership.
        "no leader election in dry-run".to_owned()
    } else {
        format!(
            "leader election on Lease {} as {} (lease {})",
            lease.lease(),
            lease.identity,
            crate::duration::format_duration(lease.lease_duration)
        )
    };
    let cleanup = if opts.dry_run {
        "no cleanup workers in dry-run".to_owned()
    } else {
        format!(
            "{} cleanup workers on {}",
            workers.len(),
            crate::store::redact_url(&artifacts_url)
        )
    };
    eprintln!(
        "jobwarden (kubernetes{}) watching Jobs labelled {label}; {election}; {cleanup}; API and health on http://{listen}{admission_note} (config: {source})",
        if opts.dry_run { ", dry-run" } else { "" }
    );
    // Shutdown order: the controller stops acting first, then the elector releases the Lease.
    let (elector_stop_tx, elector_stop_rx) = tokio::sync::watch::channel(false);
    let elector = if opts.dry_run {
        None
    } else {
        Some(tokio::spawn(super::leader::run(
            super::leader::Elector::new(client.clone(), lease),
            leading_tx,
            elector_stop_rx,
            crate::clock::now,
        )))
    };
    let controller = tokio::spawn(super::controller::run_with_orphans(
        Some(orphans),
        client,
        label,
        reconciler,
        ready,
        leading_rx,
        stop_rx,
        crate::clock::now,
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = controller.await;
    // The controller (and with it the last sender of the Event poster) is gone: the Events
    // queued for steps already taken are posted now, within bounds.
    if tokio::time::timeout(EVENTS_AT_SHUTDOWN, events_posted)
        .await
        .is_err()
    {
        tracing::warn!(
            "Events still queued {} after shutdown began; not waiting for them (the steps are recorded)",
            crate::duration::format_duration(EVENTS_AT_SHUTDOWN)
        );
    }
    for worker in workers {
        let _ = worker.await;
    }
    let _ = refresher.await;
    // Let running hooks finish and audit (each has its own timeout), within bounds.
    if tokio::time::timeout(HOOKS_AT_SHUTDOWN, hooks_idle)
        .await
        .is_err()
    {
        tracing::warn!(
            "hooks still running {} after shutdown began; not waiting for them",
            crate::duration::format_duration(HOOKS_AT_SHUTDOWN)
        );
    }
    let _ = elector_stop_tx.send(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    let _ = http.await;
    if let Some(admission) = admission {
        admission.join().await;
    }
    Ok(())
}
