//! Behaviour of the artifacts layer against real stores.
//!
//! Every behaviour is written once, as `async fn name(b: &Backend)`, and run against
//! `file://` (a temporary directory), `object_store`'s in-memory store (under a base prefix), and
//! S3 (moto, started by `scripts/start-moto.sh`). Without `JOBWARDEN_TEST_S3_ENDPOINT` the S3
//! variants skip with a loud notice, or fail when `CI` or `JOBWARDEN_REQUIRE_SERVERS=1` is set.
//! Each S3 test works below its own random prefix of the test bucket.
//!
//! Faults are injected by [`Faulty`], an `ObjectStore` wrapped around the real store, and by
//! [`Known`], a `KnownIds` over a fixed set that can fail on a chosen call.
//!
//! "Now" is never read from the clock: tests derive it from the modification times the store
//! reports for the objects they wrote.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use jobwarden::artifacts::config::{ArtifactsConfig, Secret};
use jobwarden::artifacts::keys::{self, ArtifactKind};
use jobwarden::artifacts::orphans::{self, KnownIds, OrphanDeletion, OrphanPrefix};
use jobwarden::artifacts::retention::{self, ArtifactRetention};
use jobwarden::artifacts::{Artifacts, BoxError, Error, delete_prefix};
use jobwarden::duration::Dur;
use jobwarden::model::{JobId, JobRecord, RuntimeKind, Stage, Timestamp};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RetryConfig,
};

const WEEK: Duration = Duration::from_secs(7 * 86_400);

// ---------------------------------------------------------------------------------------------
// Backends

enum Flavour {
    File {
        root: std::path::PathBuf,
        _dir: tempfile::TempDir,
    },
    Memory,
    S3 {
        endpoint: String,
        bucket: String,
    },
}

struct Backend {
    artifacts: Artifacts,
    flavour: Flavour,
}

fn test_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 1,
        retry_timeout: Duration::from_secs(2),
    }
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Backend {
    fn file() -> Backend {
        // tmpfs when there is one: writing 10,000 small files to a busy disk takes longer than
        // the rest of the suite, and LocalFileSystem behaves the same on either.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        // A directory that does not exist yet: open creates it.
        let root = dir.path().join("data").join("artifacts");
        let config = ArtifactsConfig {
            url: Some(
                url::Url::from_directory_path(&root)
                    .expect("abs")
                    .to_string(),
            ),
            ..Default::default()
        };
        let artifacts = Artifacts::open(&config, test_retry()).expect("open file://");
        assert!(root.is_dir(), "open creates the root directory");
        Backend {
            artifacts,
            flavour: Flavour::File { root, _dir: dir },
        }
    }

    fn memory() -> Backend {
        // A base prefix, so that scoping is exercised too; listings as strict as S3's.
        let strict = Faulty::new(Arc::new(InMemory::new()));
        let artifacts = Artifacts::from_store(Arc::new(strict), Path::from("base/env"));
        Backend {
            artifacts,
            flavour: Flavour::Memory,
        }
    }

    /// `None` (after a loud notice) when no S3 server is configured and none is required.
    fn s3(test: &str) -> Option<Backend> {
        let endpoint = std::env::var("JOBWARDEN_TEST_S3_ENDPOINT").unwrap_or_default();
        if endpoint.is_empty() {
            let required = std::env::var("JOBWARDEN_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
                || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !required,
                "JOBWARDEN_TEST_S3_ENDPOINT is not set, but S3 tests are required here (CI or \
                 JOBWARDEN_REQUIRE_SERVERS=1): start moto with `eval \"$(scripts/start-moto.sh)\"`"
            );
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n********************************************************************\n\
                 SKIPPED S3 test {test}: JOBWARDEN_TEST_S3_ENDPOINT is not set.\n\
                 Run `eval \"$(scripts/start-moto.sh)\"` to test against moto.\n\
                 ********************************************************************"
            );
            return None;
        }
        let bucket =
            std::env::var("JOBWARDEN_TEST_S3_BUCKET").unwrap_or_else(|_| "jobwarden-test".into());
        let prefix = format!("jw-artifacts-test-{}", random_suffix());
        let artifacts = Artifacts::open(&s3_config(&endpoint, &bucket, &prefix), test_retry())
            .expect("open s3://");
        Some(Backend {
            artifacts,
            flavour: Flavour::S3 { endpoint, bucket },
        })
    }

    /// Removes what the test wrote to the shared S3 bucket (moto's listings slow down as the
    /// bucket grows). Temporary directories and in-memory stores go away by themselves.
    async fn cleanup(&self) {
        if let Flavour::S3 { .. } = self.flavour {
            let store = self.artifacts.store();
            let keys = store.list(None).map_ok(|m| m.location).boxed();
            store
                .delete_stream(keys)
                .try_collect::<Vec<_>>()
                .await
                .expect("clean up the test prefix");
        }
    }

    fn name(&self) -> &'static str {
        match self.flavour {
            Flavour::File { .. } => "file",
            Flavour::Memory => "memory",
            Flavour::S3 { .. } => "s3",
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(self.artifacts.store())
    }

    /// Writes `key` with `size` bytes the way a job would: a plain file for `file://`, an
    /// object with exactly this key elsewhere.
    async fn put(&self, key: &str, size: usize) {
        match &self.flavour {
            Flavour::File { root, .. } => {
                let path = root.join(key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, vec![b'x'; size]).expect("write");
            }
            Flavour::Memory | Flavour::S3 { .. } => {
                let path = Path::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"));
                self.artifacts
                    .store()
                    .put(&path, PutPayload::from(vec![b'x'; size]))
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e}"));
            }
        }
    }

    async fn put_all(&self, objects: &[(String, usize)]) {
        match self.flavour {
            Flavour::File { .. } => {
                for (key, size) in objects {
                    self.put(key, *size).await;
                }
            }
            Flavour::Memory | Flavour::S3 { .. } => {
                futures::stream::iter(objects)
                    .map(|(key, size)| self.put(key, *size))
                    .buffer_unordered(32)
                    .collect::<()>()
                    .await;
            }
        }
    }

    /// Every object as (raw key, size), read independently of the code under test: a
    /// directory walk for `file://`, a plain listing elsewhere.
    async fn contents(&self) -> BTreeMap<String, u64> {
        match &self.flavour {
            Flavour::File { root, .. } => {
                let mut out = BTreeMap::new();
                walk(root, root, &mut out);
                out
            }
            Flavour::Memory | Flavour::S3 { .. } => self
                .artifacts
                .store()
                .list(None)
                .map_ok(|m| (m.location.to_string(), m.size))
                .try_collect()
                .await
                .expect("list"),
        }
    }

    /// Every object's metadata, as the store reports it.
    async fn metas(&self) -> Vec<ObjectMeta> {
        self.artifacts
            .store()
            .list(None)
            .try_collect()
            .await
            .expect("list")
    }
}

