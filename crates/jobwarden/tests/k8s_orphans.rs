//! Orphans of Kubernetes kinds (`kubernetes::orphans`): the pure selection, one test per
//! safety rule that it does NOT select; and the pass at the HTTP layer (ApiServerVerifier
//! style): exact LISTs (label selector, pagination) and DELETEs (UID precondition,
//! Background), fail closed on a failed listing, 404 / 409, dry-run, the per-pass bound, the
//! per-minute limit on destructive calls, the audit rows. Every request is checked against
//! `API_CALLS` (and so the RBAC role).

mod k8s_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobwarden::config::Config;
use jobwarden::kubernetes::config::{KubernetesConfig, OrphanMinAge};
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::orphans::{
    Kind, Listed, LiveJobs, OrphanPass, PassReport, PassSettings, select,
};
use jobwarden::model::{AuditAction, Timestamp};
use jobwarden::ratelimit::RateLimiter;
use jobwarden::runtime::kubernetes::actions::{API_CALLS, classify};
use jobwarden::store::{AuditQuery, Store};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_support::*;
use serde_json::{Value, json};

fn now() -> Timestamp {
    "2026-11-28T11:00:01Z".parse().expect("ts")
}

/// Two hours before [`now`]: older than the default minimum age (1 h).
const OLD: &str = "2026-11-28T09:00:01Z";
/// Ten minutes before [`now`].
const YOUNG: &str = "2026-11-28T10:50:01Z";

fn scope() -> Scope {
    Scope::new(&KubernetesConfig::default(), "flowforge.io/")
}

fn min_age() -> OrphanMinAge {
    OrphanMinAge::default()
}

/// Object metadata as the API server serves it (metadata-only list items).
fn meta_json(ns: &str, name: &str, uid: &str, job_id: Option<&str>, created: &str) -> Value {
    let mut m = json!({"name": name, "namespace": ns, "uid": uid, "resourceVersion": "100",
                       "creationTimestamp": created});
    if let Some(id) = job_id {
        m["labels"] = json!({"job-id": id});
    }
    m
}

fn meta(v: Value) -> ObjectMeta {
    serde_json::from_value(v).expect("meta")
}

/// A labelled Job in the reflector: `(namespace, job id, uid)`.
fn live(jobs: &[(&str, &str, &str)]) -> LiveJobs {
    let jobs: Vec<_> = jobs
        .iter()
        .map(|(ns, id, uid)| {
            let mut j = job_json();
            j["metadata"]["namespace"] = json!(ns);
            j["metadata"]["uid"] = json!(uid);
            j["metadata"]["labels"]["job-id"] = json!(id);
            job(j)
        })
        .collect();
    LiveJobs::from_jobs(true, "job-id", jobs.iter())
}

fn listed(kind: Kind, items: Vec<Value>) -> Listed {
    Listed {
        kind,
        items: Ok(items.into_iter().map(meta).collect()),
    }
}

fn one(kind: Kind, item: Value) -> Vec<Listed> {
    Kind::ALL
        .iter()
        .map(|k| {
            listed(
                *k,
                if *k == kind {
                    vec![item.clone()]
                } else {
                    vec![]
                },
            )
        })
        .collect()
}

fn names(l: &[Listed], live: &LiveJobs, scope: &Scope) -> Vec<String> {
    select(l, live, scope, &min_age(), now())
        .orphans
        .iter()
        .map(|o| format!("{} {}/{}", o.kind, o.namespace, o.name))
        .collect()
}

// ---- the pure selection ----

#[test]
fn an_old_labelled_object_whose_job_is_gone_is_an_orphan_with_its_identity_and_why() {
    let l = one(
        Kind::Secret,
        meta_json("flowforge", "creds-7", "s-7", Some("j-7"), OLD),
    );
    let s = select(
        &l,
        &live(&[("flowforge", "j-42", JOB_UID)]),
        &scope(),
        &min_age(),
        now(),
    );
    assert_eq!(s.skipped, None);
    assert!(s.warnings.is_empty());
    assert_eq!(s.orphans.len(), 1);
    let o = &s.orphans[0];
    assert_eq!(
        (
            o.kind,
            o.namespace.as_str(),
            o.name.as_str(),
            o.uid.as_str(),
            o.job_id.as_str()
        ),
        (Kind::Secret, "flowforge", "creds-7", "s-7", "j-7")
    );
    assert_eq!(o.age, Duration::from_secs(7200));
    assert!(o.why.contains("no Job labelled job-id=j-7"), "{}", o.why);
}

