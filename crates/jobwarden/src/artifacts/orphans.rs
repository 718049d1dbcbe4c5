//! Orphaned artifacts: finding them (streaming, fail-closed), choosing a bounded batch to delete
//! (pure), and deleting one after re-checking it.
//!
//! **Definition.** An *orphan prefix* is a job prefix (`jobs/<org>/<id>`, `partial/<id>`,
//! `logs/<id>`, see [`super::keys`]) whose job id the job store has no record of at all —
//! a job in any stage, including `cleaned`, is known, and its objects follow retention instead —
//! and whose **newest** object is at least `min_age` old (`[orphans] artifact_min_age`, 7 days by
//! default). One young object keeps the whole prefix. Keys that do not fit the layout are
//! *unrecognised*: counted and reported, never attributed to a job, never deleted.
//!
//! **Streaming.** Each kind's root is listed once, a page ([`LIST_PAGE`] objects) at a time. The
//! job ids of a page are looked up in batches of at most [`ID_BATCH`] through [`KnownIds`] (one
//! store query per batch), with a bounded cache of ids already answered in this pass (cleared
//! when full, no LRU). Per-prefix totals are kept only for unknown ids, and only until the
//! prefix is complete: S3 and the in-memory store list keys in lexicographic order, so a prefix
//! is complete as soon as the listing moves past it, and memory stays flat whatever the size of
//! the bucket. A listing that turns out not to be sorted (`file://` lists in directory order) is
//! restarted in a mode that keeps the totals of every unknown prefix until the end of that
//! kind's listing: memory then grows with the number of unknown prefixes, never with the number
//! of keys.
//!
//! **Fails closed.** Any listing error, or any error from [`KnownIds`], makes [`scan`] return
//! `Err`: there is no partial result to act on, so the caller deletes nothing in that pass.
//!
//! **Bounded.** [`plan_deletions`] picks at most `max_prefixes` orphans (oldest first); the
//! daemon queues one task each. [`delete_orphan`] runs such a task: it re-checks that the id is
//! still unknown and the prefix still old enough, and even then keeps any object written after
//! the cut-off.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Artifacts;
use super::delete::{DeleteReport, delete_below};
use super::error::{BoxError, Error, Result};
use super::keys::{self, ArtifactKind};
use crate::duration::Dur;
use crate::model::{JobId, Timestamp};

/// Objects per listing page.
pub const LIST_PAGE: usize = 1000;
/// Most ids passed to one [`KnownIds::known`] call.
pub const ID_BATCH: usize = 1000;
/// Most ids remembered per pass (answers are re-asked after the cache is cleared).
const CACHE_CAP: usize = 100_000;

/// The job store, as orphan detection sees it: which of these ids has it any record of?
///
/// Implemented by the store (`known_job_ids`); tests implement failing and counting ones.
/// `ids` holds at most [`ID_BATCH`] distinct, valid job ids. An id counts as known if the store
/// has a job with it in any stage, including `cleaned`. An error makes the whole scan fail
/// (nothing is deleted).
pub trait KnownIds: Send + Sync {
    /// The subset of `ids` the store knows.
    fn known<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<HashSet<String>, BoxError>>;
}

/// A fixed set of known ids (the CLI with an exported id list, tests, benchmarks).
impl KnownIds for HashSet<String> {
    fn known<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<HashSet<String>, BoxError>> {
        let found = ids
            .iter()
            .filter(|id| self.contains(*id))
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// One orphan prefix: everything below it belongs to a job the store does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanPrefix {
    /// Which kind of artifact.
    pub kind: ArtifactKind,
    /// The `<org>` segment (`None` for [`keys::NO_ORG`] and for kinds without one).
    pub org: Option<String>,
    /// The unknown job id.
    pub job_id: JobId,
    /// The prefix, relative to the store's base prefix (`jobs/acme/01j…`).
    pub prefix: String,
    /// Objects below it.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
    /// Modification time of its newest object.
    pub newest_modified: Timestamp,
    /// `now - newest_modified` at scan time.
    pub age: Dur,
}

/// What a scan saw. Serialises for `jobwarden orphans --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanScan {
    /// The `now` the scan judged ages against.
    pub now: Timestamp,
    /// The minimum age an orphan prefix's newest object needed.
    pub min_age: Dur,
    /// Orphan prefixes, in listing order, at most `max_report` of them.
    pub orphans: Vec<OrphanPrefix>,
    /// Whether `orphans` lists every orphan prefix found (false when `max_report` cut it short;
    /// the totals below always cover all of them).
    pub complete: bool,
    /// Orphan prefixes found.
    pub orphan_prefixes: u64,
    /// Objects below them.
    pub orphan_objects: u64,
    /// Bytes below them.
    pub orphan_bytes: u64,
    /// Every object listed.
    pub scanned_objects: u64,
    /// Objects of known jobs (left to retention).
    pub known_objects: u64,
    /// Prefixes of unknown jobs whose newest object is younger than `min_age` (kept for now).
    pub too_young: u64,
    /// Objects in those prefixes.
    pub too_young_objects: u64,
    /// Keys that do not fit the layout (never deleted).
    pub unrecognised_keys: u64,
    /// Some of them (at most `max_report`), for a human to look at.
    pub unrecognised_examples: Vec<String>,
    /// Calls made to [`KnownIds::known`].
    pub known_id_queries: u64,
}

