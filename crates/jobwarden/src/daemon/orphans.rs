//! Local orphans: workspaces and log files whose job id the store does not know at all,
//! older than `[orphans] local_min_age`; and object-storage prefixes likewise.
//!
//! Fails closed: if the directory listing or the store query fails, nothing is reported as
//! an orphan this pass. Only what the local runtime could have created is ever a candidate
//! (and so ever deleted): a workspace is a real directory (not a symlink) named by an id
//! jobwarden generates ([`crate::model::JobId::is_generated`], the 26-character lowercase ULID `submit`
//! prints), a log is a regular file `<such an id>.log`, and an object prefix's id has that form
//! too ([`StoreKnown`] answers every other id as known). Dot-files, `not-a-job`, symlinks and
//! anything else an administrator put there are never touched. Deletion goes through the
//! durable queue, which re-checks all of this and the store right before removing anything.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api_types::{OrphanReport, OrphanView};
use crate::artifacts::orphans::StoreKnown;
use crate::clock;
use crate::daemon::Shared;
use crate::engine::orphans::{Candidate, Listing, OrphanScan, find_orphans};
use crate::model::{Timestamp, since};
use crate::runtime::local::{LocalKind, LocalRuntime, tree_size};
use crate::store::NewTask;

/// Scans object storage for prefixes whose job the store has never recorded.
async fn scan_artifacts(
    shared: &Shared,
    now: Timestamp,
) -> Result<Vec<crate::artifacts::orphans::OrphanPrefix>, String> {
    let scan = crate::artifacts::orphans::scan(
        &shared.cleanup.artifacts,
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

/// Lists `dir` as candidates of `kind` (see [`LocalKind::job_id`]).
pub fn list_dir(dir: &Path, kind: LocalKind) -> Listing<Vec<Candidate>> {
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
        // `DirEntry::file_type` does not follow symlinks: a link is never a candidate.
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) => return Listing::Failed(format!("{}: {e}", entry.path().display())),
        };
        let Some(id) = kind.job_id(&entry.file_name(), file_type) else {
            continue;
        };
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
    for (local, dir) in [
        (LocalKind::Workspace, runtime.workspaces_dir()),
        (LocalKind::Log, runtime.logs_dir()),
    ] {
        let kind = local.as_str();
        let listing = list_dir(&dir, local);
        let known = match &listing {
            Listing::Complete(c) => {
                let ids: Vec<String> = c.iter().map(|c| c.job_id.to_string()).collect();
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
                        job_id: c.job_id.to_string(),
                        name: c.name.clone(),
                        bytes: tree_size(Path::new(&c.name)),
                        age_seconds: since(now, c.created_at).as_secs(),
                        why: None,
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
                shared.cleanup.artifacts.location().trim_end_matches('/'),
                p.prefix
            ),
            bytes: p.bytes,
            age_seconds: since(now, p.newest_modified).as_secs(),
            why: None,
        });
    }
    (report, found, prefixes)
}

