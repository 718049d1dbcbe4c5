//! Orphans of Kubernetes kinds: Pods, PersistentVolumeClaims, Secrets and ConfigMaps that
//! carry the job-id label but whose job is gone (the README's Kubernetes "Orphans").
//!
//! - [`select`] is pure: from complete listings of the four kinds, the live labelled Jobs
//!   (the controller's Job reflector, which holds every Job carrying the label), the
//!   [`Scope`], the per-kind minimum age (`[kubernetes.orphan_min_age]`) and `now`, it returns
//!   the orphans, oldest first. An object is an orphan only if it is ours ([`Scope::admit`]:
//!   the label with a valid job id, an allowed namespace), is older than its kind's minimum
//!   age, is not already being deleted, no Job in its namespace carries its job id, and it has
//!   no ownerReference to a live Job's UID. A pod controlled by a Job (`controller: true`)
//!   that is not in the cache is left to the garbage collector: that Job is either gone (the
//!   collector removes its pods) or unlabelled (not ours to judge). A label value that is not
//!   a job id is a warning, never a deletion. Fail closed: a failed listing or a Job cache not
//!   yet synced selects nothing at all in that pass.
//! - [`OrphanPass`] is one pass, run by the leader every `[orphans] scan_interval`: one
//!   paginated LIST per kind (cluster-wide, `labelSelector=<job_id_label>`,
//!   `limit`/`continue`, metadata only, so no Secret data is read), the Job snapshot taken
//!   after the listings, then at most `[safety] max_batch` DELETEs, oldest first, each with
//!   `preconditions.uid` and `propagationPolicy: Background`. 404 is done; 409 (the name now
//!   belongs to a new object) is left alone; 429 / 5xx / transport errors end the pass (the
//!   next one retries). Every DELETE, and every DELETE dry-run would have sent, is one audit
//!   row (`orphan_cleanup`). With `[orphans] clean = false` orphans are only reported; with
//!   `--dry-run` the pass lists and audits and sends no DELETE.
//! - Each DELETE first takes a token from the limiter given by [`OrphanPass::with_limiter`]
//!   (`jobwarden run` shares `[kubernetes] destructive_calls_per_minute` between the TTL
//!   deletes and this pass). A pass that runs out of tokens stops there, sends no further
//!   DELETE and leaves the rest, oldest first, for the next pass (`deferred`, `stopped`).
//!   Dry-run takes no token: it sends no DELETE.
//!
//! RBAC: list and delete on pods, persistentvolumeclaims, secrets and configmaps
//! ([`crate::runtime::kubernetes::calls::API_CALLS`], the roles in `deploy/overlays/`).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::{Client, Resource};
use serde_json::json;

use crate::config::Config;
use crate::model::{AuditAction, AuditEntry, JobId, Timestamp, since};
use crate::ratelimit::RateLimiter;
use crate::store::Store;

use super::config::OrphanMinAge;
use super::observe::{Ignored, Scope};
use super::to_chrono;
use crate::runtime::kubernetes::calls::CallResult;

/// Items per LIST page (`limit`); `continue` fetches the rest.
pub const PAGE_SIZE: u32 = 500;

/// The kinds orphan detection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Pod.
    Pod,
    /// v1 PersistentVolumeClaim.
    PersistentVolumeClaim,
    /// v1 Secret.
    Secret,
    /// v1 ConfigMap.
    ConfigMap,
}

impl Kind {
    /// All of them, in the order a pass lists them.
    pub const ALL: [Kind; 4] = [
        Kind::Pod,
        Kind::PersistentVolumeClaim,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    /// The audit row's `resource_type` (and the API resource, singular).
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::PersistentVolumeClaim => "persistentvolumeclaim",
            Kind::Secret => "secret",
            Kind::ConfigMap => "configmap",
        }
    }

    /// The API resource (plural).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
        }
    }

    /// This kind's minimum age.
    pub fn min_age(self, ages: &OrphanMinAge) -> Duration {
        match self {
            Kind::Pod => ages.pods.0,
            Kind::PersistentVolumeClaim => ages.persistentvolumeclaims.0,
            Kind::Secret => ages.secrets.0,
            Kind::ConfigMap => ages.configmaps.0,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource_type())
    }
}

