//! The durable cleanup queue's workers, the same for both runtimes: they delete what a
//! finished run left (a local job's workspace and log, any job's object-storage prefixes) and
//! orphans, at the due time each task was queued for, within the deletion rate limit.
//!
//! [`Context`] is what a worker needs: the store, the artifact store, the deletion limiter,
//! where local files are ([`Layout`]), the store's health. The local daemon and the Kubernetes
//! runtime each build one and [`worker::spawn`] the workers on it; the queue's tasks are queued
//! by the executor from the engine's plans (`engine::plan::TaskPlan`).

pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::artifacts::Artifacts;
use crate::config::QueueConfig;
use crate::engine::plan::Layout;
use crate::health::StoreHealth;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

pub use worker::spawn;

/// Everything the cleanup workers share.
#[derive(Debug)]
pub struct Context {
    /// The queue and the jobs.
    pub store: Store,
    /// Object storage for artifacts, partial saves and logs.
    pub artifacts: Artifacts,
    /// Deletion rate limit shared by every destructive cleanup path.
    pub deletions: RateLimiter,
    /// Where local jobs' workspaces and logs are (tasks name a job id, never a path).
    pub layout: Layout,
    /// Counts.
    pub metrics: Arc<Metrics>,
    /// Reported to on every store call.
    pub health: Arc<StoreHealth>,
    /// Wakes the workers when a task was queued.
    pub kick: tokio::sync::Notify,
    /// `[queue]`.
    pub queue: QueueConfig,
    /// `[orphans] artifact_min_age`, re-checked before an orphan prefix is deleted.
    pub artifact_min_age: Duration,
    /// Decide, delete nothing.
    pub dry_run: bool,
    /// Where a finished or dead-lettered task is announced (`GET /v1/events`).
    pub events: crate::events::EventBus,
}
