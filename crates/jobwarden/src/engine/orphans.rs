//! Orphans as a fail-closed set difference.
//!
//! An orphan is a resource labelled with a job id (a Kubernetes object, a local workspace or
//! log file, an object-storage prefix) whose job the caller's notion of "known" does not
//! contain, and that is older than the kind's minimum age. The inputs are listings that may
//! have failed: if any input is incomplete, the answer for that kind is "skipped", never a
//! guess, so a failed listing can never make live resources look orphaned. A candidate carries a
//! [`JobId`]: a name that is not a valid job id cannot even be a candidate.

use std::collections::HashSet;
use std::time::Duration;

use crate::model::{JobId, Timestamp, sub};

/// A resource that carries a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The job id from its label, directory name or key (only valid ids are candidates).
    pub job_id: JobId,
    /// Kind-specific name (namespace/name, path, key prefix).
    pub name: String,
    /// When it was created (or last modified, for files and objects).
    pub created_at: Timestamp,
}

/// A listing that may be incomplete.
#[derive(Debug, Clone)]
pub enum Listing<T> {
    /// Everything that exists.
    Complete(T),
    /// The listing failed or was cut short; the reason is reported.
    Failed(String),
}

/// The result for one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanScan {
    /// The kind was skipped this pass because an input was incomplete.
    Skipped {
        /// Which input failed, and how.
        reason: String,
    },
    /// Orphans found (at most `limit`), oldest first; `more` if the limit cut the list.
    Found {
        /// The orphans.
        orphans: Vec<Candidate>,
        /// Whether more orphans exist beyond the limit.
        more: bool,
        /// Candidates that would be orphans but are younger than the minimum age.
        too_young: usize,
    },
}

/// Resources in `candidates` whose job id is in none of the `known` sets and that are older
/// than `min_age`; at most `limit` of them, oldest first.
pub fn find_orphans(
    candidates: Listing<Vec<Candidate>>,
    known: &[Listing<HashSet<String>>],
    min_age: Duration,
    limit: usize,
    now: Timestamp,
) -> OrphanScan {
    let candidates = match candidates {
        Listing::Complete(c) => c,
        Listing::Failed(reason) => {
            return OrphanScan::Skipped {
                reason: format!("listing the resources failed: {reason}"),
            };
        }
    };
    let mut sets = Vec::with_capacity(known.len());
    for k in known {
        match k {
            Listing::Complete(s) => sets.push(s),
            Listing::Failed(reason) => {
                return OrphanScan::Skipped {
                    reason: format!("listing the known jobs failed: {reason}"),
                };
            }
        }
    }
    let cutoff = sub(now, min_age);
    let mut too_young = 0;
    let mut orphans: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| !sets.iter().any(|s| s.contains(c.job_id.as_str())))
        .filter(|c| {
            // Strictly older than the minimum age.
            let old = c.created_at < cutoff;
            if !old {
                too_young += 1;
            }
            old
        })
        .collect();
    orphans.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    let more = orphans.len() > limit;
    orphans.truncate(limit);
    OrphanScan::Found {
        orphans,
        more,
        too_young,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ladder::tests::t;

    fn c(job: &str, age_from: i64) -> Candidate {
        Candidate {
            job_id: JobId::parse(job).expect("id"),
            name: format!("pod-{job}"),
            created_at: t(age_from),
        }
    }

    fn set(ids: &[&str]) -> Listing<HashSet<String>> {
        Listing::Complete(ids.iter().map(|s| s.to_string()).collect())
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn set_difference_older_than_min_age() {
        let cands = vec![
            c("live", 0),
            c("gone", 0),
            c("young", 9000),
            c("finished", 0),
        ];
        // "finished": its Job still exists in the runtime (the seed treated it as orphan).
        let r = find_orphans(
            Listing::Complete(cands),
            &[set(&["live", "finished"]), set(&[])],
            HOUR,
            10,
            t(10_000),
        );
        let OrphanScan::Found {
            orphans,
            more,
            too_young,
        } = r
        else {
            panic!("skipped: {r:?}")
        };
        assert_eq!(
            orphans
                .iter()
                .map(|o| o.job_id.as_str())
                .collect::<Vec<_>>(),
            ["gone"]
        );
        assert!(!more);
        assert_eq!(too_young, 1);
    }

    #[test]
    fn exactly_min_age_is_not_old_enough() {
        let r = find_orphans(
            Listing::Complete(vec![c("x", 0)]),
            &[set(&[])],
            HOUR,
            10,
            t(3600),
        );
        assert!(matches!(r, OrphanScan::Found { ref orphans, .. } if orphans.is_empty()));
    }

    #[test]
    fn any_failed_listing_skips_the_kind() {
        let cands = vec![c("gone", 0)];
        let r = find_orphans(
            Listing::Complete(cands.clone()),
            &[set(&[]), Listing::Failed("403 Forbidden".into())],
            HOUR,
            10,
            t(10_000),
        );
        assert!(matches!(r, OrphanScan::Skipped { ref reason } if reason.contains("403")));
        let r = find_orphans(
            Listing::Failed("timeout".into()),
            &[set(&[])],
            HOUR,
            10,
            t(10_000),
        );
        assert!(matches!(r, OrphanScan::Skipped { .. }));
    }

    #[test]
    fn bounded_batch_oldest_first() {
        let cands: Vec<_> = (0..50).map(|i| c(&format!("j{i}"), 50 - i)).collect();
        let r = find_orphans(Listing::Complete(cands), &[set(&[])], HOUR, 5, t(100_000));
        let OrphanScan::Found { orphans, more, .. } = r else {
            panic!()
        };
        assert_eq!(orphans.len(), 5);
        assert!(more);
        assert_eq!(orphans[0].job_id.as_str(), "j49");
    }
}