/// The live labelled Jobs, from the Job reflector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveJobs {
    /// The reflector has completed its first listing. Until then nothing is an orphan.
    pub synced: bool,
    /// `(namespace, job-id label value)` of every Job (the raw value: a Job whose value is
    /// not a valid id still protects objects carrying the same value).
    pub ids: BTreeSet<(String, String)>,
    /// UIDs of every Job.
    pub uids: BTreeSet<String>,
}

impl LiveJobs {
    /// From the reflector's Jobs; `synced` is whether it has listed yet.
    pub fn from_jobs<'a>(
        synced: bool,
        job_id_label: &str,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> Self {
        let mut live = LiveJobs {
            synced,
            ..LiveJobs::default()
        };
        for job in jobs {
            let meta = &job.metadata;
            if let Some(uid) = &meta.uid {
                live.uids.insert(uid.clone());
            }
            if let (Some(ns), Some(id)) = (
                &meta.namespace,
                meta.labels.as_ref().and_then(|l| l.get(job_id_label)),
            ) {
                live.ids.insert((ns.clone(), id.clone()));
            }
        }
        live
    }
}

/// One kind's listing: every labelled object's metadata, or why the listing failed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The kind.
    pub kind: Kind,
    /// The objects (metadata), or the error.
    pub items: Result<Vec<ObjectMeta>, String>,
}

/// An object whose job is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// Its kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (the DELETE's precondition).
    pub uid: String,
    /// The job id on its label.
    pub job_id: JobId,
    /// Age at `now`.
    pub age: Duration,
    /// Why it is an orphan, for the audit row and the log.
    pub why: String,
}

/// What [`select`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The orphans, oldest first. Empty when `skipped`.
    pub orphans: Vec<Orphan>,
    /// Objects refused with a reason worth an operator's look (a label value that is not a
    /// job id).
    pub warnings: Vec<String>,
    /// Set when nothing was selected because an input was incomplete (fail closed).
    pub skipped: Option<String>,
}

/// The orphans among `listed` (see the module docs for the rules). Pure.
pub fn select(
    listed: &[Listed],
    live: &LiveJobs,
    scope: &Scope,
    min_age: &OrphanMinAge,
    now: Timestamp,
) -> Selection {
    if !live.synced {
        return Selection {
            skipped: Some("the Job cache has not completed its first listing".to_owned()),
            ..Selection::default()
        };
    }
    let failed: Vec<String> = listed
        .iter()
        .filter_map(|l| {
            l.items
                .as_ref()
                .err()
                .map(|e| format!("listing {} failed: {e}", l.kind.resource()))
        })
        .collect();
    if !failed.is_empty() {
        return Selection {
            skipped: Some(failed.join("; ")),
            ..Selection::default()
        };
    }
    let mut out = Selection::default();
    let mut found: Vec<(Timestamp, Orphan)> = Vec::new();
    for l in listed {
        let Ok(items) = &l.items else { continue };
        for meta in items {
            match candidate(l.kind, meta, live, scope, min_age, now) {
                Verdict::Orphan(created, o) => found.push((created, o)),
                Verdict::Warn(w) => out.warnings.push(w),
                Verdict::Keep => {}
            }
        }
    }
    found.sort_by(|(a, x), (b, y)| {
        a.cmp(b)
            .then_with(|| (x.kind, &x.namespace, &x.name).cmp(&(y.kind, &y.namespace, &y.name)))
    });
    out.orphans = found.into_iter().map(|(_, o)| o).collect();
    out
}

enum Verdict {
    Orphan(Timestamp, Orphan),
    Warn(String),
    Keep,
}

