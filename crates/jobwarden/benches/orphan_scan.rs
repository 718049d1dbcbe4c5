//! Orphan scan throughput and memory: `cargo bench --bench orphan_scan`.
//!
//! 1,000,000 keys (200,000 job ids × 5 objects: 3 artifacts, 1 partial, 1 log) against 100,000
//! known ids, so 100,000 ids' 300,000 prefixes are orphans. Two stores:
//!
//! - `memory`: `object_store::memory::InMemory`, filled once. Its `list` copies every matching
//!   entry into a `Vec` before yielding the first one (that is object_store's implementation), so
//!   the peak RSS of this row includes one kind's full listing.
//! - `generated`: a store whose listing is generated on the fly in key order, like S3's paged
//!   listing, so the peak RSS is the scan's own. It runs at 1M and 5M keys: flat memory means the
//!   two peaks match.
//!
//! A plain `harness = false` main rather than divan: one iteration takes seconds, the setup (1M
//! objects) must happen once, and peak RSS needs resetting around each measured scan
//! (`/proc/self/clear_refs`), none of which a micro-benchmark harness helps with.
//!
//! Environment: `JOBWARDEN_BENCH_ITERS` (default 5), `JOBWARDEN_BENCH_KEYS` (default 1000000).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use jobwarden::artifacts::Artifacts;
use jobwarden::artifacts::keys::ArtifactKind;
use jobwarden::artifacts::orphans;
use jobwarden::model::Timestamp;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

const OBJECTS_PER_ID: usize = 5;
const ORGS: usize = 10;
const MIN_AGE: Duration = Duration::from_secs(7 * 86_400);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The keys of `ids` jobs, in lexicographic order per kind (what S3 returns).
fn keys_of(kind: ArtifactKind, ids: usize) -> Box<dyn Iterator<Item = (String, u64)> + Send> {
    match kind {
        ArtifactKind::Artifacts => Box::new((0..ORGS).flat_map(move |org| {
            (org..ids).step_by(ORGS).flat_map(move |i| {
                (0..3).map(move |k| (format!("jobs/org-{org}/job-{i:07}/out/file-{k}.bin"), 1000))
            })
        })),
        ArtifactKind::Partial => {
            Box::new((0..ids).map(|i| (format!("partial/job-{i:07}/artifacts.tar.gz"), 5000)))
        }
        ArtifactKind::Logs => {
            Box::new((0..ids).map(|i| (format!("logs/job-{i:07}/stdout.log"), 200)))
        }
    }
}

fn known_ids(ids: usize) -> HashSet<String> {
    (0..ids).step_by(2).map(|i| format!("job-{i:07}")).collect()
}

/// A store whose listing is generated lazily, in key order; nothing else is supported.
#[derive(Debug)]
struct Generated {
    ids: usize,
    modified: Timestamp,
}

impl std::fmt::Display for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generated({} ids)", self.ids)
    }
}

fn unsupported(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_owned(),
        implementer: "Generated".to_owned(),
    }
}

#[async_trait]
impl ObjectStore for Generated {
    async fn put_opts(
        &self,
        _: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(unsupported("put_opts"))
    }
    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(unsupported("put_multipart_opts"))
    }
    async fn get_opts(&self, _: &Path, _: GetOptions) -> object_store::Result<GetResult> {
        Err(unsupported("get_opts"))
    }
    fn delete_stream(
        &self,
        _: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        futures::stream::once(async { Err(unsupported("delete_stream")) }).boxed()
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(kind) = ArtifactKind::ALL
            .iter()
            .copied()
            .find(|k| prefix.is_some_and(|p| p.as_ref() == k.root()))
        else {
            return futures::stream::once(async { Err(unsupported("list outside a kind root")) })
                .boxed();
        };
        let modified = self.modified;
        futures::stream::iter(keys_of(kind, self.ids).map(move |(key, size)| {
            Ok(ObjectMeta {
                location: Path::from(key),
                last_modified: modified,
                size,
                e_tag: None,
                version: None,
            })
        }))
        .boxed()
    }
    async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
        Err(unsupported("list_with_delimiter"))
    }
    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(unsupported("copy_opts"))
    }
}

