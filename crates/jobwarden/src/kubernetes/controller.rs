//! The watch loop: reflectors on labelled Jobs and Pods (no polling), one deadline
//! [`Scheduler`], and a [`Reconciler`] run for every Job that changed or fell due, while this
//! replica leads.
//!
//! - Jobs and Pods are watched with the job-id label selector (`job-id` exists): cluster-wide,
//!   or in each of `[kubernetes] namespaces` when some are listed ([`super::watch`]); the
//!   protected namespaces are applied by [`super::observe::Scope`] on what arrives. kube-rs'
//!   watcher re-lists on a 410 Gone or a broken watch, with backoff; a Job's deadline lives in
//!   the scheduler, so a re-list never loses it.
//! - A Pod event reconciles its controlling Job (diagnosis, hard kill targets).
//! - The scheduler wakes a Job at the time the engine returned; a reconcile re-arms it.
//! - The Jobs that changed or fell due are reconciled as one batch, each in a task of its
//!   own, at most [`RECONCILE_CONCURRENCY`] at once (a burst of due steps uses both cores,
//!   and their store writes share the executor's group commit); a task stops at its next
//!   await once leadership goes.
//! - Leadership ([`super::leader`]) gates acting, not watching: every replica keeps its
//!   reflectors warm (and `/readyz` means "listed"), only the leader reconciles. On becoming
//!   leader it reconciles every Job in the cache once (the store and the engine say what is
//!   due); on losing it, it stops at once: a reconcile in flight is dropped (as a crash at
//!   that point would, which reconciles tolerate), the scheduler and the pending Jobs are
//!   forgotten until leadership returns.
//!
//! - Orphans ([`super::orphans`]): with an [`OrphanPass`] ([`run_with_orphans`]), the leader
//!   runs a pass every `[orphans] scan_interval`, the first once the Job reflector has listed
//!   and this replica leads; a pass in flight is abandoned when leadership goes. It runs in
//!   this task beside the watch loop (polled while the loop waits), so the reflectors stay
//!   current during a pass.
//!
//! - Gone Jobs: a DELETED event hands the Job's last state to
//!   [`Reconciler::reconcile_deleted`] (settled, or re-created by dead-job recovery); after
//!   every complete (re-)listing (of that namespace's watch) and on becoming leader,
//!   [`Reconciler::sweep_gone_in`] settles the active records whose Job is missing from it (a
//!   DELETED event lost to a re-list, or deleted while no replica watched).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::model::{Timestamp, add, since};
use crate::scheduler::Scheduler;

use super::observe::controlled_by;
use super::orphans::{LiveJobs, OrphanPass};
use super::reconcile::{Reconciled, Reconciler};
use super::watch::{Cache, watch};

/// Jobs reconciled at once (each batch's Jobs are distinct).
pub const RECONCILE_CONCURRENCY: usize = 32;

/// Retry a reconcile that failed (store error) after this long.
pub const RECONCILE_RETRY: Duration = Duration::from_secs(5);

/// `(namespace, name)` of a Job.
type Key = (String, String);

/// A complete listing of one namespace (None: all): the namespace/UID of every Job in it.
type Listing = (Option<String>, std::collections::HashSet<(String, String)>);

/// Runs until `shutdown` turns true. `ready` turns true once both watches have listed. Jobs
/// are reconciled only while `leading` is true (a dropped sender counts as false). No orphan
/// passes: see [`run_with_orphans`].
pub async fn run(
    client: Client,
    job_id_label: String,
    reconciler: Reconciler,
    ready: Arc<AtomicBool>,
    leading: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) {
    run_with_orphans(
        None,
        client,
        job_id_label,
        reconciler,
        ready,
        leading,
        shutdown,
        clock,
    )
    .await;
}