fn candidate(
    kind: Kind,
    meta: &ObjectMeta,
    live: &LiveJobs,
    scope: &Scope,
    min_age: &OrphanMinAge,
    now: Timestamp,
) -> Verdict {
    let id = match scope.admit(meta) {
        Ok(id) => id,
        Err(Ignored::BadLabel(e)) => {
            return Verdict::Warn(format!(
                "{kind} {}/{}: {} label is not a job id ({e}); not an orphan candidate",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
                scope.job_id_label
            ));
        }
        // No label, protected / unwatched namespace, no namespace: not ours.
        Err(_) => return Verdict::Keep,
    };
    let (Some(namespace), Some(name), Some(uid), Some(created)) = (
        meta.namespace.as_deref(),
        meta.name.as_deref(),
        meta.uid.as_deref(),
        meta.creation_timestamp.as_ref(),
    ) else {
        // Not an object as the API serves it: no precondition or age to go by.
        return Verdict::Keep;
    };
    if meta.deletion_timestamp.is_some() {
        return Verdict::Keep;
    }
    let created = to_chrono(created.0);
    let age = since(now, created);
    if age < kind.min_age(min_age) {
        return Verdict::Keep;
    }
    if live.ids.contains(&(namespace.to_owned(), id.to_string())) {
        return Verdict::Keep;
    }
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    if owners.iter().any(|r| live.uids.contains(&r.uid)) {
        return Verdict::Keep;
    }
    if kind == Kind::Pod
        && owners
            .iter()
            .any(|r| r.controller == Some(true) && r.kind == "Job")
    {
        // Controlled by a Job not in the cache: gone (the garbage collector removes the
        // pod) or unlabelled (not ours). Either way not ours to delete.
        return Verdict::Keep;
    }
    let why = format!(
        "no Job labelled {}={id} in namespace {namespace}; created {} ago",
        scope.job_id_label,
        crate::duration::format_duration(age)
    );
    Verdict::Orphan(
        created,
        Orphan {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            job_id: id,
            age,
            why,
        },
    )
}

/// Settings of the pass, from the config.
#[derive(Debug, Clone)]
pub struct PassSettings {
    /// Per-kind minimum ages (`[kubernetes.orphan_min_age]`).
    pub min_age: OrphanMinAge,
    /// Time between passes (`[orphans] scan_interval`).
    pub interval: Duration,
    /// Most DELETEs per pass (`[safety] max_batch`).
    pub max_batch: usize,
    /// Delete what is found (`[orphans] clean`); otherwise only report.
    pub clean: bool,
}

