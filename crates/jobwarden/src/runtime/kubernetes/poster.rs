//! Events off the critical path: a bounded background poster for the Events that accompany a
//! step's real calls (`TimeoutSoftKill` after the Job PATCH, `MarkedFailed`, `TimeoutHardKill`
//! and `TimeoutForceDelete` before their deletes). Without it each of those Events is one more
//! round trip inside the step, and a burst of due steps waits for all of them.
//!
//! - The step is recorded before it acts and finished after its real calls, as without the
//!   poster: the poster never holds the step's own record, only the Event and its audit row.
//! - The queue is bounded ([`EVENT_QUEUE`]): when it is full the Event is dropped, never
//!   waited for; each drop counts as the error `event_dropped` in `/metrics` and is logged.
//! - The poster posts what is queued, up to [`EVENT_BATCH`] at once, and writes their audit
//!   rows (one per Event, the result of its POST) in one store write.
//! - At a graceful shutdown the queue is drained: once the controller has stopped (the last
//!   sender gone), what is queued is posted and its rows written, and `jobwarden run` waits
//!   for that ([`EventPoster::drained`], bounded). An Event still queued when jobwarden is
//!   killed is lost with its row (the step's own row and the call that carried it out are
//!   not): an Event describes the step, it is not the step. The warning step's Event *is* its
//!   act and never goes through the poster, nor does `Recreated`.

use std::sync::Arc;

use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use tokio::sync::{mpsc, watch};

use super::events::create_event;
use crate::metrics::Metrics;
use crate::model::AuditEntry;
use crate::store::Store;

/// Events waiting to be posted at most; more are dropped (counted).
pub const EVENT_QUEUE: usize = 10_000;

/// Events posted at once, and audit rows written in one store write.
pub const EVENT_BATCH: usize = 64;

/// One Event to post, with its audit row (filled in with the POST's result).
pub(super) struct Posting {
    pub(super) api: Api<Event>,
    pub(super) event: Event,
    pub(super) job_name: String,
    pub(super) row: AuditEntry,
}

/// The sending side; cheap to clone. The poster task ends once every sender is gone.
#[derive(Clone)]
pub struct EventPoster {
    tx: mpsc::Sender<Posting>,
    metrics: Arc<Metrics>,
    /// True once the poster task has ended (every queued Event posted, its row written).
    done: watch::Receiver<bool>,
}

impl EventPoster {
    /// Spawns the poster (on the current tokio runtime) writing the rows to `store`.
    pub fn spawn(store: Store, metrics: Arc<Metrics>) -> Self {
        Self::spawn_with(store, metrics, EVENT_QUEUE)
    }

    /// [`EventPoster::spawn`] with a queue of `capacity` (at least 1).
    pub fn spawn_with(store: Store, metrics: Arc<Metrics>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (done_tx, done) = watch::channel(false);
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            run(rx, store, task_metrics).await;
            let _ = done_tx.send(true);
        });
        EventPoster { tx, metrics, done }
    }

    /// Completes once the poster has posted everything queued and written its rows, which it
    /// does after the last clone of this poster is dropped (holds none itself).
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            // Err: the task is gone without saying so (it panicked): nothing left to wait for.
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Queues an Event; false (counted, logged) when the queue is full or the poster gone.
    pub(super) fn offer(&self, p: Posting) -> bool {
        match self.tx.try_send(p) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.error("event_dropped");
                let p = match e {
                    mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
                };
                tracing::warn!(
                    job = %p.row.job_id,
                    reason = p.event.reason.as_deref().unwrap_or_default(),
                    "Event dropped: the Event queue is full (the step itself was carried out)"
                );
                false
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Posting>, store: Store, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while rx.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        let rows: Vec<AuditEntry> = futures::future::join_all(batch.drain(..).map(post)).await;
        match store.append_audit(&rows).await {
            Ok(()) => metrics.audit_written(rows.len() as u64),
            Err(e) => {
                metrics.error("store");
                tracing::error!(
                    rows = rows.len(),
                    "store: the Events' audit rows were not written: {e}"
                );
            }
        }
    }
}

/// Posts one Event ([`create_event`]: once more under a new name on 409 AlreadyExists); its
/// row says how it went.
async fn post(p: Posting) -> AuditEntry {
    let Posting {
        api,
        mut event,
        job_name,
        mut row,
    } = p;
    let result = create_event(&api, &mut event, &job_name, row.timestamp).await;
    if let Some((ns, _)) = row.resource_name.split_once('/') {
        row.resource_name = format!(
            "{ns}/{}",
            event.metadata.name.as_deref().unwrap_or_default()
        );
    }
    row.success = result.is_done();
    row.error_message = result.error();
    row
}