fn s3_config(endpoint: &str, bucket: &str, prefix: &str) -> ArtifactsConfig {
    let env_has_keys = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| !v.is_empty());
    ArtifactsConfig {
        url: Some(format!("s3://{bucket}/{prefix}")),
        endpoint: Some(endpoint.to_owned()),
        allow_http: Some(true),
        // moto accepts any credentials; the AWS_* environment wins when start-moto.sh set it.
        access_key_id: (!env_has_keys).then(|| "test".to_owned()),
        secret_access_key: (!env_has_keys).then(|| Secret::new("test")),
        ..Default::default()
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.expect("dir entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            walk(root, &entry.path(), out);
        } else {
            let rel = entry.path();
            let rel = rel.strip_prefix(root).expect("below root");
            out.insert(rel.to_str().expect("utf-8").to_owned(), meta.len());
        }
    }
}

fn page(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

fn id(s: &str) -> JobId {
    JobId::parse(s).expect("valid id")
}

fn ids(list: &[&str]) -> HashSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Keys below `prefix` (segment-wise) in `contents`.
fn below<'a>(contents: &'a BTreeMap<String, u64>, prefix: &str) -> Vec<&'a str> {
    let p = format!("{prefix}/");
    contents
        .keys()
        .filter(|k| k.starts_with(&p))
        .map(String::as_str)
        .collect()
}

/// The latest modification time among `metas` whose key is in `keys`, and the earliest.
fn time_range(metas: &[ObjectMeta], keys: &HashSet<String>) -> (Timestamp, Timestamp) {
    let times: Vec<_> = metas
        .iter()
        .filter(|m| keys.contains(m.location.as_ref()))
        .map(|m| m.last_modified)
        .collect();
    assert_eq!(times.len(), keys.len(), "every key listed");
    (
        *times.iter().min().expect("some"),
        *times.iter().max().expect("some"),
    )
}

// ---------------------------------------------------------------------------------------------
// Fault injection

/// A `KnownIds` over a fixed set that records what it was asked and can fail on a given call.
#[derive(Default)]
struct Known {
    ids: HashSet<String>,
    fail_on_call: Option<usize>,
    calls: AtomicUsize,
    asked: Mutex<Vec<String>>,
    largest_batch: AtomicUsize,
}

impl Known {
    fn new(ids: HashSet<String>) -> Known {
        Known {
            ids,
            ..Default::default()
        }
    }
    fn failing_on_call(ids: HashSet<String>, n: usize) -> Known {
        Known {
            ids,
            fail_on_call: Some(n),
            ..Default::default()
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl KnownIds for Known {
    fn known<'a>(
        &'a self,
        batch: &'a [String],
    ) -> BoxFuture<'a, Result<HashSet<String>, BoxError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.largest_batch.fetch_max(batch.len(), Ordering::SeqCst);
            self.asked
                .lock()
                .expect("lock")
                .extend(batch.iter().cloned());
            if self.fail_on_call.is_some_and(|n| call >= n) {
                return Err("injected: the job store is unavailable".into());
            }
            Ok(batch
                .iter()
                .filter(|i| self.ids.contains(*i))
                .cloned()
                .collect())
        })
    }
}

/// A real store with injected faults: listings that fail after N objects, deletes that fail
/// (or never finish: a crash) after K successful ones.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    list_fail_after: Option<usize>,
    delete_fail_after: Option<usize>,
    delete_hang_after: Option<usize>,
    deleted: Arc<AtomicUsize>,
    hung: Arc<tokio::sync::Notify>,
}