/// (current RSS, peak RSS) in KiB, from /proc/self/status.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0); false when not possible.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn measure(label: &str, artifacts: &Artifacts, ids: usize, iters: usize, now: Timestamp) {
    let known = known_ids(ids);
    let mut times = Vec::with_capacity(iters);
    let mut peak_delta = 0;
    let mut base = 0;
    let mut scan = None;
    for _ in 0..iters {
        let peak_reset = reset_peak();
        let (before, _) = rss_kib();
        let start = Instant::now();
        let s = orphans::scan(artifacts, ArtifactKind::ALL, &known, MIN_AGE, now, 1000)
            .await
            .expect("scan");
        times.push(start.elapsed());
        let (_, peak) = rss_kib();
        if peak_reset {
            peak_delta = peak_delta.max(peak.saturating_sub(before));
        }
        base = before;
        scan = Some(s);
    }
    let s = scan.expect("at least one iteration");
    assert_eq!(s.scanned_objects, (ids * OBJECTS_PER_ID) as u64);
    assert_eq!(
        s.orphan_prefixes,
        (ids / 2 * 3) as u64,
        "half the ids unknown, 3 prefixes each"
    );
    assert_eq!(s.known_objects, (ids.div_ceil(2) * OBJECTS_PER_ID) as u64);
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{label:<10} keys={:>9} known_ids={:>7} iters={iters} median={:>7.3}s min={:>7.3}s max={:>7.3}s \
         keys/s={:>10.0} queries={} rss_before={:>7} KiB scan_peak_above_before={:>7} KiB",
        ids * OBJECTS_PER_ID,
        known.len(),
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        (ids * OBJECTS_PER_ID) as f64 / median.as_secs_f64(),
        s.known_id_queries,
        base,
        peak_delta,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no `--bench`: keep
    // that run tiny so it only checks the benchmark still works.
    let quick = !std::env::args().any(|a| a == "--bench");
    let keys = if quick {
        5_000
    } else {
        env_usize("JOBWARDEN_BENCH_KEYS", 1_000_000)
    };
    let iters = if quick {
        1
    } else {
        env_usize("JOBWARDEN_BENCH_ITERS", 5)
    }
    .max(1);
    let ids = keys / OBJECTS_PER_ID;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let now = jobwarden::clock::now() + chrono::TimeDelta::days(8);
        if !reset_peak() {
            println!(
                "note: cannot reset the peak RSS (/proc/self/clear_refs); peaks are process-wide"
            );
        }

        let generated = Artifacts::from_store(
            Arc::new(Generated {
                ids,
                modified: now - chrono::TimeDelta::days(30),
            }),
            Path::ROOT,
        );
        measure("generated", &generated, ids, iters, now).await;
        if !quick {
            let big = ids * 5;
            let generated = Artifacts::from_store(
                Arc::new(Generated {
                    ids: big,
                    modified: now - chrono::TimeDelta::days(30),
                }),
                Path::ROOT,
            );
            measure("generated", &generated, big, 1, now).await;
        }

        let fill = Instant::now();
        let memory = Arc::new(InMemory::new());
        for kind in ArtifactKind::ALL {
            for (key, size) in keys_of(*kind, ids) {
                memory
                    .put(
                        &Path::from(key),
                        PutPayload::from(vec![0u8; (size % 7) as usize]),
                    )
                    .await
                    .expect("put");
            }
        }
        println!(
            "(filled InMemory with {keys} keys in {:.1}s)",
            fill.elapsed().as_secs_f64()
        );
        let memory = Artifacts::from_store(memory, Path::ROOT);
        measure("memory", &memory, ids, iters, now).await;
        let (rss, hwm) = rss_kib();
        println!("process: rss={rss} KiB peak={hwm} KiB (since the last reset)");
    });
}