/// [`run`], plus the orphan pass while leading (`None`: no orphan passes).
#[allow(clippy::too_many_arguments)]
pub async fn run_with_orphans(
    orphans: Option<OrphanPass>,
    client: Client,
    job_id_label: String,
    reconciler: Reconciler,
    ready: Arc<AtomicBool>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    clock: impl Fn() -> Timestamp + Send + Sync + 'static,
) {
    let selector = watcher::Config::default().labels(&job_id_label);
    let namespaces = reconciler.scope().list_namespaces();
    // Raw events, not touched objects: a DELETED event carries the Job's last state (a Job
    // gone while its record is active), and the end of each (re-)list says the cache is
    // complete, so records whose Job is missing from it can be settled.
    let (jobs, job_events) = watch::<Job>(&client, namespaces.clone(), &selector);
    let (pods, pod_events) = watch::<Pod>(&client, namespaces, &selector);
    let mut job_events = job_events.fuse();
    let mut pod_events = pod_events.fuse();
    let mut scheduler: Scheduler<Key> = Scheduler::new();
    let mut dirty: BTreeSet<Key> = BTreeSet::new();
    // Jobs deleted (their last state), and the namespaces (None: all) in which to look for
    // records whose Job is missing.
    let mut gone: Vec<Job> = Vec::new();
    let mut sweep: BTreeSet<Option<String>> = BTreeSet::new();
    let (jobs_ready, pods_ready) = (jobs.clone(), pods.clone());
    let mut ready_wait = Box::pin(async move {
        let _ = jobs_ready.wait_until_ready().await;
        let _ = pods_ready.wait_until_ready().await;
    });
    // Shared with the reconcile tasks.
    let reconciler = Arc::new(reconciler);
    let clock = Arc::new(clock);
    let mut orphan_passes =
        std::pin::pin!(orphan_loop(orphans, jobs.clone(), leading.clone(), &*clock));
    let mut is_ready = false;
    let mut is_leader = *leading.borrow_and_update();
    let mut leading_open = true;
    loop {
        let now = clock();
        let sleep = scheduler
            .next_due()
            .map_or(Duration::from_secs(3600), |at| since(at, now));
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
            () = &mut ready_wait, if !is_ready => {
                is_ready = true;
                ready.store(true, Ordering::Relaxed);
                tracing::info!(leading = is_leader, "watching Jobs and Pods labelled {job_id_label}");
            }
            changed = leading.changed(), if leading_open => {
                leading_open = changed.is_ok();
                let now_leader = leading_open && *leading.borrow_and_update();
                if now_leader && !is_leader {
                    // Whatever happened while another replica led (or none did): the store
                    // and the engine say what is due now.
                    mark_all(&jobs, None, &mut dirty);
                    sweep.insert(None);
                    tracing::debug!(jobs = dirty.len(), "leading: reconciling every Job in the cache");
                } else if !now_leader && is_leader {
                    scheduler = Scheduler::new();
                    dirty.clear();
                    gone.clear();
                    tracing::debug!("not leading: acting stopped, watches stay warm");
                }
                is_leader = now_leader;
            }
            ev = job_events.next() => match ev {
                // The echo of our own PATCH (the very resourceVersion it returned): the
                // reconcile that sent it accounted for it already. Any other change is
                // reconciled.
                Some((_, Ok(watcher::Event::Apply(job)))) => {
                    if !reconciler.is_own_echo(&job) {
                        dirty.extend(key_of(&job));
                    }
                }
                Some((_, Ok(watcher::Event::Delete(job)))) => gone.push(job),
                // A (re-)listing: the reflector's cache takes its objects only at InitDone, so
                // each one is looked at then (a Job reconciled from InitApply would not be in
                // the cache yet, and would be dropped until it next changed).
                Some((_, Ok(watcher::Event::Init | watcher::Event::InitApply(_)))) => {}
                Some((ns, Ok(watcher::Event::InitDone))) => {
                    mark_all(&jobs, ns.as_deref(), &mut dirty);
                    sweep.insert(ns);
                }
                Some((_, Err(e))) => tracing::warn!(error = %e, "watching Jobs failed; re-listing after a backoff"),
                None => break,
            },
            ev = pod_events.next() => match ev {
                // As for Jobs: a re-listing's pods reach the cache at InitDone; every Job is
                // then looked at with them.
                Some((_, Ok(watcher::Event::Init | watcher::Event::InitApply(_)))) => {}
                Some((ns, Ok(watcher::Event::InitDone))) => {
                    mark_all(&jobs, ns.as_deref(), &mut dirty);
                }
                Some((_, Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)))) => {
                    let owner = pod.metadata.owner_references.iter().flatten()
                        .find(|r| r.controller == Some(true) && r.kind == "Job");
                    if let (Some(ns), Some(owner)) = (pod.metadata.namespace.clone(), owner) {
                        dirty.insert((ns, owner.name.clone()));
                    }
                }
                Some((_, Err(e))) => tracing::warn!(error = %e, "watching Pods failed; re-listing after a backoff"),
                None => break,
            },
            () = &mut orphan_passes => {}
            () = tokio::time::sleep(sleep) => {
                for (key, _) in scheduler.pop_due(clock(), 1024) {
                    if key == sweep_key() {
                        sweep.insert(None);
                    } else {
                        dirty.insert(key);
                    }
                }
            }
        }
        if !is_ready {
            // Decide only on complete listings: a Job's pods may not have arrived yet.
            continue;
        }
        if !is_leader {
            // Becoming leader reconciles everything; nothing to remember meanwhile.
            dirty.clear();
            gone.clear();
            sweep.clear();
            continue;
        }
        if !gone.is_empty() || !sweep.is_empty() {
            let deleted = std::mem::take(&mut gone);
            // A sweep of everything covers the namespaces' own.
            let namespaces = std::mem::take(&mut sweep);
            let namespaces: Vec<Option<String>> = if namespaces.contains(&None) {
                vec![None]
            } else {
                namespaces.into_iter().collect()
            };
            let listed: Vec<Listing> = namespaces
                .into_iter()
                .map(|ns| {
                    let present = jobs
                        .state_in(ns.as_deref())
                        .iter()
                        .filter_map(|j| {
                            Some((j.metadata.namespace.clone()?, j.metadata.uid.clone()?))
                        })
                        .collect();
                    (ns, present)
                })
                .collect();
            let now = clock();
            let work = gone_jobs(&reconciler, &deleted, &listed, now);
            let done = tokio::select! {
                biased;
                _ = leading.wait_for(|l| !*l) => false,
                r = work => r,
            };
            if !done {
                // Lost leadership, or the store failed: the next leader (or the retry's
                // re-list) sweeps again; deleted Jobs not handled are found by that sweep.
                if !*leading.borrow() {
                    is_leader = false;
                    scheduler = Scheduler::new();
                    dirty.clear();
                    continue;
                }
                scheduler.arm(sweep_key(), add(now, RECONCILE_RETRY));
            }
        }
        // The batch: each Job with its own pods (indexed once per batch by owner UID).
        let pod_state = pods.state();
        let mut by_owner: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in &pod_state {
            for r in p.metadata.owner_references.iter().flatten() {
                if r.controller == Some(true) && r.kind == "Job" {
                    by_owner.entry(r.uid.as_str()).or_default().push(p);
                }
            }
        }
        let mut batch = Vec::new();
        for key in std::mem::take(&mut dirty) {
            let Some(job) = jobs.get(&ObjectRef::new(&key.1).within(&key.0)) else {
                scheduler.cancel(&key);
                continue;
            };
            let uid = job.metadata.uid.as_deref().unwrap_or_default();
            let own: Vec<Pod> = by_owner
                .get(uid)
                .into_iter()
                .flatten()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(key.0.as_str()) && controlled_by(p, uid)
                })
                .map(|p| (*p).clone())
                .collect();
            batch.push((key, job, own));
        }
        drop(by_owner);
        // Different Jobs are reconciled concurrently, each in a task of its own (so a burst
        // of due steps uses every core, and one reconcile's store and API round trips never
        // wait for another's JSON work to yield), at most RECONCILE_CONCURRENCY at once.
        let permits = Arc::new(tokio::sync::Semaphore::new(RECONCILE_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        let mut keys = HashMap::new();
        for (key, job, own) in batch {
            let (reconciler, clock, permits) = (reconciler.clone(), clock.clone(), permits.clone());
            let mut leading = leading.clone();
            let task = tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let now = clock();
                tokio::select! {
                    // Leadership first: a reconcile is never polled while not leading.
                    biased;
                    _ = leading.wait_for(|l| !*l) => None,
                    r = reconciler.reconcile(&job, &own, now) => Some((now, r)),
                }
            });
            keys.insert(task.id(), key);
        }
        let work = async {
            let mut results = Vec::with_capacity(keys.len());
            while let Some(done) = tasks.join_next_with_id().await {
                match done {
                    Ok((id, Some((now, r)))) => {
                        results.extend(keys.remove(&id).map(|k| (k, now, r)));
                    }
                    // Not leading any more: the outer select below stops the batch.
                    Ok((_, None)) => {}
                    // A reconcile that panicked: a bug, logged; its Job is looked at again.
                    Err(e) => {
                        if let Some(key) = keys.remove(&e.id()) {
                            tracing::error!(namespace = %key.0, job = %key.1, error = %e, "reconcile panicked; retrying");
                            scheduler.arm(key, add(clock(), RECONCILE_RETRY));
                        }
                    }
                }
            }
            results
        };
        let results = tokio::select! {
            biased;
            _ = leading.wait_for(|l| !*l) => None,
            r = work => Some(r),
        };
        let Some(results) = results else {
            // Lost leadership mid-batch: not one more call from this replica (the tasks are
            // aborted at their next await, as a crash there would stop them).
            tasks.abort_all();
            tracing::debug!("not leading: reconciles abandoned");
            is_leader = false;
            scheduler = Scheduler::new();
            dirty.clear();
            continue;
        };
        for (key, now, reconciled) in results {
            match reconciled {
                Ok(Reconciled::Ignored) => {
                    scheduler.cancel(&key);
                }
                Ok(Reconciled::Wake(at)) => scheduler.set(key, at),
                Err(e) => {
                    tracing::warn!(namespace = %key.0, job = %key.1, error = %e, "reconcile failed; retrying");
                    scheduler.arm(key, add(now, RECONCILE_RETRY));
                }
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
}

/// A Job's `(namespace, name)`.
fn key_of(job: &Job) -> Option<Key> {
    Some((job.metadata.namespace.clone()?, job.metadata.name.clone()?))
}

/// Marks every Job in the cache (of one namespace, or all) to be reconciled.
fn mark_all(jobs: &Cache<Job>, namespace: Option<&str>, dirty: &mut BTreeSet<Key>) {
    dirty.extend(jobs.state_in(namespace).iter().filter_map(|j| key_of(j)));
}

/// The scheduler key that stands for "sweep again" (no Job has an empty namespace).
fn sweep_key() -> Key {
    (String::new(), String::new())
}

/// Jobs deleted while watched (their last states) and, after complete listings (`listed`:
/// per namespace, None for all, the namespace/UID of every Job in it), the active records
/// whose Job is missing from them. False when the store failed (the caller sweeps again).
async fn gone_jobs(
    reconciler: &Reconciler,
    deleted: &[Job],
    listed: &[Listing],
    now: Timestamp,
) -> bool {
    let mut ok = true;
    for job in deleted {
        if let Err(e) = reconciler.reconcile_deleted(job, now).await {
            tracing::warn!(job = job.metadata.name.as_deref().unwrap_or_default(), error = %e, "a deleted Job could not be settled; the next sweep retries");
            ok = false;
        }
    }
    for (namespace, present) in listed {
        match reconciler
            .sweep_gone_in(present, namespace.as_deref(), now)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "settled records whose Job is gone"),
            Err(e) => {
                tracing::warn!(error = %e, "looking for records whose Job is gone failed; retrying");
                ok = false;
            }
        }
    }
    ok
}