#[test]
fn an_object_without_the_label_is_not_selected() {
    for kind in Kind::ALL {
        let l = one(kind, meta_json("flowforge", "x", "u-x", None, OLD));
        assert!(names(&l, &live(&[]), &scope()).is_empty(), "{kind}");
    }
}

#[test]
fn an_object_in_a_protected_namespace_is_not_selected() {
    let l = one(
        Kind::ConfigMap,
        meta_json("kube-system", "cm", "u-cm", Some("j-7"), OLD),
    );
    assert!(names(&l, &live(&[]), &scope()).is_empty());
}

#[test]
fn an_object_in_a_namespace_outside_the_watched_ones_is_not_selected() {
    let k = KubernetesConfig {
        namespaces: vec!["flowforge".to_owned()],
        ..KubernetesConfig::default()
    };
    let scoped = Scope::new(&k, "flowforge.io/");
    let l = one(
        Kind::ConfigMap,
        meta_json("elsewhere", "cm", "u-cm", Some("j-7"), OLD),
    );
    assert!(names(&l, &live(&[]), &scoped).is_empty());
    // The same object in the watched namespace is one (the scope, not something else, kept it).
    let l = one(
        Kind::ConfigMap,
        meta_json("flowforge", "cm", "u-cm", Some("j-7"), OLD),
    );
    assert_eq!(names(&l, &live(&[]), &scoped), ["configmap flowforge/cm"]);
}

#[test]
fn an_object_younger_than_its_kinds_min_age_is_not_selected() {
    let l = one(
        Kind::PersistentVolumeClaim,
        meta_json("flowforge", "ws", "u-ws", Some("j-7"), YOUNG),
    );
    assert!(names(&l, &live(&[]), &scope()).is_empty());
    // Per kind: a 5-minute minimum for PVCs makes the same object old enough.
    let ages = OrphanMinAge {
        persistentvolumeclaims: jobwarden::duration::Dur::secs(300),
        ..OrphanMinAge::default()
    };
    let s = select(&l, &live(&[]), &scope(), &ages, now());
    assert_eq!(s.orphans.len(), 1);
}

#[test]
fn an_object_whose_job_id_matches_a_live_job_in_its_namespace_is_not_selected() {
    let obj = meta_json("flowforge", "creds-42", "s-42", Some("j-42"), OLD);
    for kind in Kind::ALL {
        let l = one(kind, obj.clone());
        assert!(
            names(&l, &live(&[("flowforge", "j-42", JOB_UID)]), &scope()).is_empty(),
            "{kind}"
        );
    }
    // A Job with that id in another namespace does not keep it.
    let l = one(Kind::Secret, obj);
    assert_eq!(
        names(&l, &live(&[("other", "j-42", "other-uid")]), &scope()),
        ["secret flowforge/creds-42"]
    );
}

#[test]
fn a_pod_still_controlled_by_a_live_job_uid_is_not_selected() {
    // Its label names a job id no Job carries, but its controller is a live Job.
    let mut p = meta_json("flowforge", "build-42-a", "pod-a", Some("j-other"), OLD);
    p["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "build-42",
                                   "uid": JOB_UID, "controller": true, "blockOwnerDeletion": true}]);
    let l = one(Kind::Pod, p);
    assert!(names(&l, &live(&[("flowforge", "j-42", JOB_UID)]), &scope()).is_empty());
}

#[test]
fn a_pod_controlled_by_a_job_missing_from_the_cache_is_left_to_the_garbage_collector() {
    let mut p = meta_json("flowforge", "build-9-a", "pod-9", Some("j-9"), OLD);
    p["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "build-9",
                                   "uid": "gone-or-unlabelled", "controller": true}]);
    let l = one(Kind::Pod, p.clone());
    assert!(names(&l, &live(&[]), &scope()).is_empty());
    // Without that ownerReference (a Job deleted with propagationPolicy Orphan) it is one.
    p.as_object_mut().expect("obj").remove("ownerReferences");
    let l = one(Kind::Pod, p);
    assert_eq!(names(&l, &live(&[]), &scope()), ["pod flowforge/build-9-a"]);
}

