//! Local orphans: workspaces and log files whose job id the store does not know at all,
//! older than `[orphans] local_min_age`.
//!
//! Fails closed: if the directory listing or the store query fails, nothing is reported as
//! an orphan this pass. Entries whose names are not valid job ids are never candidates (and
//! so never deleted): jobwarden only touches what it could have created. Deletion goes
//! through the durable queue, which re-checks the store right before removing anything.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api_types::{OrphanReport, OrphanView};
use crate::clock;
use crate::daemon::Shared;
use crate::engine::orphans::{Candidate, Listing, OrphanScan, find_orphans};
use crate::model::{JobId, Timestamp, since};
use crate::runtime::local::{LocalRuntime, tree_size};
use crate::store::NewTask;

/// The store as the artifact scan's source of known job ids (any stage, `cleaned` too).
pub struct StoreKnown<'a>(pub &'a crate::store::Store);

impl crate::artifacts::orphans::KnownIds for StoreKnown<'_> {
    fn known<'a>(
        &'a self,
        ids: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<HashSet<String>, crate::artifacts::BoxError>> {
        Box::pin(async move { self.0.known_job_ids(ids).await.map_err(Into::into) })
    }
}

/// Scans object storage for prefixes whose job the store has never recorded.
async fn scan_artifacts(
    shared: &Shared,
    now: Timestamp,
) -> Result<Vec<crate::artifacts::orphans::OrphanPrefix>, String> {
    let scan = crate::artifacts::orphans::scan(
        &shared.artifacts,
        crate::artifacts::ArtifactKind::ALL,
        &StoreKnown(&shared.store),
        shared.config.orphans.artifact_min_age.0,
        now,
        shared.config.safety.max_batch as usize,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(crate::artifacts::orphans::plan_deletions(
        &scan,
        shared.config.safety.max_batch as usize,
    ))
}

/// Lists `dir` as candidates; `strip` removes a file suffix (`.log`).
fn list_dir(dir: &Path, strip: Option<&str>) -> Listing<Vec<Candidate>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Listing::Complete(vec![]),
        Err(e) => return Listing::Failed(format!("{}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Listing::Failed(format!("{}: {e}", dir.display())),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = match strip {
            Some(suffix) => match name.strip_suffix(suffix) {
                Some(s) => s.to_owned(),
                None => continue,
            },
            None => name.clone(),
        };
        if JobId::parse(&id).is_err() {
            continue;
        }
        let modified = match entry.metadata().and_then(|m| m.modified()) {
            Ok(m) => chrono::DateTime::<chrono::Utc>::from(m),
            Err(e) => return Listing::Failed(format!("{}: {e}", entry.path().display())),
        };
        out.push(Candidate {
            job_id: id,
            name: entry.path().display().to_string(),
            created_at: modified,
        });
    }
    Listing::Complete(out)
}