/// The orphan passes: never before the Job reflector has listed, only while leading, one every
/// `interval`. Never completes.
async fn orphan_loop(
    pass: Option<OrphanPass>,
    jobs: Cache<Job>,
    mut leading: watch::Receiver<bool>,
    clock: &impl Fn() -> Timestamp,
) {
    let Some(pass) = pass else {
        return std::future::pending().await;
    };
    // Fail closed: "no Job" means nothing until the cache holds every labelled Job.
    if jobs.wait_until_ready().await.is_err() {
        return std::future::pending().await;
    }
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            // The elector is gone: never leading again.
            return std::future::pending().await;
        }
        let label = pass.job_id_label().to_owned();
        let snapshot = || {
            let state = jobs.state();
            LiveJobs::from_jobs(true, &label, state.iter().map(AsRef::as_ref))
        };
        let report = tokio::select! {
            biased;
            _ = leading.wait_for(|l| !*l) => {
                tracing::debug!("not leading: orphan pass abandoned");
                continue;
            }
            r = pass.run(snapshot, clock()) => r,
        };
        let s = &report.selection;
        for w in &s.warnings {
            tracing::warn!("orphans: {w}");
        }
        if let Some(why) = &s.skipped {
            tracing::warn!("orphan pass skipped, nothing deleted: {why}");
        } else if let Some(why) = &report.stopped {
            tracing::warn!(
                deleted = report.deleted,
                "orphan pass stopped early (the next pass retries): {why}"
            );
        } else if !s.orphans.is_empty() && report.audit.is_empty() {
            for o in s.orphans.iter().take(20) {
                tracing::info!(
                    "orphan {} {}/{} (job {}): {} (not cleaned: [orphans] clean = false)",
                    o.kind,
                    o.namespace,
                    o.name,
                    o.job_id,
                    o.why
                );
            }
        } else if !s.orphans.is_empty() {
            tracing::info!(
                found = s.orphans.len(),
                deleted = report.deleted,
                deferred = report.deferred,
                "orphan pass"
            );
        }
        tokio::time::sleep(pass.interval()).await;
    }
}