#[test]
fn an_object_already_being_deleted_is_not_selected() {
    let mut p = meta_json("flowforge", "ws", "u-ws", Some("j-7"), OLD);
    p["deletionTimestamp"] = json!("2026-11-28T11:00:00Z");
    p["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
    let l = one(Kind::PersistentVolumeClaim, p);
    assert!(names(&l, &live(&[]), &scope()).is_empty());
}

#[test]
fn a_label_value_that_is_not_a_job_id_is_refused_with_a_warning() {
    let l = one(
        Kind::ConfigMap,
        meta_json("flowforge", "cm", "u-cm", Some("-not/an id-"), OLD),
    );
    let s = select(&l, &live(&[]), &scope(), &min_age(), now());
    assert!(s.orphans.is_empty());
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("configmap flowforge/cm"),
        "{}",
        s.warnings[0]
    );
}

#[test]
fn a_job_cache_not_yet_synced_selects_nothing() {
    let l = one(
        Kind::Secret,
        meta_json("flowforge", "creds-7", "s-7", Some("j-7"), OLD),
    );
    let s = select(&l, &LiveJobs::default(), &scope(), &min_age(), now());
    assert!(s.orphans.is_empty());
    assert!(s.skipped.is_some());
}

#[test]
fn any_failed_listing_selects_nothing_of_any_kind() {
    let mut l = one(
        Kind::Secret,
        meta_json("flowforge", "creds-7", "s-7", Some("j-7"), OLD),
    );
    l[3].items = Err("500 InternalError".to_owned()); // configmaps
    let s = select(&l, &live(&[]), &scope(), &min_age(), now());
    assert!(
        s.orphans.is_empty(),
        "the secret's listing was fine, still nothing"
    );
    assert!(
        s.skipped
            .as_deref()
            .is_some_and(|w| w.contains("configmaps")),
        "{s:?}"
    );
}

#[test]
fn orphans_come_oldest_first() {
    let l = vec![
        listed(
            Kind::Pod,
            vec![meta_json(
                "flowforge",
                "p",
                "u-p",
                Some("j-1"),
                "2026-11-28T09:30:00Z",
            )],
        ),
        listed(
            Kind::Secret,
            vec![meta_json(
                "flowforge",
                "s",
                "u-s",
                Some("j-2"),
                "2026-11-27T09:00:00Z",
            )],
        ),
        listed(Kind::PersistentVolumeClaim, vec![]),
        listed(Kind::ConfigMap, vec![]),
    ];
    assert_eq!(
        names(&l, &live(&[]), &scope()),
        ["secret flowforge/s", "pod flowforge/p"]
    );
}

// ---- the pass, at the HTTP layer ----

fn settings(max_batch: usize, clean: bool) -> PassSettings {
    PassSettings {
        min_age: min_age(),
        interval: Duration::from_secs(900),
        max_batch,
        clean,
    }
}

/// A metadata-only list page as the API server answers `as=PartialObjectMetadataList`.
fn page(items: Vec<Value>, cont: Option<&str>) -> (u16, Value) {
    let items: Vec<Value> = items
        .into_iter()
        .map(|m| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m}))
        .collect();
    let mut md = json!({"resourceVersion": "5000"});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    (
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": md, "items": items}),
    )
}

fn deleted(kind: &str, name: &str, uid: &str) -> (u16, Value) {
    (200, success_status(kind, name, uid))
}