impl Faulty {
    fn new(inner: Arc<dyn ObjectStore>) -> Faulty {
        Faulty {
            inner,
            list_fail_after: None,
            delete_fail_after: None,
            delete_hang_after: None,
            deleted: Arc::default(),
            hung: Arc::default(),
        }
    }
    fn deleted(&self) -> usize {
        self.deleted.load(Ordering::SeqCst)
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

fn injected(what: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: what.into(),
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let deleted = Arc::clone(&self.deleted);
        let hung = Arc::clone(&self.hung);
        let (fail_after, hang_after) = (self.delete_fail_after, self.delete_hang_after);
        locations
            .then(move |location| {
                let (inner, deleted, hung) =
                    (Arc::clone(&inner), Arc::clone(&deleted), Arc::clone(&hung));
                async move {
                    let location = location?;
                    let done = deleted.load(Ordering::SeqCst);
                    if fail_after.is_some_and(|k| done >= k) {
                        return Err(injected(format!("delete of {location} failed")));
                    }
                    if hang_after.is_some_and(|k| done >= k) {
                        hung.notify_one();
                        std::future::pending::<()>().await;
                    }
                    inner.delete(&location).await?;
                    deleted.fetch_add(1, Ordering::SeqCst);
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // `unfold` panics when polled after its end, as S3's listing does; the in-memory and
        // local stores tolerate it, which once hid a bug.
        let listing = futures::stream::unfold(self.inner.list(prefix), |mut s| async move {
            s.next().await.map(|item| (item, s))
        })
        .boxed();
        match self.list_fail_after {
            None => listing,
            Some(n) => listing
                .take(n)
                .chain(futures::stream::once(async move {
                    Err(injected(format!("listing failed after {n} objects")))
                }))
                .boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

// ---------------------------------------------------------------------------------------------
// The orphan data set

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    /// The store knows the job (live, finished or cleaned): never an orphan.
    Known,
    /// Unknown, everything old: all three prefixes are orphans.
    UnknownOld,
    /// Unknown, everything young: nothing is an orphan yet.
    UnknownYoung,
    /// Unknown; its `jobs/` prefix holds one young object among old ones, so only that prefix
    /// is kept; its `partial/` and `logs/` prefixes are orphans.
    Mixed,
}

struct DataSet {
    /// Written first.
    old: Vec<(String, usize)>,
    /// Written at least a second later.
    young: Vec<(String, usize)>,
    known: HashSet<String>,
    /// Prefix -> (objects, bytes) of every orphan prefix.
    orphans: BTreeMap<String, (u64, u64)>,
    /// Keys that do not fit the layout.
    unrecognised: Vec<String>,
    too_young_prefixes: u64,
}

/// `n_ids` jobs with 10 objects each (7 artifacts, 1 partial, 2 logs), 30% known, 40% unknown
/// and old, 20% unknown and young, 10% mixed; plus a few keys that fit no job.
fn data_set(n_ids: usize) -> DataSet {
    let mut d = DataSet {
        old: Vec::new(),
        young: Vec::new(),
        known: HashSet::new(),
        orphans: BTreeMap::new(),
        unrecognised: Vec::new(),
        too_young_prefixes: 0,
    };
    for i in 0..n_ids {
        // Ids with every allowed character class; an org-less job every third.
        let job = if i % 4 == 0 {
            format!("J.{i:05}_run-x")
        } else {
            format!("job-{i:05}")
        };
        let org = if i % 3 == 0 {
            None
        } else {
            Some(format!("org-{}", i % 5))
        };
        let category = match i % 10 {
            0..=2 => Category::Known,
            3..=6 => Category::UnknownOld,
            7 | 8 => Category::UnknownYoung,
            _ => Category::Mixed,
        };
        if category == Category::Known {
            d.known.insert(job.clone());
        }
        let size = |k: usize| (i % 7 + 1) * 10 + k;
        let j = id(&job);
        let artifacts = keys::prefix_for(ArtifactKind::Artifacts, org.as_deref(), &j)
            .expect("prefix")
            .to_string();
        let partial = keys::prefix_for(ArtifactKind::Partial, None, &j)
            .expect("p")
            .to_string();
        let logs = keys::prefix_for(ArtifactKind::Logs, None, &j)
            .expect("p")
            .to_string();
        let mut objects: Vec<(String, String, usize, bool)> = Vec::new(); // prefix, key, size, young
        for k in 0..7 {
            let young =
                category == Category::UnknownYoung || (category == Category::Mixed && k == 6);
            objects.push((
                artifacts.clone(),
                format!("{artifacts}/out/file-{k}.bin"),
                size(k),
                young,
            ));
        }
        let young = category == Category::UnknownYoung;
        objects.push((
            partial.clone(),
            format!("{partial}/artifacts.tar.gz"),
            size(7),
            young,
        ));
        objects.push((logs.clone(), format!("{logs}/stdout.log"), size(8), young));
        objects.push((logs.clone(), format!("{logs}/stderr.log"), size(9), young));

        for (prefix, key, size, young) in objects {
            let orphan = match category {
                Category::Known | Category::UnknownYoung => false,
                Category::UnknownOld => true,
                Category::Mixed => prefix != artifacts,
            };
            if orphan {
                let e = d.orphans.entry(prefix).or_default();
                e.0 += 1;
                e.1 += size as u64;
            }
            if young {
                d.young.push((key, size));
            } else {
                d.old.push((key, size));
            }
        }
        d.too_young_prefixes += match category {
            Category::UnknownYoung => 3,
            Category::Mixed => 1,
            _ => 0,
        };
    }
    d.unrecognised = [
        "jobs/readme.txt",
        "jobs/org-1/bad id/x.txt",
        "jobs/org-1/ü/x.txt",
        "jobs/_.txt",
        "logs/lonely-file",
        "partial/not a job/artifacts.tar.gz",
        "logs/bad%id/x",
    ]
    .map(str::to_owned)
    .to_vec();
    for key in &d.unrecognised {
        d.old.push((key.clone(), 5));
    }
    d
}

/// Writes the data set: old objects, a pause, young objects. Returns the `now` at which the
/// old objects are exactly a week and a bit old and the young ones less than a week.
async fn write_data_set(b: &Backend, d: &DataSet) -> Timestamp {
    b.put_all(&d.old).await;
    // S3 servers report modification times in whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.put_all(&d.young).await;
    let metas = b.metas().await;
    let old_keys: HashSet<String> = d.old.iter().map(|(k, _)| k.clone()).collect();
    let young_keys: HashSet<String> = d.young.iter().map(|(k, _)| k.clone()).collect();
    let (_, old_newest) = time_range(&metas, &old_keys);
    let (young_oldest, _) = time_range(&metas, &young_keys);
    assert!(young_oldest > old_newest, "{young_oldest} > {old_newest}");
    old_newest + chrono::TimeDelta::from_std(WEEK).expect("week") + (young_oldest - old_newest) / 2
}

// ---------------------------------------------------------------------------------------------
// Behaviours

/// Orphan detection over `n_ids` jobs (10 objects each): exactly the expected prefixes, with
/// their sizes; known, young and unrecognised keys never reported or deleted; dry-run deletes
/// nothing; deletion is bounded per pass and converges.
async fn orphan_detection(b: &Backend, n_ids: usize) {
    let d = data_set(n_ids);
    let now = write_data_set(b, &d).await;
    let before = b.contents().await;
    assert_eq!(before.len(), d.old.len() + d.young.len(), "{}", b.name());

    let known = Known::new(d.known.clone());
    let scan = orphans::scan(&b.artifacts, ArtifactKind::ALL, &known, WEEK, now, 100_000)
        .await
        .expect("scan");
    let found: BTreeMap<String, (u64, u64)> = scan
        .orphans
        .iter()
        .map(|o| (o.prefix.clone(), (o.objects, o.bytes)))
        .collect();
    assert_eq!(found.len(), d.orphans.len());
    assert_eq!(
        found, d.orphans,
        "exactly the expected orphan prefixes, with sizes"
    );
    assert!(scan.complete);
    assert_eq!(scan.orphan_prefixes, d.orphans.len() as u64);
    assert_eq!(
        scan.orphan_objects,
        d.orphans.values().map(|v| v.0).sum::<u64>()
    );
    assert_eq!(scan.too_young, d.too_young_prefixes);
    assert_eq!(scan.scanned_objects, before.len() as u64);
    let mut unrecognised = scan.unrecognised_examples.clone();
    unrecognised.sort();
    let mut expected_unrecognised = d.unrecognised.clone();
    expected_unrecognised.sort();
    assert_eq!(unrecognised, expected_unrecognised);
    assert_eq!(scan.unrecognised_keys, d.unrecognised.len() as u64);
    for o in &scan.orphans {
        assert!(
            !d.known.contains(o.job_id.as_str()),
            "known job {} reported",
            o.job_id
        );
        assert!(o.age.0 >= WEEK, "{} is only {} old", o.prefix, o.age);
        assert!(o.newest_modified <= now);
    }
    // Membership was asked in batches, each id at most once per pass.
    let asked = known.asked.lock().expect("lock").clone();
    let distinct: HashSet<_> = asked.iter().collect();
    assert_eq!(asked.len(), distinct.len(), "an id was asked twice");
    assert_eq!(distinct.len(), n_ids);
    assert!(known.largest_batch.load(Ordering::SeqCst) <= orphans::ID_BATCH);
    assert!(
        known.calls() <= before.len().div_ceil(orphans::LIST_PAGE) + 3,
        "{}",
        known.calls()
    );

    // max_report bounds the names, never the counts.
    let short = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::new(d.known.clone()),
        WEEK,
        now,
        7,
    )
    .await
    .expect("scan");
    assert_eq!(short.orphans.len(), 7);
    assert!(!short.complete);
    assert_eq!(short.orphan_prefixes, scan.orphan_prefixes);

    // Dry run: every planned deletion reports what it would delete; nothing changes.
    let plan = orphans::plan_deletions(&scan, 50);
    assert_eq!(plan.len(), 50.min(d.orphans.len()));
    for o in &plan {
        match orphans::delete_orphan(&b.artifacts, o, &known, WEEK, now, page(100), true)
            .await
            .expect("dry run")
        {
            OrphanDeletion::Deleted(r) => {
                assert!(r.dry_run);
                assert_eq!((r.objects, r.bytes), d.orphans[&o.prefix]);
            }
            other => panic!("{}: {other:?}", o.prefix),
        }
    }
    assert_eq!(b.contents().await, before, "dry run changed the store");

    // Real passes, at most `per_pass` prefixes each, until nothing is left.
    let per_pass = d.orphans.len().div_ceil(3);
    let (mut passes, mut objects, mut bytes) = (0, 0, 0);
    loop {
        let scan = orphans::scan(&b.artifacts, ArtifactKind::ALL, &known, WEEK, now, 100_000)
            .await
            .expect("scan");
        let plan = orphans::plan_deletions(&scan, per_pass);
        assert!(plan.len() <= per_pass);
        if plan.is_empty() {
            break;
        }
        passes += 1;
        for o in &plan {
            match orphans::delete_orphan(&b.artifacts, o, &known, WEEK, now, page(1000), false)
                .await
                .expect("delete")
            {
                OrphanDeletion::Deleted(r) => {
                    assert_eq!((r.objects, r.bytes), d.orphans[&o.prefix], "{}", o.prefix);
                    objects += r.objects;
                    bytes += r.bytes;
                }
                other => panic!("{}: {other:?}", o.prefix),
            }
        }
    }
    assert_eq!(passes, 3);
    assert_eq!(objects, d.orphans.values().map(|v| v.0).sum::<u64>());
    assert_eq!(bytes, d.orphans.values().map(|v| v.1).sum::<u64>());
    let after = b.contents().await;
    let in_orphan = |key: &str| {
        key.match_indices('/')
            .any(|(i, _)| d.orphans.contains_key(&key[..i]))
    };
    let expected: BTreeMap<String, u64> =
        before.into_iter().filter(|(k, _)| !in_orphan(k)).collect();
    assert_eq!(after.len(), expected.len());
    assert_eq!(after, expected, "exactly the orphan prefixes were deleted");
}

/// 10,000 objects across 1,000 job ids (file://, in-memory).
async fn orphan_detection_10k(b: &Backend) {
    orphan_detection(b, 1000).await;
}

/// The same with 1,000 objects across 100 job ids, for moto: it lists about 600 keys a second
/// and stores about 100 a second, so the 10,000-object version takes minutes there.
async fn orphan_detection_1k(b: &Backend) {
    orphan_detection(b, 100).await;
}

/// Known jobs (whatever their stage) and young prefixes are never reported, even when every
/// object is ancient or the id is known under only some kinds; re-checks at deletion time
/// refuse a job that became known or a prefix that got a new object.
async fn known_and_young_prefixes_are_never_orphans(b: &Backend) {
    let live = id("live-job");
    let cleaned = id("cleaned-job");
    let gone = id("gone-job");
    let mut objects = Vec::new();
    for j in [&live, &cleaned, &gone] {
        for kind in ArtifactKind::ALL {
            let p = keys::prefix_for(*kind, Some("acme"), j).expect("prefix");
            objects.push((format!("{p}/a.txt"), 3));
        }
    }
    b.put_all(&objects).await;
    let metas = b.metas().await;
    let newest = metas
        .iter()
        .map(|m| m.last_modified)
        .max()
        .expect("objects");
    let known = Known::new(ids(&["live-job", "cleaned-job"]));

    // Ancient: only gone-job's three prefixes.
    let far_future = newest + chrono::TimeDelta::days(3650);
    let scan = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &known,
        WEEK,
        far_future,
        100,
    )
    .await
    .expect("scan");
    let mut found: Vec<_> = scan.orphans.iter().map(|o| o.prefix.as_str()).collect();
    found.sort_unstable();
    assert_eq!(
        found,
        ["jobs/acme/gone-job", "logs/gone-job", "partial/gone-job"]
    );
    assert_eq!(scan.known_objects, 6);

    // Young (one second short of min_age): nothing.
    let almost =
        newest + chrono::TimeDelta::from_std(WEEK).expect("week") - chrono::TimeDelta::seconds(1);
    let scan = orphans::scan(&b.artifacts, ArtifactKind::ALL, &known, WEEK, almost, 100)
        .await
        .expect("scan");
    assert!(scan.orphans.is_empty(), "{:?}", scan.orphans);
    assert_eq!(scan.too_young, 3);

    // Re-check at deletion: the id became known since the scan.
    let scan = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &known,
        WEEK,
        far_future,
        100,
    )
    .await
    .expect("scan");
    let target = scan.orphans[0].clone();
    let now_known = Known::new(ids(&["live-job", "cleaned-job", "gone-job"]));
    let r = orphans::delete_orphan(
        &b.artifacts,
        &target,
        &now_known,
        WEEK,
        far_future,
        page(10),
        false,
    )
    .await
    .expect("delete");
    assert_eq!(r, OrphanDeletion::NowKnown);
    // Re-check at deletion: judged at a `now` where the prefix is young.
    let r = orphans::delete_orphan(&b.artifacts, &target, &known, WEEK, almost, page(10), false)
        .await
        .expect("delete");
    assert_eq!(r, OrphanDeletion::TooYoung { young_objects: 1 });
    // A task whose prefix does not match its id is refused.
    let forged = OrphanPrefix {
        prefix: "jobs/acme/live-job".into(),
        ..target.clone()
    };
    let e = orphans::delete_orphan(
        &b.artifacts,
        &forged,
        &known,
        WEEK,
        far_future,
        page(10),
        false,
    )
    .await
    .expect_err("forged prefix");
    assert!(matches!(e, Error::PrefixMismatch { .. }), "{e}");
    assert_eq!(b.contents().await.len(), 9, "nothing deleted");
}

/// The job store failing (on the first or a later call) makes the scan fail: no result, so
/// nothing can be deleted in that pass.
async fn store_failure_means_zero_deletions(b: &Backend) {
    // Ids only under `jobs/` and ids only under `logs/`: at least two membership queries.
    let mut objects = Vec::new();
    for i in 0..20 {
        objects.push((format!("jobs/acme/a-{i}/x"), 1));
        objects.push((format!("logs/b-{i}/x"), 1));
    }
    b.put_all(&objects).await;
    let before = b.contents().await;
    let now = b
        .metas()
        .await
        .iter()
        .map(|m| m.last_modified)
        .max()
        .expect("objects")
        + chrono::TimeDelta::days(30);

    for fail_on in [1, 2] {
        let known = Known::failing_on_call(HashSet::new(), fail_on);
        let e = orphans::scan(&b.artifacts, ArtifactKind::ALL, &known, WEEK, now, 100)
            .await
            .expect_err("scan must fail closed");
        assert!(matches!(e, Error::KnownIds(_)), "{e}");
        assert!(e.to_string().contains("job store"), "{e}");
        assert_eq!(known.calls(), fail_on);
    }
    // A deletion task whose re-check cannot reach the store deletes nothing either.
    let healthy = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::default(),
        WEEK,
        now,
        100,
    )
    .await
    .expect("scan");
    assert_eq!(healthy.orphans.len(), 40);
    let failing = Known::failing_on_call(HashSet::new(), 1);
    for o in orphans::plan_deletions(&healthy, 5) {
        orphans::delete_orphan(&b.artifacts, &o, &failing, WEEK, now, page(10), false)
            .await
            .expect_err("re-check must fail closed");
    }
    assert_eq!(b.contents().await, before);
}

/// A listing that fails part-way makes the scan fail; a deletion whose listing fails
/// part-way reports what it deleted and finishes when run again.
async fn listing_error_midway_means_zero_deletions(b: &Backend) {
    let mut objects = Vec::new();
    for i in 0..30 {
        objects.push((format!("jobs/_/old-{i:02}/x"), 2));
        objects.push((format!("jobs/_/old-{i:02}/y"), 2));
    }
    b.put_all(&objects).await;
    let before = b.contents().await;
    let now = b
        .metas()
        .await
        .iter()
        .map(|m| m.last_modified)
        .max()
        .expect("objects")
        + chrono::TimeDelta::days(30);

    let mut faulty = Faulty::new(b.store());
    faulty.list_fail_after = Some(45);
    let broken = Artifacts::from_store(Arc::new(faulty), Path::ROOT);
    let e = orphans::scan(
        &broken,
        ArtifactKind::ALL,
        &Known::default(),
        WEEK,
        now,
        1000,
    )
    .await
    .expect_err("scan must fail closed");
    assert!(matches!(e, Error::List { .. }), "{e}");
    assert!(e.to_string().contains("listing \"jobs\""), "{e}");
    assert_eq!(b.contents().await, before, "nothing deleted");

    // The same orphans are found by a healthy scan.
    let scan = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::default(),
        WEEK,
        now,
        1000,
    )
    .await
    .expect("scan");
    assert_eq!(scan.orphans.len(), 30);

    // delete_prefix over a listing that breaks after 3 objects, page size 2: one page deleted.
    let prefix = Path::from("jobs/_/old-00");
    let mut objects = Vec::new();
    for i in 0..10 {
        objects.push((format!("jobs/_/old-00/more-{i}"), 4));
    }
    b.put_all(&objects).await;
    let mut faulty = Faulty::new(b.store());
    faulty.list_fail_after = Some(3);
    let broken = Artifacts::from_store(Arc::new(faulty), Path::ROOT);
    let e = delete_prefix(&broken, &prefix, page(2), false)
        .await
        .expect_err("listing fails");
    let done = e.partial_deletion().expect("partial report").clone();
    assert_eq!(done.objects, 2, "{e}");
    let rest = delete_prefix(&b.artifacts, &prefix, page(2), false)
        .await
        .expect("rerun");
    assert_eq!(done.objects + rest.objects, 12);
    assert!(below(&b.contents().await, "jobs/_/old-00").is_empty());
}

/// A deletion that fails, or dies, part-way through a prefix is finished by running it again,
/// and the counts of both runs add up.
async fn resumption_after_crash_mid_prefix(b: &Backend) {
    let prefix = keys::prefix_for(ArtifactKind::Logs, None, &id("crashy")).expect("prefix");
    let mut objects: Vec<(String, usize)> = (0..250)
        .map(|i| (format!("{prefix}/part-{i:03}.log"), 10 + i % 5))
        .collect();
    objects.push(("logs/crashy-neighbour/keep.log".into(), 1));
    b.put_all(&objects).await;
    let total_bytes: u64 = objects[..250].iter().map(|(_, s)| *s as u64).sum();

    // 1. Deletes fail after 70 successes: an error that says how far it got.
    let mut faulty = Faulty::new(b.store());
    faulty.delete_fail_after = Some(70);
    let broken = Artifacts::from_store(Arc::new(faulty), Path::ROOT);
    let e = delete_prefix(&broken, &prefix, page(50), false)
        .await
        .expect_err("injected");
    assert!(matches!(e, Error::DeleteInterrupted { .. }), "{e}");
    assert!(e.to_string().contains("logs/crashy"), "{e}");
    let first = e.partial_deletion().expect("partial").clone();
    assert_eq!(first.objects, 70);
    let after_first = b.contents().await;
    assert_eq!(below(&after_first, prefix.as_ref()).len(), 180);
    let after_first_bytes: u64 = below(&after_first, prefix.as_ref())
        .iter()
        .map(|k| after_first[*k])
        .sum();
    assert_eq!(first.bytes, total_bytes - after_first_bytes);

    // 2. The process dies (the future is dropped) in the middle of a page, after 40 more.
    let mut faulty = Faulty::new(b.store());
    faulty.delete_hang_after = Some(40);
    let faulty = Arc::new(faulty);
    let dying = Artifacts::from_store(Arc::clone(&faulty) as Arc<dyn ObjectStore>, Path::ROOT);
    tokio::select! {
        () = faulty.hung.notified() => {}
        r = delete_prefix(&dying, &prefix, page(50), false) => panic!("finished despite the crash: {r:?}"),
    }
    assert_eq!(faulty.deleted(), 40);
    let left = b.contents().await;
    assert_eq!(below(&left, prefix.as_ref()).len(), 140);
    let left_bytes: u64 = below(&left, prefix.as_ref()).iter().map(|k| left[*k]).sum();

    // 3. Running it again finishes; everything adds up; the neighbour is untouched.
    let last = delete_prefix(&b.artifacts, &prefix, page(50), false)
        .await
        .expect("rerun");
    assert_eq!(last.objects, 140);
    assert_eq!(last.bytes, left_bytes);
    assert_eq!(first.objects + 40 + last.objects, 250);
    let after = b.contents().await;
    assert!(below(&after, prefix.as_ref()).is_empty());
    assert!(after.contains_key("logs/crashy-neighbour/keep.log"));
    // 4. And again: an empty prefix is success with nothing to do.
    let again = delete_prefix(&b.artifacts, &prefix, page(50), false)
        .await
        .expect("idempotent");
    assert_eq!((again.objects, again.bytes, again.listed_pages), (0, 0, 0));
}

/// Retention deletes exactly the expired prefixes: segment-exact, never a live job, never
/// before its time.
async fn retention_deletes_exactly_the_expired_prefixes(b: &Backend) {
    let finished_at = Timestamp::from_timestamp(1_900_000_000, 0).expect("ts");
    let retention = ArtifactRetention {
        artifacts: Dur::secs(3600),
        partial: Dur::secs(60),
        logs: Dur::secs(600),
    };
    // Ids that share leading characters with the expired one.
    let jobs = [
        ("job-1", Stage::Completed, Some(finished_at)),
        (
            "job-10",
            Stage::Completed,
            Some(finished_at + chrono::TimeDelta::hours(5)),
        ),
        (
            "job-1.5",
            Stage::Failed,
            Some(finished_at + chrono::TimeDelta::hours(5)),
        ),
        ("job-1-x", Stage::Running, None),
    ];
    let mut objects = Vec::new();
    for (j, _, _) in &jobs {
        for kind in ArtifactKind::ALL {
            let p = keys::prefix_for(*kind, Some("acme"), &id(j)).expect("prefix");
            objects.push((format!("{p}/a.bin"), 7));
            objects.push((format!("{p}/deeper/b.bin"), 11));
        }
    }
    b.put_all(&objects).await;
    let before = b.contents().await;

    let records: Vec<JobRecord> = jobs.iter().map(|(j, s, f)| job_record(j, *s, *f)).collect();
    let mut tasks = Vec::new();
    for r in &records {
        tasks.extend(retention::tasks_for_job(r, &retention).expect("tasks"));
    }
    assert!(
        tasks.iter().all(|t| t.job_id.as_str() != "job-1-x"),
        "a live job got tasks"
    );

    // 10 minutes after job-1 finished: its partial (1 min) and logs (10 min) are due, to the
    // second; its artifacts (1 h) and the other jobs' are not.
    let now = finished_at + chrono::TimeDelta::minutes(10);
    let due: Vec<_> = tasks.iter().filter(|t| t.is_due(now)).collect();
    let mut due_prefixes: Vec<_> = due.iter().map(|t| t.prefix.as_str()).collect();
    due_prefixes.sort_unstable();
    assert_eq!(due_prefixes, ["logs/job-1", "partial/job-1"]);
    assert!(
        !tasks
            .iter()
            .any(|t| t.is_due(now - chrono::TimeDelta::seconds(1)) && t.prefix == "logs/job-1")
    );

    let mut deleted = 0;
    for t in &due {
        let record = records.iter().find(|r| r.id == t.job_id).expect("record");
        assert!(t.still_applies(record));
        let r = delete_prefix(
            &b.artifacts,
            &Path::from(t.prefix.as_str()),
            page(100),
            false,
        )
        .await
        .expect("delete");
        assert_eq!((r.objects, r.bytes), (2, 18));
        deleted += r.objects;
    }
    let after = b.contents().await;
    let expected: BTreeMap<String, u64> = before
        .into_iter()
        .filter(|(k, _)| !k.starts_with("logs/job-1/") && !k.starts_with("partial/job-1/"))
        .collect();
    assert_eq!(after, expected);
    assert_eq!(deleted, 4);
}

fn job_record(j: &str, stage: Stage, finished_at: Option<Timestamp>) -> JobRecord {
    let t0 = Timestamp::from_timestamp(1_899_990_000, 0).expect("ts");
    JobRecord {
        id: id(j),
        run_id: format!("{j}-run"),
        attempt: 0,
        runtime: RuntimeKind::Local,
        namespace: None,
        name: j.into(),
        org: Some("acme".into()),
        job_type: None,
        stage,
        outcome: None,
        reason: None,
        created_at: t0,
        started_at: Some(t0),
        finished_at,
        timeout: Duration::from_secs(3600),
        grace: Duration::from_secs(30),
        ttl: None,
        deadline: None,
        steps: Vec::new(),
        heartbeat_timeout: None,
        last_heartbeat: None,
        recovery_attempts: 0,
        pid: None,
        pid_start_ticks: None,
        exit_code: None,
        signal: None,
        spec: serde_json::Value::Null,
        dry_run: false,
    }
}

/// Unusual but valid object names below a job prefix are found, counted and deleted; a
/// neighbour with the same names is untouched.
async fn keys_with_unusual_characters(b: &Backend) {
    let names = [
        "dir with spaces/file name.txt",
        "ünïcødé/文件-😀.bin",
        "a+b=c.txt",
        "100%.log",
        "%41%2F%2E%2E.bin",
        "semi;colon,comma&amp'quote.txt",
        "tilde~caret^!(paren)$.txt",
        "x#y?z.txt",
        "trailing.dot.",
    ];
    let target = keys::prefix_for(
        ArtifactKind::Artifacts,
        Some("Org_1.x"),
        &id("J-u-free_1.0"),
    )
    .expect("prefix");
    let neighbour = keys::prefix_for(
        ArtifactKind::Artifacts,
        Some("Org_1.x"),
        &id("J-u-free_1.0-b"),
    )
    .expect("prefix");
    let mut objects = Vec::new();
    for (i, n) in names.iter().enumerate() {
        objects.push((format!("{target}/{n}"), 100 + i));
        objects.push((format!("{neighbour}/{n}"), 1));
    }
    b.put_all(&objects).await;
    let before = b.contents().await;
    assert_eq!(before.len(), 2 * names.len());
    let expected_bytes: u64 = (0..names.len()).map(|i| 100 + i as u64).sum();

    let now = b
        .metas()
        .await
        .iter()
        .map(|m| m.last_modified)
        .max()
        .expect("objects")
        + chrono::TimeDelta::days(30);
    let scan = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::new(ids(&["J-u-free_1.0-b"])),
        WEEK,
        now,
        10,
    )
    .await
    .expect("scan");
    assert_eq!(
        scan.unrecognised_keys, 0,
        "{:?}",
        scan.unrecognised_examples
    );
    assert_eq!(scan.orphans.len(), 1);
    assert_eq!(scan.orphans[0].prefix, target.as_ref());
    assert_eq!(
        (scan.orphans[0].objects, scan.orphans[0].bytes),
        (names.len() as u64, expected_bytes)
    );