impl OrphanScan {
    fn new(now: Timestamp, min_age: Duration) -> Self {
        OrphanScan {
            now,
            min_age: Dur(min_age),
            orphans: Vec::new(),
            complete: true,
            orphan_prefixes: 0,
            orphan_objects: 0,
            orphan_bytes: 0,
            scanned_objects: 0,
            known_objects: 0,
            too_young: 0,
            too_young_objects: 0,
            unrecognised_keys: 0,
            unrecognised_examples: Vec::new(),
            known_id_queries: 0,
        }
    }
}

/// Scans `kinds` for orphan prefixes; see the module docs. Reports at most `max_report` orphans
/// and unrecognised keys by name (all of them in the counts).
///
/// Any listing or [`KnownIds`] error returns `Err` (fail closed).
pub async fn scan(
    artifacts: &Artifacts,
    kinds: &[ArtifactKind],
    known: &dyn KnownIds,
    min_age: Duration,
    now: Timestamp,
    max_report: usize,
) -> Result<OrphanScan> {
    let mut pass = Pass {
        artifacts,
        known,
        min_age,
        now,
        max_report,
        cache: HashMap::new(),
        out: OrphanScan::new(now, min_age),
    };
    let mut done = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        if done.contains(&kind) {
            continue;
        }
        done.push(kind);
        let before = pass.out.clone();
        if !pass.scan_kind(kind, true).await? {
            tracing::debug!(
                location = artifacts.location(),
                kind = kind.as_str(),
                "listing is not in key order; rescanning with per-prefix totals held to the end"
            );
            pass.out = before;
            let sorted_again = pass.scan_kind(kind, false).await?;
            debug_assert!(sorted_again);
        }
    }
    Ok(pass.out)
}

/// Totals for one unknown job's prefix, until the prefix is complete.
struct Group {
    kind: ArtifactKind,
    org: Option<String>,
    job_id: String,
    objects: u64,
    bytes: u64,
    newest: Timestamp,
}

struct Pass<'a> {
    artifacts: &'a Artifacts,
    known: &'a dyn KnownIds,
    min_age: Duration,
    now: Timestamp,
    max_report: usize,
    /// Job id -> known, for ids already asked in this pass. Cleared when full.
    cache: HashMap<String, bool>,
    out: OrphanScan,
}