/// Runs one pass against a scripted server; returns the report and what the server saw,
/// after checking every request against `API_CALLS`.
async fn pass(
    responses: Vec<(u16, Value)>,
    settings: PassSettings,
    dry_run: bool,
    live_jobs: LiveJobs,
    store: Option<Store>,
) -> (PassReport, Vec<Seen>) {
    let (client, server) = scripted(responses);
    let mut p = OrphanPass::new(client, scope(), settings, dry_run);
    if let Some(store) = store {
        p = p.with_store(store);
    }
    let report = p.run(|| live_jobs, now()).await;
    drop(p);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends when the client is dropped")
        .expect("server task");
    for s in &seen {
        let (g, r, v) = classify(&s.method, &s.path).expect("a resource URL");
        assert!(
            API_CALLS
                .iter()
                .any(|c| c.group == g && c.resource == r && c.verb == v),
            "{} needs ({g:?}, {r}, {v}), which API_CALLS (and so the RBAC role) lacks",
            s.line()
        );
    }
    (report, seen)
}

fn list_line(resource: &str, cont: Option<&str>) -> String {
    match cont {
        Some(c) => format!("GET /api/v1/{resource}?continue={c}&labelSelector=job-id&limit=500"),
        None => format!("GET /api/v1/{resource}?labelSelector=job-id&limit=500"),
    }
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn delete_body(uid: &str) -> Value {
    json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}})
}

/// The cluster of most request tests: j-42 is live; an old pod (two pages), PVC and
/// ConfigMap of gone jobs; a Secret of the live job; a young ConfigMap.
fn cluster_lists() -> Vec<(u16, Value)> {
    vec![
        page(
            vec![meta_json(
                "flowforge",
                "build-42-a",
                "pod-42",
                Some("j-42"),
                OLD,
            )],
            Some("c1"),
        ),
        page(
            vec![meta_json(
                "flowforge",
                "build-7-a",
                "pod-7",
                Some("j-7"),
                "2026-11-28T08:00:00Z",
            )],
            None,
        ),
        page(
            vec![meta_json(
                "flowforge",
                "ws-8",
                "pvc-8",
                Some("j-8"),
                "2026-11-28T08:30:00Z",
            )],
            None,
        ),
        page(
            vec![meta_json(
                "flowforge",
                "creds-42",
                "s-42",
                Some("j-42"),
                OLD,
            )],
            None,
        ),
        page(
            vec![
                meta_json("flowforge", "cfg-9", "cm-9", Some("j-9"), OLD),
                meta_json("flowforge", "cfg-10", "cm-10", Some("j-10"), YOUNG),
            ],
            None,
        ),
    ]
}

fn expected_lists() -> Vec<String> {
    vec![
        list_line("pods", None),
        list_line("pods", Some("c1")),
        list_line("persistentvolumeclaims", None),
        list_line("secrets", None),
        list_line("configmaps", None),
    ]
}