    let dry = delete_prefix(&b.artifacts, &target, page(4), true)
        .await
        .expect("dry run");
    assert_eq!(
        (dry.objects, dry.bytes, dry.listed_pages),
        (names.len() as u64, expected_bytes, 3)
    );
    assert_eq!(b.contents().await, before, "dry run deleted something");

    let r = delete_prefix(&b.artifacts, &target, page(4), false)
        .await
        .expect("delete");
    assert_eq!(
        (r.objects, r.bytes, r.already_gone),
        (names.len() as u64, expected_bytes, 0)
    );
    let after = b.contents().await;
    assert!(
        below(&after, target.as_ref()).is_empty(),
        "left behind: {:?}",
        below(&after, target.as_ref())
    );
    assert_eq!(below(&after, neighbour.as_ref()).len(), names.len());
    if let Flavour::File { root, .. } = &b.flavour {
        assert!(
            !root.join(target.as_ref()).exists(),
            "empty directories are removed"
        );
        assert!(root.join("jobs").is_dir());
    }
}

/// An object whose key *is* a job prefix (no segment below it) is unrecognised and survives the
/// deletion of that prefix. (Not representable on `file://`: a file cannot also be a directory.)
async fn object_named_like_a_prefix_is_never_deleted(b: &Backend) {
    b.put_all(&[
        ("logs/job-7".into(), 3),
        ("logs/job-7/out.log".into(), 5),
        ("partial/job-7".into(), 3),
    ])
    .await;
    let now = b
        .metas()
        .await
        .iter()
        .map(|m| m.last_modified)
        .max()
        .expect("objects")
        + chrono::TimeDelta::days(30);
    let scan = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::default(),
        WEEK,
        now,
        10,
    )
    .await
    .expect("scan");
    assert_eq!(scan.unrecognised_keys, 2);
    assert_eq!(scan.orphans.len(), 1);
    assert_eq!(
        (scan.orphans[0].prefix.as_str(), scan.orphans[0].objects),
        ("logs/job-7", 1)
    );
    let o = scan.orphans[0].clone();
    let r = orphans::delete_orphan(
        &b.artifacts,
        &o,
        &Known::default(),
        WEEK,
        now,
        page(10),
        false,
    )
    .await
    .expect("delete");
    assert!(
        matches!(r, OrphanDeletion::Deleted(ref r) if r.objects == 1),
        "{r:?}"
    );
    let after: Vec<_> = b.contents().await.into_keys().collect();
    assert_eq!(after, ["logs/job-7", "partial/job-7"]);
}

