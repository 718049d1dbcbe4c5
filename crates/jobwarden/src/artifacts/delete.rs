//! Deleting everything below one prefix, page by page.
//!
//! One listing of the prefix is consumed a page at a time; each page is deleted (one
//! `DeleteObjects` request per 1,000 keys on S3, individual deletes elsewhere) before the next
//! page is read. Progress is therefore durable page by page, and the operation is resumable by
//! construction: after a crash, running it again lists and deletes whatever is left, and a
//! prefix that is already empty reports 0 objects as success. A delete that finds its object
//! already gone counts as done.
//!
//! Only keys strictly *below* the prefix are touched: an object whose key equals the prefix
//! itself is not part of any job's prefix (see [`keys`](super::keys)) and is left alone.
//!
//! This module decides nothing: which prefix to delete, and when, is the caller's decision
//! (retention, orphan plan). It refuses anything but exactly one job's prefix, so a corrupted
//! task can never empty `jobs/` or the whole store.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::Serialize;

use super::Artifacts;
use super::error::{Error, Result};
use super::keys;
use crate::model::Timestamp;

/// A sensible page size: one S3 `DeleteObjects` request holds at most 1,000 keys.
pub const DEFAULT_PAGE_SIZE: NonZeroUsize = NonZeroUsize::new(1000).expect("non-zero");

/// What a deletion did (or, with `dry_run`, would do), for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    /// The prefix (relative to the store's base prefix).
    pub prefix: String,
    /// Objects deleted by this call (with `dry_run`: that would be deleted).
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Pages of the listing that held objects to delete.
    pub listed_pages: u64,
    /// Objects that were listed but already gone when deleted (someone else deleted them).
    pub already_gone: u64,
    /// Objects left alone because they were modified after the cut-off (orphan deletion only).
    pub skipped_young: u64,
    /// Nothing was deleted; the counts say what would have been.
    pub dry_run: bool,
}

/// Deletes every object below `prefix`, `page_size` objects at a time; see the module docs.
///
/// `prefix` must be exactly one job's prefix ([`keys::is_job_prefix`]); anything else (the
/// store root, `jobs/`, a key below a job) is refused with [`Error::NotAJobPrefix`].
///
/// On failure (listing or deleting) the error is [`Error::DeleteInterrupted`], and
/// [`Error::partial_deletion`] says what was deleted before it, for the audit log.
pub async fn delete_prefix(
    artifacts: &Artifacts,
    prefix: &Path,
    page_size: NonZeroUsize,
    dry_run: bool,
) -> Result<DeleteReport> {
    delete_below(artifacts, prefix, page_size, None, dry_run).await
}

/// [`delete_prefix`], keeping objects modified after `keep_newer_than` (when given).
pub(crate) async fn delete_below(
    artifacts: &Artifacts,
    prefix: &Path,
    page_size: NonZeroUsize,
    keep_newer_than: Option<Timestamp>,
    dry_run: bool,
) -> Result<DeleteReport> {
    if !keys::is_job_prefix(prefix) {
        return Err(Error::NotAJobPrefix {
            location: artifacts.location().to_owned(),
            prefix: prefix.to_string(),
        });
    }
    let mut report = DeleteReport {
        prefix: prefix.to_string(),
        dry_run,
        ..Default::default()
    };
    let depth = prefix.parts().count();
    let mut listing = artifacts.store().list(Some(prefix));
    let mut page: Vec<ObjectMeta> = Vec::with_capacity(page_size.get().min(1000));
    loop {
        page.clear();
        let mut exhausted = false;
        while page.len() < page_size.get() {
            match listing.next().await {
                None => {
                    exhausted = true;
                    break;
                }
                Some(Err(source)) => return Err(interrupted(artifacts, report, source)),
                Some(Ok(meta)) => {
                    let below = meta.location.prefix_matches(prefix)
                        && meta.location.parts().nth(depth).is_some();
                    if !below {
                        continue;
                    }
                    if keep_newer_than.is_some_and(|cut| meta.last_modified > cut) {
                        report.skipped_young += 1;
                        continue;
                    }
                    page.push(meta);
                }
            }
        }
        if !page.is_empty() {
            report.listed_pages += 1;
            if dry_run {
                report.objects += page.len() as u64;
                report.bytes += page.iter().map(|m| m.size).sum::<u64>();
            } else if let Err(source) = delete_page(artifacts, &mut page, &mut report).await {
                return Err(interrupted(artifacts, report, source));
            }
        }
        if exhausted {
            return Ok(report);
        }
    }
}

/// Deletes one page, counting every success even when another key of the page fails; returns
/// the first failure.
async fn delete_page(
    artifacts: &Artifacts,
    page: &mut Vec<ObjectMeta>,
    report: &mut DeleteReport,
) -> std::result::Result<(), object_store::Error> {
    let mut sizes: HashMap<Path, u64> = page.drain(..).map(|m| (m.location, m.size)).collect();
    let locations: Vec<_> = sizes.keys().cloned().map(Ok).collect();
    let mut results = artifacts
        .store()
        .delete_stream(futures::stream::iter(locations).boxed());
    let mut first_error = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(path) => {
                if let Some(size) = sizes.remove(&path) {
                    report.objects += 1;
                    report.bytes += size;
                }
            }
            Err(object_store::Error::NotFound { .. }) => report.already_gone += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn interrupted(artifacts: &Artifacts, done: DeleteReport, source: object_store::Error) -> Error {
    Error::DeleteInterrupted {
        location: artifacts.location().to_owned(),
        prefix: done.prefix.clone(),
        done: Box::new(done),
        source: Box::new(source),
    }
}