#[tokio::test]
async fn one_pass_lists_each_kind_by_label_and_deletes_exactly_the_orphans_with_uid_preconditions()
{
    let mut responses = cluster_lists();
    responses.push(deleted("pods", "build-7-a", "pod-7"));
    responses.push(deleted("persistentvolumeclaims", "ws-8", "pvc-8"));
    responses.push((
        404,
        status(404, "NotFound", "configmaps \"cfg-9\" not found"),
    ));
    let store = Store::open("sqlite::memory:").await.expect("store");
    let (r, seen) = pass(
        responses,
        settings(100, true),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        Some(store.clone()),
    )
    .await;
    let mut want = expected_lists();
    want.extend([
        "DELETE /api/v1/namespaces/flowforge/pods/build-7-a".to_owned(),
        "DELETE /api/v1/namespaces/flowforge/persistentvolumeclaims/ws-8".to_owned(),
        "DELETE /api/v1/namespaces/flowforge/configmaps/cfg-9".to_owned(),
    ]);
    assert_eq!(lines(&seen), want);
    for s in &seen[..5] {
        assert_eq!(s.body, Value::Null);
    }
    assert_eq!(seen[5].body, delete_body("pod-7"));
    assert_eq!(seen[6].body, delete_body("pvc-8"));
    assert_eq!(seen[7].body, delete_body("cm-9"));
    assert_eq!(
        r.listed,
        [
            (Kind::Pod, 2),
            (Kind::PersistentVolumeClaim, 1),
            (Kind::Secret, 1),
            (Kind::ConfigMap, 2)
        ]
    );
    assert_eq!(r.deleted, 3, "404 counts as done");
    assert_eq!((r.deferred, r.stopped.as_deref()), (0, None));
    // One audit row per DELETE, written to the store as it went.
    let rows = store
        .query_audit(&AuditQuery {
            action: Some(AuditAction::OrphanCleanup),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    let mut got: Vec<_> = rows
        .iter()
        .map(|a| {
            (
                a.job_id.as_str(),
                a.resource_type.as_str(),
                a.resource_name.as_str(),
                a.success,
                a.dry_run,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("j-7", "pod", "flowforge/build-7-a", true, false),
            (
                "j-8",
                "persistentvolumeclaim",
                "flowforge/ws-8",
                true,
                false
            ),
            ("j-9", "configmap", "flowforge/cfg-9", true, false),
        ]
    );
    assert_eq!(r.audit.len(), 3);
    assert_eq!(
        r.audit[0].details.as_ref().expect("details")["deleteOptions"],
        delete_body("pod-7")
    );
}

#[tokio::test]
async fn a_failed_listing_deletes_nothing() {
    let mut responses = cluster_lists();
    // secrets: 403 instead of its page; configmaps still answered.
    responses[3] = (403, status(403, "Forbidden", "secrets is forbidden"));
    let (r, seen) = pass(
        responses,
        settings(100, true),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    assert!(seen.iter().all(|s| s.method == "GET"), "{:?}", lines(&seen));
    assert_eq!(lines(&seen), expected_lists());
    assert!(r.selection.orphans.is_empty() && r.audit.is_empty());
    assert!(
        r.selection
            .skipped
            .as_deref()
            .is_some_and(|w| w.contains("secrets")),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_failed_second_page_deletes_nothing() {
    let mut responses = cluster_lists();
    // The continue token expired (410) after the first page of pods.
    responses[1] = (
        410,
        status(410, "Expired", "The provided continue parameter is too old"),
    );
    let (r, seen) = pass(responses, settings(100, true), false, live(&[]), None).await;
    assert!(seen.iter().all(|s| s.method == "GET"), "{:?}", lines(&seen));
    assert!(r.selection.skipped.is_some() && r.audit.is_empty());
}

#[tokio::test]
async fn a_job_cache_not_synced_deletes_nothing() {
    let (r, seen) = pass(
        cluster_lists(),
        settings(100, true),
        false,
        LiveJobs::default(),
        None,
    )
    .await;
    assert_eq!(lines(&seen), expected_lists());
    assert!(r.selection.skipped.is_some() && r.audit.is_empty());
}

#[tokio::test]
async fn a_409_leaves_the_recreated_object_alone_and_the_pass_goes_on() {
    let mut responses = cluster_lists();
    responses.push((
        409,
        status(
            409,
            "Conflict",
            "Precondition failed: UID in precondition: pod-7, UID in object meta: pod-7b",
        ),
    ));
    responses.push(deleted("persistentvolumeclaims", "ws-8", "pvc-8"));
    responses.push(deleted("configmaps", "cfg-9", "cm-9"));
    let (r, seen) = pass(
        responses,
        settings(100, true),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    // One DELETE for the pod, never retried; the others still go.
    let deletes: Vec<_> = seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 3);
    assert_eq!(r.deleted, 2);
    let row = &r.audit[0];
    assert_eq!(row.resource_name, "flowforge/build-7-a");
    assert!(!row.success);
    assert!(
        row.error_message
            .as_deref()
            .is_some_and(|e| e.contains("409"))
    );
    assert!(row.details.as_ref().expect("details")["conflict"].is_string());
}

#[tokio::test]
async fn a_server_error_ends_the_pass() {
    let mut responses = cluster_lists();
    responses.push((
        500,
        status(500, "InternalError", "etcdserver: request timed out"),
    ));
    let (r, seen) = pass(
        responses,
        settings(100, true),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    assert_eq!(seen.iter().filter(|s| s.method == "DELETE").count(), 1);
    assert_eq!(r.audit.len(), 1);
    assert!(!r.audit[0].success);
    assert!(r.stopped.is_some());
}

#[tokio::test]
async fn dry_run_lists_and_audits_and_sends_no_delete() {
    let (r, seen) = pass(
        cluster_lists(),
        settings(100, true),
        true,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    assert_eq!(lines(&seen), expected_lists());
    let audited: BTreeSet<_> = r
        .audit
        .iter()
        .map(|a| (a.resource_name.as_str(), a.dry_run, a.success, a.action))
        .collect();
    assert_eq!(
        audited,
        BTreeSet::from([
            (
                "flowforge/build-7-a",
                true,
                true,
                AuditAction::OrphanCleanup
            ),
            ("flowforge/ws-8", true, true, AuditAction::OrphanCleanup),
            ("flowforge/cfg-9", true, true, AuditAction::OrphanCleanup),
        ])
    );
}

#[tokio::test]
async fn a_pass_deletes_at_most_max_batch_oldest_first() {
    let mut responses = cluster_lists();
    responses.push(deleted("pods", "build-7-a", "pod-7"));
    responses.push(deleted("persistentvolumeclaims", "ws-8", "pvc-8"));
    let (r, seen) = pass(
        responses,
        settings(2, true),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    let deletes: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(Seen::line)
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/flowforge/pods/build-7-a",
            "DELETE /api/v1/namespaces/flowforge/persistentvolumeclaims/ws-8",
        ]
    );
    assert_eq!((r.deleted, r.deferred), (2, 1));
    assert_eq!(r.selection.orphans.len(), 3);
}

/// With a limit of 2 destructive calls a minute, a pass over 3 orphans deletes the 2 oldest,
/// sends no further DELETE and leaves the third for later; a pass at the same instant deletes
/// nothing; 30 s on (one token back) the next pass deletes the third. Time is passed in.
#[tokio::test]
async fn a_pass_out_of_tokens_deletes_exactly_the_limit_and_leaves_the_rest() {
    let mut responses = cluster_lists();
    responses.push(deleted("pods", "build-7-a", "pod-7"));
    responses.push(deleted("persistentvolumeclaims", "ws-8", "pvc-8"));
    responses.extend(cluster_lists());
    // 30 s on: the pod and the PVC are gone; the ConfigMap's turn.
    responses.extend([
        page(
            vec![meta_json(
                "flowforge",
                "build-42-a",
                "pod-42",
                Some("j-42"),
                OLD,
            )],
            None,
        ),
        page(vec![], None),
        page(
            vec![meta_json(
                "flowforge",
                "creds-42",
                "s-42",
                Some("j-42"),
                OLD,
            )],
            None,
        ),
        page(
            vec![
                meta_json("flowforge", "cfg-9", "cm-9", Some("j-9"), OLD),
                meta_json("flowforge", "cfg-10", "cm-10", Some("j-10"), YOUNG),
            ],
            None,
        ),
        deleted("configmaps", "cfg-9", "cm-9"),
    ]);
    let (client, server) = scripted(responses);
    let store = Store::open("sqlite::memory:").await.expect("store");
    let limiter = Arc::new(RateLimiter::per_minute(2));
    let p = OrphanPass::new(client, scope(), settings(100, true), false)
        .with_store(store.clone())
        .with_limiter(limiter);
    let live_jobs = || live(&[("flowforge", "j-42", JOB_UID)]);
    let t0 = Instant::now();

    let first = p.run_at(live_jobs, now(), t0).await;
    assert_eq!((first.deleted, first.deferred), (2, 1));
    assert_eq!(first.audit.len(), 2);
    assert!(
        first
            .stopped
            .as_deref()
            .is_some_and(|s| s.contains("per-minute limit") && s.contains("1 orphans left")),
        "{first:?}"
    );
    let again = p.run_at(live_jobs, now(), t0).await;
    assert_eq!((again.deleted, again.deferred), (0, 3));
    assert!(again.audit.is_empty());
    let later = p
        .run_at(live_jobs, now(), t0 + Duration::from_secs(30))
        .await;
    assert_eq!((later.deleted, later.deferred, later.stopped), (1, 0, None));
    drop(p);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    let deletes: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(Seen::line)
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/flowforge/pods/build-7-a",
            "DELETE /api/v1/namespaces/flowforge/persistentvolumeclaims/ws-8",
            "DELETE /api/v1/namespaces/flowforge/configmaps/cfg-9",
        ]
    );
    let rows = store
        .query_audit(&AuditQuery::default())
        .await
        .expect("audit");
    assert_eq!(rows.len(), 3, "one row per DELETE sent: {rows:?}");
}

/// Dry-run sends no DELETE, so it takes no token: the budget is whole afterwards.
#[tokio::test]
async fn a_dry_run_pass_takes_no_token() {
    let (client, server) = scripted(cluster_lists());
    let limiter = Arc::new(RateLimiter::per_minute(1));
    let p =
        OrphanPass::new(client, scope(), settings(100, true), true).with_limiter(limiter.clone());
    let t0 = Instant::now();
    let r = p
        .run_at(|| live(&[("flowforge", "j-42", JOB_UID)]), now(), t0)
        .await;
    assert_eq!((r.deleted, r.deferred, r.stopped), (3, 0, None));
    assert!(limiter.try_take_at(t0).is_ok(), "dry-run used the budget");
    drop(p);
    let seen = server.await.expect("server");
    assert!(
        seen.iter().all(|s| s.method != "DELETE"),
        "{:?}",
        lines(&seen)
    );
}

#[tokio::test]
async fn with_clean_off_orphans_are_reported_not_deleted() {
    let (r, seen) = pass(
        cluster_lists(),
        settings(100, false),
        false,
        live(&[("flowforge", "j-42", JOB_UID)]),
        None,
    )
    .await;
    assert_eq!(lines(&seen), expected_lists());
    assert_eq!(r.selection.orphans.len(), 3);
    assert!(r.audit.is_empty());
}

#[test]
fn the_pass_settings_come_from_orphans_safety_and_kubernetes_sections() {
    let c = Config::default();
    let s = PassSettings::from_config(&c);
    assert_eq!(s.interval, c.orphans.scan_interval.0);
    assert_eq!(s.max_batch, c.safety.max_batch as usize);
    assert_eq!(s.min_age, c.kubernetes.orphan_min_age);
    assert_eq!(s.clean, c.orphans.clean);
}

// ---- arbitrary label values ----

/// Whether `v` is a Kubernetes label value, written out independently of the library:
/// `[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?`.
fn is_label_value(v: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=63).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && alnum(v.chars().next())
        && alnum(v.chars().last())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("JOBWARDEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]
    /// Whatever the job-id label values of old objects whose Job is gone, only those that are
    /// job ids are ever orphans (each with its own value as job id); every other one is a
    /// warning, never a candidate.
    #[test]
    fn only_label_values_that_are_job_ids_are_ever_orphans(
        values in proptest::collection::vec(
            proptest::prop_oneof![
                "\\PC{0,70}",
                "[A-Za-z0-9._-]{1,70}",
                "[._-][a-z0-9]{0,6}",
                "[a-z0-9]{0,6}[._-]",
                "[a-z0-9]{1,10}",
            ],
            1..10,
        ),
    ) {
        let items: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| meta_json("team-a", &format!("s{i}"), &format!("uid-{i}"), Some(v), OLD))
            .collect();
        let l: Vec<Listed> = Kind::ALL
            .iter()
            .map(|k| listed(*k, if *k == Kind::Secret { items.clone() } else { vec![] }))
            .collect();
        let sel = select(&l, &live(&[]), &scope(), &min_age(), now());
        proptest::prop_assert!(sel.skipped.is_none(), "{:?}", sel.skipped);
        for o in &sel.orphans {
            let i: usize = o.name.trim_start_matches('s').parse().expect("index");
            proptest::prop_assert!(is_label_value(&values[i]), "{:?} selected", values[i]);
            proptest::prop_assert_eq!(o.job_id.as_str(), values[i].as_str());
        }
        let ids = values.iter().filter(|v| is_label_value(v)).count();
        proptest::prop_assert_eq!(sel.orphans.len(), ids, "{:?}", sel.orphans);
        proptest::prop_assert_eq!(sel.warnings.len(), values.len() - ids, "{:?}", sel.warnings);
    }
}