/// Deleting below anything but one job's prefix is refused, whatever the store holds.
async fn only_job_prefixes_can_be_deleted(b: &Backend) {
    b.put_all(&[("jobs/acme/j-1/a".into(), 1), ("logs/j-1/b".into(), 1)])
        .await;
    let before = b.contents().await;
    for bad in ["", "jobs", "jobs/acme", "logs", "jobs/acme/j-1/a"] {
        let e = delete_prefix(&b.artifacts, &Path::from(bad), page(10), false)
            .await
            .expect_err(bad);
        assert!(matches!(e, Error::NotAJobPrefix { .. }), "{bad:?}: {e}");
    }
    assert_eq!(b.contents().await, before);
}

/// The readiness probe passes on a healthy store.
async fn reachable(b: &Backend) {
    b.artifacts.check_reachable().await.expect("reachable");
    b.put("jobs/_/x/y", 1).await;
    b.artifacts
        .check_reachable()
        .await
        .expect("reachable with content");
}

// ---------------------------------------------------------------------------------------------
// Instantiation per backend

macro_rules! on_backends {
    ($($backend:ident: [$($name:ident),* $(,)?];)*) => {
        $(
            mod $backend {
                $(
                    #[tokio::test]
                    async fn $name() {
                        if let Some(b) = super::backend(stringify!($backend), stringify!($name)) {
                            super::$name(&b).await;
                            b.cleanup().await;
                        }
                    }
                )*
            }
        )*
    };
}