/// One scan of workspaces and logs.
pub async fn scan(
    shared: &Shared,
    runtime: &LocalRuntime,
    now: Timestamp,
) -> (OrphanReport, Vec<(String, Candidate)>) {
    let mut report = OrphanReport::default();
    let mut found = Vec::new();
    let min_age = shared.config.orphans.local_min_age.0;
    let limit = shared.config.safety.max_batch as usize;
    for (kind, dir, strip) in [
        ("workspace", runtime.workspaces_dir(), None),
        ("log", runtime.logs_dir(), Some(".log")),
    ] {
        let listing = list_dir(&dir, strip);
        let known = match &listing {
            Listing::Complete(c) => {
                let ids: Vec<String> = c.iter().map(|c| c.job_id.clone()).collect();
                let mut known = HashSet::new();
                let mut failed = None;
                for chunk in ids.chunks(1000) {
                    match shared.store.known_job_ids(chunk).await {
                        Ok(k) => known.extend(k),
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                match failed {
                    None => Listing::Complete(known),
                    Some(e) => Listing::Failed(e),
                }
            }
            Listing::Failed(_) => Listing::Complete(HashSet::new()),
        };
        match find_orphans(listing, &[known], min_age, limit, now) {
            OrphanScan::Skipped { reason } => report.skipped.push(format!("{kind}s: {reason}")),
            OrphanScan::Found { orphans, .. } => {
                for c in orphans {
                    report.orphans.push(OrphanView {
                        kind: kind.to_owned(),
                        job_id: c.job_id.clone(),
                        name: c.name.clone(),
                        bytes: tree_size(Path::new(&c.name)),
                        age_seconds: since(now, c.created_at).as_secs(),
                    });
                    found.push((kind.to_owned(), c));
                }
            }
        }
    }
    (report, found)
}

/// Local and object-storage orphans; object prefixes are returned for `clean`.
pub async fn scan_all(
    shared: &Shared,
    runtime: &LocalRuntime,
    now: Timestamp,
) -> (
    OrphanReport,
    Vec<(String, Candidate)>,
    Vec<crate::artifacts::orphans::OrphanPrefix>,
) {
    let (mut report, found) = scan(shared, runtime, now).await;
    let prefixes = match scan_artifacts(shared, now).await {
        Ok(p) => p,
        Err(e) => {
            report.skipped.push(format!("object storage: {e}"));
            Vec::new()
        }
    };
    for p in &prefixes {
        report.orphans.push(OrphanView {
            kind: format!("object_prefix:{}", p.kind.root()),
            job_id: p.job_id.to_string(),
            name: format!(
                "{}/{}",
                shared.artifacts.location().trim_end_matches('/'),
                p.prefix
            ),
            bytes: p.bytes,
            age_seconds: since(now, p.newest_modified).as_secs(),
        });
    }
    (report, found, prefixes)
}

/// Scans and queues the deletion of what was found (bounded by `[safety] max_batch`).
pub async fn clean(
    shared: &Shared,
    runtime: &LocalRuntime,
    now: Timestamp,
) -> Result<OrphanReport, String> {
    let (mut report, found, prefixes) = scan_all(shared, runtime, now).await;
    let mut tasks: Vec<NewTask> = found
        .iter()
        .map(|(kind, c)| NewTask {
            dedup_key: format!("orphan_{kind}:{}", c.job_id),
            job_id: Some(c.job_id.clone()),
            kind: format!("orphan_{kind}"),
            resource_name: c.name.clone(),
            payload: serde_json::json!({}),
            priority: 0,
            scheduled_at: now,
            max_attempts: shared.config.queue.max_attempts,
        })
        .collect();
    tasks.extend(prefixes.iter().map(|p| NewTask {
        dedup_key: format!("orphan_prefix:{}", p.prefix),
        job_id: Some(p.job_id.to_string()),
        kind: "orphan_prefix".into(),
        resource_name: p.prefix.clone(),
        payload: serde_json::to_value(p).unwrap_or(serde_json::Value::Null),
        priority: 0,
        scheduled_at: now,
        max_attempts: shared.config.queue.max_attempts,
    }));
    if !tasks.is_empty() {
        let res = shared
            .store
            .enqueue_many(&tasks, now)
            .await
            .map_err(|e| format!("queueing orphan cleanup: {e}"))?;
        report.queued = res.iter().filter(|r| !r.duplicate).count();
        shared.queue_kick.notify_waiters();
    }
    Ok(report)
}

/// The periodic scan: reports (and cleans, when `[orphans] clean = true`) every
/// `scan_interval`.
pub async fn run_periodic(
    shared: Arc<Shared>,
    runtime: LocalRuntime,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = shared.config.orphans.scan_interval.0;
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = clock::now();
        if shared.config.orphans.clean {
            match clean(&shared, &runtime, now).await {
                Ok(r) if !r.orphans.is_empty() => {
                    tracing::info!(found = r.orphans.len(), queued = r.queued, "orphan scan")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("orphan scan: {e}"),
            }
        } else {
            let (r, _, _) = scan_all(&shared, &runtime, now).await;
            if !r.orphans.is_empty() {
                tracing::info!(
                    found = r.orphans.len(),
                    "orphans found (not cleaned: [orphans] clean = false)"
                );
            }
        }
    }
}