impl Pass<'_> {
    /// Scans one kind. With `expect_sorted`, prefixes are finalised as soon as the listing moves
    /// past them, and `Ok(false)` is returned (with `out` partly updated; the caller restores
    /// it) as soon as the listing turns out not to be sorted.
    async fn scan_kind(&mut self, kind: ArtifactKind, expect_sorted: bool) -> Result<bool> {
        let root = kind.root_path();
        let mut listing = self.artifacts.store().list(Some(&root));
        let mut open: HashMap<String, Group> = HashMap::new();
        let mut current_prefix = String::new();
        let mut last_key = String::new();
        let mut page: Vec<ObjectMeta> = Vec::with_capacity(LIST_PAGE);
        // Listings must not be polled again once they have ended (S3's panics).
        let mut exhausted = false;
        while !exhausted {
            page.clear();
            while page.len() < LIST_PAGE {
                match listing.next().await {
                    None => {
                        exhausted = true;
                        break;
                    }
                    Some(Ok(meta)) => page.push(meta),
                    Some(Err(source)) => {
                        return Err(Error::List {
                            location: self.artifacts.location().to_owned(),
                            prefix: root.to_string(),
                            source: Box::new(source),
                        });
                    }
                }
            }
            if page.is_empty() {
                continue;
            }
            self.out.scanned_objects += page.len() as u64;
            self.resolve_ids(&page).await?;

            for meta in &page {
                let key = meta.location.as_ref();
                if expect_sorted {
                    if key < last_key.as_str() {
                        return Ok(false);
                    }
                    last_key.clear();
                    last_key.push_str(key);
                }
                let Some(parts) = keys::split_key(key) else {
                    self.out.unrecognised_keys += 1;
                    if self.out.unrecognised_examples.len() < self.max_report {
                        self.out.unrecognised_examples.push(key.to_owned());
                    }
                    continue;
                };
                // Every id of the page was resolved above; an id missing from the cache is
                // treated as known, the side that deletes nothing.
                if self.cache.get(parts.job_id).copied().unwrap_or(true) {
                    self.out.known_objects += 1;
                    continue;
                }
                if expect_sorted && current_prefix != parts.prefix {
                    // Sorted listing: every prefix before this one is complete.
                    for (prefix, group) in open.drain() {
                        self.finish(prefix, group);
                    }
                    current_prefix.clear();
                    current_prefix.push_str(parts.prefix);
                }
                let group = match open.get_mut(parts.prefix) {
                    Some(g) => g,
                    None => open.entry(parts.prefix.to_owned()).or_insert(Group {
                        kind,
                        org: parts.org.map(str::to_owned),
                        job_id: parts.job_id.to_owned(),
                        objects: 0,
                        bytes: 0,
                        newest: meta.last_modified,
                    }),
                };
                group.objects += 1;
                group.bytes += meta.size;
                group.newest = group.newest.max(meta.last_modified);
            }
        }
        let mut rest: Vec<_> = open.into_iter().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        for (prefix, group) in rest {
            self.finish(prefix, group);
        }
        Ok(true)
    }

    /// Asks [`KnownIds`] about every id of `page` not already in the cache, in batches.
    async fn resolve_ids(&mut self, page: &[ObjectMeta]) -> Result<()> {
        if self.cache.len() + page.len() > CACHE_CAP {
            self.cache.clear();
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let ask: Vec<String> = page
            .iter()
            .filter_map(|m| keys::split_key(m.location.as_ref()))
            .map(|p| p.job_id)
            .filter(|id| !self.cache.contains_key(*id) && seen.insert(id))
            .map(str::to_owned)
            .collect();
        for batch in ask.chunks(ID_BATCH) {
            self.out.known_id_queries += 1;
            let known = self.known.known(batch).await.map_err(Error::KnownIds)?;
            for id in batch {
                self.cache.insert(id.clone(), known.contains(id));
            }
        }
        Ok(())
    }

    /// Judges a complete prefix of an unknown job.
    fn finish(&mut self, prefix: String, g: Group) {
        let old_enough = crate::model::add(g.newest, self.min_age) <= self.now;
        if !old_enough {
            self.out.too_young += 1;
            self.out.too_young_objects += g.objects;
            return;
        }
        let Ok(job_id) = JobId::parse(&g.job_id) else {
            // split_key only yields valid ids; never act on anything else.
            self.out.unrecognised_keys += g.objects;
            return;
        };
        self.out.orphan_prefixes += 1;
        self.out.orphan_objects += g.objects;
        self.out.orphan_bytes += g.bytes;
        if self.out.orphans.len() < self.max_report {
            self.out.orphans.push(OrphanPrefix {
                kind: g.kind,
                org: g.org,
                job_id,
                prefix,
                objects: g.objects,
                bytes: g.bytes,
                newest_modified: g.newest,
                age: Dur(crate::model::since(self.now, g.newest)),
            });
        } else {
            self.out.complete = false;
        }
    }
}

/// The orphans to delete in this pass: at most `max_prefixes`, oldest first. Pure.
pub fn plan_deletions(scan: &OrphanScan, max_prefixes: usize) -> Vec<OrphanPrefix> {
    let mut plan: Vec<&OrphanPrefix> = scan.orphans.iter().collect();
    plan.sort_by(|a, b| (a.newest_modified, &a.prefix).cmp(&(b.newest_modified, &b.prefix)));
    plan.into_iter().take(max_prefixes).cloned().collect()
}

/// What [`delete_orphan`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OrphanDeletion {
    /// Deleted (or, in dry-run, counted) the prefix's objects older than the cut-off.
    Deleted(DeleteReport),
    /// The job id is known now (a job with that id was recorded since the scan): nothing deleted.
    NowKnown,
    /// The prefix has an object younger than `min_age` now: nothing deleted.
    TooYoung {
        /// Objects younger than the cut-off.
        young_objects: u64,
    },
}