fn backend(kind: &str, test: &str) -> Option<Backend> {
    match kind {
        "file" => Some(Backend::file()),
        "memory" => Some(Backend::memory()),
        "s3" => Backend::s3(test),
        other => panic!("unknown backend {other}"),
    }
}

on_backends! {
    file: [
        orphan_detection_10k,
        known_and_young_prefixes_are_never_orphans,
        store_failure_means_zero_deletions,
        listing_error_midway_means_zero_deletions,
        resumption_after_crash_mid_prefix,
        retention_deletes_exactly_the_expired_prefixes,
        keys_with_unusual_characters,
        only_job_prefixes_can_be_deleted,
        reachable,
    ];
    memory: [
        orphan_detection_10k,
        known_and_young_prefixes_are_never_orphans,
        store_failure_means_zero_deletions,
        listing_error_midway_means_zero_deletions,
        resumption_after_crash_mid_prefix,
        retention_deletes_exactly_the_expired_prefixes,
        keys_with_unusual_characters,
        object_named_like_a_prefix_is_never_deleted,
        only_job_prefixes_can_be_deleted,
        reachable,
    ];
    s3: [
        orphan_detection_1k,
        known_and_young_prefixes_are_never_orphans,
        store_failure_means_zero_deletions,
        listing_error_midway_means_zero_deletions,
        resumption_after_crash_mid_prefix,
        retention_deletes_exactly_the_expired_prefixes,
        keys_with_unusual_characters,
        object_named_like_a_prefix_is_never_deleted,
        only_job_prefixes_can_be_deleted,
        reachable,
    ];
}