impl PassSettings {
    /// From the config.
    pub fn from_config(config: &Config) -> Self {
        PassSettings {
            min_age: config.kubernetes.orphan_min_age.clone(),
            interval: config.orphans.scan_interval.0,
            max_batch: config.safety.max_batch as usize,
            clean: config.orphans.clean,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Objects listed per kind (in [`Kind::ALL`] order; 0 for a failed listing).
    pub listed: Vec<(Kind, usize)>,
    /// What was selected.
    pub selection: Selection,
    /// DELETEs that achieved their purpose (200, 404, or dry-run).
    pub deleted: usize,
    /// Orphans left for the next pass: beyond `max_batch`, or beyond the per-minute limit on
    /// destructive calls (then `stopped` says so).
    pub deferred: usize,
    /// One row per DELETE sent (or that dry-run would have sent), as written to the store.
    pub audit: Vec<AuditEntry>,
    /// Why the pass stopped early (a retryable error), if it did.
    pub stopped: Option<String>,
}

impl PassReport {
    /// The report as `GET /v1/orphans` and `POST /v1/orphans/clean` answer it.
    pub fn to_api(&self) -> crate::api_types::OrphanReport {
        let s = &self.selection;
        crate::api_types::OrphanReport {
            orphans: s
                .orphans
                .iter()
                .map(|o| crate::api_types::OrphanView {
                    kind: o.kind.resource_type().to_owned(),
                    job_id: o.job_id.to_string(),
                    name: format!("{}/{}", o.namespace, o.name),
                    bytes: 0,
                    age_seconds: o.age.as_secs(),
                    why: Some(o.why.clone()),
                })
                .collect(),
            skipped: s.skipped.iter().cloned().collect(),
            queued: 0,
            deleted: self.deleted,
            deferred: self.deferred,
            stopped: self.stopped.clone(),
            warnings: s.warnings.clone(),
        }
    }
}

/// One orphan pass against the API server (see the module docs).
#[derive(Clone)]
pub struct OrphanPass {
    client: Client,
    scope: Scope,
    settings: PassSettings,
    dry_run: bool,
    store: Option<Store>,
    limiter: Option<Arc<RateLimiter>>,
}

impl OrphanPass {
    /// `dry_run`: list and audit, send no DELETE.
    pub fn new(client: Client, scope: Scope, settings: PassSettings, dry_run: bool) -> Self {
        OrphanPass {
            client,
            scope,
            settings,
            dry_run,
            store: None,
            limiter: None,
        }
    }

    /// Takes a token from `limiter` before each DELETE (see the module docs). Without one,
    /// a pass is bounded by `max_batch` alone.
    pub fn with_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Writes each audit row to `store` right after its call (a pass stops when that fails).
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// From the config, as `jobwarden run --runtime kubernetes` builds it: audit rows go to
    /// `store`.
    pub fn from_config(client: Client, config: &Config, store: Store, dry_run: bool) -> Self {
        let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
        OrphanPass::new(client, scope, PassSettings::from_config(config), dry_run).with_store(store)
    }

    /// Time between passes.
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// The job-id label (the LIST selector).
    pub fn job_id_label(&self) -> &str {
        &self.scope.job_id_label
    }

    /// One pass. `live` is called after the listings, so a Job created while they ran is
    /// in the snapshot.
    pub async fn run(&self, live: impl FnOnce() -> LiveJobs, now: Timestamp) -> PassReport {
        self.run_at(live, now, Instant::now()).await
    }

    /// [`Self::run`], taking the limiter's tokens at monotonic time `mono`.
    pub async fn run_at(
        &self,
        live: impl FnOnce() -> LiveJobs,
        now: Timestamp,
        mono: Instant,
    ) -> PassReport {
        let listed = self.list_kinds().await;
        self.select_and_clean(&listed, &live(), self.settings.clean, now, mono)
            .await
    }

    /// One pass on request (`GET /v1/orphans`, `POST /v1/orphans/clean` on any replica):
    /// the same listings, then the Jobs listed too (after the other kinds, as the leader's
    /// snapshot is taken) instead of read from a reflector; a failed Job listing selects
    /// nothing (fail closed). `clean`: delete what is selected, within `max_batch` and the
    /// limiter, whatever `[orphans] clean` says (the request asks for it); otherwise report.
    pub async fn run_requested(&self, clean: bool, now: Timestamp) -> PassReport {
        let listed = self.list_kinds().await;
        let jobs = self.list::<Job>().await;
        let live = match &jobs {
            Ok(metas) => {
                let jobs: Vec<Job> = metas
                    .iter()
                    .map(|m| Job {
                        metadata: m.clone(),
                        ..Job::default()
                    })
                    .collect();
                LiveJobs::from_jobs(true, &self.scope.job_id_label, &jobs)
            }
            Err(_) => LiveJobs::default(),
        };
        let mut report = self
            .select_and_clean(&listed, &live, clean, now, Instant::now())
            .await;
        if let Err(e) = jobs {
            report.selection.skipped = Some(format!("listing the labelled Jobs failed: {e}"));
        }
        report
    }

    /// The labelled objects of each kind the pass looks at: pods always, the others as
    /// `[kubernetes] clean_kinds` says.
    async fn list_kinds(&self) -> Vec<Listed> {
        let mut listed = Vec::new();
        for kind in Kind::ALL {
            if kind != Kind::Pod && !self.scope.cleans(kind.resource()) {
                continue;
            }
            let items = match kind {
                Kind::Pod => self.list::<Pod>().await,
                Kind::PersistentVolumeClaim => self.list::<PersistentVolumeClaim>().await,
                Kind::Secret => self.list::<Secret>().await,
                Kind::ConfigMap => self.list::<ConfigMap>().await,
            };
            listed.push(Listed { kind, items });
        }
        listed
    }

    /// Selects among `listed` against `live` and, with `clean`, deletes (see the module docs).
    async fn select_and_clean(
        &self,
        listed: &[Listed],
        live: &LiveJobs,
        clean: bool,
        now: Timestamp,
        mono: Instant,
    ) -> PassReport {
        let mut report = PassReport {
            listed: listed
                .iter()
                .map(|l| (l.kind, l.items.as_ref().map_or(0, Vec::len)))
                .collect(),
            selection: select(listed, live, &self.scope, &self.settings.min_age, now),
            ..PassReport::default()
        };
        if !clean {
            report.deferred = report.selection.orphans.len();
            return report;
        }
        let batch = self.settings.max_batch.min(report.selection.orphans.len());
        report.deferred = report.selection.orphans.len() - batch;
        for (i, orphan) in report.selection.orphans[..batch].iter().enumerate() {
            if !self.dry_run
                && let Some(limiter) = &self.limiter
                && let Err(wait) = limiter.try_take_at(mono)
            {
                report.deferred += batch - i;
                report.stopped = Some(format!(
                    "the per-minute limit on destructive calls is used up (next token in {}); \
                     {} orphans left for the next pass",
                    crate::duration::format_duration(Duration::from_secs(
                        wait.as_secs_f64().ceil() as u64
                    )),
                    report.deferred
                ));
                break;
            }
            let result = self.delete(orphan).await;
            let row = self.row(orphan, &result, now);
            if let Some(store) = &self.store
                && let Err(e) = store.append_audit(std::slice::from_ref(&row)).await
            {
                // No DELETE without its audit row: stop until the store answers again.
                report.audit.push(row);
                report.stopped = Some(format!("writing the audit row failed: {e}"));
                break;
            }
            report.audit.push(row);
            match result {
                r if r.is_done() => report.deleted += 1,
                CallResult::Retry { error, .. } => {
                    report.stopped = Some(error);
                    break;
                }
                // 409: re-created under the name; 403/422: audited, the rest go on.
                _ => {}
            }
        }
        report
    }

    /// Every labelled object of kind `K` (metadata only), or why the listing failed.
    async fn list<K>(&self) -> Result<Vec<ObjectMeta>, String>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + fmt::Debug,
    {
        // One paginated list cluster-wide, or one in each watched namespace; any failure
        // fails the kind (fail closed).
        let apis: Vec<Api<K>> = match self.scope.list_namespaces() {
            None => vec![Api::all(self.client.clone())],
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect(),
        };
        let mut items = Vec::new();
        for api in apis {
            let mut lp = ListParams::default()
                .labels(&self.scope.job_id_label)
                .limit(PAGE_SIZE);
            loop {
                match api.list_metadata(&lp).await {
                    Ok(page) => {
                        items.extend(page.items.into_iter().map(|o| o.metadata));
                        match page.metadata.continue_.filter(|c| !c.is_empty()) {
                            Some(token) => lp = lp.continue_token(&token),
                            None => break,
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(items)
    }

    async fn delete(&self, o: &Orphan) -> CallResult {
        if self.dry_run {
            return CallResult::DryRun;
        }
        let params = delete_params(o);
        let r = match o.kind {
            Kind::Pod => Api::<Pod>::namespaced(self.client.clone(), &o.namespace)
                .delete(&o.name, &params)
                .await
                .map(|_| ()),
            Kind::PersistentVolumeClaim => {
                Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &o.namespace)
                    .delete(&o.name, &params)
                    .await
                    .map(|_| ())
            }
            Kind::Secret => Api::<Secret>::namespaced(self.client.clone(), &o.namespace)
                .delete(&o.name, &params)
                .await
                .map(|_| ()),
            Kind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), &o.namespace)
                .delete(&o.name, &params)
                .await
                .map(|_| ()),
        };
        match r {
            Ok(()) => CallResult::Ok,
            Err(e) => CallResult::from_error(&e),
        }
    }

    fn row(&self, o: &Orphan, result: &CallResult, now: Timestamp) -> AuditEntry {
        let error_message = match result {
            CallResult::Conflict(e) | CallResult::Failed(e) => Some(e.clone()),
            CallResult::Retry { error, .. } => Some(error.clone()),
            _ => None,
        };
        AuditEntry {
            id: 0,
            timestamp: now,
            job_id: o.job_id.to_string(),
            resource_type: o.kind.resource_type().to_owned(),
            resource_name: format!("{}/{}", o.namespace, o.name),
            action: AuditAction::OrphanCleanup,
            reason: o.why.clone(),
            initiated_by: "jobwarden".to_owned(),
            success: result.is_done(),
            error_message,
            dry_run: matches!(result, CallResult::DryRun),
            details: Some(json!({
                "call": format!("DELETE v1 {}", o.kind.resource()),
                "deleteOptions": serde_json::to_value(delete_params(o)).unwrap_or_default(),
                "uid": o.uid,
                "ageSeconds": o.age.as_secs(),
                "notFound": matches!(result, CallResult::NotFound).then_some("already gone"),
                "conflict": matches!(result, CallResult::Conflict(_))
                    .then_some("the name now belongs to another object (uid): left alone"),
            })),
        }
    }
}

fn delete_params(o: &Orphan) -> DeleteParams {
    DeleteParams::background().preconditions(Preconditions {
        uid: Some(o.uid.clone()),
        resource_version: None,
    })
}
