//! The object-storage cleanup of TTL-deleted Jobs: the local runtime's durable queue and
//! cleanup workers, run by `jobwarden run --runtime kubernetes`.
//!
//! Once a Job's TTL delete succeeded, [`super::reconcile`] queues its run's `artifact_prefix`
//! tasks (`jobs/<org>/<id>/`, `partial/<id>/`, `logs/<id>/`, the local runtime's kind and
//! dedupe keys: [`crate::engine::plan::artifact_tasks`]), each due at the finish plus that
//! kind's `[retention.artifacts]`. [`start`] runs `[queue] workers` of the local daemon's
//! workers on them, on every replica (not only the leader): a claimed task is leased to its
//! worker, so replicas sharing a PostgreSQL store share the queue without running a task
//! twice. A worker deletes a prefix only while the task still applies to the job as stored
//! (same run, still finished), takes a token from `[safety] max_deletions_per_minute` first,
//! and completes the task together with its audit row (`ttl_cleanup`, `object_prefix`).
//!
//! The Job's labelled PVCs, Secrets and ConfigMaps are not queued: the reconcile deletes them
//! right after the TTL delete (`Actions::delete_labelled`); any left behind otherwise are
//! orphans for [`super::orphans`].
//!
//! Dry-run queues nothing and starts no worker. (The local daemon's dry-run runs its workers
//! in dry-run mode, which complete whatever tasks they find as "would delete". A Kubernetes
//! dry-run replica may share its store with a live deployment, whose tasks it would so take
//! away from the live workers.)

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::artifacts::{Artifacts, ArtifactsConfig};
use crate::cleanup::Context;
use crate::config::Config;
use crate::engine::plan::Layout;
use crate::health::{StoreHealth, WriteFaults};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// Opens the artifact store at `url` with the `[artifacts]` settings (no call is made: an
/// unreachable store shows in the workers' retries, never stops the controller).
pub fn open_artifacts(url: &str, config: &Config) -> Result<Artifacts, crate::artifacts::Error> {
    let artifacts_config = ArtifactsConfig {
        url: Some(url.to_owned()),
        ..config.artifacts.clone()
    };
    Artifacts::open(&artifacts_config, crate::artifacts::retry_config())
}

/// Starts the cleanup workers, named `<name>-w<i>` (`name` must differ between replicas: a
/// task's lease is held by name), until `shutdown` turns true; each finished or dead-lettered
/// task is published on `events` (the reconciler's bus, which `GET /v1/events` streams). `data_dir` and `store_url`
/// only serve the workers' diagnosis of local write faults; Kubernetes mode queues no task
/// that touches local files.
#[allow(
    clippy::too_many_arguments,
    reason = "what the workers share, each named at the one call site in `run`"
)]
pub fn start(
    config: &Config,
    store: Store,
    artifacts: Artifacts,
    data_dir: &Path,
    store_url: &str,
    name: &str,
    events: crate::events::EventBus,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ctx = Arc::new(Context {
        store,
        artifacts,
        deletions: RateLimiter::per_minute(config.safety.max_deletions_per_minute),
        layout: Layout::new(data_dir),
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(StoreHealth::new(WriteFaults::new(
            data_dir.to_owned(),
            store_url,
        ))),
        kick: tokio::sync::Notify::new(),
        queue: config.queue.clone(),
        artifact_min_age: config.orphans.artifact_min_age.0,
        dry_run: false,
        events,
    });
    crate::cleanup::spawn(&ctx, name, shutdown)
}