/// Scans and queues the deletion of what was found (bounded by `[safety] max_batch`).
pub async fn clean(
    shared: &Shared,
    runtime: &LocalRuntime,
    now: Timestamp,
) -> Result<OrphanReport, crate::store::Error> {
    let (mut report, found, prefixes) = scan_all(shared, runtime, now).await;
    let mut tasks: Vec<NewTask> = found
        .iter()
        .map(|(kind, c)| NewTask {
            dedup_key: format!("orphan_{kind}:{}", c.job_id),
            job_id: Some(c.job_id.to_string()),
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
        let res = shared.store.enqueue_many(&tasks, now).await?;
        report.queued = res.iter().filter(|r| !r.duplicate).count();
        shared.cleanup.kick.notify_waiters();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORPHAN: &str = "01aaaaaaaaaaaaaaaaaaaaaaaa";

    fn listed(dir: &Path, kind: LocalKind) -> Vec<String> {
        match list_dir(dir, kind) {
            Listing::Complete(c) => {
                let mut ids: Vec<String> = c.iter().map(|c| c.job_id.to_string()).collect();
                ids.sort();
                ids
            }
            Listing::Failed(e) => panic!("listing failed: {e}"),
        }
    }

    #[test]
    fn only_real_entries_named_by_generated_ids_are_candidates() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).expect("mkdir");
        std::fs::write(outside.join("file"), "x").expect("write");
        let ws = root.path().join("workspaces");
        for dir in [
            ".cache",
            "not-a-job",
            ORPHAN,
            "01AAAAAAAAAAAAAAAAAAAAAAAA",
            ".01aaaaaaaaaaaaaaaaaaaaaaaa",
            "01aaaaaaaaaaaaaaaaaaaaaaaa.old",
        ] {
            std::fs::create_dir_all(ws.join(dir)).expect("mkdir");
        }
        // Named like a job, but a file and a symlink: jobwarden never makes those.
        std::fs::write(ws.join("01bbbbbbbbbbbbbbbbbbbbbbbb"), "x").expect("write");
        std::os::unix::fs::symlink(&outside, ws.join("01cccccccccccccccccccccccc"))
            .expect("symlink");
        assert_eq!(listed(&ws, LocalKind::Workspace), [ORPHAN]);

        let logs = root.path().join("logs");
        std::fs::create_dir_all(logs.join("01bbbbbbbbbbbbbbbbbbbbbbbb.log")).expect("mkdir");
        for file in [
            format!("{ORPHAN}.log"),
            "not-a-job.log".into(),
            ".cache.log".into(),
            ".log".into(),
            "01dddddddddddddddddddddddd".into(),
            "01dddddddddddddddddddddddd.log.1".into(),
        ] {
            std::fs::write(logs.join(file), "x").expect("write");
        }
        std::os::unix::fs::symlink(
            outside.join("file"),
            logs.join("01cccccccccccccccccccccccc.log"),
        )
        .expect("symlink");
        assert_eq!(listed(&logs, LocalKind::Log), [ORPHAN]);
    }

    /// Names an administrator, a tool or a fuzzer might leave in the data directory.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{1,30}",
            "[0-9A-Za-z._-]{1,30}",
            "\\.[0-9a-z]{1,12}",
            "[0-7][0-9a-hjkmnp-tv-z]{25}",
            "[0-9a-z]{26}",
        ]
        .prop_filter("a file name", |n| {
            n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
        ))]
        /// Whatever the names, exactly the directories and `.log` files named by an id jobwarden
        /// generates are candidates: nothing else can ever be queued for deletion.
        #[test]
        fn arbitrary_names_are_candidates_only_when_jobwarden_could_have_made_them(
            names in prop::collection::btree_set(name(), 1..12),
        ) {
            let root = tempfile::tempdir().expect("tempdir");
            let ws = root.path().join("workspaces");
            let logs = root.path().join("logs");
            std::fs::create_dir_all(&ws).expect("mkdir");
            std::fs::create_dir_all(&logs).expect("mkdir");
            for n in &names {
                std::fs::create_dir_all(ws.join(n)).expect("mkdir");
                std::fs::write(logs.join(format!("{n}.log")), "x").expect("write");
            }
            // The oracle, written out independently: `[0-7][0-9a-hjkmnp-tv-z]{25}`.
            let generated = |n: &str| {
                n.len() == 26
                    && n.chars().enumerate().all(|(i, c)| {
                        if i == 0 { ('0'..='7').contains(&c) } else { "0123456789abcdefghjkmnpqrstvwxyz".contains(c) }
                    })
            };
            let expected: Vec<String> = names.iter().filter(|n| generated(n)).cloned().collect();
            prop_assert_eq!(listed(&ws, LocalKind::Workspace), expected.clone());
            prop_assert_eq!(listed(&logs, LocalKind::Log), expected);
        }
    }
}