// ---------------------------------------------------------------------------------------------
// Backend-specific

#[tokio::test]
async fn file_store_gone_is_unreachable_naming_the_directory() {
    let b = Backend::file();
    let Flavour::File { root, .. } = &b.flavour else {
        unreachable!()
    };
    std::fs::remove_dir_all(root).expect("rm");
    let e = b.artifacts.check_reachable().await.expect_err("gone");
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(root.to_str().expect("utf-8")), "{e}");
}

#[tokio::test]
async fn s3_missing_bucket_is_unreachable_naming_bucket_and_endpoint() {
    let Some(b) = Backend::s3("s3_missing_bucket_is_unreachable_naming_bucket_and_endpoint") else {
        return;
    };
    let Flavour::S3 { endpoint, .. } = &b.flavour else {
        unreachable!()
    };
    let bucket = format!("no-such-bucket-{}", random_suffix());
    let a =
        Artifacts::open(&s3_config(endpoint, &bucket, "p"), test_retry()).expect("open is lazy");
    let e = a.check_reachable().await.expect_err("missing bucket");
    let msg = e.to_string();
    assert!(matches!(e, Error::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains(&bucket) && msg.contains(endpoint.as_str()),
        "{msg}"
    );
}

#[tokio::test]
async fn s3_unreachable_endpoint_fails_fast_naming_it() {
    let Some(b) = Backend::s3("s3_unreachable_endpoint_fails_fast_naming_it") else {
        return;
    };
    let Flavour::S3 { bucket, .. } = &b.flavour else {
        unreachable!()
    };
    // Port 9 (discard) on loopback: connection refused.
    let config = s3_config("http://127.0.0.1:9", bucket, "p");
    let retry = RetryConfig {
        max_retries: 0,
        ..test_retry()
    };
    let a = Artifacts::open(&config, retry).expect("open is lazy");
    let e = tokio::time::timeout(Duration::from_secs(20), a.check_reachable())
        .await
        .expect("fails within 20 s")
        .expect_err("nothing listens there");
    assert!(e.to_string().contains("http://127.0.0.1:9"), "{e}");
}

#[test]
fn open_refuses_invalid_config_naming_the_key() {
    let e = Artifacts::open(
        &ArtifactsConfig {
            url: Some("s3://bucket/a//b".into()),
            ..Default::default()
        },
        RetryConfig::default(),
    )
    .expect_err("invalid");
    assert!(e.to_string().starts_with("artifacts.url: "), "{e}");
    let e =
        Artifacts::open(&ArtifactsConfig::default(), RetryConfig::default()).expect_err("unset");
    assert!(e.to_string().starts_with("artifacts.url: not set"), "{e}");
}

#[test]
fn location_never_shows_credentials() {
    let config = ArtifactsConfig {
        url: Some("s3://bucket/prefix".into()),
        endpoint: Some("http://127.0.0.1:1".into()),
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_access_key: Some(Secret::new("super-secret-key")),
        allow_http: Some(true),
        ..Default::default()
    };
    let a = Artifacts::open(&config, RetryConfig::default()).expect("open");
    assert_eq!(a.location(), "s3://bucket/prefix at http://127.0.0.1:1");
    assert!(!format!("{a:?}").contains("super-secret-key"));
}

#[tokio::test]
async fn unsorted_listings_are_rescanned_safely() {
    // A store that lists in reverse key order: the first attempt notices and the scan falls back
    // to holding every unknown prefix until the end, with the same result.
    #[derive(Debug)]
    struct Reversed(Arc<dyn ObjectStore>);
    impl std::fmt::Display for Reversed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Reversed")
        }
    }
    #[async_trait]
    impl ObjectStore for Reversed {
        async fn put_opts(
            &self,
            l: &Path,
            p: PutPayload,
            o: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.0.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
            self.0.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(l)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            let inner = self.0.list(prefix);
            futures::stream::once(async move {
                let mut all: Vec<_> = inner.collect().await;
                all.reverse();
                futures::stream::iter(all)
            })
            .flatten()
            .boxed()
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> object_store::Result<()> {
            self.0.copy_opts(f, t, o).await
        }
    }

    let b = Backend::memory();
    let d = data_set(200);
    let now = write_data_set(&b, &d).await;
    let reversed = Artifacts::from_store(Arc::new(Reversed(b.store())), Path::ROOT);
    let sorted = orphans::scan(
        &b.artifacts,
        ArtifactKind::ALL,
        &Known::new(d.known.clone()),
        WEEK,
        now,
        10_000,
    )
    .await
    .expect("scan");
    let unsorted = orphans::scan(
        &reversed,
        ArtifactKind::ALL,
        &Known::new(d.known.clone()),
        WEEK,
        now,
        10_000,
    )
    .await
    .expect("scan");
    let set = |s: &orphans::OrphanScan| {
        s.orphans
            .iter()
            .map(|o| (o.prefix.clone(), o.objects, o.bytes))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(set(&sorted).len(), d.orphans.len());
    assert_eq!(set(&sorted), set(&unsorted));
    assert_eq!(sorted.too_young, unsorted.too_young);
    assert_eq!(sorted.scanned_objects, unsorted.scanned_objects);
    assert_eq!(sorted.unrecognised_keys, unsorted.unrecognised_keys);
}