/// Deletes one planned orphan prefix, after re-checking it (the scan may be minutes old):
/// the prefix must be the one its kind, org and id produce, the id must still be unknown, and
/// no object below it may be younger than `min_age`. Objects written after the cut-off while the
/// deletion runs are kept.
pub async fn delete_orphan(
    artifacts: &Artifacts,
    orphan: &OrphanPrefix,
    known: &dyn KnownIds,
    min_age: Duration,
    now: Timestamp,
    page_size: NonZeroUsize,
    dry_run: bool,
) -> Result<OrphanDeletion> {
    let expected = keys::prefix_for(orphan.kind, orphan.org.as_deref(), &orphan.job_id)?;
    if expected.as_ref() != orphan.prefix {
        return Err(Error::PrefixMismatch {
            prefix: orphan.prefix.clone(),
            kind: orphan.kind,
            job_id: orphan.job_id.to_string(),
            expected: expected.to_string(),
        });
    }
    let ids = [orphan.job_id.to_string()];
    let found = known.known(&ids).await.map_err(Error::KnownIds)?;
    if found.contains(&ids[0]) {
        return Ok(OrphanDeletion::NowKnown);
    }
    let cutoff = crate::model::sub(now, min_age);
    let check = delete_below(artifacts, &expected, page_size, Some(cutoff), true).await?;
    if check.skipped_young > 0 {
        return Ok(OrphanDeletion::TooYoung {
            young_objects: check.skipped_young,
        });
    }
    if dry_run {
        return Ok(OrphanDeletion::Deleted(check));
    }
    delete_below(artifacts, &expected, page_size, Some(cutoff), false)
        .await
        .map(OrphanDeletion::Deleted)
}

/// The store as the artifact scan's source of known job ids (any stage, `cleaned` too).
///
/// An id that the local runtime could not have generated is answered as known: it is not a
/// local job's, so its objects are never orphans of this daemon (they may be another system's
/// in a shared bucket).
pub struct StoreKnown<'a>(pub &'a crate::store::Store);

impl KnownIds for StoreKnown<'_> {
    fn known<'a>(
        &'a self,
        ids: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<HashSet<String>, super::BoxError>> {
        Box::pin(async move {
            let (ours, foreign): (Vec<String>, Vec<String>) = ids
                .iter()
                .cloned()
                .partition(|id| crate::model::is_generated_id(id));
            let mut known: HashSet<String> = foreign.into_iter().collect();
            if !ours.is_empty() {
                known.extend(self.0.known_job_ids(&ours).await?);
            }
            Ok(known)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(secs, 0).expect("ts")
    }

    fn orphan(prefix: &str, newest: i64) -> OrphanPrefix {
        let id = prefix.rsplit('/').next().expect("id");
        OrphanPrefix {
            kind: ArtifactKind::Logs,
            org: None,
            job_id: JobId::parse(id).expect("id"),
            prefix: prefix.into(),
            objects: 1,
            bytes: 1,
            newest_modified: ts(newest),
            age: Dur::secs(0),
        }
    }

    #[test]
    fn plan_takes_the_oldest_first_and_is_bounded() {
        let mut scan = OrphanScan::new(ts(1_000_000), Duration::ZERO);
        scan.orphans = vec![
            orphan("logs/c", 300),
            orphan("logs/a", 100),
            orphan("logs/d", 100),
            orphan("logs/b", 200),
        ];
        let plan: Vec<_> = plan_deletions(&scan, 3)
            .into_iter()
            .map(|o| o.prefix)
            .collect();
        assert_eq!(plan, ["logs/a", "logs/d", "logs/b"]);
        assert_eq!(plan_deletions(&scan, 0), []);
        assert_eq!(plan_deletions(&scan, 10).len(), 4);
    }

    #[test]
    fn scans_serialise_with_sizes_and_ages_for_the_cli() {
        let mut scan = OrphanScan::new(ts(1_000_000), Duration::from_secs(7 * 86_400));
        let mut o = orphan("logs/a", 100);
        o.age = Dur::secs(8 * 86_400);
        o.bytes = 1234;
        scan.orphans = vec![o];
        let json = serde_json::to_value(&scan).expect("json");
        assert_eq!(json["min_age"], "7d");
        assert_eq!(json["orphans"][0]["prefix"], "logs/a");
        assert_eq!(json["orphans"][0]["kind"], "logs");
        assert_eq!(json["orphans"][0]["bytes"], 1234);
        assert_eq!(json["orphans"][0]["age"], "8d");
        assert_eq!(
            json["orphans"][0]["newest_modified"],
            "1970-01-01T00:01:40Z"
        );
    }
}
